// Natural batching of streamed deltas: against the real simulator through the OpenAI adapter
// (an answer sent at once arrives in a few deltas; a paced one token by token), and with small
// hand-made streams for the edges (an error after deltas, the end, a consumer that stops early).
import { create } from "@bufbuild/protobuf";
import {
  ChatRequestSchema,
  ChatRole,
  FinishReason,
  ToolCallDeltaSchema,
  type ToolCallDelta,
} from "@ensemble/proto";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { coalesceDeltas } from "./coalesce.js";
import { createOpenAiClient } from "./openai.js";
import type { ChatChunk } from "./types.js";

let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0, tokensPerSecond: 0 } });
});
afterAll(async () => {
  await sim.close();
});

const request = create(ChatRequestSchema, {
  model: "sim-fast",
  messages: [
    { role: ChatRole.USER, content: [{ part: { case: "text", value: "Tell me about rivers" } }] },
  ],
  maxTokens: 40,
});

function stream(headers: Record<string, string> = {}): AsyncIterator<ChatChunk> {
  const client = createOpenAiClient({
    name: "sim",
    provider: "simulator",
    api: "openai",
    baseUrl: `${sim.url}/v1`,
    apiKey: "sk-test-coalesce",
    weight: 1,
    timeoutMs: 5_000,
    simulated: true,
    headers,
  });
  const chunks = client.streamChat({
    model: "sim-fast",
    request,
    signal: new AbortController().signal,
  });
  return chunks[Symbol.asyncIterator]();
}

async function drain(it: AsyncIterator<ChatChunk>): Promise<ChatChunk[]> {
  const out: ChatChunk[] = [];
  for (let r = await it.next(); r.done !== true; r = await it.next()) out.push(r.value);
  return out;
}

const deltas = (chunks: ChatChunk[]) => chunks.filter((c) => c.type === "delta");
const text = (chunks: ChatChunk[]) =>
  deltas(chunks)
    .map((c) => c.content)
    .join("");

function delta(content: string, toolCalls: ToolCallDelta[] = []): ChatChunk {
  return { type: "delta", content, reasoning: "", toolCalls };
}

describe("coalesceDeltas", () => {
  it("an answer that arrives at once goes out in a few deltas, with the same text and end", async () => {
    const plain = await drain(stream());
    const merged = await drain(coalesceDeltas(stream()));
    expect(deltas(plain).length).toBeGreaterThan(10);
    expect(deltas(merged).length).toBeLessThanOrEqual(deltas(plain).length / 4);
    expect(text(merged)).toBe(text(plain));
    expect(merged.at(-1)).toEqual(plain.at(-1));
    expect(merged.at(-1)?.type).toBe("end");
  });

  it("a paced answer still goes out token by token", async () => {
    // 50 tokens/s: a token every 20 ms, each in its own network write. Only an event-loop stall
    // longer than that (a loaded CI machine) lets two arrive together, hence "most", not "all".
    const paced = { "x-sim-tokens-per-second": "50" };
    const plain = await drain(stream(paced));
    const merged = await drain(coalesceDeltas(stream(paced)));
    expect(text(merged)).toBe(text(plain));
    expect(deltas(merged).length).toBeGreaterThanOrEqual(deltas(plain).length * 0.6);
  });

  it("deltas before an error are sent, then the error; the end and tool calls survive merging", async () => {
    // Plain generators: their chunks are all there at once, as parsed from one network read.
    // eslint-disable-next-line @typescript-eslint/require-await
    async function* failing(): AsyncGenerator<ChatChunk> {
      yield delta("a");
      yield delta("b", [
        create(ToolCallDeltaSchema, { index: 0, id: "c1", name: "f", arguments: '{"x":' }),
      ]);
      yield delta("c", [create(ToolCallDeltaSchema, { index: 0, arguments: "1}" })]);
      throw new Error("cut");
    }
    const it = coalesceDeltas(failing());
    const first = await it.next();
    expect(first.value).toMatchObject({ type: "delta", content: "abc" });
    const calls = first.value?.type === "delta" ? first.value.toolCalls : [];
    expect(calls.map((c) => c.arguments).join("")).toBe('{"x":1}');
    await expect(it.next()).rejects.toThrow("cut");

    // eslint-disable-next-line @typescript-eslint/require-await
    async function* ending(): AsyncGenerator<ChatChunk> {
      yield delta("x");
      yield { type: "end", finishReason: FinishReason.STOP, inputTokens: 1, outputTokens: 1 };
    }
    const chunks = await drain(coalesceDeltas(ending()));
    expect(chunks.map((c) => c.type)).toEqual(["delta", "end"]);
  });

  it("a consumer that stops early closes the provider's stream", async () => {
    let closed = false;
    async function* endless(): AsyncGenerator<ChatChunk> {
      try {
        for (let i = 0; ; i++) {
          yield delta(String(i));
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
      } finally {
        closed = true;
      }
    }
    const it = coalesceDeltas(endless());
    await it.next();
    await it.return?.();
    expect(closed).toBe(true);
  });
});
