import { connect } from "@nats-io/transport-node";
import { afterAll, describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { natsUrl } from "./context.js";
import { startNats, type RunningServer } from "./nats.js";

describe("startNats", () => {
  const servers: RunningServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.stop();
  });

  it("startNats - serves publish/subscribe and JetStream on its own port", async () => {
    const server = await startNats();
    servers.push(server);
    expect(server.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
    const nc = await connect({ servers: server.url });
    try {
      const sub = nc.subscribe("testkit.hello", { max: 1 });
      nc.publish("testkit.hello", "hi");
      for await (const msg of sub) expect(msg.string()).toBe("hi");
      // JetStream is on: the account info request answers instead of "no responders".
      const info = await nc.request("$JS.API.INFO");
      expect(info.json<{ type: string }>().type).toBe(
        "io.nats.jetstream.api.v1.account_info_response",
      );
    } finally {
      await nc.close();
    }
  });

  it("startNats - stop() ends the server and removes its temporary data", async () => {
    const server = await startNats();
    await server.stop();
    expect(server.process.running).toBe(false);
    expect(existsSync(server.dataDir)).toBe(false);
    await expect(
      connect({ servers: server.url, reconnect: false, timeout: 1_000 }),
    ).rejects.toThrow();
  });

  it("startNats - two servers asked for the same port: the second fails and names it", async () => {
    const first = await startNats();
    servers.push(first);
    await expect(startNats({ port: first.port, readyTimeoutMs: 10_000 })).rejects.toThrow(
      new RegExp(`nats-server \\(port ${first.port}\\) exited before it was ready`),
    );
  });

  it("natsUrl - the global setup's server answers", async () => {
    const nc = await connect({ servers: natsUrl() });
    await nc.flush();
    await nc.close();
  });
});
