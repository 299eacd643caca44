// Batched ledger writes: record() only buffers; a background loop (every LEDGER_FLUSH_MS, or at
// once when LEDGER_BATCH_SIZE entries wait) moves entries through three stages, each retried
// with backoff until it succeeds, so nothing is dropped when MongoDB or NATS is away for a while:
//
//   1. insert   insertMany({ordered: false}) into `ledger`. A duplicate-key error means the entry
//               was recorded before (same id, same run/step/attempt, or same idempotency key):
//               it is not billed again. An entry this writer itself inserted in an attempt that
//               then failed is told apart by its writeId (see LedgerDoc).
//   2. spend    the inserted entries' cost, summed per KV counter, added by compare-and-set.
//   3. events   one UsageEvent per inserted entry on `ensemble.usage.<tenant>`, msgId = entry id
//               (JetStream drops a retried publish as a duplicate).
//
// A crash between stage 1 and 2 loses at most one batch's spend from the counters (the ledger
// keeps it); the budget is a guard, the ledger the bill.
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { publishEvent, type JetStreamClient, type Logger } from "@ensemble/kit";
import { UsageEventSchema } from "@ensemble/proto";
import type { Counter, Gauge } from "prom-client";
import {
  cleanCost,
  dayStart,
  dedupeKeys,
  hourStart,
  monthOf,
  safeToken,
  apiKeySpendKey,
  tenantSpendKey,
  userSpendKey,
} from "./keys.js";
import type { LedgerDoc, LedgerModel } from "./ledger.model.js";
import type { SpendStore } from "./spend.js";
import type { LedgerEntry } from "./types.js";

const MAX_BACKOFF_MS = 10_000;
const PUBLISH_CONCURRENCY = 64;

interface Buffered {
  doc: LedgerDoc;
  entry: LedgerEntry;
  cost: number;
  spendKeys: string[];
}

export interface WriterMetrics {
  tokens: Counter<"model" | "provider" | "direction">;
  cost: Counter<"model" | "provider">;
  entries: Counter<"result">;
  failures: Counter<"stage">;
  backlog: Gauge;
}

export interface LedgerWriterOptions {
  model: LedgerModel;
  spend: SpendStore;
  js: JetStreamClient;
  logger: Logger;
  metrics: WriterMetrics | undefined;
  flushMs: number;
  batchSize: number;
}

/** Subject of a tenant's usage events. */
export function usageSubject(tenantId: string): string {
  return /^[A-Za-z0-9_-]+$/.test(tenantId)
    ? `ensemble.usage.${tenantId}`
    : `ensemble.usage.${safeToken(tenantId)}`;
}

