// What may a caller spend and call: the tenant's and the user's monthly limits (auth's GetBudget)
// and, for a call made with an API key, that key's limits (auth's GetApiKey: allowed models, a
// monthly limit, whether it was revoked). Cached per tenant, per (tenant, user) and per (tenant,
// key) for BUDGET_CACHE_MS. A miss (or an expired entry) is the only round trip of a check;
// concurrent misses of one entry share one call. When auth cannot be reached and an older value
// is known, that value is used (and logged): it was valid moments ago, and refusing every call of
// a tenant because auth blinked would be worse than a change applying late.
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

/** An API key's limits, as auth last described them. */
export interface KeyRules {
  id: string;
  name: string;
  /** Catalog ids or aliases the key may call; empty = every model. */
  models: string[];
  /** USD per month; undefined = no limit of its own. */
  monthlyLimitUsd: number | undefined;
  /** Per-minute limits of its own; undefined = none. */
  requestsPerMinute: number | undefined;
  tokensPerMinute: number | undefined;
  revoked: boolean;
  /** Epoch ms; undefined = never. */
  expiresAt: number | undefined;
}

export interface CallerLimits {
  /** USD per month; undefined = no limit. */
  tenant: number | undefined;
  user: number | undefined;
  /** Set for a call made with an API key. */
  key: KeyRules | undefined;
}

export interface Limits {
  /** Drops the tenant's and its users' budgets, or (with `apiKeyId`) that key's rules. */
  forget(tenantId: string, apiKeyId?: string): void;
  /** The limits when all are cached and fresh (the warm path: no promise, no I/O), else undefined. */
  cached(tenantId: string, userId: string, apiKeyId: string): CallerLimits | undefined;
  get(tenantId: string, userId: string, apiKeyId: string, token: string): Promise<CallerLimits>;
}

interface Entry {
  value: unknown;
  fetchedAt: number;
}

export function createLimits(opts: {
  auth: GrpcClient<typeof AuthService>;
  cacheMs: number;
  logger: Logger;
  now: () => number;
}): Limits {
  const entries = new Map<string, Entry>();
  const inflight = new Map<string, Promise<Entry>>();
  // Bumped by forget(): a fetch that began before it may have read the old value, so what it
  // brings back is used by its callers but not kept.
  let epoch = 0;
  const call = (token: string) => ({
    headers: { authorization: `Bearer ${token}` },
    timeoutMs: AUTH_TIMEOUT_MS,
  });

  async function budget(scope: BudgetScope, userId: string, token: string): Promise<unknown> {
    const res = await opts.auth.getBudget({ scope, userId }, call(token));
    return res.budget?.monthlyLimitUsd;
  }

  async function keyRules(id: string, token: string): Promise<KeyRules> {
    const key = (await opts.auth.getApiKey({ id }, call(token))).apiKey;
    if (key === undefined) throw new ConnectError("no key in the answer", Code.NotFound);
    const expire = key.expireTime;
    return {
      id: key.id,
      name: key.name,
      models: [...(key.limits?.models ?? [])],
      monthlyLimitUsd: key.limits?.monthlyLimitUsd,
      requestsPerMinute: key.limits?.requestsPerMinute,
      tokensPerMinute: key.limits?.tokensPerMinute,
      revoked: key.revokeTime !== undefined,
      expiresAt:
        expire === undefined ? undefined : Number(expire.seconds) * 1000 + expire.nanos / 1e6,
    };
  }

  function fresh(key: string): Entry | undefined {
    const e = entries.get(key);
    return e !== undefined && opts.now() - e.fetchedAt < opts.cacheMs ? e : undefined;
  }

  async function lookup(key: string, what: string, fetch: () => Promise<unknown>) {
    const cached = entries.get(key);
    if (cached !== undefined && opts.now() - cached.fetchedAt < opts.cacheMs) return cached.value;
    let pending = inflight.get(key);
    if (pending === undefined) {
      const began = epoch;
      const current: Promise<Entry> = fetch()
        .then((value) => ({ value, fetchedAt: began === epoch ? opts.now() : -Infinity }))
        .finally(() => {
          if (inflight.get(key) === current) inflight.delete(key);
        });
      pending = current;
      inflight.set(key, pending);
    }
    try {
      const entry = await pending;
      entries.delete(key); // re-insert: Map order is then oldest-fetched first, for eviction
      entries.set(key, entry);
      if (entries.size > MAX_ENTRIES) {
        const oldest = entries.keys().next();
        if (oldest.done !== true) entries.delete(oldest.value);
      }
      return entry.value;
    } catch (err) {
      const code = err instanceof ConnectError ? err.code : Code.Unknown;
      if (code === Code.PermissionDenied || code === Code.Unauthenticated) {
        throw new PermissionDeniedError(
          `the caller's ${what} cannot be read with its credentials`,
          {
            cause: err,
          },
        );
      }
      if (code === Code.NotFound) {
        throw new PermissionDeniedError(`the caller's ${what} does not exist`, { cause: err });
      }
      if (cached !== undefined) {
        opts.logger.warn(
          { err, limit: what },
          "a limit could not be refreshed from auth; using the last known one",
        );
        return cached.value;
      }
      throw new UnavailableError(
        `the caller's ${what} is unavailable (auth did not answer); retry`,
        {
          cause: err,
        },
      );
    }
  }

  const tenantKey = (tenantId: string) => `t\u0000${tenantId}`;
  const userKey = (tenantId: string, userId: string) => `u\u0000${tenantId}\u0000${userId}`;
  const apiKeyKey = (tenantId: string, id: string) => `k\u0000${tenantId}\u0000${id}`;

  return {
    forget(tenantId, apiKeyId) {
      epoch += 1;
      const drop = (key: string) => {
        entries.delete(key);
        inflight.delete(key);
      };
      if (apiKeyId !== undefined && apiKeyId !== "") {
        drop(apiKeyKey(tenantId, apiKeyId));
        return;
      }
      const userPrefix = userKey(tenantId, "");
      drop(tenantKey(tenantId));
      for (const key of [...entries.keys(), ...inflight.keys()])
        if (key.startsWith(userPrefix)) drop(key);
    },

    cached(tenantId, userId, apiKeyId) {
      const t = fresh(tenantKey(tenantId));
      if (t === undefined) return undefined;
      let user: Entry | undefined;
      if (userId !== "") {
        user = fresh(userKey(tenantId, userId));
        if (user === undefined) return undefined;
      }
      let key: Entry | undefined;
      if (apiKeyId !== "") {
        key = fresh(apiKeyKey(tenantId, apiKeyId));
        if (key === undefined) return undefined;
      }
      return {
        tenant: t.value as number | undefined,
        user: user?.value as number | undefined,
        key: key?.value as KeyRules | undefined,
      };
    },

    async get(tenantId, userId, apiKeyId, token) {
      const [tenant, user, key] = await Promise.all([
        lookup(tenantKey(tenantId), "tenant budget", () => budget(BudgetScope.TENANT, "", token)),
        userId === ""
          ? undefined
          : lookup(userKey(tenantId, userId), "budget", () =>
              budget(BudgetScope.USER, userId, token),
            ),
        apiKeyId === ""
          ? undefined
          : lookup(apiKeyKey(tenantId, apiKeyId), "API key", () => keyRules(apiKeyId, token)),
      ]);
      return {
        tenant: tenant as number | undefined,
        user: user as number | undefined,
        key: key as KeyRules | undefined,
      };
    },
  };
}
