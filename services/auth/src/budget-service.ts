// Monthly spend limits per tenant and per user, and the tenant's settings. auth only stores them;
// model-proxy applies them.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  InvalidArgumentError,
  loggerOf,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
} from "@ensemble/kit";
import {
  BudgetScope,
  DefaultCache,
  type AuthService,
  type BudgetSchema,
  type Guardrails,
} from "@ensemble/proto";
import type { BudgetDoc, GuardrailsDoc, TenantSettingsDoc } from "./auth.model.js";
import { ADMIN, ts, type AuthCore } from "./core.js";

export function budgetMessage(
  scope: BudgetScope,
  tenantId: string,
  userId: string,
  doc: BudgetDoc | undefined,
): MessageInitShape<typeof BudgetSchema> {
  return {
    scope,
    tenantId,
    userId,
    ...(doc?.monthlyLimitUsd !== undefined && doc.monthlyLimitUsd !== null
      ? { monthlyLimitUsd: doc.monthlyLimitUsd }
      : {}),
    updateTime: ts(doc?.updateTime),
    updatedBy: doc?.updatedBy ?? "",
  };
}

function scopeName(scope: BudgetScope): "tenant" | "user" {
  if (scope === BudgetScope.TENANT) return "tenant";
  if (scope === BudgetScope.USER) return "user";
  throw new InvalidArgumentError("scope is required", { field: "scope" });
}

type BudgetHandlers = Pick<
  ServiceImpl<typeof AuthService>,
  "getBudget" | "setBudget" | "getTenantSettings" | "updateTenantSettings"
>;

function settingsMessage(doc: TenantSettingsDoc | undefined) {
  const g = doc?.guardrails;
  return {
    logCalls: doc?.logCalls ?? false,
    defaultCache: (doc?.defaultCache ?? DefaultCache.UNSPECIFIED) as DefaultCache,
    semanticCacheMinSimilarity: doc?.semanticCacheMinSimilarity ?? 0,
    guardrails: {
      redactPii: g?.redactPii ?? [],
      blockPii: g?.blockPii ?? [],
      blockedTerms: g?.blockedTerms ?? [],
      blockedOutputTerms: g?.blockedOutputTerms ?? [],
    },
    updateTime: ts(doc?.updateTime),
    updatedBy: doc?.updatedBy ?? "",
  };
}

/** UpdateTenantSettings' update_mask paths. */
const SETTINGS_PATHS = new Set([
  "log_calls",
  "default_cache",
  "guardrails",
  "semantic_cache_min_similarity",
]);

/**
 * Guardrails as stored: terms trimmed with inner whitespace collapsed, duplicates (any case)
 * dropped; a term of only spaces is refused (it would match nothing, or everything).
 */
function guardrailsDoc(g: Guardrails | undefined): GuardrailsDoc {
  const terms = (list: readonly string[], field: string): string[] => {
    const seen = new Set<string>();
    const out: string[] = [];
    list.forEach((raw, i) => {
      const term = raw.trim().replace(/\s+/g, " ");
      if (term === "") {
        throw new InvalidArgumentError(`${field}[${i}]: a term must have a visible character`, {
          field: `settings.guardrails.${field}[${i}]`,
        });
      }
      const folded = term.toLowerCase();
      if (!seen.has(folded)) {
        seen.add(folded);
        out.push(term);
      }
    });
    return out;
  };
  return {
    redactPii: [...(g?.redactPii ?? [])],
    blockPii: [...(g?.blockPii ?? [])],
    blockedTerms: terms(g?.blockedTerms ?? [], "blocked_terms"),
    blockedOutputTerms: terms(g?.blockedOutputTerms ?? [], "blocked_output_terms"),
  };
}

