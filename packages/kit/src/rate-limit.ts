// Token buckets per key (a caller, a deployment...) that hold across replicas without a network
// round trip per request. The gateway limits callers with it; model-proxy limits deployments'
// requests and tokens per minute.
//
// The shared state is one NATS KV entry per key: the global bucket `{ t: tokens, ts: ms }`.
// A replica never asks KV per request: it takes a *lease* of up to `lease` tokens from the
// global bucket with a compare-and-set (kv.update with the revision it read), and spends them
// locally. Leased tokens are valid for `leaseTtlMs` only, then dropped: a replica that stops
// getting traffic strands at most one lease per key for that long. Because every token a
// replica spends was first taken from the global bucket under CAS, all replicas together never
// exceed `burst + rate * t`; the price of fewer round trips is that a key may be refused
// slightly early while another replica still holds unspent leased tokens.
//
// A take may cost more than one token (tokens per minute). When the leased tokens do not cover
// the cost, the round trip takes max(lease, what is missing, what the calls waiting for it
// want) at once, so a large cost or a burst of concurrent calls is never split over several
// round trips; a cost larger than the burst can never be served and is
// refused at once with reason "cost-exceeds-burst" (retryAfterMs Infinity) instead of waiting.
//
// When a replica was refused it remembers until when (the time the global bucket needs for the
// missing tokens), so a key hammered over the limit costs no KV traffic either. If KV is
// unreachable the replica falls back to a local bucket with the full rate (the limit then holds
// per replica instead of globally) rather than refusing every call.
import { createHash } from "node:crypto";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./logger.js";

/**
 * `reason` says why a take was refused: "rate" = not enough tokens now, retry after
 * `retryAfterMs`; "cost-exceeds-burst" = the cost is larger than the bucket can ever hold, so no
 * wait helps (`retryAfterMs` is Infinity).
 */
export type RateDecision =
  { ok: true } | { ok: false; reason: "rate" | "cost-exceeds-burst"; retryAfterMs: number };

export interface RateLimiter {
  /** Takes `cost` tokens (default 1; rounded up to a whole token; 0 or less always passes). */
  take(key: string, cost?: number): Promise<RateDecision>;
  /** KV reads and writes so far (tests and metrics: how often the shared state was touched). */
  readonly kvOperations: number;
}

export interface RateLimitOptions {
  /** Tokens per second added to each key's bucket. */
  rate: number;
  /** Bucket size (the largest burst, and the largest cost one take can have). */
  burst: number;
  /** Tokens a replica takes per KV round trip; default max(1, floor(burst / 5)). */
  lease?: number;
  /** How long leased tokens stay spendable; default 2 s. */
  leaseTtlMs?: number;
  logger: Logger;
  now?: () => number;
}

interface LocalState {
  tokens: number;
  leaseExpiresAt: number;
  refusedUntil: number;
  /** The missing tokens the last refusal was for: smaller needs may still be served. */
  refusedNeed: number;
  pending: Promise<void> | undefined;
  /** Tokens wanted by the calls waiting for `pending`. */
  waiting: number;
  lastUsed: number;
}

interface Stored {
  t: number;
  ts: number;
}

const MAX_LOCAL_ENTRIES = 50_000;
const CAS_ATTEMPTS = 8;

/** Opens (or creates) the KV bucket and returns a limiter backed by it. */
export async function openKvRateLimiter(
  nc: NatsConnection,
  bucket: string,
  opts: RateLimitOptions,
): Promise<RateLimiter> {
  const kvm = new Kvm(nc);
  // Idle keys' entries expire: a full bucket is the same as no entry.
  const ttl = Math.ceil((opts.burst / opts.rate) * 1000) + 60_000;
  // Replicas started with other limits (so another ttl) share the bucket as it is; entries are
  // rewritten on every lease, so the ttl only decides when idle keys' state disappears.
  const kv = await kvm.create(bucket, { history: 1, ttl }).catch(() => kvm.open(bucket));
  return new KvRateLimiter(kv, opts);
}

function tooLarge(): RateDecision {
  return { ok: false, reason: "cost-exceeds-burst", retryAfterMs: Number.POSITIVE_INFINITY };
}

class KvRateLimiter implements RateLimiter {
  readonly #kv: KV;
  readonly #rate: number;
  readonly #burst: number;
  readonly #lease: number;
  readonly #leaseTtlMs: number;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #local = new Map<string, LocalState>();
  readonly #fallback: LocalBuckets;
  #kvOps = 0;
  #kvDownUntil = 0;

  constructor(kv: KV, opts: RateLimitOptions) {
    this.#kv = kv;
    this.#rate = opts.rate;
    this.#burst = opts.burst;
    this.#lease = Math.max(1, Math.min(opts.burst, opts.lease ?? Math.floor(opts.burst / 5)));
    this.#leaseTtlMs = opts.leaseTtlMs ?? 2_000;
    this.#logger = opts.logger;
    this.#now = opts.now ?? Date.now;
    this.#fallback = new LocalBuckets(opts.rate, opts.burst, this.#now);
  }

  get kvOperations(): number {
    return this.#kvOps;
  }

