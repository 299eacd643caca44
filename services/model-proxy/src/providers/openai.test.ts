// The OpenAI-compatible adapter against the real simulator (HTTP), through the official SDK.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ChatRequestSchema, ChatRole, FinishReason, type ChatRequest } from "@ensemble/proto";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { collect, thrown } from "@ensemble/testkit";
import { getEventListeners } from "node:events";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chatParams, createOpenAiClient } from "./openai.js";
import { ProviderError, type Deployment } from "./types.js";

const KEY = "sk-openai-test-1a2b3c4d5e";
let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0, tokensPerSecond: 0 } });
});
afterAll(async () => {
  await sim.close();
});

function deployment(over: Partial<Deployment> = {}): Deployment {
  return {
    name: "sim",
    provider: "simulator",
    api: "openai",
    baseUrl: `${sim.url}/v1`,
    apiKey: KEY,
    weight: 1,
    timeoutMs: 2000,
    simulated: true,
    ...over,
  };
}

function ask(text: string, over: MessageInitShape<typeof ChatRequestSchema> = {}): ChatRequest {
  return create(ChatRequestSchema, {
    model: "x",
    messages: [
      { role: ChatRole.SYSTEM, content: [{ part: { case: "text", value: "Be brief." } }] },
      { role: ChatRole.USER, content: [{ part: { case: "text", value: text } }] },
    ],
    ...over,
  });
}

const failure = (p: Promise<unknown>) => thrown(p, ProviderError);

const signal = (): AbortSignal => new AbortController().signal;

describe("openai adapter", () => {
  it("chat - text, finish reason and usage from the provider", async () => {
    const client = createOpenAiClient(deployment());
    const r = await client.chat({
      model: "sim-fast",
      request: ask("Name three rivers"),
      signal: signal(),
    });
    const text = r.message.content
      .map((p) => (p.part.case === "text" ? p.part.value : ""))
      .join("");
    expect(text).toContain('[simulated sim-fast] You said: "Name three rivers"');
    expect(r.finishReason).toBe(FinishReason.STOP);
    expect(r.inputTokens).toBeGreaterThan(0);
    expect(r.outputTokens).toBeGreaterThan(0);
  });

  it("streamChat - deltas, then one end carrying usage; max_tokens ends with LENGTH", async () => {
    const client = createOpenAiClient(deployment());
    const chunks = await collect(
      client.streamChat({
        model: "sim-fast",
        request: ask("Tell me a story", { maxTokens: 5 }),
        signal: signal(),
      }),
    );
    const end = chunks.at(-1);
    expect(chunks.filter((c) => c.type === "delta").length).toBeGreaterThan(1);
    expect(end).toMatchObject({ type: "end", finishReason: FinishReason.LENGTH, outputTokens: 5 });
    expect(chunks.filter((c) => c.type === "end")).toHaveLength(1);
  });

  it("classifies failures: 429 with its wait, 5xx, a cut stream, a timeout, a refused connection", async () => {
    const headers = (fail: string) =>
      createOpenAiClient(deployment({ headers: { "x-sim-fail": fail, "x-sim-retry-after": "3" } }));
    const limited = await failure(
      headers("429").chat({ model: "sim-fast", request: ask("hi"), signal: signal() }),
    );
    expect(limited).toMatchObject({ kind: "rate_limit", status: 429, retryAfterMs: 3000 });
    expect(
      (
        await failure(
          headers("503").chat({ model: "sim-fast", request: ask("hi"), signal: signal() }),
        )
      ).kind,
    ).toBe("server");
    const cut = await failure(
      collect(
        headers("cut").streamChat({
          model: "sim-fast",
          request: ask("a long answer please"),
          signal: signal(),
        }),
      ),
    );
    expect(cut.kind).toBe("stream_cut");
    const slow = createOpenAiClient(
      deployment({ timeoutMs: 200, headers: { "x-sim-fail": "timeout" } }),
    );
    expect(
      (await failure(slow.chat({ model: "sim-fast", request: ask("hi"), signal: signal() }))).kind,
    ).toBe("timeout");
    const nowhere = createOpenAiClient(deployment({ baseUrl: "http://127.0.0.1:9/v1" }));
    expect(
      (await failure(nowhere.chat({ model: "sim-fast", request: ask("hi"), signal: signal() })))
        .kind,
    ).toBe("network");
    const bad = await failure(
      createOpenAiClient(deployment()).chat({
        model: "no-such-model",
        request: ask("hi"),
        signal: signal(),
      }),
    );
    expect(bad.kind).toBe("invalid_request");
    expect(bad.retryable).toBe(false);
  });

  it("prompt_cache_key goes to OpenAI itself only (other compatible servers may refuse it)", () => {
    const req = create(ChatRequestSchema, {
      model: "m",
      promptCacheKey: "k1",
      messages: [{ role: ChatRole.USER, content: [{ part: { case: "text", value: "hi" } }] }],
    });
    expect(chatParams("gpt-4.1", req, true).prompt_cache_key).toBe("k1");
    expect(chatParams("llama", req, false).prompt_cache_key).toBeUndefined();
    expect(
      chatParams("gpt-4.1", create(ChatRequestSchema, { model: "m" }), true),
    ).not.toHaveProperty("prompt_cache_key");
  });

  it("never puts the key in an error message, even when the provider echoes it", async () => {
    const client = createOpenAiClient(deployment({ headers: { "x-sim-fail": "401" } }));
    const err = await failure(
      client.chat({ model: "sim-fast", request: ask("hi"), signal: signal() }),
    );
    expect(err.kind).toBe("auth");
    expect(err.message).not.toContain(KEY);
  });

  it("embed and generateImage", async () => {
    const client = createOpenAiClient(deployment());
    const e = await client.embed({
      model: "sim-embed",
      inputs: ["apples and pears", "apples"],
      dimensions: 32,
      signal: signal(),
    });
    expect(e.vectors.map((v) => v.length)).toEqual([32, 32]);
    expect(e.inputTokens).toBeGreaterThan(0);
    const img = await client.generateImage({
      model: "sim-image",
      prompt: "a red square",
      n: 2,
      size: "32x32",
      quality: "",
      format: 0,
      signal: signal(),
    });
    expect(img.images).toHaveLength(2);
    expect(Buffer.from(img.images[0]!.data.subarray(1, 4)).toString()).toBe("PNG");
  });

  it("leaves no listener on the caller's signal, and the caller's abort still ends a call", async () => {
    // The SDK never removes the listener it adds; left on the call's signal, each would run
    // (and make an AbortError) when the call ends.
    const client = createOpenAiClient(deployment());
    const ac = new AbortController();
    const listeners = () => getEventListeners(ac.signal, "abort").length;
    await client.chat({ model: "sim-fast", request: ask("hi"), signal: ac.signal });
    await client.embed({ model: "sim-embed", inputs: ["a"], signal: ac.signal });
    await client.generateImage({
      model: "sim-image",
      prompt: "a dot",
      n: 1,
      size: "32x32",
      quality: "",
      format: 0,
      signal: ac.signal,
    });
    await collect(client.streamChat({ model: "sim-fast", request: ask("hi"), signal: ac.signal }));
    expect(listeners()).toBe(0);

    const slow = createOpenAiClient(deployment({ headers: { "x-sim-latency-ms": "5000" } }));
    const reason = new Error("caller left");
    const pending = slow.chat({ model: "sim-fast", request: ask("hi"), signal: ac.signal });
    setTimeout(() => ac.abort(reason), 50);
    expect(await pending.catch((err: unknown) => err)).toBe(reason);
  });
});
