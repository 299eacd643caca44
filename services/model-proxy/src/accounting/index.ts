// Accounting of model calls: budget checks before a call, the usage and cost ledger after it,
// usage events, and GetUsage.
//
// Nothing here puts a database or network round trip on a call's hot path:
// - checkBudget reads the month's spend from a local copy of the shared counters (NATS KV,
//   watched by every replica; see spend.ts) plus this replica's own not-yet-shared spend, and the
//   limits from a cache of auth's GetBudget and GetApiKey (see limits.ts). Only a cold or expired
//   limit costs one call to auth.
// - record() buffers; batches go to MongoDB, then to the spend counters, then to NATS as usage
//   events (see ledger-writer.ts). flush()/close() write everything before shutdown.
//
// Limits hold across replicas up to what is in flight: a replica sees another replica's calls
// once those are flushed (LEDGER_FLUSH_MS plus a KV round trip), and a call is admitted on its
// estimate, so concurrent calls near the limit can together overshoot it by about one flush
// interval's worth of spend. That is the price of no round trip per call; the ledger stays
// exact.
import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import {
  ensureStream,
  jetstream,
  jetstreamManager,
  PermissionDeniedError,
  ResourceExhaustedError,
  type GrpcClient,
  type Logger,
  type Metrics,
  type NatsConnection,
} from "@ensemble/kit";
import { BudgetAlertScope, type AuthService } from "@ensemble/proto";
import { BudgetAlerts } from "./alerts.js";
import { Counter, Gauge } from "prom-client";
import type mongoose from "mongoose";
import {
  cleanCost,
  formatUsd,
  monthLabel,
  monthOf,
  msUntilNextMonth,
  apiKeySpendKey,
  tenantSpendKey,
  userSpendKey,
} from "./keys.js";
import { LedgerWriter, type WriterMetrics } from "./ledger-writer.js";
import { ledgerModel } from "./ledger.model.js";
import { createLimits, type CallerLimits, type KeyRules } from "./limits.js";
import { openSpendStore } from "./spend.js";
import type { Accounting, Caller, LedgerEntry } from "./types.js";
import {
  isFerretDb,
  planUsageQuery,
  readsMetadata,
  rowsByPipeline,
  rowsInCode,
  toResponse,
} from "./usage-query.js";

export type { Accounting, Caller, LedgerEntry } from "./types.js";
export type { KeyRules } from "./limits.js";
export { usageSubject } from "./ledger-writer.js";
export { ledgerModel, type LedgerDoc } from "./ledger.model.js";

/** The JetStream stream of usage events. */
export const USAGE_STREAM = "USAGE";
export const USAGE_SUBJECTS = "ensemble.usage.>";
const USAGE_MAX_AGE_MS = 30 * 24 * 3_600_000;
const DEFAULT_FLUSH_GIVE_UP_MS = 30_000;

export interface AccountingDeps {
  mongo: mongoose.Connection;
  nc: NatsConnection;
  auth: GrpcClient<typeof AuthService>;
  logger: Logger;
  metrics?: Metrics;
  spendBucket: string;
  budgetCacheMs: number;
  flushMs: number;
  batchSize: number;
  now?: () => number;
  /** Stream of usage events (default USAGE, subjects ensemble.usage.>). */
  usageStream?: string;
  /** How long flush()/close() keep retrying a failing store before rejecting (default 30 s). */
  flushGiveUpMs?: number;
  /** Shares of a monthly limit (percent) that raise a budget alert; default 80 and 100. */
  alertPercents?: readonly number[];
}

