// The response cache against real NATS: two cache instances on separate connections stand for
// two model-proxy replicas sharing one KV bucket.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { connectNats, type NatsConnection } from "@ensemble/kit";
import {
  CacheMode,
  ChatRequestSchema,
  ChatRole,
  EmbedRequestSchema,
  type ChatRequest,
} from "@ensemble/proto";
import { captureLogs, natsUrl, uniqueName } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cacheKey, openResponseCache, type ResponseCache } from "../src/cache.js";

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (value: Uint8Array | undefined): string | undefined =>
  value === undefined ? undefined : new TextDecoder().decode(value);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

type ChatInit = Exclude<MessageInitShape<typeof ChatRequestSchema>, ChatRequest>;

function chat(init: Omit<ChatInit, "$typeName"> = {}): ChatRequest {
  return create(ChatRequestSchema, {
    model: "gpt-4o-mini",
    messages: [
      { role: ChatRole.SYSTEM, content: [{ part: { case: "text", value: "Be brief." } }] },
      { role: ChatRole.USER, content: [{ part: { case: "text", value: "What is NATS?" } }] },
    ],
    temperature: 0.2,
    ...init,
  });
}

describe("response cache", () => {
  const logs = captureLogs();
  const connections: NatsConnection[] = [];
  const TTL_MS = 1_500;
  let bucket: string;
  let a: ResponseCache;
  let b: ResponseCache;

  beforeAll(async () => {
    bucket = uniqueName("mpcache");
    for (const name of ["replica-a", "replica-b"]) {
      connections.push(await connectNats({ url: natsUrl(), name, logger: logs.logger }));
    }
    a = await openResponseCache(connections[0]!, { bucket, ttlMs: TTL_MS, logger: logs.logger });
    b = await openResponseCache(connections[1]!, { bucket, ttlMs: TTL_MS, logger: logs.logger });
  });
  afterAll(async () => {
    await Promise.all(connections.map((nc) => nc.drain()));
  });

  it("ttl - an answer stored by one replica is served by the other within the TTL and by none after it", async () => {
    const key = cacheKey(ChatRequestSchema, chat());
    await a.set("acme", key, bytes("NATS is a messaging system."));
    expect(text(await b.get("acme", key))).toBe("NATS is a messaging system.");
    expect(text(await a.get("acme", key))).toBe("NATS is a messaging system.");
    await sleep(TTL_MS + 500);
    expect(await a.get("acme", key)).toBeUndefined();
    expect(await b.get("acme", key)).toBeUndefined();
  });

  it("ttl - JetStream itself drops the entry (the bucket's ttl is the cache TTL)", async () => {
    const key = cacheKey(ChatRequestSchema, chat({ temperature: 1.1 }));
    await a.set("acme", key, bytes("x"));
    const { Kvm } = await import("@nats-io/kv");
    const kv = await new Kvm(connections[0]!).open(bucket);
    expect((await kv.status()).ttl).toBe(TTL_MS);
    expect((await kv.status()).values).toBeGreaterThan(0);
    // JetStream expires by age on a timer of its own: allow it a couple of seconds past the ttl
    const deadline = Date.now() + TTL_MS + 5_000;
    while ((await kv.status()).values > 0 && Date.now() < deadline) await sleep(200);
    expect((await kv.status()).values).toBe(0);
  });

  it("tenants - tenant B never reads tenant A's entry for the same request, nor overwrites it", async () => {
    const key = cacheKey(ChatRequestSchema, chat({ temperature: 0.7 }));
    await a.set("tenant-a", key, bytes("answer for A"));
    expect(await b.get("tenant-b", key)).toBeUndefined();
    await b.set("tenant-b", key, bytes("answer for B"));
    expect(text(await a.get("tenant-a", key))).toBe("answer for A");
    expect(text(await a.get("tenant-b", key))).toBe("answer for B");
  });

  it("size - a value over the server's max payload is not stored and does not fail", async () => {
    const max = connections[0]!.info?.max_payload ?? 1024 * 1024;
    const key = cacheKey(ChatRequestSchema, chat({ temperature: 1.9 }));
    await expect(a.set("acme", key, new Uint8Array(max + 1))).resolves.toBeUndefined();
    expect(await a.get("acme", key)).toBeUndefined();
  });

  it("failures - with NATS gone, set is swallowed (logged at warn) and get is a miss", async () => {
    const nc = await connectNats({ url: natsUrl(), name: "replica-c", logger: logs.logger });
    const c = await openResponseCache(nc, { bucket, ttlMs: TTL_MS, logger: logs.logger });
    await nc.close();
    const key = cacheKey(ChatRequestSchema, chat());
    await expect(c.set("acme", key, bytes("x"))).resolves.toBeUndefined();
    await expect(c.get("acme", key)).resolves.toBeUndefined();
    const warnings = logs.find("response cache write failed");
    expect(warnings.length).toBeGreaterThan(0);
    expect(warnings[0]?.["level"]).toBe(40);
  });
});

