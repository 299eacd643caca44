import { headers as natsHeaders } from "@nats-io/transport-node";
import { captureLogs, natsUrl, startNats, uniqueName } from "@ensemble/testkit";
import { context, trace } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  connectNats,
  ensureStream,
  headersToRecord,
  jetstream,
  jetstreamManager,
  publishEvent,
  type NatsConnection,
} from "./nats.js";
import { extractTraceContext, getTracer, initTracing, type Tracing } from "./tracing.js";

let tracing: Tracing;
beforeAll(() => {
  tracing = initTracing({ service: "nats-test", version: "0" });
});
afterAll(async () => {
  await tracing.shutdown();
});

function withCredentials(url: string, userinfo: string): string {
  return url.replace("nats://", `nats://${userinfo}@`);
}

describe("nats", () => {
  let nc: NatsConnection;
  const logs = captureLogs();
  beforeAll(async () => {
    // The test server has no auth, so it accepts (and ignores) these credentials; they must
    // still never reach a log line.
    nc = await connectNats({
      url: withCredentials(natsUrl(), "alice:s3cr3t-pass"),
      name: "kit-test",
      logger: logs.logger,
    });
  });
  afterAll(async () => {
    await nc.drain();
  });

  it("nats - connects and logs it without credentials", () => {
    expect(logs.find("NATS connected")).toHaveLength(1);
    expect(logs.text()).not.toContain("s3cr3t-pass");
  });

  it("nats - ensureStream creates, is idempotent, and applies changes", async () => {
    const jsm = await jetstreamManager(nc);
    const name = uniqueName("KIT")
      .toUpperCase()
      .replace(/[^A-Z0-9_]/g, "_");
    const subject = `${name.toLowerCase()}.>`;
    const created = await ensureStream(jsm, { name, subjects: [subject], max_msgs: 100 });
    expect(created.config.max_msgs).toBe(100);
    const again = await ensureStream(jsm, { name, subjects: [subject], max_msgs: 100 });
    expect(again.config.subjects).toEqual([subject]);
    const changed = await ensureStream(jsm, { name, subjects: [subject], max_msgs: 500 });
    expect(changed.config.max_msgs).toBe(500);
    expect((await jsm.streams.info(name)).config.max_msgs).toBe(500);
    await jsm.streams.delete(name);
  });

  it("nats - publishing the same msgId twice stores one message, with trace headers", async () => {
    const jsm = await jetstreamManager(nc);
    const js = jetstream(nc);
    const name = uniqueName("EVT")
      .toUpperCase()
      .replace(/[^A-Z0-9_]/g, "_");
    const subject = `${name.toLowerCase()}.created`;
    await ensureStream(jsm, { name, subjects: [`${name.toLowerCase()}.>`] });

    const span = getTracer().startSpan("publish");
    const payload = new TextEncoder().encode("run-1 created");
    const [first, second] = await context.with(trace.setSpan(context.active(), span), async () => [
      await publishEvent(js, subject, payload, {
        msgId: "run-1:created",
        headers: { "x-event": "created" },
      }),
      await publishEvent(js, subject, payload, { msgId: "run-1:created" }),
    ]);
    span.end();
    expect(first?.duplicate).toBe(false);
    expect(second?.duplicate).toBe(true);
    const third = await publishEvent(js, subject, payload, { msgId: "run-1:classified" });
    expect(third.duplicate).toBe(false);

    const info = await jsm.streams.info(name);
    expect(info.state.messages).toBe(2);

    const stored = await jsm.streams.getMessage(name, { seq: 1 });
    expect(new TextDecoder().decode(stored?.data)).toBe("run-1 created");
    const h = headersToRecord(stored?.header);
    expect(h["nats-msg-id"]).toBe("run-1:created");
    expect(h["x-event"]).toBe("created");
    const remote = trace.getSpanContext(extractTraceContext(h));
    expect(remote?.traceId).toBe(span.spanContext().traceId);
    await jsm.streams.delete(name);
  });

  it("nats - headersToRecord lower-cases names", () => {
    const h = natsHeaders();
    h.set("TraceParent", "x");
    expect(headersToRecord(h)).toEqual({ traceparent: "x" });
  });
});

describe("nats connection lifecycle", () => {
  it("nats - a server that never comes up fails with a clear error, no credentials", async () => {
    const logs = captureLogs();
    const err = await connectNats({
      url: "nats://bob:hunter2@127.0.0.1:1",
      name: "kit-test",
      logger: logs.logger,
      connectAttempts: 2,
    }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/could not connect to NATS at nats:\/\/\*\*\*@127\.0\.0\.1:1/);
    expect(err?.message).not.toContain("hunter2");
    expect(logs.find(/retrying/)).toHaveLength(1);
    expect(logs.text()).not.toContain("hunter2");
  });

  it("nats - a restarted server is reconnected to and both changes are logged", async () => {
    const logs = captureLogs();
    let server = await startNats({});
    const port = Number(new URL(server.url).port);
    const nc = await connectNats({ url: server.url, name: "kit-test", logger: logs.logger });
    try {
      await server.stop();
      await waitFor(() => logs.find("NATS disconnected").length > 0);
      server = await startNats({ port });
      await waitFor(() => logs.find("NATS reconnected").length > 0, 15_000);
      // The connection works again.
      const sub = nc.subscribe("ping.back", { max: 1 });
      nc.publish("ping.back", "hi");
      for await (const m of sub) expect(m.string()).toBe("hi");
    } finally {
      await nc.close();
      await server.stop();
    }
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
