// The Anthropic and Google adapters (each through its provider's official SDK) against the real
// simulator, which speaks both APIs. What every adapter must do is one suite run for each; what
// only one offers (Google's embeddings and images, Anthropic's refusal of them) follows it.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ChatMessageSchema,
  ChatRequestSchema,
  ChatRole,
  FinishReason,
  ImageFormat,
  PromptCacheTtl,
  ToolChoice_Mode,
  type ChatMessage,
  type ChatRequest,
} from "@ensemble/proto";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { collect, thrown } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAnthropicClient, messageParams } from "./anthropic.js";
import { createGoogleClient } from "./google.js";
import {
  ProviderError,
  type ChatChunk,
  type Deployment,
  type ProviderApi,
  type ProviderClient,
} from "./types.js";

interface Adapter {
  api: Extract<ProviderApi, "anthropic" | "google">;
  key: string;
  createClient: (d: Deployment) => ProviderClient;
  /** A temperature the API takes (and the simulator's answer then depends on), if any. */
  temperature: number | undefined;
}

const ANTHROPIC: Adapter = {
  api: "anthropic",
  key: "sk-ant-test-9f8e7d6c5b4a",
  createClient: createAnthropicClient,
  temperature: undefined, // the Messages API of SDK 1.x has no sampling parameters
};
const GOOGLE: Adapter = {
  api: "google",
  key: "AIza-test-1a2b3c4d5e6f",
  createClient: createGoogleClient,
  temperature: 0.4,
};

let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0, tokensPerSecond: 0 } });
});
afterAll(async () => {
  await sim.close();
});

function deployment(adapter: Adapter, over: Partial<Deployment> = {}): Deployment {
  return {
    name: `${adapter.api}-sim`,
    provider: adapter.api,
    api: adapter.api,
    baseUrl: sim.url,
    apiKey: adapter.key,
    weight: 1,
    timeoutMs: 3000,
    simulated: true,
    ...over,
  };
}

type MessageInit = MessageInitShape<typeof ChatMessageSchema>;
type RequestInit = MessageInitShape<typeof ChatRequestSchema>;

function text(role: ChatRole, value: string): MessageInit {
  return { role, content: [{ part: { case: "text", value } }] };
}

function request(messages: MessageInit[], over: RequestInit = {}): ChatRequest {
  return create(ChatRequestSchema, { model: "x", messages, ...over });
}

const ask = request([text(ChatRole.SYSTEM, "Be brief."), text(ChatRole.USER, "Name three rivers")]);

function messageText(m: ChatMessage): string {
  return m.content.map((p) => (p.part.case === "text" ? p.part.value : "")).join("");
}

function streamed(
  client: ProviderClient,
  model: string,
  req: ChatRequest,
  signal: AbortSignal,
): Promise<ChatChunk[]> {
  return collect(client.streamChat({ model, request: req, signal }));
}

const failure = (p: Promise<unknown>) => thrown(p, ProviderError);

const never = (): AbortSignal => new AbortController().signal;