describe("cache key", () => {
  it("ignores what cannot change the answer: cache mode, attribution, metadata", () => {
    const plain = cacheKey(ChatRequestSchema, chat());
    const labelled = cacheKey(
      ChatRequestSchema,
      chat({
        cache: CacheMode.USE,
        attribution: { runId: "run-1", stepId: "s1", attempt: 2, idempotencyKey: "k" },
        metadata: { feature: "chat", team: "search" },
      }),
    );
    expect(labelled).toBe(plain);
    expect(plain).toMatch(/^[0-9a-f]{64}$/);
  });

  it("counts everything else: messages, temperature, model, tools; not the order of JSON keys", () => {
    const plain = cacheKey(ChatRequestSchema, chat());
    expect(cacheKey(ChatRequestSchema, chat({ temperature: 0.3 }))).not.toBe(plain);
    expect(cacheKey(ChatRequestSchema, chat({ temperature: undefined }))).not.toBe(plain);
    expect(cacheKey(ChatRequestSchema, chat({ model: "gpt-4o" }))).not.toBe(plain);
    expect(
      cacheKey(
        ChatRequestSchema,
        chat({
          messages: [
            { role: ChatRole.USER, content: [{ part: { case: "text", value: "What is Kafka?" } }] },
          ],
        }),
      ),
    ).not.toBe(plain);
    const tool = (parameters: Record<string, unknown>) =>
      cacheKey(
        ChatRequestSchema,
        chat({ tools: [{ name: "lookup", parameters: parameters as never }] }),
      );
    const schemaAB = {
      type: "object",
      properties: { a: { type: "string" }, b: { type: "number" } },
    };
    const schemaBA = {
      properties: { b: { type: "number" }, a: { type: "string" } },
      type: "object",
    };
    expect(tool(schemaAB)).toBe(tool(schemaBA));
    expect(tool(schemaAB)).not.toBe(plain);
    expect(tool(schemaAB)).not.toBe(tool({ ...schemaAB, required: ["a"] }));
  });

  it("metadata map order and request type - one request one key; chat and embed never collide", () => {
    const m1 = cacheKey(ChatRequestSchema, chat({ metadata: { x: "1", y: "2" } }));
    const m2 = cacheKey(ChatRequestSchema, chat({ metadata: { y: "2", x: "1" } }));
    expect(m1).toBe(m2);
    const embed = create(EmbedRequestSchema, { model: "gpt-4o-mini" });
    const chatOnlyModel = create(ChatRequestSchema, { model: "gpt-4o-mini" });
    expect(cacheKey(EmbedRequestSchema, embed)).not.toBe(
      cacheKey(ChatRequestSchema, chatOnlyModel),
    );
    expect(
      cacheKey(EmbedRequestSchema, create(EmbedRequestSchema, { model: "m", inputs: ["a"] })),
    ).toBe(
      cacheKey(
        EmbedRequestSchema,
        create(EmbedRequestSchema, {
          model: "m",
          inputs: ["a"],
          cache: CacheMode.BYPASS,
          attribution: { sessionId: "s" },
        }),
      ),
    );
  });
});