export function budgetHandlers(core: AuthCore): BudgetHandlers {
  const { models } = core;

  async function requireUserInTenant(tenantId: string, userId: string): Promise<void> {
    if ((await models.users.exists({ id: userId, tenantId })) === null) {
      throw new NotFoundError("user not found");
    }
  }

  return {
    async getBudget(req, ctx) {
      const p = principalOf(ctx);
      const scope = scopeName(req.scope);
      let userId = "";
      if (scope === "user") {
        userId = req.userId === "" ? p.subject : req.userId;
        if (userId !== p.subject) {
          if (!p.roles.includes(ADMIN)) {
            throw new PermissionDeniedError("another user's budget needs the admin role");
          }
          await requireUserInTenant(p.tenantId, userId);
        }
      }
      const doc = await models.budgets.findOne({ tenantId: p.tenantId, scope, userId }).lean();
      return { budget: budgetMessage(req.scope, p.tenantId, userId, doc ?? undefined) };
    },

    async setBudget(req, ctx) {
      const p = principalOf(ctx);
      const scope = scopeName(req.scope);
      const userId = scope === "user" ? req.userId : "";
      if (scope === "user") await requireUserInTenant(p.tenantId, userId);
      const now = new Date();
      const update =
        req.monthlyLimitUsd === undefined
          ? {
              $set: { updateTime: now, updatedBy: p.subject },
              $unset: { monthlyLimitUsd: 1 },
            }
          : {
              $set: { updateTime: now, updatedBy: p.subject, monthlyLimitUsd: req.monthlyLimitUsd },
            };
      const doc = await models.budgets
        .findOneAndUpdate({ tenantId: p.tenantId, scope, userId }, update, {
          upsert: true,
          new: true,
        })
        .lean();
      loggerOf(ctx).info(
        { scope, budgetUserId: userId, monthlyLimitUsd: req.monthlyLimitUsd ?? null },
        "budget set",
      );
      await core.notices.publish("tenant", p.tenantId, userId);
      return { budget: budgetMessage(req.scope, p.tenantId, userId, doc ?? undefined) };
    },

    async getTenantSettings(_req, ctx) {
      const p = principalOf(ctx);
      const tenant = await models.tenants.findOne({ id: p.tenantId }).lean();
      return { settings: settingsMessage(tenant?.settings) };
    },

    async updateTenantSettings(req, ctx) {
      const p = principalOf(ctx);
      const wanted = req.settings!; // protovalidate: required
      const paths = new Set(req.updateMask?.paths ?? []);
      for (const path of paths) {
        if (!SETTINGS_PATHS.has(path)) {
          throw new InvalidArgumentError(
            `update_mask: unknown path "${path}"; expected ${[...SETTINGS_PATHS].join(", ")}`,
            { field: "update_mask" },
          );
        }
      }
      const changes = (path: string) => paths.size === 0 || paths.has(path);
      const threshold = wanted.semanticCacheMinSimilarity;
      if (changes("semantic_cache_min_similarity") && threshold !== 0 && threshold < 0.5) {
        throw new InvalidArgumentError(
          `settings.semantic_cache_min_similarity: ${threshold} would answer questions with other meanings from the cache; use 0.5 to 1, or 0 for the service's default`,
          { field: "settings.semantic_cache_min_similarity" },
        );
      }
      const tenant = await models.tenants.findOne({ id: p.tenantId }).lean();
      if (tenant === null) throw new NotFoundError("tenant not found");
      const current = settingsMessage(tenant.settings);
      const settings: TenantSettingsDoc = {
        logCalls: changes("log_calls") ? wanted.logCalls : current.logCalls,
        defaultCache: changes("default_cache") ? wanted.defaultCache : current.defaultCache,
        semanticCacheMinSimilarity: changes("semantic_cache_min_similarity")
          ? threshold
          : current.semanticCacheMinSimilarity,
        guardrails: changes("guardrails")
          ? guardrailsDoc(wanted.guardrails)
          : (tenant.settings?.guardrails ?? guardrailsDoc(undefined)),
        updateTime: new Date(),
        updatedBy: p.subject,
      };
      const res = await models.tenants.updateOne({ id: p.tenantId }, { $set: { settings } });
      if (res.matchedCount === 0) throw new NotFoundError("tenant not found");
      const g = settings.guardrails!;
      loggerOf(ctx).info(
        {
          logCalls: settings.logCalls,
          defaultCache: DefaultCache[settings.defaultCache],
          semanticCacheMinSimilarity: settings.semanticCacheMinSimilarity,
          // Counts only: the terms are the tenant's business.
          guardrails: {
            redactPii: g.redactPii.length,
            blockPii: g.blockPii.length,
            blockedTerms: g.blockedTerms.length,
            blockedOutputTerms: g.blockedOutputTerms.length,
          },
        },
        "tenant settings updated",
      );
      await core.notices.publish("tenant", p.tenantId);
      return { settings: settingsMessage(settings) };
    },
  };
}