export class LedgerWriter {
  readonly #o: LedgerWriterOptions;
  /** Not inserted yet. */
  #buffer: Buffered[] = [];
  /** Dedupe keys of buffered entries (duplicates inside one replica never reach MongoDB). */
  readonly #bufferedKeys = new Set<string>();
  /** Inserted; spend not yet added to KV, per counter. */
  readonly #toApply = new Map<string, number>();
  /** Inserted; event not yet published. */
  #toPublish: LedgerEntry[] = [];
  #running: Promise<void> | undefined;
  #failures = 0;
  #retryAt = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(opts: LedgerWriterOptions) {
    this.#o = opts;
    this.#timer = setInterval(() => this.#tick(), opts.flushMs);
    this.#timer.unref();
  }

  /** Entries and events not yet durable. */
  get backlog(): number {
    return this.#buffer.length + this.#toPublish.length + this.#toApply.size;
  }

  record(entry: LedgerEntry): void {
    const time = entry.time;
    const { runKey, idemKey } = dedupeKeys(entry);
    const keys = [`id:${entry.id}`, runKey, idemKey];
    if (keys.some((k) => this.#bufferedKeys.has(k))) {
      this.#o.metrics?.entries.inc({ result: "duplicate" });
      this.#o.logger.debug(
        { ledgerId: entry.id },
        "ledger entry already buffered; not billed again",
      );
      return;
    }
    for (const k of keys) this.#bufferedKeys.add(k);
    const cost = cleanCost(entry.costUsd);
    const month = monthOf(time.getTime());
    const spendKeys = [tenantSpendKey(month, entry.tenantId)];
    if (entry.userId !== "") spendKeys.push(userSpendKey(month, entry.tenantId, entry.userId));
    if (entry.apiKeyId !== "") {
      spendKeys.push(apiKeySpendKey(month, entry.tenantId, entry.apiKeyId));
    }
    for (const k of spendKeys) this.#o.spend.addPending(k, cost);
    this.#buffer.push({
      entry,
      cost,
      spendKeys,
      doc: {
        id: entry.id,
        tenantId: entry.tenantId,
        userId: entry.userId,
        apiKeyId: entry.apiKeyId,
        operation: entry.operation,
        model: entry.model,
        requestedModel: entry.requestedModel,
        provider: entry.provider,
        deployment: entry.deployment,
        inputTokens: entry.inputTokens,
        outputTokens: entry.outputTokens,
        cachedInputTokens: entry.cachedInputTokens,
        cacheWriteInputTokens: entry.cacheWriteInputTokens,
        reasoningTokens: entry.reasoningTokens,
        costUsd: cost,
        latencyMs: entry.latencyMs,
        ttftMs: entry.ttftMs,
        time,
        day: dayStart(time),
        hour: hourStart(time),
        streaming: entry.streaming,
        cacheHit: entry.cacheHit,
        simulated: entry.simulated,
        status: entry.status,
        runId: entry.runId,
        stepId: entry.stepId,
        sessionId: entry.sessionId,
        attempt: entry.attempt,
        idempotencyKey: entry.idempotencyKey,
        metadata: Object.entries(entry.metadata).map(([k, v]) => ({ k, v })),
        runKey,
        idemKey,
        writeId: randomUUID(),
      },
    });
    this.#o.metrics?.backlog.set(this.backlog);
    if (this.#buffer.length >= this.#o.batchSize) this.#tick();
  }

  #tick(): void {
    if (this.#running !== undefined || this.backlog === 0 || Date.now() < this.#retryAt) return;
    void this.#round().catch(() => undefined); // #round logs and schedules its own retry
  }

  /** One pass over every stage; rejects (after scheduling a retry) when a stage failed. */
  #round(): Promise<void> {
    if (this.#running !== undefined) return this.#running;
    const run = (async () => {
      try {
        while (this.#buffer.length > 0) await this.#insertBatch();
        await this.#applySpend();
        await this.#publishEvents();
        this.#failures = 0;
        this.#retryAt = 0;
      } catch (err) {
        this.#failures += 1;
        const ceiling = Math.min(MAX_BACKOFF_MS, 250 * 2 ** (this.#failures - 1));
        this.#retryAt = Date.now() + Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
        this.#o.logger.warn(
          { err, backlog: this.backlog, failures: this.#failures },
          "ledger flush failed; keeping the entries and retrying",
        );
        throw err;
      } finally {
        this.#o.metrics?.backlog.set(this.backlog);
      }
    })();
    this.#running = run.finally(() => (this.#running = undefined));
    return this.#running;
  }

  async #insertBatch(): Promise<void> {
    const batch = this.#buffer.slice(0, this.#o.batchSize);
    let duplicates = new Set<Buffered>();
    let rejected = new Set<Buffered>();
    try {
      await this.#o.model.collection.insertMany(
        batch.map((b) => ({ ...b.doc })),
        { ordered: false },
      );
    } catch (err) {
      const failed = classifyWriteErrors(err);
      if (failed === undefined) {
        this.#o.metrics?.failures.inc({ stage: "insert" });
        throw err;
      }
      const pick = (indexes: number[]) =>
        indexes.map((i) => batch[i]).filter((b): b is Buffered => b !== undefined);
      duplicates = new Set(await this.#notOurs(pick(failed.duplicates)));
      rejected = new Set(pick(failed.rejected));
    }
    // record() only appends, so the batch is still the buffer's head.
    this.#buffer = this.#buffer.slice(batch.length);
    for (const b of batch) {
      this.#bufferedKeys.delete(`id:${b.doc.id}`);
      this.#bufferedKeys.delete(b.doc.runKey);
      this.#bufferedKeys.delete(b.doc.idemKey);
      if (duplicates.has(b) || rejected.has(b)) {
        for (const k of b.spendKeys) this.#o.spend.dropPending(k, b.cost);
        if (rejected.has(b)) {
          // The server refuses this document itself: retrying cannot help, and would hold up
          // every entry behind it. The log line keeps it for an operator.
          this.#o.metrics?.entries.inc({ result: "rejected" });
          this.#o.logger.error({ ledgerEntry: b.entry }, "ledger entry refused by the database");
        } else {
          this.#o.metrics?.entries.inc({ result: "duplicate" });
          this.#o.logger.debug(
            { ledgerId: b.doc.id },
            "ledger entry recorded before; not billed again",
          );
        }
        continue;
      }
      if (b.cost > 0) {
        for (const k of b.spendKeys) this.#toApply.set(k, (this.#toApply.get(k) ?? 0) + b.cost);
      }
      this.#toPublish.push(b.entry);
      const labels = { model: b.doc.model, provider: b.doc.provider };
      this.#o.metrics?.entries.inc({ result: "inserted" });
      this.#o.metrics?.tokens.inc({ ...labels, direction: "input" }, b.doc.inputTokens);
      this.#o.metrics?.tokens.inc({ ...labels, direction: "output" }, b.doc.outputTokens);
      if (b.cost > 0) this.#o.metrics?.cost.inc(labels, b.cost);
    }
  }

  /** Of entries refused as duplicates, those whose stored document is not one we wrote. */
  async #notOurs(candidates: Buffered[]): Promise<Buffered[]> {
    if (candidates.length === 0) return [];
    const stored = await this.#o.model
      .find({ id: { $in: candidates.map((b) => b.doc.id) } }, { _id: 0, id: 1, writeId: 1 })
      .lean();
    const ours = new Set(stored.map((d) => `${d.id}\u0000${d.writeId}`));
    return candidates.filter((b) => !ours.has(`${b.doc.id}\u0000${b.doc.writeId}`));
  }

  async #applySpend(): Promise<void> {
    for (const [key, usd] of [...this.#toApply]) {
      try {
        await this.#o.spend.apply(key, usd);
      } catch (err) {
        this.#o.metrics?.failures.inc({ stage: "spend" });
        throw err;
      }
      this.#toApply.delete(key);
    }
  }

  async #publishEvents(): Promise<void> {
    while (this.#toPublish.length > 0) {
      const chunk = this.#toPublish.slice(0, PUBLISH_CONCURRENCY);
      const results = await Promise.allSettled(chunk.map((e) => this.#publish(e)));
      const failed = chunk.filter((_, i) => results[i]?.status === "rejected");
      this.#toPublish = [...failed, ...this.#toPublish.slice(chunk.length)];
      if (failed.length > 0) {
        this.#o.metrics?.failures.inc({ stage: "events" });
        const first = results.find((r) => r.status === "rejected");
        throw first?.reason instanceof Error
          ? first.reason
          : new Error("usage event not published");
      }
    }
  }

  async #publish(e: LedgerEntry): Promise<void> {
    const event = create(UsageEventSchema, {
      eventId: randomUUID(),
      requestId: e.id,
      tenantId: e.tenantId,
      userId: e.userId,
      apiKeyId: e.apiKeyId,
      operation: e.operation,
      model: e.model,
      requestedModel: e.requestedModel,
      provider: e.provider,
      deployment: e.deployment,
      usage: {
        inputTokens: count(e.inputTokens),
        outputTokens: count(e.outputTokens),
        totalTokens: count(e.inputTokens + e.outputTokens),
        costUsd: cleanCost(e.costUsd),
        cachedInputTokens: count(e.cachedInputTokens),
        cacheWriteInputTokens: count(e.cacheWriteInputTokens),
        reasoningTokens: count(e.reasoningTokens),
      },
      latency: durationFromMs(Math.max(0, Math.round(e.latencyMs))),
      timeToFirstToken: durationFromMs(Math.max(0, Math.round(e.ttftMs))),
      time: timestampFromDate(e.time),
      streaming: e.streaming,
      cacheHit: e.cacheHit,
      simulated: e.simulated,
      status: e.status,
      runId: e.runId,
      stepId: e.stepId,
      sessionId: e.sessionId,
      attempt: e.attempt,
    });
    await publishEvent(this.#o.js, usageSubject(e.tenantId), toBinary(UsageEventSchema, event), {
      msgId: e.id,
      timeoutMs: 5_000,
    });
  }

  /**
   * Runs rounds until everything is durable. Rejects when it is still failing after
   * `giveUpMs` (the entries stay buffered and the background loop keeps trying).
   */
  async flush(giveUpMs: number): Promise<void> {
    const deadline = Date.now() + giveUpMs;
    for (;;) {
      if (this.#running !== undefined) await this.#running.catch(() => undefined);
      if (this.backlog === 0) return;
      try {
        await this.#round();
      } catch (err) {
        const wait = Math.max(0, this.#retryAt - Date.now());
        if (Date.now() + wait > deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  /** Stops the background loop (flush first). */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** What is still not durable, for the last-resort log line on close. */
  unwritten(): { entries: LedgerEntry[]; unpublishedEvents: number; unappliedSpendUsd: number } {
    return {
      entries: this.#buffer.map((b) => b.entry),
      unpublishedEvents: this.#toPublish.length,
      unappliedSpendUsd: [...this.#toApply.values()].reduce((a, b) => a + b, 0),
    };
  }
}

/** Server codes that mean "this document can never be written" (not a transient failure). */
const DOCUMENT_ERROR_CODES = new Set([2, 22, 52, 55, 57, 121, 10334, 17419]);

/**
 * For an unordered insertMany whose only failures are per-document: the indexes refused as
 * duplicates (code 11000) and those refused for the document itself. Undefined for any other
 * failure (connection, write concern, a transient per-document code): retry the batch.
 */
export function classifyWriteErrors(
  err: unknown,
): { duplicates: number[]; rejected: number[] } | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const e = err as {
    writeErrors?: unknown;
    result?: { getWriteConcernErrors?: () => unknown[] };
  };
  const raw = e.writeErrors;
  const list = Array.isArray(raw) ? (raw as unknown[]) : raw === undefined ? [] : [raw];
  if (list.length === 0) return undefined;
  const concern = e.result?.getWriteConcernErrors?.() ?? [];
  if (concern.length > 0) return undefined;
  const out = { duplicates: [] as number[], rejected: [] as number[] };
  for (const w of list) {
    const we = w as { code?: unknown; index?: unknown; err?: { code?: unknown; index?: unknown } };
    const code = we.code ?? we.err?.code;
    const index = we.index ?? we.err?.index;
    if (typeof index !== "number" || typeof code !== "number") return undefined;
    if (code === 11000) out.duplicates.push(index);
    else if (DOCUMENT_ERROR_CODES.has(code)) out.rejected.push(index);
    else return undefined;
  }
  return out;
}

/** A token count for a usage event: whole and never negative. */
function count(n: number): bigint {
  return BigInt(Math.max(0, Math.round(n)));
}
