// Tokens steps run with: a short-lived service token acting for the run's user, issued by auth's
// IssueServiceToken with the engine's bootstrap credential and cached per (tenant, user, API key)
// until a minute before it expires. So a run keeps working after the user's own access token has
// expired, and model-proxy still bills the user (the token's sub/tid are the user's). Work started
// with an API key gets a token acting as that key (its `akid`), so model-proxy attributes the
// usage to the key and applies the key's limits, as it does to the key's direct calls.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { CallOptions } from "@connectrpc/connect";
import type { GrpcClient } from "@ensemble/kit";
import type { AuthService } from "@ensemble/proto";

export interface TokenSource {
  /**
   * A bearer token acting for the user and, unless `apiKeyId` is "", as that API key of theirs
   * (the key the run, session reply or schedule was started with).
   */
  forUser(tenantId: string, userId: string, apiKeyId: string, reason: string): Promise<string>;
}

const RENEW_BEFORE_MS = 60_000;
const TTL_SECONDS = 15 * 60;

const cacheKey = (tenantId: string, userId: string, apiKeyId: string) =>
  `${tenantId}\u0000${userId}\u0000${apiKeyId}`;

export class ServiceTokens implements TokenSource {
  readonly #auth: Pick<GrpcClient<typeof AuthService>, "issueServiceToken">;
  readonly #bootstrap: string;
  readonly #now: () => number;
  readonly #cache = new Map<string, { token: string; expiresAt: number }>();
  readonly #pending = new Map<string, Promise<string>>();

  constructor(
    auth: Pick<GrpcClient<typeof AuthService>, "issueServiceToken">,
    bootstrap: string,
    now: () => number = Date.now,
  ) {
    this.#auth = auth;
    this.#bootstrap = bootstrap;
    this.#now = now;
  }

  async forUser(
    tenantId: string,
    userId: string,
    apiKeyId: string,
    reason: string,
  ): Promise<string> {
    // The key is part of the identity: a token acting as one key must never serve another key's
    // work (nor the user's own, unlimited work).
    const key = cacheKey(tenantId, userId, apiKeyId);
    const hit = this.#cache.get(key);
    if (hit !== undefined && hit.expiresAt - RENEW_BEFORE_MS > this.#now()) return hit.token;
    let pending = this.#pending.get(key);
    if (pending === undefined) {
      pending = this.#issue(key, { tenantId, userId, apiKeyId, reason }).finally(() =>
        this.#pending.delete(key),
      );
      this.#pending.set(key, pending);
    }
    try {
      return await pending;
    } catch (err) {
      // auth briefly unreachable: a token that is still valid keeps working.
      if (hit !== undefined && hit.expiresAt - 5_000 > this.#now()) return hit.token;
      throw err;
    }
  }

  async #issue(
    key: string,
    who: { tenantId: string; userId: string; apiKeyId: string; reason: string },
  ): Promise<string> {
    const options: CallOptions = {
      headers: { authorization: `Bearer ${this.#bootstrap}` },
      timeoutMs: 5_000,
    };
    const res = await this.#auth.issueServiceToken(
      { ...who, ttl: { seconds: BigInt(TTL_SECONDS) } },
      options,
    );
    const expiresAt =
      res.expireTime !== undefined
        ? timestampDate(res.expireTime).getTime()
        : this.#now() + TTL_SECONDS * 1000;
    this.#cache.set(key, { token: res.accessToken, expiresAt });
    if (this.#cache.size > 10_000) {
      for (const [k, v] of this.#cache) if (v.expiresAt <= this.#now()) this.#cache.delete(k);
    }
    return res.accessToken;
  }
}

/**
 * Development fallback without SERVICE_TOKEN: the token of the call that started the run, kept
 * in memory of the replica that received it (a run taken over by another replica, or outliving
 * the token, fails with UNAUTHENTICATED).
 */
export class CallerTokens implements TokenSource {
  readonly #byUser = new Map<string, string>();

  remember(tenantId: string, userId: string, apiKeyId: string, token: string): void {
    this.#byUser.set(cacheKey(tenantId, userId, apiKeyId), token);
  }

  forUser(tenantId: string, userId: string, apiKeyId: string): Promise<string> {
    const token = this.#byUser.get(cacheKey(tenantId, userId, apiKeyId));
    if (token === undefined) {
      return Promise.reject(
        new Error("no service credential (SERVICE_TOKEN) and no caller token for this run"),
      );
    }
    return Promise.resolve(token);
  }
}