describe.each([ANTHROPIC, GOOGLE])("$api adapter", (adapter) => {
  it("chat answers with the simulator's text, token counts and finish reasons", async () => {
    const client = adapter.createClient(deployment(adapter));
    const res = await client.chat({
      model: "sim-fast",
      request: request(ask.messages, { temperature: adapter.temperature }),
      signal: never(),
    });
    // The same conversation on the simulator's OpenAI endpoint gives the same text.
    const openai = (await (
      await fetch(`${sim.url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify({
          model: "sim-fast",
          temperature: adapter.temperature,
          messages: [
            { role: "system", content: "Be brief." },
            { role: "user", content: "Name three rivers" },
          ],
        }),
      })
    ).json()) as {
      choices: Array<{ message: { content: string } }>;
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(messageText(res.message)).toBe(openai.choices[0]?.message.content);
    expect(res.message.role).toBe(ChatRole.ASSISTANT);
    expect(res.finishReason).toBe(FinishReason.STOP);
    expect(res.inputTokens).toBe(openai.usage.prompt_tokens);
    expect(res.outputTokens).toBe(openai.usage.completion_tokens);

    const short = await client.chat({
      model: "sim-fast",
      request: request([text(ChatRole.USER, "Name three rivers")], { maxTokens: 3 }),
      signal: never(),
    });
    expect(short.finishReason).toBe(FinishReason.LENGTH);
    expect(short.outputTokens).toBe(3);
  });

  it("streamChat yields deltas that add up to the answer, then one end with usage", async () => {
    const client = adapter.createClient(deployment(adapter));
    const unary = await client.chat({ model: "sim-medium", request: ask, signal: never() });
    const chunks = await streamed(client, "sim-medium", ask, never());
    const deltas = chunks.filter((c) => c.type === "delta");
    expect(deltas.length).toBeGreaterThan(3);
    expect(deltas.map((c) => c.content).join("")).toBe(messageText(unary.message));
    expect(chunks.filter((c) => c.type === "end")).toHaveLength(1);
    // The same token counts as the unary answer (cache and reasoning counts included).
    const { message: _m, reasoning: _r, finishReason: _f, logprobs: _l, ...counts } = unary;
    expect(chunks[chunks.length - 1]).toEqual({
      type: "end",
      finishReason: FinishReason.STOP,
      ...counts,
    });
    expect(counts.inputTokens).toBeGreaterThan(0);
  });

  it("an image part (bytes or data URL) reaches a vision model", async () => {
    const client = adapter.createClient(deployment(adapter));
    const png = Buffer.from("iVBORw0KGgoAAAANSUhEUg==", "base64");
    const req = request([
      {
        role: ChatRole.USER,
        content: [
          { part: { case: "text", value: "What is in these?" } },
          {
            part: {
              case: "image",
              value: { source: { case: "data", value: png }, mimeType: "image/png" },
            },
          },
          {
            part: {
              case: "image",
              value: { source: { case: "url", value: "data:image/jpeg;base64,/9j/4AAQ" } },
            },
          },
        ],
      },
    ]);
    const res = await client.chat({ model: "sim-vision", request: req, signal: never() });
    expect(messageText(res.message)).toContain("I received 2 images.");
    // A model without vision refuses it: the request's fault, not the deployment's.
    const refused = await failure(
      client.chat({ model: "sim-fast", request: req, signal: never() }),
    );
    expect(refused.kind).toBe("invalid_request");
    expect(refused.status).toBe(400);
  });

  it("a forced tool comes back as a tool call, unary and streamed, and its result gets text", async () => {
    const client = adapter.createClient(deployment(adapter));
    const tools: RequestInit = {
      tools: [
        {
          name: "lookup",
          description: "Looks things up",
          parameters: { type: "object", properties: {} },
        },
      ],
      toolChoice: { choice: { case: "function", value: "lookup" } },
    };
    const req = request([text(ChatRole.USER, "Find rivers")], tools);
    const res = await client.chat({ model: "sim-fast", request: req, signal: never() });
    expect(res.finishReason).toBe(FinishReason.TOOL_CALLS);
    expect(res.message.toolCalls.map((t) => [t.name, t.arguments])).toEqual([["lookup", "{}"]]);
    const id = res.message.toolCalls[0]?.id ?? "";
    expect(id).not.toBe("");

    const chunks = await streamed(client, "sim-fast", req, never());
    const calls = chunks.flatMap((c) => (c.type === "delta" ? c.toolCalls : []));
    expect(calls[0]).toMatchObject({ index: 0, id, name: "lookup" });
    expect(calls.map((c) => c.arguments).join("")).toBe("{}");
    expect(chunks[chunks.length - 1]).toMatchObject({
      type: "end",
      finishReason: FinishReason.TOOL_CALLS,
    });

    const followUp = request(
      [
        text(ChatRole.USER, "Find rivers"),
        {
          role: ChatRole.ASSISTANT,
          toolCalls: [{ id, name: "lookup", arguments: "{}" }],
        },
        { ...text(ChatRole.TOOL, '{"rivers":"Nile, Amazon"}'), toolCallId: id },
      ],
      {
        ...tools,
        toolChoice: { choice: { case: "mode", value: ToolChoice_Mode.AUTO } },
      },
    );
    const answer = await client.chat({ model: "sim-fast", request: followUp, signal: never() });
    expect(answer.finishReason).toBe(FinishReason.STOP);
    expect(messageText(answer.message)).toContain("Nile, Amazon");
  });

  it("a 429 is rate_limit with Retry-After, made once (no SDK retry); 500 and 503 are server", async () => {
    const client = adapter.createClient(deployment(adapter));
    sim.configure("sim-code", { failFirst: 1, fail: "429", retryAfterSec: 3 });
    const before = sim.requests("sim-code");
    const limited = await failure(
      client.chat({ model: "sim-code", request: ask, signal: never() }),
    );
    expect(limited.kind).toBe("rate_limit");
    expect(limited.status).toBe(429);
    expect(limited.retryAfterMs).toBe(3000);
    expect(limited.retryable).toBe(true);
    expect(sim.requests("sim-code")).toBe(before + 1);
    // The limit has passed: the next call answers.
    const ok = await client.chat({ model: "sim-code", request: ask, signal: never() });
    expect(ok.finishReason).toBe(FinishReason.STOP);

    for (const [mode, status] of [
      ["500", 500],
      ["503", 503],
    ] as const) {
      const failing = adapter.createClient(
        deployment(adapter, { headers: { "x-sim-fail": mode } }),
      );
      const beforeFail = sim.requests("sim-fast");
      const err = await failure(failing.chat({ model: "sim-fast", request: ask, signal: never() }));
      expect(sim.requests("sim-fast")).toBe(beforeFail + 1);
      expect([err.kind, err.status, err.deploymentFault]).toEqual(["server", status, true]);
      const streamErr = await failure(streamed(failing, "sim-fast", ask, never()));
      expect(streamErr.kind).toBe("server");
    }
  });

  it("a stream cut after some deltas is stream_cut, never a clean end", async () => {
    const client = adapter.createClient(deployment(adapter, { headers: { "x-sim-fail": "cut" } }));
    const seen: ChatChunk[] = [];
    const consume = async (): Promise<void> => {
      for await (const c of client.streamChat({
        model: "sim-fast",
        request: ask,
        signal: never(),
      })) {
        seen.push(c);
      }
    };
    const err = await failure(consume());
    expect(err.kind).toBe("stream_cut");
    expect(seen.some((c) => c.type === "delta")).toBe(true);
    expect(seen.some((c) => c.type === "end")).toBe(false);
  });

  it("timeouts: no answer in time, a stalled stream, and the caller's own abort", async () => {
    const slow = adapter.createClient(
      deployment(adapter, { timeoutMs: 150, headers: { "x-sim-latency-ms": "2000" } }),
    );
    const started = performance.now();
    const err = await failure(slow.chat({ model: "sim-fast", request: ask, signal: never() }));
    expect(err.kind).toBe("timeout");
    expect(performance.now() - started).toBeLessThan(1500);

    // Each chunk takes ~0.5 s: the stream starts in time, then stalls past the limit.
    const stalling = adapter.createClient(
      deployment(adapter, { timeoutMs: 200, headers: { "x-sim-tokens-per-second": "4" } }),
    );
    expect((await failure(streamed(stalling, "sim-fast", ask, never()))).kind).toBe("timeout");

    const ac = new AbortController();
    const reason = new Error("caller went away");
    setTimeout(() => ac.abort(reason), 50);
    const aborted = await slow
      .chat({ model: "sim-fast", request: ask, signal: ac.signal })
      .catch((e: unknown) => e);
    expect(aborted).toBe(reason);
  });

  it("the key never appears in an error, even when the provider echoes it", async () => {
    const client = adapter.createClient(deployment(adapter, { headers: { "x-sim-fail": "401" } }));
    const err = await failure(client.chat({ model: "sim-fast", request: ask, signal: never() }));
    expect(err.kind).toBe("auth");
    expect(err.message).toContain("[redacted]");
    expect(err.message).not.toContain(adapter.key);
    expect(String(err)).not.toContain(adapter.key);
    const streamErr = await failure(streamed(client, "sim-fast", ask, never()));
    expect(streamErr.message).not.toContain(adapter.key);
  });

  it("a refused connection is network", async () => {
    const closed = await startSimulator();
    const url = closed.url;
    await closed.close();
    const down = adapter.createClient(deployment(adapter, { baseUrl: url }));
    const err = await failure(down.chat({ model: "sim-fast", request: ask, signal: never() }));
    expect(err.kind).toBe("network");
    expect(err.message).not.toContain(adapter.key);
  });
});

describe("anthropic adapter only", () => {
  it("embeddings and images are invalid_request: the Messages API offers neither", async () => {
    const client = createAnthropicClient(deployment(ANTHROPIC));
    const emb = await failure(client.embed({ model: "m", inputs: ["x"], signal: never() }));
    expect(emb.kind).toBe("invalid_request");
    expect(emb.message).toContain("does not offer embeddings");
    const img = await failure(
      client.generateImage({
        model: "m",
        prompt: "x",
        n: 1,
        size: "",
        quality: "",
        format: ImageFormat.PNG,
        signal: never(),
      }),
    );
    expect(img.kind).toBe("invalid_request");
  });

  it("cache breakpoints become cache_control on their blocks and tools; none keeps plain strings", () => {
    const marked = (value: string) => ({
      part: { case: "text" as const, value },
      cacheBreakpoint: true,
    });
    const params = messageParams(
      "claude",
      request(
        [
          {
            role: ChatRole.SYSTEM,
            content: [marked("A long policy."), { part: { case: "text", value: "\n\nBe brief." } }],
          },
          {
            role: ChatRole.USER,
            content: [marked("A long document."), { part: { case: "text", value: "Question?" } }],
          },
          {
            role: ChatRole.ASSISTANT,
            toolCalls: [{ id: "call_1", name: "lookup", arguments: "{}" }],
          },
          { role: ChatRole.TOOL, toolCallId: "call_1", content: [marked("A long result.")] },
        ],
        {
          tools: [
            { name: "lookup" },
            { name: "search", cacheBreakpoint: true, cacheTtl: PromptCacheTtl.PROMPT_CACHE_TTL_1H },
          ],
        },
      ),
    );
    const ephemeral = { type: "ephemeral" };
    expect(params.system).toEqual([
      { type: "text", text: "A long policy.", cache_control: ephemeral },
      { type: "text", text: "\n\nBe brief." },
    ]);
    expect(params.messages[0]?.content).toEqual([
      { type: "text", text: "A long document.", cache_control: ephemeral },
      { type: "text", text: "Question?" },
    ]);
    expect(params.messages[2]?.content).toEqual([
      {
        type: "tool_result",
        tool_use_id: "call_1",
        content: "A long result.",
        cache_control: ephemeral,
      },
    ]);
    expect(params.tools?.map((t) => "cache_control" in t && t.cache_control)).toEqual([
      false,
      { type: "ephemeral", ttl: "1h" },
    ]);

    const plain = messageParams("claude", ask);
    expect(plain.system).toBe("Be brief.");
    expect(plain.messages[0]?.content).toBe("Name three rivers");
  });

  it("more than four cache breakpoints are invalid_request before any call", () => {
    const five = request(
      Array.from({ length: 5 }, (_, i) => ({
        role: ChatRole.USER,
        content: [{ part: { case: "text" as const, value: `part ${i}` }, cacheBreakpoint: true }],
      })),
    );
    let refused: unknown;
    try {
      messageParams("claude", five);
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(ProviderError);
    expect((refused as ProviderError).kind).toBe("invalid_request");
    expect((refused as ProviderError).message).toContain("at most 4");
  });
});

describe("google adapter only", () => {
  it("embed returns one vector per input, sized, in order", async () => {
    const client = createGoogleClient(deployment(GOOGLE));
    const res = await client.embed({
      model: "sim-embed",
      inputs: ["the cat sat on the mat", "quarterly revenue grew"],
      dimensions: 32,
      signal: never(),
    });
    expect(res.vectors).toHaveLength(2);
    expect(res.vectors.every((v) => v.length === 32)).toBe(true);
    const again = await client.embed({
      model: "sim-embed",
      inputs: ["quarterly revenue grew"],
      dimensions: 32,
      signal: never(),
    });
    expect(again.vectors[0]).toEqual(res.vectors[1]);
    expect(res.inputTokens).toBeGreaterThan(0);
    const wrong = await failure(
      client.embed({ model: "sim-fast", inputs: ["x"], signal: never() }),
    );
    expect(wrong.kind).toBe("invalid_request");
  });

  it("generateImage returns PNGs from an image model, sized to the closest aspect ratio", async () => {
    const client = createGoogleClient(deployment(GOOGLE));
    const res = await client.generateImage({
      model: "sim-image",
      prompt: "a red fox",
      n: 2,
      size: "1792x1024",
      quality: "",
      format: ImageFormat.PNG,
      signal: never(),
    });
    expect(res.images).toHaveLength(2);
    const png = Buffer.from(res.images[0]!.data);
    expect(png.subarray(1, 4).toString("ascii")).toBe("PNG");
    expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([256, 144]); // 16:9
    expect(res.images[0]!.mimeType).toBe("image/png");
    expect(res.outputTokens).toBeGreaterThan(0);
  });
});