  async take(key: string, cost = 1): Promise<RateDecision> {
    const need = Math.ceil(cost);
    if (!(need > 0)) return { ok: true };
    if (need > this.#burst) return tooLarge();
    for (let round = 0; round < 3; round++) {
      const now = this.#now();
      if (now < this.#kvDownUntil) return this.#fallback.take(key, need);
      const state = this.#state(key, now);
      const held = now < state.leaseExpiresAt ? state.tokens : 0;
      if (held >= need) {
        state.tokens -= need;
        return { ok: true };
      }
      if (now < state.refusedUntil && need - held >= state.refusedNeed) {
        return { ok: false, reason: "rate", retryAfterMs: state.refusedUntil - now };
      }
      // One lease request per key at a time; concurrent calls wait for it and try again.
      state.waiting += need;
      try {
        state.pending ??= this.#acquire(key, state, need - held).finally(
          () => (state.pending = undefined),
        );
        await state.pending;
      } finally {
        state.waiting -= need;
      }
    }
    const now = this.#now();
    const state = this.#state(key, now);
    return { ok: false, reason: "rate", retryAfterMs: Math.max(1, state.refusedUntil - now) };
  }

  /** Per caller key as given (local memory); only the shared KV sees the hashed key. */
  #state(key: string, now: number): LocalState {
    let state = this.#local.get(key);
    if (state === undefined) {
      if (this.#local.size >= MAX_LOCAL_ENTRIES) this.#evict(now);
      state = {
        tokens: 0,
        leaseExpiresAt: 0,
        refusedUntil: 0,
        refusedNeed: 1,
        pending: undefined,
        waiting: 0,
        lastUsed: now,
      };
      this.#local.set(key, state);
    }
    state.lastUsed = now;
    return state;
  }

  #evict(now: number): void {
    for (const [k, s] of this.#local) {
      if (
        s.pending === undefined &&
        (now >= s.leaseExpiresAt || this.#local.size > MAX_LOCAL_ENTRIES)
      )
        this.#local.delete(k);
      if (this.#local.size < MAX_LOCAL_ENTRIES * 0.9) return;
    }
  }

  /**
   * Takes at least `missing` tokens from the global bucket, and up to the lease or what every
   * call waiting for this round trip wants, whichever is more: a burst of concurrent calls on
   * one replica then costs one round trip rather than one each (and is not refused for lack
   * of rounds while the global bucket still has tokens).
   */
  async #acquire(key: string, state: LocalState, missing: number): Promise<void> {
    const id = kvKey(key);
    try {
      for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        this.#kvOps += 1;
        const entry = await this.#kv.get(id);
        const now = this.#now();
        let stored: Stored = { t: this.#burst, ts: now };
        if (entry !== null && entry.operation === "PUT") {
          const parsed = entry.json<Partial<Stored>>();
          if (typeof parsed.t === "number" && typeof parsed.ts === "number") {
            stored = { t: parsed.t, ts: parsed.ts };
          }
        }
        const available = Math.min(
          this.#burst,
          stored.t + (Math.max(0, now - stored.ts) / 1000) * this.#rate,
        );
        const held = now < state.leaseExpiresAt ? state.tokens : 0;
        const wanted = Math.max(this.#lease, missing, state.waiting - held);
        const granted = Math.min(wanted, Math.floor(available));
        if (granted < missing) {
          // Tokens still held stay spendable by smaller takes until their lease ends.
          if (now >= state.leaseExpiresAt) state.tokens = 0;
          state.refusedNeed = missing;
          state.refusedUntil =
            now + Math.max(1, Math.ceil(((missing - available) / this.#rate) * 1000));
          return;
        }
        const next = JSON.stringify({ t: available - granted, ts: now } satisfies Stored);
        this.#kvOps += 1;
        try {
          if (entry === null) await this.#kv.create(id, next);
          else await this.#kv.update(id, next, entry.revision);
        } catch (err) {
          if (isCasConflict(err)) continue; // another replica won; read again
          throw err;
        }
        const stillHeld = this.#now() < state.leaseExpiresAt ? state.tokens : 0;
        state.tokens = stillHeld + granted;
        state.leaseExpiresAt = now + this.#leaseTtlMs;
        state.refusedUntil = 0;
        return;
      }
      // Heavy contention on one key: refuse briefly rather than spin.
      state.refusedNeed = 1;
      state.refusedUntil = this.#now() + 50;
    } catch (err) {
      this.#kvDownUntil = this.#now() + 5_000;
      this.#logger.warn(
        { err },
        "rate limit state unavailable; limiting per replica for the next 5 s",
      );
    }
  }
}

function isCasConflict(err: unknown): boolean {
  const text = err instanceof Error ? `${err.name} ${err.message}` : String(err);
  return /wrong last sequence|key exists|10071|10164/i.test(text);
}

/** A KV-safe key that does not reveal the caller (user id or API key id). */
function kvKey(key: string): string {
  return `rl.${createHash("sha256").update(key).digest("hex").slice(0, 40)}`;
}

/** Plain in-memory token buckets (the fallback, and a limiter for a process without NATS). */
export class LocalBuckets {
  readonly #buckets = new Map<string, Stored>();
  constructor(
    readonly rate: number,
    readonly burst: number,
    readonly now: () => number = Date.now,
  ) {}

  /** Takes `cost` tokens (default 1, rounded up; 0 or less always passes). */
  take(key: string, cost = 1): RateDecision {
    const need = Math.ceil(cost);
    if (!(need > 0)) return { ok: true };
    if (need > this.burst) return tooLarge();
    const now = this.now();
    const b = this.#buckets.get(key) ?? { t: this.burst, ts: now };
    const available = Math.min(this.burst, b.t + (Math.max(0, now - b.ts) / 1000) * this.rate);
    if (available >= need) {
      this.#buckets.delete(key);
      if (this.#buckets.size >= MAX_LOCAL_ENTRIES) {
        const oldest = this.#buckets.keys().next();
        if (oldest.done !== true) this.#buckets.delete(oldest.value);
      }
      this.#buckets.set(key, { t: available - need, ts: now });
      return { ok: true };
    }
    this.#buckets.set(key, { t: available, ts: now });
    return {
      ok: false,
      reason: "rate",
      retryAfterMs: Math.max(1, Math.ceil(((need - available) / this.rate) * 1000)),
    };
  }
}
