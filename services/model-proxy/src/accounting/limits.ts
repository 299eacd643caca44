// Monthly limits read from auth (GetBudget), cached per tenant and per (tenant, user) for
// BUDGET_CACHE_MS. A miss (or an expired entry) is the only round trip of a budget check;
// concurrent misses of one key share one call. When auth cannot be reached and an older value is
// known, that value is used (and logged): the limit was valid moments ago, and refusing every
// call of a tenant because auth blinked would be worse than a budget change applying late.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  PermissionDeniedError,
  UnavailableError,
  type GrpcClient,
  type Logger,
} from "@ensemble/kit";
import { BudgetScope, type AuthService } from "@ensemble/proto";

const MAX_ENTRIES = 100_000;
const AUTH_TIMEOUT_MS = 5_000;

interface Entry {
  /** USD per month; undefined = no limit. */
  limit: number | undefined;
  fetchedAt: number;
}

export interface Limits {
  /** The limits when both are cached and fresh (the warm path: no promise, no I/O), else undefined. */
  cached(
    tenantId: string,
    userId: string,
  ): { tenant: number | undefined; user: number | undefined } | undefined;
  /** The tenant's and the user's monthly limits (undefined = none). */
  get(
    tenantId: string,
    userId: string,
    token: string,
  ): Promise<{ tenant: number | undefined; user: number | undefined }>;
}

export function createLimits(opts: {
  auth: GrpcClient<typeof AuthService>;
  cacheMs: number;
  logger: Logger;
  now: () => number;
}): Limits {
  const entries = new Map<string, Entry>();
  const inflight = new Map<string, Promise<Entry>>();

  async function fetchLimit(scope: BudgetScope, userId: string, token: string): Promise<Entry> {
    const res = await opts.auth.getBudget(
      { scope, userId },
      { headers: { authorization: `Bearer ${token}` }, timeoutMs: AUTH_TIMEOUT_MS },
    );
    return { limit: res.budget?.monthlyLimitUsd, fetchedAt: opts.now() };
  }

  async function lookup(
    key: string,
    scope: BudgetScope,
    userId: string,
    token: string,
  ): Promise<number | undefined> {
    const cached = entries.get(key);
    if (cached !== undefined && opts.now() - cached.fetchedAt < opts.cacheMs) return cached.limit;
    let call = inflight.get(key);
    if (call === undefined) {
      call = fetchLimit(scope, userId, token).finally(() => inflight.delete(key));
      inflight.set(key, call);
    }
    try {
      const fresh = await call;
      entries.delete(key); // re-insert: Map order is then oldest-fetched first, for eviction
      entries.set(key, fresh);
      if (entries.size > MAX_ENTRIES) {
        const oldest = entries.keys().next();
        if (oldest.done !== true) entries.delete(oldest.value);
      }
      return fresh.limit;
    } catch (err) {
      const code = err instanceof ConnectError ? err.code : Code.Unknown;
      if (code === Code.PermissionDenied || code === Code.Unauthenticated) {
        throw new PermissionDeniedError("the caller's budget cannot be read with its credentials", {
          cause: err,
        });
      }
      if (cached !== undefined) {
        opts.logger.warn(
          { err, budgetScope: scope === BudgetScope.TENANT ? "tenant" : "user" },
          "budget limit could not be refreshed from auth; using the last known limit",
        );
        return cached.limit;
      }
      throw new UnavailableError("budget limits are unavailable (auth did not answer); retry", {
        cause: err,
      });
    }
  }

  const tenantKey = (tenantId: string) => `t\u0000${tenantId}`;
  const userKey = (tenantId: string, userId: string) => `u\u0000${tenantId}\u0000${userId}`;

  return {
    cached(tenantId, userId) {
      const now = opts.now();
      const t = entries.get(tenantKey(tenantId));
      if (t === undefined || now - t.fetchedAt >= opts.cacheMs) return undefined;
      if (userId === "") return { tenant: t.limit, user: undefined };
      const u = entries.get(userKey(tenantId, userId));
      if (u === undefined || now - u.fetchedAt >= opts.cacheMs) return undefined;
      return { tenant: t.limit, user: u.limit };
    },

    async get(tenantId, userId, token) {
      const [tenant, user] = await Promise.all([
        lookup(tenantKey(tenantId), BudgetScope.TENANT, "", token),
        userId === ""
          ? Promise.resolve(undefined)
          : lookup(userKey(tenantId, userId), BudgetScope.USER, userId, token),
      ]);
      return { tenant, user };
    },
  };
}
