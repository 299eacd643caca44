// Keeping several vector-search replicas in step. Each replica holds every collection's index in
// memory; MongoDB is the truth. A replica that writes (Upsert, Delete, CreateCollection,
// DeleteCollection) applies the write to MongoDB and its own index, then publishes a VectorChange
// (events.proto) on `<root>.<tenant>.<collection id, base64url>` in the JetStream stream
// VECTOR_CHANGES before it answers. Every replica follows the stream with an ordered consumer
// started at the stream's last sequence when it started (everything before is in what it loads
// from MongoDB) and reloads what a change names from MongoDB, so applying a change twice or late
// does no harm.
//
// Catching up: before a write (and a read that asks for STRONG consistency) touches a collection,
// the replica asks the stream for the last sequence on that collection's subject (one direct get)
// and waits until it has applied the changes up to it, so it sees every write that was answered
// before it began, whichever replica took it. Other reads (EVENTUAL, the default) answer from
// what the replica holds: changes arrive within a millisecond or two, and the round trip would
// about halve one client's Search rate (bench/README.md). While NATS is unreachable no write can
// be answered (the publish fails), so a read then answers from what this replica has.
//
// Safety net: every VECTOR_RECONCILE_MS (and at once when the stream shows a gap, i.e. changes
// were dropped by its limits before this replica read them) the replica compares each loaded
// collection's create/update time with MongoDB's and rebuilds or drops the ones that differ.
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  ensureStream,
  jetstream,
  jetstreamManager,
  publishEvent,
  UnavailableError,
  type JetStreamClient,
  type JetStreamManager,
  type Logger,
  type Metrics,
  type NatsConnection,
} from "@ensemble/kit";
import { VectorChangeKind, VectorChangeSchema, type VectorChange } from "@ensemble/proto";
import { DeliverPolicy, type ConsumerMessages } from "@nats-io/jetstream";
import { Counter, Histogram } from "prom-client";
import { randomUUID } from "node:crypto";
import type { Collections } from "./collections.js";
import type { CollectionRef } from "./store.js";

export interface ChangeFeedOptions {
  nc: NatsConnection;
  collections: Collections;
  logger: Logger;
  metrics?: Metrics;
  /** JetStream stream of changes (VECTOR_CHANGES_STREAM). */
  stream: string;
  /** Subject root (VECTOR_CHANGES_SUBJECT_ROOT): <root>.<tenant>.<collection>. */
  root: string;
  /** How long changes are kept; a replica further behind than this rebuilds what differs. */
  maxAgeMs?: number;
  /** Longest a call waits for this replica to apply other replicas' writes before UNAVAILABLE. */
  catchUpTimeoutMs?: number;
  /** Period of the comparison with MongoDB (0 = never; a gap in the stream still triggers one). */
  reconcileMs?: number;
  /** Attempts of one publish before the call fails (the change is still published later). */
  publishAttempts?: number;
}

type ChangeInit = MessageInitShape<typeof VectorChangeSchema>;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A collection's subject: ids may hold dots, which would split the subject, so base64url. */
export function changeSubject(root: string, ref: CollectionRef): string {
  return `${root}.${ref.tenantId}.${Buffer.from(ref.id, "utf8").toString("base64url")}`;
}

export class ChangeFeed {
  /** This process; its own changes are already applied when they come back. */
  readonly replicaId = randomUUID();
  readonly #o: Required<Omit<ChangeFeedOptions, "metrics">> & Pick<ChangeFeedOptions, "metrics">;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #log: Logger;
  /** Stream sequence this replica had read up to when it started: all of it is in MongoDB. */
  #startSeq = 0;
  /** Last stream sequence taken from the consumer (a jump is a gap). */
  #seenSeq = 0;
  /** Per subject: the highest sequence whose change is applied here. */
  readonly #applied = new Map<string, number>();
  readonly #waiters = new Map<string, Array<{ seq: number; resolve: () => void }>>();
  /** Changes whose publish failed, published again in the background. */
  readonly #outbox: Array<{ subject: string; change: VectorChange; msgId: string }> = [];
  #outboxTimer: NodeJS.Timeout | undefined;
  #reconcileTimer: NodeJS.Timeout | undefined;
  #reconciling: Promise<void> | undefined;
  #messages: ConsumerMessages | undefined;
  #consumed: Promise<void> | undefined;
  #published = 0;
  #stopped = false;
  readonly #counts: Counter<"result"> | undefined;
  readonly #catchUp: Histogram | undefined;