export async function openAccounting(deps: AccountingDeps): Promise<Accounting> {
  const now = deps.now ?? Date.now;
  const logger = deps.logger.child({ component: "accounting" });
  const model = ledgerModel(deps.mongo);
  await model.createIndexes();
  const groupInCode = await isFerretDb(deps.mongo);

  await ensureStream(await jetstreamManager(deps.nc), {
    name: deps.usageStream ?? USAGE_STREAM,
    subjects: [USAGE_SUBJECTS],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_age: USAGE_MAX_AGE_MS * 1_000_000,
    duplicate_window: 2 * 60_000 * 1_000_000,
  });

  const spend = await openSpendStore(deps.nc, deps.spendBucket, { logger, now });
  const limits = createLimits({ auth: deps.auth, cacheMs: deps.budgetCacheMs, logger, now });
  const metrics = deps.metrics !== undefined ? accountingMetrics(deps.metrics) : undefined;
  const writer = new LedgerWriter({
    model,
    spend,
    js: jetstream(deps.nc),
    logger,
    metrics,
    flushMs: deps.flushMs,
    batchSize: deps.batchSize,
  });
  const giveUpMs = deps.flushGiveUpMs ?? DEFAULT_FLUSH_GIVE_UP_MS;
  const alerts = new BudgetAlerts({
    spend,
    js: jetstream(deps.nc),
    percents: deps.alertPercents ?? [80, 100],
    logger,
  });

  function refuseOver(
    scope: "tenant" | "user" | "key",
    whose: string,
    limit: number | undefined,
    spent: number,
    estimate: number,
    at: number,
  ): void {
    if (limit === undefined) return;
    // At or over the limit refuses any call (so a limit of 0 blocks even unestimated calls).
    if (spent < limit && spent + estimate <= limit) return;
    metrics?.refusals.inc({ scope });
    throw new ResourceExhaustedError(
      `monthly budget exceeded: ${whose} limit for ${monthLabel(monthOf(at))} is ${formatUsd(limit)} ` +
        `and ${formatUsd(spent)} is already spent` +
        (estimate > 0 ? ` (this call is estimated at ${formatUsd(estimate)})` : ""),
      { retryAfterMs: msUntilNextMonth(at) },
    );
  }

  async function limitsOf(caller: Caller): Promise<CallerLimits> {
    const { tenantId, userId, apiKeyId } = caller;
    const cached = limits.cached(tenantId, userId, apiKeyId);
    const got = cached ?? (await limits.get(tenantId, userId, apiKeyId, caller.token));
    const key = got.key;
    // A token outlives the key it was exchanged for by up to its lifetime, and a run started
    // with a key outlives it by much more: the key's own state decides.
    if (key?.revoked === true) {
      throw new PermissionDeniedError(`API key "${key.name}" has been revoked`);
    }
    if (key?.expiresAt !== undefined && key.expiresAt <= now()) {
      throw new PermissionDeniedError(`API key "${key.name}" has expired`);
    }
    return got;
  }

  return {
    forgetLimits(tenantId, apiKeyId) {
      limits.forget(tenantId, apiKeyId);
    },

    async checkBudget(caller: Caller, estimatedCostUsd: number): Promise<void> {
      const { tenant, user, key } = await limitsOf(caller);
      if (tenant === undefined && user === undefined && key?.monthlyLimitUsd === undefined) return;
      const at = now();
      const month = monthOf(at);
      const estimate = cleanCost(estimatedCostUsd);
      /** The month's spend of a counter, after raising any budget alert it has reached. */
      const spent = (
        counter: string,
        scope: BudgetAlertScope,
        limit: number | undefined,
        who: { userId?: string; apiKeyId?: string; apiKeyName?: string } = {},
      ) => {
        const used = spend.spent(counter);
        if (limit !== undefined) {
          alerts.check({
            scope,
            tenantId: caller.tenantId,
            userId: who.userId ?? "",
            apiKeyId: who.apiKeyId ?? "",
            apiKeyName: who.apiKeyName ?? "",
            counter,
            month: monthLabel(month),
            limit,
            spent: used,
          });
        }
        return used;
      };
      const tenantCounter = tenantSpendKey(month, caller.tenantId);
      const tenantUsed = spent(tenantCounter, BudgetAlertScope.TENANT, tenant);
      refuseOver("tenant", "the tenant's", tenant, tenantUsed, estimate, at);
      if (caller.userId !== "") {
        const counter = userSpendKey(month, caller.tenantId, caller.userId);
        const used = spent(counter, BudgetAlertScope.USER, user, { userId: caller.userId });
        refuseOver("user", "your", user, used, estimate, at);
      }
      if (key !== undefined) {
        const counter = apiKeySpendKey(month, caller.tenantId, caller.apiKeyId);
        const used = spent(counter, BudgetAlertScope.API_KEY, key.monthlyLimitUsd, {
          userId: caller.userId,
          apiKeyId: caller.apiKeyId,
          apiKeyName: key.name,
        });
        refuseOver("key", `API key "${key.name}"'s`, key.monthlyLimitUsd, used, estimate, at);
      }
    },

    async apiKey(caller: Caller): Promise<KeyRules | undefined> {
      if (caller.apiKeyId === "") return undefined;
      return (await limitsOf(caller)).key;
    },

    record(entry: LedgerEntry): void {
      writer.record(entry);
    },

    async getUsage(principal, req) {
      const q = planUsageQuery(principal, req);
      const rows =
        groupInCode || readsMetadata(q)
          ? await rowsInCode(model, q)
          : await rowsByPipeline(model, q);
      return toResponse(q.fields, rows);
    },

    flush: () => writer.flush(giveUpMs),

    async close() {
      try {
        await writer.flush(giveUpMs);
      } catch (err) {
        // Last resort: the entries go to the log, where an operator can replay them.
        const left = writer.unwritten();
        logger.error(
          {
            err,
            unwrittenLedgerEntries: left.entries,
            unpublishedEvents: left.unpublishedEvents,
            unappliedSpendUsd: left.unappliedSpendUsd,
          },
          "ledger could not be written before shutdown; the entries are in this log line",
        );
        throw err;
      } finally {
        writer.stop();
        spend.close();
      }
    },
  };
}

function accountingMetrics(m: Metrics): WriterMetrics & { refusals: Counter<"scope"> } {
  const registers = [m.registry];
  return {
    tokens: new Counter({
      name: "ensemble_modelproxy_usage_tokens_total",
      help: "Tokens of recorded model calls, by model, provider and direction (input/output).",
      labelNames: ["model", "provider", "direction"] as const,
      registers,
    }),
    cost: new Counter({
      name: "ensemble_modelproxy_usage_cost_usd_total",
      help: "Cost in USD of recorded model calls, by model and provider.",
      labelNames: ["model", "provider"] as const,
      registers,
    }),
    entries: new Counter({
      name: "ensemble_modelproxy_ledger_entries_total",
      help: "Ledger entries by result: inserted, or duplicate (recorded before, not billed).",
      labelNames: ["result"] as const,
      registers,
    }),
    failures: new Counter({
      name: "ensemble_modelproxy_ledger_flush_failures_total",
      help: "Failed ledger flush stages (insert, spend, events); every one is retried.",
      labelNames: ["stage"] as const,
      registers,
    }),
    backlog: new Gauge({
      name: "ensemble_modelproxy_ledger_backlog",
      help: "Ledger entries, spend counters and usage events waiting to be written.",
      registers,
    }),
    refusals: new Counter({
      name: "ensemble_modelproxy_budget_refusals_total",
      help: "Calls refused because a monthly budget was exhausted, by scope (tenant/user).",
      labelNames: ["scope"] as const,
      registers,
    }),
  };
}
