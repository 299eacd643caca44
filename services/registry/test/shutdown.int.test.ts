// The built service as a real process: start-up from the environment (seeds from deploy/config,
// self-registration), then SIGTERM in the middle of a burst of calls.
import { fileURLToPath } from "node:url";
import { connectNats, createClient, createRootLogger } from "@ensemble/kit";
import { Health, HealthCheckResponse_ServingStatus, RegistryService } from "@ensemble/proto";
import {
  createTestIssuer,
  freePort,
  mongoUrl,
  natsUrl,
  ServerProcess,
  uniqueName,
  type TestIssuer,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InstanceStore } from "../src/instances.js";

const MAIN = fileURLToPath(new URL("../dist/src/main.js", import.meta.url));

let issuer: TestIssuer;

beforeAll(async () => {
  issuer = await createTestIssuer();
});

afterAll(async () => {
  await issuer?.close();
});

describe("registry process", () => {
  it("shutdown - SIGTERM during a burst: in-flight calls complete, health turns NOT_SERVING first, exit code 0", async () => {
    const port = await freePort();
    const address = `127.0.0.1:${port}`;
    const bucket = uniqueName("instances");
    const proc = new ServerProcess("registry", process.execPath, [MAIN], {
      ...process.env,
      NATS_URL: natsUrl(),
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: uniqueName("registry"),
      JWKS_URL: issuer.jwksUrl,
      REGISTRY_ADDR: address,
      METRICS_PORT: "0",
      INSTANCE_BUCKET: bucket,
      LOG_LEVEL: "info",
      SHUTDOWN_TIMEOUT_MS: "60000",
    });
    try {
      await proc.waitForLine(/"msg":"registry listening"/, 60_000);

      const token = await issuer.mint({ tenantId: "burst", roles: ["user", "admin"] });
      const client = createClient(RegistryService, address, { token: () => token });
      // The process registered itself, with the address it listens on.
      const own = await client.listInstances({ service: "registry" });
      expect(own.instances.map((i) => i.address)).toEqual([address]);

      // Health as a load balancer sees it: a Watch stream, recording every status in order.
      const statuses: HealthCheckResponse_ServingStatus[] = [];
      const healthDone = (async () => {
        for await (const r of createClient(Health, address).watch({ service: "" }))
          statuses.push(r.status);
      })().catch(() => undefined);
      while (statuses.length === 0) await new Promise((r) => setTimeout(r, 10));
      expect(statuses).toEqual([HealthCheckResponse_ServingStatus.SERVING]);

      // A burst of catalog reads (the whole seeded catalog each), then SIGTERM while they run.
      const calls = Array.from({ length: 100 }, () =>
        client.listAddons({ page: { pageSize: 500 } }).then(
          (r) => ({ ok: true as const, count: r.addons.length }),
          (err: unknown) => ({ ok: false as const, err }),
        ),
      );
      await Promise.race(calls);
      proc.child.kill("SIGTERM");

      const results = await Promise.all(calls);
      const failed = results.filter((r) => !r.ok);
      expect(failed, JSON.stringify(failed.slice(0, 3))).toEqual([]);
      expect(results.every((r) => r.ok && r.count === 50)).toBe(true);

      const exit = await proc.exited;
      expect(exit, proc.output(40)).toEqual({ code: 0, signal: null });
      await healthDone;
      expect(statuses).toEqual([
        HealthCheckResponse_ServingStatus.SERVING,
        HealthCheckResponse_ServingStatus.NOT_SERVING,
      ]);
      expect(proc.output(200)).toMatch(/"msg":"shutdown complete"/);

      // It left the instance set on the way out.
      const logger = createRootLogger({ service: "test", version: "test", level: "silent" });
      const nc = await connectNats({ url: natsUrl(), name: "shutdown-test", logger });
      try {
        const store = await InstanceStore.open(nc, { bucket, ttlMs: 15_000, logger });
        expect(await store.list("registry")).toEqual([]);
      } finally {
        await nc.close();
      }
    } finally {
      if (proc.running) await proc.stop();
    }
  }, 90_000);
});
