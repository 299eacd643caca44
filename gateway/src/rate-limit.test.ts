import { describe, expect, it } from "vitest";
import { LocalBuckets } from "./rate-limit.js";

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
});
