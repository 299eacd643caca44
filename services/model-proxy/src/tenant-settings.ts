// A tenant's settings (auth's GetTenantSettings, asked with the caller's own token): whether
// every chat is logged, which response cache calls use when they do not choose (and the semantic
// cache's threshold), and the guardrails (compiled once per read). Cached per tenant for BUDGET_CACHE_MS, like the budgets,
// so a warm call asks nothing. When auth cannot be asked, the last known settings are used and
// the failure is logged. With none known the call is refused (UNAVAILABLE), as the budget check
// refuses it: the guardrails are a tenant's safety rule, so calls never run without them by
// accident.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  PermissionDeniedError,
  TtlCache,
  UnavailableError,
  type GrpcClient,
  type Logger,
} from "@ensemble/kit";
import { DefaultCache, type AuthService } from "@ensemble/proto";
import { compileGuardrails, type CompiledGuardrails } from "./guardrails.js";

export interface TenantDefaults {
  logCalls: boolean;
  cache: DefaultCache;
  guardrails: CompiledGuardrails;
  /** The semantic cache's threshold for the tenant; undefined = the service's. */
  semanticMinSimilarity?: number;
}

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

  /** Drops the tenant's cached settings (after auth's change notice); the next call asks auth. */
  forget(tenantId: string): void {
    this.#cache.forget(tenantId);
  }

  /** The tenant's settings; UNAVAILABLE when auth cannot be asked and none are known. */
  async get(tenantId: string, token: string): Promise<TenantDefaults> {
    try {
      return await this.#cache.get(tenantId, async () => {
        const res = await this.#auth.getTenantSettings(
          {},
          { headers: { authorization: `Bearer ${token}` }, timeoutMs: AUTH_TIMEOUT_MS },
        );
        const threshold = res.settings?.semanticCacheMinSimilarity ?? 0;
        const settings: TenantDefaults = {
          logCalls: res.settings?.logCalls ?? false,
          cache: res.settings?.defaultCache ?? DefaultCache.UNSPECIFIED,
          guardrails: compileGuardrails(res.settings?.guardrails),
          ...(threshold > 0 ? { semanticMinSimilarity: threshold } : {}),
        };
        if (this.#known.size > 100_000) this.#known.clear();
        this.#known.set(tenantId, settings);
        return settings;
      });
    } catch (err) {
      const code = err instanceof ConnectError ? err.code : Code.Unknown;
      if (code === Code.PermissionDenied || code === Code.Unauthenticated) {
        throw new PermissionDeniedError(
          "the caller's tenant settings cannot be read with its credentials",
          { cause: err },
        );
      }
      const known = this.#known.get(tenantId);
      if (known === undefined) {
        throw new UnavailableError(
          "the tenant's settings (its guardrails) are unavailable (auth did not answer); retry",
          { cause: err },
        );
      }
      this.#logger.warn(
        { err, tenantId },
        "tenant settings could not be read from auth; using the last known ones",
      );
      return known;
    }
  }
}
