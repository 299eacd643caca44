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
import { BudgetScope, DefaultCache, type AuthService, type BudgetSchema } from "@ensemble/proto";
import type { BudgetDoc, TenantSettingsDoc } from "./auth.model.js";
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
  return {
    logCalls: doc?.logCalls ?? false,
    defaultCache: (doc?.defaultCache ?? DefaultCache.UNSPECIFIED) as DefaultCache,
    updateTime: ts(doc?.updateTime),
    updatedBy: doc?.updatedBy ?? "",
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
      const settings: TenantSettingsDoc = {
        logCalls: wanted.logCalls,
        defaultCache: wanted.defaultCache,
        updateTime: new Date(),
        updatedBy: p.subject,
      };
      const res = await models.tenants.updateOne({ id: p.tenantId }, { $set: { settings } });
      if (res.matchedCount === 0) throw new NotFoundError("tenant not found");
      loggerOf(ctx).info(
        { logCalls: settings.logCalls, defaultCache: DefaultCache[settings.defaultCache] },
        "tenant settings updated",
      );
      return { settings: settingsMessage(settings) };
    },
  };
}
