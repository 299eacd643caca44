// Month-to-date spend per tenant and per (tenant, user), shared by every replica through a NATS
// KV bucket, and read without a round trip.
//
// - Shared: one KV entry per counter ({"usd": n}). A replica adds the spend of a flushed ledger
//   batch with compare-and-set (kv.update with the revision it read; re-read and retry when
//   another replica won), once per counter per batch, so increments are never lost (unlike a
//   MongoDB $inc on FerretDB) and KV traffic grows with batches, not with calls.
// - Local view: every replica watches the bucket, so a budget check reads a Map. A replica's own
//   spend that is recorded but not yet in KV is kept in `pending` and added on top, so its own
//   calls count at once; another replica's calls count once that replica has flushed (about
//   LEDGER_FLUSH_MS plus one KV round trip later).
// - Counters of past months are ignored and expire with the bucket's TTL (40 days after their
//   last write, longer than any month).
import type { Logger } from "@ensemble/kit";
import { KvWatchInclude, Kvm, type KV, type KvWatchEntry } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { monthOf, monthOfKey } from "./keys.js";

const BUCKET_TTL_MS = 40 * 24 * 3_600_000;
const MARKER_PREFIX = "alert.";
const CAS_ATTEMPTS = 10;
const READY_TIMEOUT_MS = 5_000;

interface Counter {
  usd: number;
  revision: number;
}

export interface SpendStore {
  /** Month-to-date spend of a counter: shared value plus this replica's not-yet-shared spend. */
  spent(key: string): number;
  /** This replica's spend that is recorded but not yet in KV (call when a call is recorded). */
  addPending(key: string, usd: number): void;
  /** Takes back pending spend that will never be applied (a duplicate ledger entry). */
  dropPending(key: string, usd: number): void;
  /** Adds `usd` to the shared counter (CAS) and moves it out of pending. Throws when KV fails. */
  apply(key: string, usd: number): Promise<void>;
  /** Whether a marker `alert.…` is in the bucket (as this replica's watch has seen it). */
  marked(key: string): boolean;
  /** Puts a marker `alert.…` in the bucket. Throws when KV fails. */
  mark(key: string): Promise<void>;
  close(): void;
}

export async function openSpendStore(
  nc: NatsConnection,
  bucket: string,
  opts: { logger: Logger; now: () => number },
): Promise<SpendStore> {
  const kvm = new Kvm(nc);
  // Another replica may have created it (possibly with other limits): use it as it is.
  const kv = await kvm.create(bucket, { history: 1, ttl: BUCKET_TTL_MS }).catch(async (err) => {
    opts.logger.debug({ err }, "spend bucket exists; opening it");
    return kvm.open(bucket);
  });
  const store = new KvSpendStore(kv, opts.logger, opts.now);
  await store.start();
  return store;
}

class KvSpendStore implements SpendStore {
  readonly #kv: KV;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #shared = new Map<string, Counter>();
  readonly #pending = new Map<string, number>();
  /** Budget alert markers (alerts.ts): kept with the counters, expiring with the bucket's TTL. */
  readonly #markers = new Set<string>();
  #watcher: { stop(): void } | undefined;
  #closed = false;

  constructor(kv: KV, logger: Logger, now: () => number) {
    this.#kv = kv;
    this.#logger = logger;
    this.#now = now;
  }

  /** Starts the watch and waits (bounded) until the current values are loaded. */
  async start(): Promise<void> {
    let markReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    void this.#watchLoop(markReady);
    const timer = setTimeout(() => {
      this.#logger.warn("spend counters not loaded within 5 s; starting with what arrived");
      markReady();
    }, READY_TIMEOUT_MS);
    await ready;
    clearTimeout(timer);
  }

  async #watchLoop(markReady: () => void): Promise<void> {
    let delayMs = 250;
    while (!this.#closed) {
      try {
        const empty = (await this.#kv.status()).values === 0;
        const watcher = await this.#kv.watch({ include: KvWatchInclude.LastValue });
        this.#watcher = watcher;
        if (empty) markReady();
        for await (const entry of watcher) {
          this.#see(entry);
          // delta: messages still to come of the initial snapshot; 0 = caught up.
          if (entry.delta === 0) markReady();
          delayMs = 250;
        }
      } catch (err) {
        if (!this.#closed) this.#logger.warn({ err }, "spend counter watch failed; restarting");
      }
      if (this.#closed) return;
      await new Promise((resolve) => setTimeout(resolve, delayMs).unref());
      delayMs = Math.min(delayMs * 2, 10_000);
    }
  }

  #see(entry: KvWatchEntry): void {
    if (entry.key.startsWith(MARKER_PREFIX)) {
      if (entry.operation === "PUT") this.#markers.add(entry.key);
      else this.#markers.delete(entry.key);
      return;
    }
    const month = monthOfKey(entry.key);
    if (month === undefined || month < monthOf(this.#now())) {
      this.#shared.delete(entry.key);
      return;
    }
    const known = this.#shared.get(entry.key);
    if (known !== undefined && known.revision >= entry.revision) return;
    if (entry.operation !== "PUT") {
      this.#shared.set(entry.key, { usd: 0, revision: entry.revision });
      return;
    }
    this.#shared.set(entry.key, { usd: parseUsd(entry.string()), revision: entry.revision });
  }

  spent(key: string): number {
    return (this.#shared.get(key)?.usd ?? 0) + (this.#pending.get(key) ?? 0);
  }

  addPending(key: string, usd: number): void {
    if (usd <= 0) return;
    this.#pending.set(key, (this.#pending.get(key) ?? 0) + usd);
  }

  dropPending(key: string, usd: number): void {
    if (usd <= 0) return;
    const left = (this.#pending.get(key) ?? 0) - usd;
    // Float residue of adding and removing the same amounts is not spend.
    if (left <= 1e-12) this.#pending.delete(key);
    else this.#pending.set(key, left);
  }

  async apply(key: string, usd: number): Promise<void> {
    if (usd <= 0) return;
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const entry = await this.#kv.get(key);
      const current = entry !== null && entry.operation === "PUT" ? parseUsd(entry.string()) : 0;
      const next = current + usd;
      const value = JSON.stringify({ usd: next });
      let revision: number;
      try {
        revision =
          entry === null
            ? await this.#kv.create(key, value)
            : await this.#kv.update(key, value, entry.revision);
      } catch (err) {
        if (isCasConflict(err)) continue; // another replica wrote first: read again
        throw err;
      }
      // Shared value and pending change together, so a check in between never counts it twice.
      const known = this.#shared.get(key);
      if (known === undefined || known.revision < revision) {
        this.#shared.set(key, { usd: next, revision });
      }
      this.dropPending(key, usd);
      return;
    }
    throw new Error(`spend counter ${key}: compare-and-set lost ${CAS_ATTEMPTS} times in a row`);
  }

  marked(key: string): boolean {
    return this.#markers.has(key);
  }

  async mark(key: string): Promise<void> {
    if (!key.startsWith(MARKER_PREFIX)) throw new Error(`not a marker key: ${key}`);
    await this.#kv.put(key, "1");
    this.#markers.add(key);
  }

  close(): void {
    this.#closed = true;
    this.#watcher?.stop();
  }
}

function parseUsd(text: string): number {
  try {
    const v = (JSON.parse(text) as { usd?: unknown }).usd;
    return typeof v === "number" && Number.isFinite(v) ? v : 0;
  } catch {
    return 0;
  }
}

function isCasConflict(err: unknown): boolean {
  const text = err instanceof Error ? `${err.name} ${err.message}` : String(err);
  return /wrong last sequence|key exists|10071|10164/i.test(text);
}
