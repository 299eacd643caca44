// Who is calling: a JWT verified locally against auth's JWKS, or an API key exchanged for a
// token through auth (AuthenticateApiKey, INTERNAL, called with the gateway's service token).
//
// Exchanged tokens are cached by a SHA-256 of the key (never the key itself), for at most
// `apiKeyCacheMs` (default 30 s) and never past the token's own expiry, in a bounded LRU. A key
// revoked, rolled or updated, or a user disabled or given another role, drops the entries at
// once: on this replica after RevokeApiKey / RollApiKey through it, on every replica when auth's
// change notice arrives (before auth answers the change); `apiKeyCacheMs` is the bound when a
// notice is lost.
//
// Access tokens are checked against auth's change notices too: a session that ended (logout,
// a reused refresh token) and every token of a user whose role or state changed, or who logged
// out everywhere, are refused from the notice on, rather than until they expire
// (AUTH_ACCESS_TOKEN_TTL_MINUTES, 15 by default). `iat` has whole seconds, so a user's cutoff
// refuses tokens issued in an earlier second than the change: one issued in the same second,
// just before it, still passes. The cutoffs are remembered for `revocationMemoryMs` (24 h, the
// longest access token auth issues). These notices are stored (kit notices.ts): a replica reads
// the last day's at start and catches up after a disconnect, so none is missed.
import { createHash } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import {
  bearerToken,
  checkAccess,
  MalformedAuthorizationError,
  PermissionDeniedError,
  REVOCATION_MEMORY_MS,
  UnauthenticatedError,
  UnavailableError,
  type Principal,
  type RateLimiter,
  type TokenVerifier,
} from "@ensemble/kit";
import {
  ApiKeyScope,
  type Access,
  type AuthenticateApiKeyRequestSchema,
  type AuthenticateApiKeyResponse,
  type IssueServiceTokenRequestSchema,
  type IssueServiceTokenResponse,
} from "@ensemble/proto";

export const API_KEY_PREFIX = "ens_";

export interface Caller {
  principal: Principal;
  /** The token forwarded upstream as `authorization: Bearer` (the user's, or the exchanged one). */
  token: string;
  /** The rate-limit bucket: one per API key, else one per user. */
  limitKey: string;
  apiKey?: { id: string; scopes: ApiKeyScope[] };
}

/** The two AuthService methods the gateway itself calls. */
export interface AuthApi {
  authenticateApiKey(
    req: MessageInitShape<typeof AuthenticateApiKeyRequestSchema>,
    opts?: CallOptions,
  ): Promise<AuthenticateApiKeyResponse>;
  issueServiceToken(
    req: MessageInitShape<typeof IssueServiceTokenRequestSchema>,
    opts?: CallOptions,
  ): Promise<IssueServiceTokenResponse>;
}

/**
 * The gateway's own short-lived service token, obtained with IssueServiceToken from the
 * long-lived bootstrap token and renewed on demand a minute before it expires.
 */
export class ServiceTokenSource {
  #current: { token: string; expiresAt: number } | undefined;
  #pending: Promise<string> | undefined;

  constructor(
    private readonly auth: AuthApi,
    private readonly bootstrap: string,
    private readonly now: () => number = Date.now,
  ) {}

  async token(): Promise<string> {
    const current = this.#current;
    if (current !== undefined && current.expiresAt - 60_000 > this.now()) return current.token;
    this.#pending ??= this.#renew().finally(() => (this.#pending = undefined));
    try {
      return await this.#pending;
    } catch (err) {
      // auth briefly unreachable: a token that is still valid keeps working.
      if (current !== undefined && current.expiresAt > this.now() + 5_000) return current.token;
      throw err;
    }
  }

  async #renew(): Promise<string> {
    const res = await this.auth.issueServiceToken(
      { reason: "gateway" },
      { headers: { authorization: `Bearer ${this.bootstrap}` }, timeoutMs: 5_000 },
    );
    const expiresAt =
      res.expireTime !== undefined ? timestampDate(res.expireTime).getTime() : this.now() + 300_000;
    this.#current = { token: res.accessToken, expiresAt };
    return res.accessToken;
  }
}

interface CachedKey {
  caller: Caller;
  expiresAt: number;
}

