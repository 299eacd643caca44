import { captureLogs, natsUrl, uniqueName } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectNats, type NatsConnection } from "./nats.js";
import { LocalBuckets, openKvRateLimiter } from "./rate-limit.js";

describe("local token bucket", () => {
  it("burst then refill - refuses past the burst with the time until the next token", () => {
    let now = 1_000_000;
    const buckets = new LocalBuckets(2, 3, () => now);
    const taken = [1, 2, 3, 4].map(() => buckets.take("alice").ok);
    expect(taken).toEqual([true, true, true, false]);
    const refused = buckets.take("alice");
    expect(refused.ok).toBe(false);
    if (!refused.ok) expect(refused.retryAfterMs).toBe(500);
    expect(buckets.take("bob").ok).toBe(true);
    now += 500;
    expect(buckets.take("alice").ok).toBe(true);
    expect(buckets.take("alice").ok).toBe(false);
  });

  it("cost - takes several tokens at once, waits for the missing ones, refuses more than the burst", () => {
    let now = 1_000_000;
    const buckets = new LocalBuckets(10, 100, () => now);
    expect(buckets.take("d", 70).ok).toBe(true);
    const refused = buckets.take("d", 40);
    expect(refused).toEqual({ ok: false, reason: "rate", retryAfterMs: 1_000 });
    expect(buckets.take("d", 30).ok).toBe(true);
    expect(buckets.take("d", 101)).toEqual({
      ok: false,
      reason: "cost-exceeds-burst",
      retryAfterMs: Number.POSITIVE_INFINITY,
    });
    expect(buckets.take("d", 0).ok).toBe(true);
    now += 1_000;
    expect(buckets.take("d", 10).ok).toBe(true);
    expect(buckets.take("d", 1).ok).toBe(false);
  });
});

describe("kv token bucket", () => {
  let nc: NatsConnection;
  const logs = captureLogs();
  beforeAll(async () => {
    nc = await connectNats({ url: natsUrl(), name: "kit-rate-limit-test", logger: logs.logger });
  });
  afterAll(async () => {
    await nc.drain();
  });

  it("cost - a cost above the lease is taken in one round trip, a cost above the burst without any", async () => {
    let now = 1_000_000;
    const limiter = await openKvRateLimiter(nc, uniqueName("kitrl"), {
      rate: 1,
      burst: 100,
      lease: 5,
      leaseTtlMs: 60_000,
      logger: logs.logger,
      now: () => now,
    });
    expect(await limiter.take("deployment", 40)).toEqual({ ok: true });
    // get + create: one round trip for 40 tokens although the lease is 5
    expect(limiter.kvOperations).toBe(2);
    expect(await limiter.take("deployment", 101)).toEqual({
      ok: false,
      reason: "cost-exceeds-burst",
      retryAfterMs: Number.POSITIVE_INFINITY,
    });
    expect(limiter.kvOperations).toBe(2);
    // 60 left globally: 61 is refused with the time one missing token takes to refill...
    const refused = await limiter.take("deployment", 61);
    expect(refused).toEqual({ ok: false, reason: "rate", retryAfterMs: 1_000 });
    // ...and asked again before then without KV, while a smaller cost still goes through.
    const ops = limiter.kvOperations;
    now += 500;
    expect((await limiter.take("deployment", 61)).ok).toBe(false);
    expect(limiter.kvOperations).toBe(ops);
    expect(await limiter.take("deployment", 60)).toEqual({ ok: true });
    expect((await limiter.take("deployment", 1)).ok).toBe(false);
  });

  it("concurrent - a burst on two limiters sharing a bucket gets exactly the burst, in a few round trips", async () => {
    const bucket = uniqueName("kitrl");
    const opts = { rate: 0.001, burst: 30, lease: 1, logger: logs.logger };
    const a = await openKvRateLimiter(nc, bucket, opts);
    const b = await openKvRateLimiter(nc, bucket, opts);
    const decisions = await Promise.all(
      Array.from({ length: 80 }, (_, i) => (i % 2 === 0 ? a : b).take("carol")),
    );
    // the calls waiting on one replica's round trip are served by it: nobody is refused for
    // lack of rounds while tokens are left, and nobody gets a token the bucket did not have
    expect(decisions.filter((d) => d.ok)).toHaveLength(30);
    expect(a.kvOperations + b.kvOperations).toBeLessThanOrEqual(12);
    const refused = decisions.find((d) => !d.ok);
    expect(refused).toMatchObject({ ok: false, reason: "rate" });
    if (refused !== undefined && !refused.ok) expect(refused.retryAfterMs).toBeGreaterThan(100_000);
  });
});
