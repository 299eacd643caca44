import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { captureLogs, natsUrl, startNats, uniqueName } from "@ensemble/testkit";
import type { ChangeNotice } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { connectNats } from "./nats.js";
import { createNotices, type NoticeKind } from "./notices.js";

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

  it("notices - revocations are stored: a replica that starts later reads them all, then the new ones; plain subscribers get them too", async () => {
    const logs = captureLogs();
    const root = uniqueName("notices").replaceAll("-", "_");
    const [a, b] = await Promise.all([
      connectNats({ url: natsUrl(), name: "notices-a", logger: logs.logger }),
      connectNats({ url: natsUrl(), name: "notices-b", logger: logs.logger }),
    ]);
    const replays: Array<{ unsubscribe(): void }> = [];
    try {
      const publisher = createNotices(a, logs.logger, root);
      const live: ChangeNotice[] = [];
      createNotices(b, logs.logger, root).subscribe("session", (n) => live.push(n));
      await b.flush();
      await publisher.publish("session", "t1", "sess_1");
      await publisher.publish("user", "t1", "user_1");
      await publisher.publish("api-key", "t1", "key_1"); // not a revocation: not stored
      for (let i = 0; i < 50 && live.length === 0; i++) await sleep(10);
      expect(live.map((n) => n.id)).toEqual(["sess_1"]);

      // Started after those: `ready` means it has read them.
      const got: Array<[NoticeKind, string]> = [];
      const replay = createNotices(b, logs.logger, root).replay(["user", "session"], (k, n) =>
        got.push([k, n.id]),
      );
      replays.push(replay);
      await replay.ready;
      expect(got).toEqual([
        ["session", "sess_1"],
        ["user", "user_1"],
      ]);
      await publisher.publish("user", "t1", "user_2");
      for (let i = 0; i < 100 && got.length < 3; i++) await sleep(10);
      expect(got.at(-1)).toEqual(["user", "user_2"]);

      // With nothing stored under a root, a replay is ready at once.
      const empty = createNotices(b, logs.logger, `${root}_empty`).replay(["session"], () => {});
      replays.push(empty);
      await empty.ready;
    } finally {
      for (const r of replays) r.unsubscribe();
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("notices - a replay follows the stream across a NATS restart: a revocation stored after it reaches it", async () => {
    const [logsA, logsB] = [captureLogs(), captureLogs()];
    const dataDir = await mkdtemp(join(tmpdir(), "notices-restart-"));
    let server = await startNats({ dataDir });
    const port = server.port;
    const [a, b] = await Promise.all([
      connectNats({ url: server.url, name: "notices-a", logger: logsA.logger }),
      connectNats({ url: server.url, name: "notices-b", logger: logsB.logger }),
    ]);
    const got: string[] = [];
    const replay = createNotices(b, logsB.logger).replay(["user"], (_k, n) => got.push(n.id));
    try {
      await replay.ready;
      const publisher = createNotices(a, logsA.logger);
      await publisher.publish("user", "t1", "before");
      for (let i = 0; i < 100 && got.length < 1; i++) await sleep(20);
      expect(got).toEqual(["before"]);

      await server.stop();
      for (let i = 0; i < 250 && logsA.find("NATS disconnected").length === 0; i++) await sleep(20);
      server = await startNats({ port, dataDir });
      // Stored once the publisher is back, whether or not the follower is back yet.
      for (let i = 0; i < 300 && logsA.find("NATS reconnected").length === 0; i++) await sleep(50);
      await publisher.publish("user", "t1", "after");
      expect(logsA.find(/could not store/)).toHaveLength(0);
      for (let i = 0; i < 300 && got.length < 2; i++) await sleep(50);
      expect(got).toEqual(["before", "after"]);
    } finally {
      replay.unsubscribe();
      await Promise.all([a.close(), b.close()]);
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 90_000);

  it("notices - with NATS down a change does not wait for it: publish resolves within a second (a revocation within three) and says the notice may be lost", async () => {
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
      // A revocation waits for its storage a little longer (2 s), then for the flush.
      const revoked = performance.now();
      await createNotices(nc, logs.logger).publish("session", "t2", "sess_2");
      expect(performance.now() - revoked).toBeLessThan(4_000);
      expect(logs.find(/could not store a revocation notice/)).toHaveLength(1);
    } finally {
      await nc.close();
    }
  }, 60_000);
});