export interface AuthenticatorOptions {
  verifier: TokenVerifier;
  /** Absent: API keys are refused (no auth service or no bootstrap token configured). */
  auth?: AuthApi;
  serviceToken?: ServiceTokenSource;
  apiKeyCacheMs?: number;
  maxCachedKeys?: number;
  /** How long ended sessions and user cutoffs are remembered (the longest token lifetime). */
  revocationMemoryMs?: number;
  now?: () => number;
}

/** Ended sessions and user cutoffs remembered at most (the oldest are dropped first). */
const MAX_REVOCATIONS = 100_000;

export class Authenticator {
  readonly #opts: AuthenticatorOptions;
  readonly #now: () => number;
  readonly #cacheMs: number;
  readonly #maxKeys: number;
  /** sha256(key) -> exchanged caller; insertion order = recency. */
  readonly #keys = new Map<string, CachedKey>();
  readonly #inflight = new Map<string, Promise<Caller>>();
  readonly #memoryMs: number;
  /** "user" + tenant + user, or "session" + tenant + session -> the change time (ms). */
  readonly #revoked = new Map<string, number>();

  constructor(opts: AuthenticatorOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.#cacheMs = opts.apiKeyCacheMs ?? 30_000;
    this.#maxKeys = opts.maxCachedKeys ?? 10_000;
    this.#memoryMs = opts.revocationMemoryMs ?? REVOCATION_MEMORY_MS;
  }

  /** The caller, or undefined when the request carries no credential. */
  async authenticate(headers: Headers): Promise<Caller | undefined> {
    let bearer: string | undefined;
    try {
      bearer = bearerToken(headers);
    } catch (err) {
      if (err instanceof MalformedAuthorizationError) throw new UnauthenticatedError(err.message);
      throw err;
    }
    const apiKeyHeader = headers.get("x-api-key")?.trim();
    if (apiKeyHeader !== undefined && apiKeyHeader !== "") return this.#apiKey(apiKeyHeader);
    if (bearer === undefined) return undefined;
    if (bearer.startsWith(API_KEY_PREFIX)) return this.#apiKey(bearer);
    const principal = await this.#opts.verifier.verify(bearer);
    if (this.#revoked.size > 0 && this.#isRevoked(principal)) {
      throw new UnauthenticatedError(
        "this access token was revoked (its session ended, or the user's role or state changed); refresh it or log in again",
      );
    }
    return {
      principal,
      token: bearer,
      limitKey: `user:${principal.tenantId}:${principal.subject}`,
    };
  }

  /** Forgets cached exchanges of a key that changed (revoked, rolled, new limits). */
  forgetApiKey(apiKeyId: string): void {
    for (const [hash, entry] of this.#keys) {
      if (entry.caller.apiKey?.id === apiKeyId) this.#keys.delete(hash);
    }
  }

  /** Refuses the user's access tokens issued in an earlier second than `atMs`. */
  revokeUserTokens(tenantId: string, userId: string, atMs: number): void {
    this.#remember(JSON.stringify(["user", tenantId, userId]), atMs);
  }

  /** Refuses the access tokens of a session that ended. */
  revokeSession(tenantId: string, sessionId: string, atMs: number): void {
    if (sessionId !== "") this.#remember(JSON.stringify(["session", tenantId, sessionId]), atMs);
  }

  #remember(key: string, atMs: number): void {
    const known = this.#revoked.get(key);
    this.#revoked.delete(key);
    this.#revoked.set(key, Math.max(known ?? 0, atMs));
    // Entries are in the order they were last set: drop the forgotten and the overflow.
    const forgetBefore = this.#now() - this.#memoryMs;
    for (const [k, at] of this.#revoked) {
      if (at >= forgetBefore && this.#revoked.size <= MAX_REVOCATIONS) break;
      this.#revoked.delete(k);
    }
  }