  private constructor(nc: NatsConnection, jsm: JetStreamManager, o: ChangeFeedOptions) {
    this.#o = {
      maxAgeMs: 24 * 3_600_000,
      catchUpTimeoutMs: 5_000,
      reconcileMs: 60_000,
      publishAttempts: 3,
      ...o,
    };
    this.#js = jetstream(nc);
    this.#jsm = jsm;
    this.#log = o.logger.child({ component: "changes" });
    const registers = o.metrics === undefined ? undefined : [o.metrics.registry];
    if (registers !== undefined) {
      this.#counts = new Counter({
        name: "ensemble_vector_search_changes_total",
        help: "Collection changes: published, publish_failed, applied (another replica's), own, gap, reconciled (collections rebuilt or dropped by the comparison with MongoDB)",
        labelNames: ["result"],
        registers,
      });
      this.#catchUp = new Histogram({
        name: "ensemble_vector_search_catch_up_seconds",
        help: "Time a call waited for this replica to apply other replicas' writes to its collection (the stream lookup included)",
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5],
        registers,
      });
    }
  }

  /**
   * Creates (or updates) the stream, then follows it from its current end. Call before the
   * indexes are loaded: a change published while they load is applied after its collection's
   * load (the collection's write chain), so nothing falls between the two.
   */
  static async open(o: ChangeFeedOptions): Promise<ChangeFeed> {
    // Short: the per-call lookup must not hold a call for long while NATS is unreachable.
    const lookups = await jetstreamManager(o.nc, { timeoutMs: 1_000 });
    const feed = new ChangeFeed(o.nc, lookups, o);
    const info = await ensureStream(await jetstreamManager(o.nc), {
      name: feed.#o.stream,
      subjects: [`${feed.#o.root}.>`],
      max_age: feed.#o.maxAgeMs * 1_000_000,
      duplicate_window: 2 * 60 * 1_000_000_000,
      // The per-call "last sequence of this subject" lookup is a direct get.
      allow_direct: true,
    });
    feed.#startSeq = info.state.last_seq;
    feed.#seenSeq = info.state.last_seq;
    await feed.#follow();
    if (feed.#o.reconcileMs > 0) {
      feed.#reconcileTimer = setInterval(() => void feed.reconcile(), feed.#o.reconcileMs);
      feed.#reconcileTimer.unref();
    }
    return feed;
  }

  async #follow(): Promise<void> {
    const consumer = await this.#js.consumers.get(this.#o.stream, {
      filter_subjects: [`${this.#o.root}.>`],
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: this.#startSeq + 1,
    });
    const messages = await consumer.consume();
    this.#messages = messages;
    this.#consumed = (async () => {
      for await (const m of messages) {
        if (m.seq > this.#seenSeq + 1) {
          // Changes this replica never read (the stream's limits dropped them): compare with
          // MongoDB now instead of waiting for the next period.
          this.#counts?.inc({ result: "gap" }, m.seq - this.#seenSeq - 1);
          this.#log.warn(
            { from: this.#seenSeq + 1, to: m.seq - 1 },
            "changes were dropped before this replica read them; comparing with MongoDB",
          );
          void this.reconcile();
        }
        this.#seenSeq = Math.max(this.#seenSeq, m.seq);
        let change: VectorChange;
        try {
          change = fromBinary(VectorChangeSchema, m.data);
        } catch (err) {
          this.#log.error({ err, seq: m.seq }, "a change that is not a VectorChange; skipped");
          this.#applied.set(m.subject, Math.max(this.#applied.get(m.subject) ?? 0, m.seq));
          continue;
        }
        const own = change.replicaId === this.replicaId;
        const subject = m.subject;
        const seq = m.seq;
        // Not awaited: a collection still loading must not hold up changes to the others. A
        // collection's changes stay in order on its write chain.
        this.#o.collections.apply(change, own).then(
          () => {
            this.#counts?.inc({ result: own ? "own" : "applied" });
            this.#markApplied(subject, seq);
          },
          (err: unknown) => {
            this.#log.error(
              { err, tenantId: change.tenantId, collection: change.collectionId, seq },
              "applying a change from another replica failed; rebuilding the collection from MongoDB",
            );
            void this.#o.collections
              .rebuild(change.tenantId, change.collectionId)
              .catch(() => undefined)
              .then(() => this.#markApplied(subject, seq));
          },
        );
      }
    })().catch((err: unknown) => {
      if (!this.#stopped) this.#log.error({ err }, "following the change stream stopped");
    });
  }

  #markApplied(subject: string, seq: number): void {
    this.#applied.set(subject, Math.max(this.#applied.get(subject) ?? 0, seq));
    const waiting = this.#waiters.get(subject);
    if (waiting === undefined) return;
    const still = waiting.filter((w) => {
      if (w.seq > seq) return true;
      w.resolve();
      return false;
    });
    if (still.length === 0) this.#waiters.delete(subject);
    else this.#waiters.set(subject, still);
  }

  #appliedThrough(subject: string): number {
    return Math.max(this.#startSeq, this.#applied.get(subject) ?? 0);
  }

  /**
   * Resolves once this replica has applied every change to the collection that was published
   * before the call: throws UNAVAILABLE when that takes longer than catchUpTimeoutMs.
   */
  async caughtUp(ref: CollectionRef, signal?: AbortSignal): Promise<void> {
    const started = performance.now();
    const subject = changeSubject(this.#o.root, ref);
    let last: number;
    try {
      const m = await this.#jsm.direct.getMessage(this.#o.stream, { last_by_subj: subject });
      last = m?.seq ?? 0;
    } catch (err) {
      // No write can be answered without NATS either, so what this replica holds is as new as
      // any write a caller has seen succeed (bar changes still in flight to it).
      this.#log.debug(
        { err, tenantId: ref.tenantId, collection: ref.id },
        "could not ask the change stream; answering from this replica's index",
      );
      return;
    }
    if (last > this.#appliedThrough(subject)) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          done();
          reject(
            new UnavailableError(
              `this vector-search replica has not yet applied every write to collection ${ref.id} made through another replica (it is ${last - this.#appliedThrough(subject)} change(s) behind after ${this.#o.catchUpTimeoutMs} ms); retry`,
            ),
          );
        }, this.#o.catchUpTimeoutMs);
        timer.unref();
        const onAbort = () => {
          done();
          reject(
            signal?.reason instanceof Error ? signal.reason : new Error("the call was cancelled"),
          );
        };
        const waiter = {
          seq: last,
          resolve: () => {
            done();
            resolve();
          },
        };
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          const list = this.#waiters.get(subject);
          if (list !== undefined) {
            const rest = list.filter((w) => w !== waiter);
            if (rest.length === 0) this.#waiters.delete(subject);
            else this.#waiters.set(subject, rest);
          }
        };
        if (signal?.aborted === true) return onAbort();
        signal?.addEventListener("abort", onAbort, { once: true });
        this.#waiters.set(subject, [...(this.#waiters.get(subject) ?? []), waiter]);
        // Applied between the lookup and now.
        if (last <= this.#appliedThrough(subject)) waiter.resolve();
      });
    }
    this.#catchUp?.observe((performance.now() - started) / 1000);
  }

  /**
   * Tells the other replicas about a write this replica has applied. Retries a failed publish a
   * few times; then the change is kept and published again in the background, and the call
   * fails with UNAVAILABLE (the write is stored: retrying the call is safe).
   */
  async publish(
    ref: CollectionRef,
    kind: VectorChangeKind,
    time: Date,
    documentIds: string[] = [],
  ): Promise<void> {
    const change = create(VectorChangeSchema, {
      tenantId: ref.tenantId,
      collectionId: ref.id,
      kind,
      documentIds,
      time: timestampFromDate(time),
      replicaId: this.replicaId,
    } satisfies ChangeInit);
    const subject = changeSubject(this.#o.root, ref);
    const msgId = `${this.replicaId}.${++this.#published}`;
    let lastErr: unknown;
    for (let attempt = 1; attempt <= this.#o.publishAttempts; attempt++) {
      try {
        await publishEvent(this.#js, subject, toBinary(VectorChangeSchema, change), {
          msgId,
          timeoutMs: 2_000,
        });
        this.#counts?.inc({ result: "published" });
        return;
      } catch (err) {
        lastErr = err;
        if (attempt < this.#o.publishAttempts) await sleep(100 * 2 ** attempt);
      }
    }
    this.#counts?.inc({ result: "publish_failed" });
    this.#outbox.push({ subject, change, msgId });
    this.#scheduleOutbox();
    this.#log.warn(
      { err: lastErr, tenantId: ref.tenantId, collection: ref.id },
      "could not tell the other replicas about a write; it is stored and will be announced when NATS is back",
    );
    throw new UnavailableError(
      `the write to collection ${ref.id} is stored, but the other vector-search replicas could not be told yet (NATS unreachable); it will reach them when NATS is back, and retrying the call is safe`,
      { cause: lastErr },
    );
  }

  #scheduleOutbox(): void {
    if (this.#outboxTimer !== undefined || this.#stopped) return;
    this.#outboxTimer = setTimeout(() => {
      this.#outboxTimer = undefined;
      void this.#flushOutbox();
    }, 2_000);
    this.#outboxTimer.unref();
  }

  async #flushOutbox(): Promise<void> {
    while (this.#outbox.length > 0 && !this.#stopped) {
      const next = this.#outbox[0]!;
      try {
        await publishEvent(this.#js, next.subject, toBinary(VectorChangeSchema, next.change), {
          msgId: next.msgId,
          timeoutMs: 2_000,
        });
      } catch {
        this.#scheduleOutbox();
        return;
      }
      this.#outbox.shift();
      this.#counts?.inc({ result: "published" });
    }
    if (this.#outbox.length === 0) this.#log.info("every stored write has been announced again");
  }

  /** Compares the loaded collections with MongoDB; one comparison at a time. */
  reconcile(): Promise<void> {
    this.#reconciling ??= this.#o.collections
      .reconcile()
      .then(
        (n) => {
          if (n > 0) {
            this.#counts?.inc({ result: "reconciled" }, n);
            this.#log.warn({ collections: n }, "collections differed from MongoDB; reloaded");
          }
        },
        (err: unknown) => this.#log.warn({ err }, "comparing the collections with MongoDB failed"),
      )
      .finally(() => (this.#reconciling = undefined));
    return this.#reconciling;
  }

  /** Stops following the stream (pending publishes in the outbox are given up: MongoDB has them). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#reconcileTimer);
    clearTimeout(this.#outboxTimer);
    await this.#messages?.close();
    await this.#consumed;
  }
}
