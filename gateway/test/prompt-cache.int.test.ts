// Provider prompt caching through the gateway, with the official `openai` and
// `@anthropic-ai/sdk` clients against a real mesh (auth, registry and model-proxy as built
// processes, the LLM simulator in-process as the only provider). The simulator caches repeated
// prompts of 1024 tokens or more as OpenAI does; these tests check what clients see of it: the
// usage details of each API, the cost at the cached price, and `cache_control` accepted where
// clients send it (and refused, with the field named, when malformed).
//
// The simulator models are served through model-proxy's OpenAI-compatible adapter, which
// ignores breakpoints (OpenAI caches by itself), so `cache_control` on /v1/messages changes
// nothing here but must be accepted; the Anthropic adapter's use of breakpoints is tested in
// model-proxy.
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { AuthService, ModelProxyService, RegistryService } from "@ensemble/proto";
import { startServices, type Services } from "@ensemble/testkit";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGateway, type TestGateway } from "./harness.js";

/** sim-fast's prices in deploy/config/models.yaml, USD per million tokens. */
const INPUT_PRICE = 0.1;
const CACHED_PRICE = 0.025;
/** The simulator reads the longest cached prefix at a 128-token step from 1024. */
const CACHED = 1024;

let sim: Simulator;
let services: Services;
let gw: TestGateway;
let accessToken: string;

/**
 * `n` different words, one simulator token each, so a prompt's token count is known; a
 * different `from` gives a prompt no other test sent (the simulator's cache is per model and
 * upstream key, which every test here shares).
 */
function distinctWords(n: number, from: number): string {
  return Array.from({ length: n }, (_, i) => `w${from + i}`).join(" ");
}

/** One user message of 1093 words: 1100 prompt tokens with the chat framing. */
const LONG_WORDS = 1093;
const LONG_PROMPT_TOKENS = 1100;

/** The saving of reading CACHED tokens from the cache instead of sending them, in USD. */
const SAVING = (CACHED * (INPUT_PRICE - CACHED_PRICE)) / 1e6;

interface EnsembleFields {
  ensemble: { cost_usd: number; simulated: boolean };
}
const costOf = (res: unknown): number => (res as EnsembleFields).ensemble.cost_usd;

