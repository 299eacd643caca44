// Per-deployment rpm/tpm limits against real NATS: two limiters on separate connections stand for
// two model-proxy replicas sharing one KV bucket.
import { connectNats, type NatsConnection } from "@ensemble/kit";
import { captureLogs, natsUrl, uniqueName } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDeploymentLimiter, type DeploymentLimiter } from "../src/limits.js";
import type { Deployment } from "../src/providers/types.js";

function deployment(limits: { rpm?: number; tpm?: number }, name = uniqueName("dep")): Deployment {
  return {
    name,
    provider: "simulator",
    api: "openai",
    weight: 1,
    timeoutMs: 10_000,
    simulated: true,
    ...limits,
  };
}

describe("deployment limits", () => {
  const logs = captureLogs();
  const connections: NatsConnection[] = [];
  let bucket: string;
  let a: DeploymentLimiter;
  let b: DeploymentLimiter;

  beforeAll(async () => {
    bucket = uniqueName("mplimits");
    for (const name of ["replica-a", "replica-b"]) {
      connections.push(await connectNats({ url: natsUrl(), name, logger: logs.logger }));
    }
    a = await openDeploymentLimiter(connections[0]!, bucket, logs.logger);
    b = await openDeploymentLimiter(connections[1]!, bucket, logs.logger);
  });
  afterAll(async () => {
    await Promise.all(connections.map((nc) => nc.drain()));
  });

  it("rpm - a concurrent burst of 100 calls over two replicas gets 30 of rpm 30, the rest a wait of about 2 s", async () => {
    const d = deployment({ rpm: 30 });
    const started = Date.now();
    const decisions = await Promise.all(
      Array.from({ length: 100 }, (_, i) => (i % 2 === 0 ? a : b).take(d, 0)),
    );
    const refill = Math.floor(((Date.now() - started) / 1000) * (30 / 60));
    const granted = decisions.filter((x) => x.ok).length;
    expect(granted).toBeLessThanOrEqual(30 + refill);
    // leases strand at most one token per replica (lease = max(1, floor(30 / 20)) = 1)
    expect(granted).toBeGreaterThanOrEqual(28);
    for (const x of decisions) {
      if (x.ok) continue;
      expect(x).toMatchObject({ limit: "rpm", reason: "rate" });
      // one request refills in 60 / 30 = 2 s
      expect(x.retryAfterMs).toBeGreaterThan(0);
      expect(x.retryAfterMs).toBeLessThanOrEqual(2_000);
    }
  });

  it("rpm - calls alternating between replicas are served by both and never above the limit", async () => {
    const d = deployment({ rpm: 30 });
    const started = Date.now();
    const served = { a: 0, b: 0 };
    for (let i = 0; i < 100; i++) {
      const replica = i % 2 === 0 ? "a" : "b";
      if ((await (replica === "a" ? a : b).take(d, 0)).ok) served[replica] += 1;
    }
    const refill = Math.floor(((Date.now() - started) / 1000) * (30 / 60));
    expect(served.a + served.b).toBeLessThanOrEqual(30 + refill);
    expect(served.a + served.b).toBeGreaterThanOrEqual(28);
    expect(served.a).toBeGreaterThan(10);
    expect(served.b).toBeGreaterThan(10);
  });

  it("tpm - a call above the limit is refused at once, a call over what is left waits for the missing tokens", async () => {
    const d = deployment({ tpm: 1_000 });
    expect(await a.take(d, 1_500)).toEqual({
      ok: false,
      limit: "tpm",
      reason: "cost-exceeds-burst",
      retryAfterMs: 60_000,
    });
    expect(await a.take(d, 800)).toEqual({ ok: true });
    const refused = await b.take(d, 300);
    expect(refused).toMatchObject({ ok: false, limit: "tpm", reason: "rate" });
    // 100 tokens missing at 1000 / 60 per second: about 6 s
    if (!refused.ok) {
      expect(refused.retryAfterMs).toBeGreaterThan(5_000);
      expect(refused.retryAfterMs).toBeLessThanOrEqual(6_000);
    }
    // what is left is still there for a smaller call, on either replica
    expect(await b.take(d, 200)).toEqual({ ok: true });
    expect((await a.take(d, 10)).ok).toBe(false);
  });

  it("rpm + tpm - a call refused by rpm takes nothing from tpm", async () => {
    const name = uniqueName("dep");
    const both = deployment({ rpm: 1, tpm: 1_000 }, name);
    expect(await a.take(both, 100)).toEqual({ ok: true });
    expect(await a.take(both, 100)).toMatchObject({ ok: false, limit: "rpm", reason: "rate" });
    // the same deployment's tpm bucket still has 900
    const tpmOnly = deployment({ tpm: 1_000 }, name);
    expect(await b.take(tpmOnly, 900)).toEqual({ ok: true });
    expect((await b.take(tpmOnly, 5)).ok).toBe(false);
  });

  it("independence - deployments have their own buckets; no limit means never refused", async () => {
    const first = deployment({ rpm: 2 });
    const second = deployment({ rpm: 2 });
    expect((await a.take(first, 0)).ok).toBe(true);
    expect((await b.take(first, 0)).ok).toBe(true);
    expect((await a.take(first, 0)).ok).toBe(false);
    expect((await a.take(second, 0)).ok).toBe(true);
    expect((await b.take(second, 0)).ok).toBe(true);
    const unlimited = deployment({});
    const decisions = await Promise.all(
      Array.from({ length: 500 }, () => a.take(unlimited, 1_000_000)),
    );
    expect(decisions.every((x) => x.ok)).toBe(true);
  });
});
