import { captureLogs, natsUrl, startNats } from "@ensemble/testkit";
import type { ChangeNotice } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { connectNats } from "./nats.js";
import { createNotices } from "./notices.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("notices", () => {
  it("notices - a change reaches another connection's subscriber", async () => {
    const logs = captureLogs();
    const [a, b] = await Promise.all([
      connectNats({ url: natsUrl(), name: "notices-a", logger: logs.logger }),
      connectNats({ url: natsUrl(), name: "notices-b", logger: logs.logger }),
    ]);
    try {
      const got: ChangeNotice[] = [];
      createNotices(b, logs.logger).subscribe("api-key", (n) => got.push(n));
      await b.flush();
      await createNotices(a, logs.logger).publish("api-key", "t1", "key_1");
      for (let i = 0; i < 50 && got.length === 0; i++) await sleep(10);
      expect(got.map((n) => [n.tenantId, n.id])).toEqual([["t1", "key_1"]]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("notices - with NATS down a change does not wait for it: publish resolves within a second and says the notice may be lost", async () => {
    const logs = captureLogs();
    const server = await startNats({});
    const nc = await connectNats({ url: server.url, name: "notices-down", logger: logs.logger });
    try {
      await server.stop();
      for (let i = 0; i < 250 && logs.find("NATS disconnected").length === 0; i++) await sleep(20);
      // (nats.js fails a flush at its next reconnect attempt; the notices' own 1 s bound also
      // covers a half-open connection, which only stale-connection detection would end.)
      const started = performance.now();
      await createNotices(nc, logs.logger).publish("tenant", "t2");
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(logs.find(/could not tell the other replicas/)).toHaveLength(1);
    } finally {
      await nc.close();
    }
  }, 60_000);
});