beforeAll(async () => {
  sim = await startSimulator();
  services = await startServices({ simulatorUrl: `${sim.url}/v1` });
  const { auth, registry, modelProxy } = services;
  gw = await startGateway({
    jwksUrl: auth.jwksUrl,
    serviceToken: await auth.mintServiceToken("gateway"),
    upstreams: [
      { name: "auth", services: [AuthService], address: auth.address },
      { name: "registry", services: [RegistryService], address: registry.address },
      { name: "model-proxy", services: [ModelProxyService], address: modelProxy.address },
    ],
  });
  const res = await fetch(`${gw.url}/${AuthService.typeName}/Signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      email: `prompt-cache-${Date.now()}@example.com`,
      password: "correct-Horse-battery-9",
      tenantName: "prompt cache tenant",
    }),
  });
  if (!res.ok) throw new Error(`Signup: ${res.status} ${await res.text()}`);
  accessToken = ((await res.json()) as { tokens: { accessToken: string } }).tokens.accessToken;
}, 240_000);

afterAll(async () => {
  await gw?.close();
  await services?.stop();
  await sim?.close();
});

const openai = () => new OpenAI({ apiKey: accessToken, baseURL: `${gw.url}/v1`, maxRetries: 0 });
const anthropic = () =>
  new Anthropic({ baseURL: gw.url, apiKey: null, authToken: accessToken, maxRetries: 0 });

/** The error a call is refused with. */
const refusal = (call: Promise<unknown>): Promise<unknown> =>
  call.then(
    () => undefined,
    (err: unknown) => err,
  );

describe("prompt caching with the openai client", () => {
  it("chat - a repeated long prompt reads 1024 cached tokens, billed at the cached price; streamed, the usage chunk says the same", async () => {
    const client = openai();
    const body = {
      model: "sim-fast",
      messages: [{ role: "user" as const, content: distinctWords(LONG_WORDS, 0) }],
    };
    const first = await client.chat.completions.create(body);
    expect(first.usage?.prompt_tokens).toBe(LONG_PROMPT_TOKENS);
    expect(first.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const second = await client.chat.completions.create(body);
    expect(second.choices[0]?.message.content).toBe(first.choices[0]?.message.content);
    expect(second.usage).toMatchObject({
      prompt_tokens: LONG_PROMPT_TOKENS,
      completion_tokens: first.usage?.completion_tokens,
      prompt_tokens_details: { cached_tokens: CACHED },
    });
    expect(costOf(first)).toBeGreaterThan(0);
    expect(costOf(first) - costOf(second)).toBeCloseTo(SAVING, 12);

    const chunks: OpenAI.ChatCompletionChunk[] = [];
    const stream = await client.chat.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) chunks.push(chunk);
    const usage = chunks.at(-1)?.usage;
    expect(usage).toMatchObject({
      prompt_tokens: LONG_PROMPT_TOKENS,
      completion_tokens: first.usage?.completion_tokens,
      prompt_tokens_details: { cached_tokens: CACHED },
    });
    const finish = chunks.find((c) => c.choices[0]?.finish_reason !== null);
    expect(costOf(finish)).toBeCloseTo(costOf(second), 12);
  });

  it("chat - cache_control on content parts and tools (LiteLLM's convention) is accepted; a malformed one is a 400 naming the parameter", async () => {
    const client = openai();
    const marked = { type: "ephemeral" as const };
    // The OpenAI SDK's types have no cache_control: the body is what LiteLLM's users send.
    const body = {
      model: "sim-fast",
      messages: [
        {
          role: "system",
          content: [{ type: "text", text: "Answer briefly.", cache_control: marked }],
        },
        {
          role: "user",
          content: [
            { type: "text", text: distinctWords(LONG_WORDS, 100_000) },
            { type: "text", text: "What is this?", cache_control: { ...marked, ttl: "1h" } },
          ],
        },
      ],
      tools: [
        {
          type: "function",
          function: { name: "lookup", parameters: { type: "object", properties: {} } },
          cache_control: marked,
        },
      ],
      tool_choice: "none",
    } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming;
    const first = await client.chat.completions.create(body);
    expect(first.choices[0]?.message.content).toContain("[simulated sim-fast]");
    const second = await client.chat.completions.create(body);
    expect(second.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(CACHED);

    const refused = async (change: (b: Record<string, unknown>) => void) => {
      const copy = structuredClone(body) as unknown as Record<string, unknown>;
      change(copy);
      const err = await refusal(client.chat.completions.create(copy as unknown as typeof body));
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      const e = err as InstanceType<typeof OpenAI.BadRequestError>;
      return [e.param, e.code];
    };
    type Part = { cache_control?: unknown };
    const userParts = (b: Record<string, unknown>) =>
      (b["messages"] as { content: Part[] }[])[1]!.content;
    expect(
      await refused((b) => {
        userParts(b)[1]!.cache_control = { type: "persistent" };
      }),
    ).toEqual(["messages[1].content[1].cache_control.type", "invalid_value"]);
    expect(
      await refused((b) => {
        userParts(b)[1]!.cache_control = { type: "ephemeral", ttl: "1d" };
      }),
    ).toEqual(["messages[1].content[1].cache_control.ttl", "invalid_value"]);
    expect(
      await refused((b) => {
        (b["tools"] as Part[])[0]!.cache_control = "ephemeral";
      }),
    ).toEqual(["tools[0].cache_control", "invalid_type"]);
    // Only parts and tools take it: on a message it is an unknown parameter.
    expect(
      await refused((b) => {
        (b["messages"] as Part[])[1]!.cache_control = marked;
      }),
    ).toEqual(["messages[1].cache_control", "unknown_parameter"]);
  });

  it("reasoning - sim-thinking reports its reasoning tokens as part of the completion tokens", async () => {
    const client = openai();
    const res = await client.chat.completions.create({
      model: "sim-thinking",
      messages: [{ role: "user", content: "Is 221 a prime number?" }],
      reasoning_effort: "low",
    });
    const reasoning = res.usage?.completion_tokens_details?.reasoning_tokens ?? 0;
    expect(reasoning).toBeGreaterThan(0);
    expect(reasoning).toBeLessThanOrEqual(res.usage?.completion_tokens ?? 0);

    const answer = await client.responses.create({
      model: "sim-thinking",
      input: "Is 221 a prime number?",
      reasoning: { effort: "low" },
    });
    const viaResponses = answer.usage?.output_tokens_details.reasoning_tokens ?? 0;
    expect(viaResponses).toBeGreaterThan(0);
    expect(viaResponses).toBeLessThanOrEqual(answer.usage?.output_tokens ?? 0);

    const plain = await client.chat.completions.create({
      model: "sim-fast",
      messages: [{ role: "user", content: "Is 221 a prime number?" }],
    });
    expect(plain.usage?.completion_tokens_details?.reasoning_tokens).toBe(0);
  });

  it("responses - a repeated long prompt reports input_tokens_details.cached_tokens, unary and streamed", async () => {
    const client = openai();
    const body = { model: "sim-fast", input: distinctWords(LONG_WORDS, 200_000) };
    const first = await client.responses.create(body);
    expect(first.usage).toMatchObject({
      input_tokens: LONG_PROMPT_TOKENS,
      input_tokens_details: { cached_tokens: 0 },
    });
    const second = await client.responses.create(body);
    expect(second.usage).toMatchObject({
      input_tokens: LONG_PROMPT_TOKENS,
      input_tokens_details: { cached_tokens: CACHED },
    });
    expect(costOf(first) - costOf(second)).toBeCloseTo(SAVING, 12);
    const streamed = await client.responses.stream(body).finalResponse();
    expect(streamed.usage?.input_tokens_details).toEqual({ cached_tokens: CACHED });
  });
});

describe("prompt caching with the anthropic client", () => {
  it("messages - cache_control on system, text blocks and tools is accepted; cache reads are reported apart from input_tokens", async () => {
    const client = anthropic();
    const body: Anthropic.MessageCreateParamsNonStreaming = {
      model: "sim-fast",
      max_tokens: 200,
      system: [
        { type: "text", text: "Answer briefly.", cache_control: { type: "ephemeral" } },
        { type: "text", text: "Be kind." },
      ],
      messages: [
        {
          role: "user",
          content: [
            {
              type: "text",
              text: distinctWords(LONG_WORDS, 300_000),
              cache_control: { type: "ephemeral", ttl: "1h" },
            },
            { type: "text", text: "What is this?" },
          ],
        },
      ],
    };
    const first = await client.messages.create(body);
    // The system blocks and the user's blocks, each message with the chat framing.
    const prompt = first.usage.input_tokens;
    expect(prompt).toBeGreaterThan(LONG_PROMPT_TOKENS);
    expect(first.usage).toMatchObject({
      cache_read_input_tokens: 0,
      cache_creation_input_tokens: 0,
    });
    const second = await client.messages.create(body);
    expect(second.usage).toMatchObject({
      input_tokens: prompt - CACHED,
      cache_read_input_tokens: CACHED,
      cache_creation_input_tokens: 0,
      output_tokens: first.usage.output_tokens,
    });
    expect(costOf(first) - costOf(second)).toBeCloseTo(SAVING, 12);
    // Streamed, the usage of message_delta reaches the SDK's final message.
    const streamed = await client.messages.stream(body).finalMessage();
    expect(streamed.usage).toMatchObject({
      input_tokens: prompt - CACHED,
      cache_read_input_tokens: CACHED,
    });

    // Tools, images, tool_use and tool_result blocks take it too; count_tokens as well.
    const tools: Anthropic.Tool[] = [
      {
        name: "weather",
        input_schema: { type: "object", properties: { city: { type: "string" } } },
        cache_control: { type: "ephemeral" },
      },
    ];
    const turns: Anthropic.MessageParam[] = [
      { role: "user", content: "Weather in Paris?" },
      {
        role: "assistant",
        content: [
          { type: "text", text: "Checking." },
          {
            type: "tool_use",
            id: "toolu_1",
            name: "weather",
            input: { city: "Paris" },
            cache_control: { type: "ephemeral" },
          },
        ],
      },
      {
        role: "user",
        content: [
          {
            type: "tool_result",
            tool_use_id: "toolu_1",
            content: "sunny",
            cache_control: { type: "ephemeral" },
          },
        ],
      },
    ];
    const answered = await client.messages.create({
      model: "sim-fast",
      max_tokens: 200,
      tools,
      messages: turns,
    });
    expect(answered.stop_reason).toBe("end_turn");
    const counted = await client.messages.countTokens({
      model: "sim-fast",
      tools,
      messages: turns,
    });
    expect(counted.input_tokens).toBeGreaterThan(0);
  });

  it("messages - a malformed cache_control, or more than 4, is Anthropic's 400 naming the field", async () => {
    const client = anthropic();
    const ask = (
      system: Anthropic.TextBlockParam[],
      content: Anthropic.TextBlockParam[],
    ): Promise<unknown> =>
      refusal(
        client.messages.create({
          model: "sim-fast",
          max_tokens: 10,
          system,
          messages: [{ role: "user", content }],
        }),
      );
    const text = (t: string, cache_control?: unknown): Anthropic.TextBlockParam =>
      ({ type: "text", text: t, cache_control }) as Anthropic.TextBlockParam;
    const failures: [unknown, string][] = [
      [
        await ask([], [text("hi", { type: "persistent" })]),
        "messages.0.content.0.cache_control.type",
      ],
      [
        await ask([text("s", { type: "ephemeral", ttl: "2h" })], [text("hi")]),
        "system.0.cache_control.ttl",
      ],
      [await ask([], [text("hi", "ephemeral")]), "messages.0.content.0.cache_control"],
      [
        await ask(
          [text("a", { type: "ephemeral" }), text("b", { type: "ephemeral" })],
          [
            text("c", { type: "ephemeral" }),
            text("d", { type: "ephemeral" }),
            text("e", { type: "ephemeral" }),
          ],
        ),
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
      ],
    ];
    for (const [err, named] of failures) {
      expect(err).toBeInstanceOf(Anthropic.BadRequestError);
      const e = err as InstanceType<typeof Anthropic.BadRequestError>;
      const body = e.error as { type: string; error: { type: string; message: string } };
      expect([body.type, body.error.type]).toEqual(["error", "invalid_request_error"]);
      expect(body.error.message).toContain(named);
    }
  });
});
