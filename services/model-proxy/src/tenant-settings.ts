// A tenant's settings (auth's GetTenantSettings, asked with the caller's own token): whether
// every chat is logged and which response cache calls use when they do not choose. Cached per
// tenant for BUDGET_CACHE_MS, like the budgets, so a warm call asks nothing. When auth cannot be
// asked, the last known settings are used, else the defaults (nothing logged, the deployment's
// cache default), and the failure is logged: settings are defaults, never a reason to fail a call.
import { TtlCache, type GrpcClient, type Logger } from "@ensemble/kit";
import { DefaultCache, type AuthService } from "@ensemble/proto";

export interface TenantDefaults {
  logCalls: boolean;
  cache: DefaultCache;
}

const DEFAULTS: TenantDefaults = { logCalls: false, cache: DefaultCache.UNSPECIFIED };
const AUTH_TIMEOUT_MS = 5_000;

export class TenantSettings {
  readonly #auth: Pick<GrpcClient<typeof AuthService>, "getTenantSettings">;
  readonly #cache: TtlCache<TenantDefaults>;
  readonly #known = new Map<string, TenantDefaults>();
  readonly #logger: Logger;

  constructor(
    auth: Pick<GrpcClient<typeof AuthService>, "getTenantSettings">,
    opts: { ttlMs: number; logger: Logger },
  ) {
    this.#auth = auth;
    this.#cache = new TtlCache({ ttlMs: opts.ttlMs });
    this.#logger = opts.logger;
  }

  /** The tenant's settings; never rejects. */
  async get(tenantId: string, token: string): Promise<TenantDefaults> {
    try {
      return await this.#cache.get(tenantId, async () => {
        const res = await this.#auth.getTenantSettings(
          {},
          { headers: { authorization: `Bearer ${token}` }, timeoutMs: AUTH_TIMEOUT_MS },
        );
        const settings = {
          logCalls: res.settings?.logCalls ?? false,
          cache: res.settings?.defaultCache ?? DefaultCache.UNSPECIFIED,
        };
        if (this.#known.size > 100_000) this.#known.clear();
        this.#known.set(tenantId, settings);
        return settings;
      });
    } catch (err) {
      this.#logger.warn(
        { err, tenantId },
        "tenant settings could not be read from auth; using the last known ones or the defaults",
      );
      return this.#known.get(tenantId) ?? DEFAULTS;
    }
  }
}
