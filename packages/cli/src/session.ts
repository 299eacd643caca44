// How the CLI reaches the gateway: Connect over HTTP (binary protobuf) with a bearer credential
// taken from, in order, --api-key / ENSEMBLE_API_KEY, or the stored session of this gateway URL
// (its access token refreshed with the refresh token shortly before it expires).
import type { DescService } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthService, type AuthTokens } from "@ensemble/proto";
import { CredentialStore, type StoredSession } from "./credentials.js";

/** Refresh when the access token has less than this left (clock skew, a slow call). */
const REFRESH_MARGIN_MS = 30_000;

export class UsageError extends Error {
  override name = "UsageError";
}

/** Not logged in (or the session ended): the message says what to do. */
export class NotLoggedInError extends Error {
  override name = "NotLoggedInError";
}

export function createTransport(baseUrl: string, interceptors: Interceptor[] = []): Transport {
  return createConnectTransport({
    baseUrl,
    // HTTP/1.1 works through any proxy; Connect streams server responses over it.
    httpVersion: "1.1",
    useBinaryFormat: true,
    interceptors,
  });
}

export function sessionFromTokens(
  tokens: AuthTokens,
  who: { email: string; userId: string; tenantId: string },
): StoredSession {
  return {
    ...who,
    accessToken: tokens.accessToken,
    accessTokenExpiresAt:
      tokens.accessTokenExpireTime !== undefined ? timestampMs(tokens.accessTokenExpireTime) : 0,
    refreshToken: tokens.refreshToken,
    refreshTokenExpiresAt:
      tokens.refreshTokenExpireTime !== undefined ? timestampMs(tokens.refreshTokenExpireTime) : 0,
  };
}

export interface GatewayOptions {
  url: string;
  apiKey?: string | undefined;
  store: CredentialStore;
}

/** A gateway connection whose clients carry the caller's credential. */
export class Gateway {
  readonly url: string;
  readonly store: CredentialStore;
  readonly #apiKey: string | undefined;
  readonly #anonymous: Transport;
  readonly #authed: Transport;
  #pending: Promise<string> | undefined;

  constructor(opts: GatewayOptions) {
    this.url = opts.url;
    this.store = opts.store;
    this.#apiKey = opts.apiKey;
    this.#anonymous = createTransport(opts.url);
    const withToken: Interceptor = (next) => async (req) => {
      const token = await this.token();
      req.header.set("authorization", `Bearer ${token}`);
      try {
        return await next(req);
      } catch (err) {
        // The gateway refuses a session's token before it expires when the user's role or
        // state changed (or the session ended): refresh once, so this call (when unary) and the
        // next ones carry a token with the current roles, or the user learns to log in again.
        if (this.#apiKey !== undefined || ConnectError.from(err).code !== Code.Unauthenticated) {
          throw err;
        }
        const fresh = await this.#refreshAfterRefusal(token);
        if (fresh === undefined || req.stream) throw err;
        req.header.set("authorization", `Bearer ${fresh}`);
        return next(req);
      }
    };
    this.#authed = createTransport(opts.url, [withToken]);
  }

  /** A client that sends no credential (signup, login, refresh). */
  anonymous<S extends DescService>(service: S): Client<S> {
    return createClient(service, this.#anonymous);
  }

  /** A client that sends the API key or the session's access token. */
  client<S extends DescService>(service: S): Client<S> {
    return createClient(service, this.#authed);
  }

  /** The bearer credential, refreshing the stored session when its access token is about to expire. */
  async token(): Promise<string> {
    if (this.#apiKey !== undefined) return this.#apiKey;
    const session = await this.store.get(this.url);
    if (session === undefined) {
      throw new NotLoggedInError(`not logged in to ${this.url}: run \`ensemble login\` first`);
    }
    if (session.accessTokenExpiresAt - REFRESH_MARGIN_MS > Date.now()) return session.accessToken;
    // One refresh at a time: the refresh token is single-use.
    this.#pending ??= this.#refresh(session).finally(() => (this.#pending = undefined));
    return this.#pending;
  }

  /** A new access token after `refused` was refused; undefined when it was not this session's. */
  async #refreshAfterRefusal(refused: string): Promise<string | undefined> {
    const session = await this.store.get(this.url);
    if (session === undefined) return undefined;
    if (session.accessToken !== refused) return session.accessToken; // refreshed meanwhile
    this.#pending ??= this.#refresh(session).finally(() => (this.#pending = undefined));
    return this.#pending;
  }

  async #refresh(session: StoredSession): Promise<string> {
    if (session.refreshTokenExpiresAt !== 0 && session.refreshTokenExpiresAt <= Date.now()) {
      await this.store.delete(this.url);
      throw new NotLoggedInError("your session has expired: run `ensemble login` again");
    }
    try {
      const res = await this.anonymous(AuthService).refresh({ refreshToken: session.refreshToken });
      if (res.tokens === undefined) throw new Error("auth returned no tokens");
      const next = sessionFromTokens(res.tokens, session);
      await this.store.put(this.url, next);
      return next.accessToken;
    } catch (err) {
      const code = ConnectError.from(err).code;
      if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
        await this.store.delete(this.url);
        throw new NotLoggedInError("your session has ended: run `ensemble login` again");
      }
      throw err;
    }
  }
}
