// Budget alerts: when a budget check sees a month's spend reach a share of a monthly limit
// (BUDGET_ALERT_PERCENTS, 80 and 100 by default) of the tenant, a user or an API key, one
// BudgetAlert is published on `ensemble.usage.<tenant>.budget` (JetStream USAGE), which the
// workflow engine delivers to the tenant's webhooks ("budget.threshold").
//
// Once per limit, threshold and month across replicas: an alert is published with the JetStream
// message id `alert.<spend counter>.<percent>` (replicas raising it within the stream's two-minute
// duplicate window publish it once), then that key is put in the spend bucket as a marker, which
// every replica's watch sees, so none raises it again later in the month. Publishing first means
// a failure leaves nothing marked and the next call's check tries again (a marker put failing
// after the publish could repeat the alert later: rare, and its event id is the same). Only
// the highest threshold reached is raised: spend going from 70 % to 100 % in one call raises the
// 100 % alert, not both. Never on a call's path: the check only starts the work.
import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { publishEvent, type JetStreamClient, type Logger } from "@ensemble/kit";
import { BudgetAlertSchema, BudgetAlertScope } from "@ensemble/proto";
import { usageSubject } from "./ledger-writer.js";
import type { SpendStore } from "./spend.js";

export interface BudgetSpend {
  scope: BudgetAlertScope;
  tenantId: string;
  userId: string;
  apiKeyId: string;
  apiKeyName: string;
  /** The spend counter's KV key (names the limit and the month). */
  counter: string;
  /** "2026-11". */
  month: string;
  limit: number;
  spent: number;
}

/** Alert keys this replica has seen raised, before it starts over (a bound, not an LRU). */
const MAX_REMEMBERED = 100_000;

export class BudgetAlerts {
  readonly #spend: SpendStore;
  readonly #js: JetStreamClient;
  readonly #percents: number[];
  readonly #logger: Logger;
  readonly #raised = new Set<string>();

  constructor(opts: {
    spend: SpendStore;
    js: JetStreamClient;
    percents: readonly number[];
    logger: Logger;
  }) {
    this.#spend = opts.spend;
    this.#js = opts.js;
    this.#percents = [...opts.percents].sort((a, b) => a - b);
    this.#logger = opts.logger;
  }

  /** Raises the highest threshold `s` has reached, unless it was raised this month. */
  check(s: BudgetSpend): void {
    if (s.limit <= 0 || this.#percents.length === 0) return; // a limit of 0 is a block, not a budget
    let percent: number | undefined;
    for (const p of this.#percents) if (s.spent >= (s.limit * p) / 100) percent = p;
    if (percent === undefined) return;
    const key = `alert.${s.counter}.${percent}`;
    if (this.#raised.has(key)) return;
    if (this.#raised.size >= MAX_REMEMBERED) this.#raised.clear();
    this.#raised.add(key);
    void this.#raise(key, percent, s).catch((err: unknown) => {
      this.#raised.delete(key); // the next call's check tries again
      this.#logger.warn({ err, alert: key }, "budget alert could not be raised; retried later");
    });
  }

  async #raise(key: string, percent: number, s: BudgetSpend): Promise<void> {
    if (this.#spend.marked(key)) return; // raised by another replica
    const alert = create(BudgetAlertSchema, {
      // The same for every replica raising it: receivers dedupe by it.
      eventId: createHash("sha256").update(key).digest("hex").slice(0, 32),
      tenantId: s.tenantId,
      scope: s.scope,
      userId: s.userId,
      apiKeyId: s.apiKeyId,
      apiKeyName: s.apiKeyName,
      thresholdPercent: percent,
      limitUsd: s.limit,
      spendUsd: s.spent,
      month: s.month,
      time: timestampNow(),
    });
    await publishEvent(
      this.#js,
      `${usageSubject(s.tenantId)}.budget`,
      toBinary(BudgetAlertSchema, alert),
      { msgId: key, timeoutMs: 5_000 },
    );
    await this.#spend.mark(key);
    this.#logger.info(
      { tenantId: s.tenantId, scope: BudgetAlertScope[s.scope], percent },
      "budget alert raised",
    );
  }
}
