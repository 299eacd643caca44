// Per-deployment rate limits (requests and tokens per minute) that hold across every
// model-proxy replica: the kit's token buckets on one NATS KV bucket (leases, CAS, per-replica
// fallback when KV is down; see @ensemble/kit rate-limit.ts).
//
// For a deployment with `rpm`, a call takes 1 token from the bucket `rpm:<name>` (rate rpm/60 per
// second, burst rpm); with `tpm`, it takes `tokens` (input + expected output) from `tpm:<name>`
// (rate tpm/60, burst tpm). A deployment without a limit is never refused and costs nothing.
//
// The bound. Every token a replica spends was taken from the shared bucket under CAS, so all
// replicas together are never granted more than `burst + rate * t` since a bucket was full:
// over-admission slack is zero, with any number of replicas (a token bucket, not a sliding
// window: after a quiet minute a full burst may be followed by the refill rate). Leases only
// decide how early a call may be refused: a replica holds at most one lease per bucket, spendable
// for 2 s, of max(1, floor(burst / 20)) tokens (or what the calls waiting for it want), so with R
// replicas at most R * burst / 20 tokens (5% of the limit per replica) sit unspent elsewhere
// while one replica is refused, and a lease nobody spends is lost after 2 s. Small leases keep
// that early refusal small; the cost is one KV round trip per 5% of the limit per replica.
//
// Order and refunds. rpm is checked first: a refused request takes no tokens from tpm. When rpm
// grants and tpm refuses, the request token stays spent (no refund): the limit errs on the side
// of the provider, and a caller retrying against a tpm-starved deployment uses up its rpm too.
// The refusal is the one of the limit that refused (when both would refuse, rpm's wait is
// returned; tpm may then ask for more on the retry).
//
// A cost larger than the tpm burst can never be served by that deployment (providers answer
// such a request with 429 "request too large" too): it is refused at once with reason
// "cost-exceeds-burst" and retryAfterMs one minute (finite so callers that schedule on it do not
// wait forever; the deployment should be skipped for this call only, not cooled down).
import {
  LocalBuckets,
  openKvRateLimiter,
  type Logger,
  type NatsConnection,
  type RateDecision,
  type RateLimiter,
} from "@ensemble/kit";
import type { Deployment } from "./providers/types.js";

export type LimitKind = "rpm" | "tpm";

/** A refusal says which limit refused and why; assignable to the kit's RateDecision. */
export type DeploymentDecision =
  | { ok: true }
  | {
      ok: false;
      limit: LimitKind;
      reason: "rate" | "cost-exceeds-burst";
      retryAfterMs: number;
    };

export interface DeploymentLimiter {
  /** Takes 1 request from `d`'s rpm and `tokens` from its tpm (each only when set). */
  take(d: Deployment, tokens: number): Promise<DeploymentDecision>;
  /**
   * The same for any other holder of per-minute limits (an API key): `name` keys its buckets,
   * which must not collide with a deployment's name.
   */
  takeFor(
    name: string,
    limits: { rpm?: number | undefined; tpm?: number | undefined },
    tokens: number,
  ): Promise<DeploymentDecision>;
}

const WINDOW_MS = 60_000;

/** The lease for a per-minute limit: 5% of it, at least one. */
export function leaseFor(perMinute: number): number {
  return Math.max(1, Math.floor(perMinute / 20));
}

/**
 * Opens (or creates) the shared KV bucket, so a start-up without NATS fails fast, and returns a
 * limiter that opens each deployment's buckets on first use.
 */
export async function openDeploymentLimiter(
  nc: NatsConnection,
  bucket: string,
  logger: Logger,
): Promise<DeploymentLimiter> {
  // rate/burst give the same entry ttl (2 minutes) every per-minute bucket gets, so every
  // opener agrees on the bucket's configuration.
  await openKvRateLimiter(nc, bucket, { rate: 1 / 60, burst: 1, logger });
  return new KvDeploymentLimiter(nc, bucket, logger);
}

class KvDeploymentLimiter implements DeploymentLimiter {
  readonly #nc: NatsConnection;
  readonly #bucket: string;
  readonly #logger: Logger;
  /** By kind, deployment and limit value: a changed limit gets its own limiter. */
  readonly #limiters = new Map<string, Promise<RateLimiter>>();
  readonly #fallbacks = new Map<string, RateLimiter>();

  constructor(nc: NatsConnection, bucket: string, logger: Logger) {
    this.#nc = nc;
    this.#bucket = bucket;
    this.#logger = logger;
  }

  take(d: Deployment, tokens: number): Promise<DeploymentDecision> {
    return this.takeFor(d.name, d, tokens);
  }

  async takeFor(
    name: string,
    limits: { rpm?: number | undefined; tpm?: number | undefined },
    tokens: number,
  ): Promise<DeploymentDecision> {
    if (limits.rpm !== undefined) {
      const decision = await this.#take("rpm", name, limits.rpm, 1);
      if (!decision.ok) return decision;
    }
    if (limits.tpm !== undefined && tokens > 0) {
      const decision = await this.#take("tpm", name, limits.tpm, tokens);
      if (!decision.ok) return decision;
    }
    return { ok: true };
  }

  async #take(
    limit: LimitKind,
    name: string,
    perMinute: number,
    cost: number,
  ): Promise<DeploymentDecision> {
    const limiter = await this.#limiter(limit, perMinute);
    const decision: RateDecision = await limiter.take(`${limit}:${name}`, cost);
    if (decision.ok) return decision;
    if (decision.reason === "cost-exceeds-burst") {
      return { ok: false, limit, reason: decision.reason, retryAfterMs: WINDOW_MS };
    }
    return { ok: false, limit, reason: decision.reason, retryAfterMs: decision.retryAfterMs };
  }

  #limiter(limit: LimitKind, perMinute: number): Promise<RateLimiter> {
    // One limiter per (kind, limit value): the kit's limiter has one rate and burst, and keys
    // (the deployment's name) share it.
    const id = `${limit}:${perMinute}`;
    let limiter = this.#limiters.get(id);
    if (limiter === undefined) {
      const opts = {
        rate: perMinute / 60,
        burst: perMinute,
        lease: leaseFor(perMinute),
        logger: this.#logger,
      };
      limiter = openKvRateLimiter(this.#nc, this.#bucket, opts).catch((err: unknown) => {
        // Opening the bucket failed (NATS down after start-up): limit per replica for now and
        // try the shared state again on a later call.
        this.#limiters.delete(id);
        this.#logger.warn({ err }, "rate limit state unavailable; limiting per replica for now");
        let fallback = this.#fallbacks.get(id);
        if (fallback === undefined) {
          fallback = localLimiter(opts.rate, opts.burst);
          this.#fallbacks.set(id, fallback);
        }
        return fallback;
      });
      this.#limiters.set(id, limiter);
    }
    return limiter;
  }
}

function localLimiter(rate: number, burst: number): RateLimiter {
  const buckets = new LocalBuckets(rate, burst);
  return {
    take: (key, cost) => Promise.resolve(buckets.take(key, cost)),
    kvOperations: 0,
  };
}