  #isRevoked(p: Principal): boolean {
    if (p.sessionId !== undefined) {
      const ended = this.#revoked.get(JSON.stringify(["session", p.tenantId, p.sessionId]));
      if (ended !== undefined) return true;
    }
    const cutoff = this.#revoked.get(JSON.stringify(["user", p.tenantId, p.subject]));
    if (cutoff === undefined) return false;
    // No `iat`: it cannot show it came after the change.
    return p.issuedAt === undefined || p.issuedAt.getTime() < Math.floor(cutoff / 1000) * 1000;
  }

  /** Forgets cached exchanges of a user's keys (disabled, or another role). */
  forgetUser(tenantId: string, userId: string): void {
    for (const [hash, entry] of this.#keys) {
      const p = entry.caller.principal;
      if (p.tenantId === tenantId && p.subject === userId) this.#keys.delete(hash);
    }
  }

  async #apiKey(key: string): Promise<Caller> {
    if (key.length > 512) throw new UnauthenticatedError("invalid API key");
    const hash = createHash("sha256").update(key).digest("base64url");
    const now = this.#now();
    const hit = this.#keys.get(hash);
    if (hit !== undefined) {
      this.#keys.delete(hash);
      if (hit.expiresAt > now) {
        this.#keys.set(hash, hit);
        return hit.caller;
      }
    }
    let pending = this.#inflight.get(hash);
    if (pending === undefined) {
      pending = this.#exchange(key, hash).finally(() => this.#inflight.delete(hash));
      this.#inflight.set(hash, pending);
    }
    return pending;
  }

  async #exchange(key: string, hash: string): Promise<Caller> {
    const { auth, serviceToken } = this.#opts;
    if (auth === undefined || serviceToken === undefined) {
      throw new UnauthenticatedError("API keys are not accepted by this gateway");
    }
    let res: AuthenticateApiKeyResponse;
    try {
      const token = await serviceToken.token();
      res = await auth.authenticateApiKey(
        { apiKey: key },
        { headers: { authorization: `Bearer ${token}` }, timeoutMs: 5_000 },
      );
    } catch (err) {
      const code = err instanceof ConnectError ? err.code : Code.Unknown;
      if (code === Code.Unauthenticated || code === Code.InvalidArgument) {
        throw new UnauthenticatedError("invalid API key");
      }
      throw new UnavailableError("API key could not be checked; try again", { cause: err });
    }
    const principal = await this.#opts.verifier.verify(res.accessToken);
    const caller: Caller = {
      principal,
      token: res.accessToken,
      limitKey: `apikey:${res.apiKeyId}`,
      apiKey: { id: res.apiKeyId, scopes: [...res.scopes] },
    };
    const tokenExpiry =
      res.expireTime !== undefined
        ? timestampDate(res.expireTime).getTime()
        : principal.expiresAt.getTime();
    const expiresAt = Math.min(this.#now() + this.#cacheMs, tokenExpiry - 5_000);
    if (expiresAt > this.#now()) {
      if (this.#keys.size >= this.#maxKeys) {
        const oldest = this.#keys.keys().next();
        if (oldest.done !== true) this.#keys.delete(oldest.value);
      }
      this.#keys.set(hash, { caller, expiresAt });
    }
    return caller;
  }
}

export type ScopeKind = "public" | "read" | "write" | "admin";

/**
 * Whether an authenticated caller may go on, the same on every edge (Connect/gRPC, the OpenAI
 * routes, the WebSocket): the method's access rule, the API key's scope for that kind of
 * operation, then the caller's rate limit. A refusal over the limit is RESOURCE_EXHAUSTED saying
 * when to retry, also as `retry-after` (seconds) and `retry-after-ms`.
 */
export async function admit(
  caller: Caller,
  access: Access,
  kind: ScopeKind,
  limiter: RateLimiter,
): Promise<void> {
  checkAccess(access, caller.principal);
  if (caller.apiKey !== undefined && !scopeAllows(caller.apiKey.scopes, kind)) {
    throw new PermissionDeniedError(`this API key lacks the ${kind} scope`);
  }
  const decision = await limiter.take(caller.limitKey);
  if (!decision.ok) {
    const seconds = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
    const who = caller.apiKey !== undefined ? "this API key" : "this user";
    throw new ConnectError(
      `rate limit exceeded for ${who} on the gateway; retry in ${seconds} s`,
      Code.ResourceExhausted,
      new Headers({
        "retry-after": String(seconds),
        "retry-after-ms": String(Math.ceil(decision.retryAfterMs)),
      }),
    );
  }
}

/**
 * API key scopes against the method (auth contract): READ allows NO_SIDE_EFFECTS methods, WRITE
 * every USER method, ADMIN the ADMIN methods (the token's roles still decide admin rights). A
 * key with the ADMIN scope may also write.
 */
export function scopeAllows(scopes: readonly ApiKeyScope[], kind: ScopeKind): boolean {
  switch (kind) {
    case "public":
      return true;
    case "read":
      return scopes.length > 0;
    case "write":
      return scopes.includes(ApiKeyScope.WRITE) || scopes.includes(ApiKeyScope.ADMIN);
    case "admin":
      return scopes.includes(ApiKeyScope.ADMIN);
  }
}
