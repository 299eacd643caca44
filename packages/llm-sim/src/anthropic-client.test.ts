import Anthropic, {
  APIError,
  AuthenticationError,
  BadRequestError,
  RateLimitError,
} from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "./server.js";
import { distinctWords } from "./test-words.js";

// The official client is the judge of "Anthropic-compatible": if it parses our shapes, the
// adapter that uses it will too.
let sim: Simulator;
let client: Anthropic;

beforeAll(async () => {
  sim = await startSimulator({ port: 0 });
  client = new Anthropic({ baseURL: sim.url, apiKey: "sim-anthropic-key", maxRetries: 0 });
});
afterAll(async () => {
  await sim.close();
});

const messages = [{ role: "user" as const, content: "Name three rivers" }];

describe("llm-sim with the anthropic client", () => {
  it("anthropic client - the same conversation gets the OpenAI endpoint's text, with usage", async () => {
    const openai = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "k", maxRetries: 0 });
    const expected = await openai.chat.completions.create({
      model: "sim-medium",
      messages: [{ role: "system", content: "Be brief." }, ...messages],
      max_tokens: 1000,
    });
    const msg = await client.messages.create({
      model: "sim-medium",
      system: "Be brief.",
      messages,
      max_tokens: 1000,
    });
    expect(msg.type).toBe("message");
    expect(msg.role).toBe("assistant");
    const block = msg.content[0];
    expect(block?.type).toBe("text");
    expect(block?.type === "text" ? block.text : "").toBe(expected.choices[0]?.message.content);
    expect(msg.stop_reason).toBe("end_turn");
    expect(msg.usage.input_tokens).toBe(expected.usage?.prompt_tokens);
    expect(msg.usage.output_tokens).toBe(expected.usage?.completion_tokens);

    const cut = await client.messages.create({ model: "sim-medium", messages, max_tokens: 3 });
    expect(cut.stop_reason).toBe("max_tokens");
    expect(cut.usage.output_tokens).toBe(3);
  });

  it("anthropic client - streaming sends the real event sequence and the deltas add up", async () => {
    const unary = await client.messages.create({ model: "sim-fast", messages, max_tokens: 500 });
    const stream = await client.messages.create({
      model: "sim-fast",
      messages,
      max_tokens: 500,
      stream: true,
    });
    const types: string[] = [];
    let text = "";
    let outputTokens = 0;
    let stopReason: string | null = null;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === "content_block_delta" && ev.delta.type === "text_delta") {
        text += ev.delta.text;
      }
      if (ev.type === "message_delta") {
        outputTokens = ev.usage.output_tokens;
        stopReason = ev.delta.stop_reason;
      }
    }
    expect(types.slice(0, 2)).toEqual(["message_start", "content_block_start"]);
    expect(types.slice(-3)).toEqual(["content_block_stop", "message_delta", "message_stop"]);
    expect(types.filter((t) => t === "content_block_delta").length).toBeGreaterThan(3);
    const first = unary.content[0];
    expect(text).toBe(first?.type === "text" ? first.text : "");
    expect(outputTokens).toBe(unary.usage.output_tokens);
    expect(stopReason).toBe("end_turn");

    // The SDK's own accumulator agrees.
    const final = await client.messages
      .stream({ model: "sim-fast", messages, max_tokens: 500 })
      .finalMessage();
    expect(final.content).toEqual(unary.content);
  });

  it("anthropic client - a base64 image reaches sim-vision; a forced tool comes back as tool_use", async () => {
    const image = await client.messages.create({
      model: "sim-vision",
      max_tokens: 200,
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "What is this?" },
            {
              type: "image",
              source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" },
            },
          ],
        },
      ],
    });
    const block = image.content[0];
    expect(block?.type === "text" ? block.text : "").toContain("I received 1 image.");

    const tool = await client.messages.create({
      model: "sim-fast",
      max_tokens: 200,
      messages,
      tools: [
        {
          name: "lookup",
          input_schema: { type: "object", properties: { term: { type: "string" } } },
        },
      ],
      tool_choice: { type: "tool", name: "lookup" },
    });
    expect(tool.stop_reason).toBe("tool_use");
    expect(tool.content[0]).toMatchObject({
      type: "tool_use",
      name: "lookup",
      input: { term: "[simulated sim-fast] term" },
    });
  });

  it("anthropic client - errors come in Anthropic's shape: 429 with retry-after, 401, 400, cut stream", async () => {
    const limited = await client.messages
      .create(
        { model: "sim-fast", messages, max_tokens: 10 },
        { headers: { "x-sim-fail": "429", "x-sim-retry-after": "4" } },
      )
      .catch((err: unknown) => err);
    expect(limited).toBeInstanceOf(RateLimitError);
    expect((limited as RateLimitError).headers.get("retry-after")).toBe("4");
    expect((limited as RateLimitError).type).toBe("rate_limit_error");

    const denied = await client.messages
      .create({ model: "sim-fast", messages, max_tokens: 10 }, { headers: { "x-sim-fail": "401" } })
      .catch((err: unknown) => err);
    expect(denied).toBeInstanceOf(AuthenticationError);

    const noMax = await fetch(`${sim.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": "k" },
      body: JSON.stringify({ model: "sim-fast", messages }),
    });
    expect(noMax.status).toBe(400);
    expect(await noMax.json()).toEqual({
      type: "error",
      error: { type: "invalid_request_error", message: "max_tokens: Field required" },
    });
    const unknown = await client.messages
      .create({ model: "claude-nope", messages, max_tokens: 10 })
      .catch((err: unknown) => err);
    expect((unknown as APIError).status).toBe(404);
    expect((unknown as APIError).type).toBe("not_found_error");

    const stream = await client.messages.create(
      { model: "sim-fast", messages, max_tokens: 500, stream: true },
      { headers: { "x-sim-fail": "cut" } },
    );
    const seen: string[] = [];
    const consume = async (): Promise<void> => {
      for await (const ev of stream) seen.push(ev.type);
    };
    await expect(consume()).rejects.toThrow();
    expect(seen).toContain("content_block_delta");
    expect(seen).not.toContain("message_stop");
  });

  describe("prompt caching", () => {
    // Its own key, so no other test shares this cache.
    const cached = (): Anthropic =>
      new Anthropic({ baseURL: sim.url, apiKey: "anthropic-cache-key", maxRetries: 0 });
    // A 1197-word system block: its breakpoint ends at 1200 tokens (3 of framing). The whole
    // prompt is 1211 tokens, so 11 come after the breakpoint.
    const marked = (text: string): Anthropic.TextBlockParam[] => [
      { type: "text", text, cache_control: { type: "ephemeral" } },
    ];
    const inputUsage = (u: {
      input_tokens: number | null;
      cache_creation_input_tokens: number | null;
      cache_read_input_tokens: number | null;
    }) => ({
      input_tokens: u.input_tokens,
      cache_creation_input_tokens: u.cache_creation_input_tokens,
      cache_read_input_tokens: u.cache_read_input_tokens,
    });
    const written = {
      input_tokens: 11,
      cache_creation_input_tokens: 1200,
      cache_read_input_tokens: 0,
    };
    const read = {
      input_tokens: 11,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 1200,
    };

    it("anthropic client - a system block with cache_control is written, then read; input_tokens excludes both", async () => {
      const client = cached();
      const system = distinctWords(1197);
      const openai = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "k", maxRetries: 0 });
      const whole = await openai.chat.completions.create({
        model: "sim-fast",
        messages: [{ role: "system", content: system }, ...messages],
      });
      expect(whole.usage?.prompt_tokens).toBe(1211);

      const first = await client.messages.create({
        model: "sim-fast",
        system: marked(system),
        messages,
        max_tokens: 100,
      });
      expect(inputUsage(first.usage)).toEqual(written);
      expect(first.usage.cache_creation).toEqual({
        ephemeral_5m_input_tokens: 1200,
        ephemeral_1h_input_tokens: 0,
      });
      const second = await client.messages.create({
        model: "sim-fast",
        system: marked(system),
        messages,
        max_tokens: 100,
      });
      expect(inputUsage(second.usage)).toEqual(read);
      expect(second.usage.cache_creation).toEqual({
        ephemeral_5m_input_tokens: 0,
        ephemeral_1h_input_tokens: 0,
      });
      expect(second.usage.output_tokens).toBe(first.usage.output_tokens);

      // The same prompt without cache_control reads nothing, though its prefix is cached.
      for (let i = 0; i < 2; i++) {
        const plain = await client.messages.create({
          model: "sim-fast",
          system,
          messages,
          max_tokens: 100,
        });
        expect(inputUsage(plain.usage)).toEqual({
          input_tokens: 1211,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
        });
      }
      // A breakpoint under 1024 tokens is ignored, as Anthropic ignores it.
      for (let i = 0; i < 2; i++) {
        const small = await client.messages.create({
          model: "sim-fast",
          system: marked("Be brief."),
          messages,
          max_tokens: 100,
        });
        expect(small.usage.cache_creation_input_tokens).toBe(0);
        expect(small.usage.cache_read_input_tokens).toBe(0);
      }
    });

    it("anthropic client - streamed: message_start and message_delta carry the same cache usage as unary", async () => {
      const client = cached();
      const system = distinctWords(1197, 60_000);
      const stream = async (): Promise<{
        start: Anthropic.Usage;
        delta: Anthropic.MessageDeltaUsage;
      }> => {
        const events = await client.messages.create({
          model: "sim-fast",
          system: marked(system),
          messages,
          max_tokens: 100,
          stream: true,
        });
        let start: Anthropic.Usage | undefined;
        let delta: Anthropic.MessageDeltaUsage | undefined;
        for await (const ev of events) {
          if (ev.type === "message_start") start = ev.message.usage;
          if (ev.type === "message_delta") delta = ev.usage;
        }
        return { start: start!, delta: delta! };
      };
      const first = await stream();
      expect(inputUsage(first.start)).toEqual(written);
      expect(inputUsage(first.delta)).toEqual(written);
      const second = await stream();
      expect(inputUsage(second.start)).toEqual(read);
      expect(inputUsage(second.delta)).toEqual(read);
      const unary = await client.messages.create({
        model: "sim-fast",
        system: marked(system),
        messages,
        max_tokens: 100,
      });
      expect(inputUsage(unary.usage)).toEqual(read);
      expect(second.delta.output_tokens).toBe(unary.usage.output_tokens);
    });

    it("anthropic client - a tool definition with cache_control caches the tools, counted as input", async () => {
      const client = cached();
      // The tool's JSON is 30 tokens of syntax and names plus its 1100-word description.
      const tools: Anthropic.Tool[] = [
        {
          name: "lookup",
          description: distinctWords(1100, 70_000),
          input_schema: { type: "object" },
          cache_control: { type: "ephemeral", ttl: "1h" },
        },
      ];
      const create = () =>
        client.messages.create({ model: "sim-fast", tools, messages, max_tokens: 100 });
      const first = await create();
      expect(inputUsage(first.usage)).toEqual({
        input_tokens: 10,
        cache_creation_input_tokens: 1130,
        cache_read_input_tokens: 0,
      });
      expect(first.usage.cache_creation?.ephemeral_1h_input_tokens).toBe(1130);
      expect(inputUsage((await create()).usage)).toEqual({
        input_tokens: 10,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 1130,
      });
    });

    it("anthropic client - a bad cache_control is a 400 in Anthropic's shape", async () => {
      const client = cached();
      const attempt = (system: unknown) =>
        client.messages
          .create({ model: "sim-fast", system: system as never, messages, max_tokens: 10 })
          .catch((err: unknown) => err);
      const wrongType = await attempt([
        { type: "text", text: "Be brief.", cache_control: { type: "persistent" } },
      ]);
      expect(wrongType).toBeInstanceOf(BadRequestError);
      expect((wrongType as BadRequestError).error).toEqual({
        type: "error",
        error: {
          type: "invalid_request_error",
          message: "system.0.cache_control.type: Input should be 'ephemeral'",
        },
      });
      const wrongTtl = await attempt([
        { type: "text", text: "Be brief.", cache_control: { type: "ephemeral", ttl: "2h" } },
      ]);
      expect(wrongTtl).toBeInstanceOf(BadRequestError);
      expect((wrongTtl as BadRequestError).message).toContain(
        "system.0.cache_control.ttl: Input should be '5m' or '1h'",
      );
      const five = Array.from({ length: 5 }, (_, i) => ({
        type: "text",
        text: `Part ${i}.`,
        cache_control: { type: "ephemeral" },
      }));
      const tooMany = await attempt(five);
      expect(tooMany).toBeInstanceOf(BadRequestError);
      expect((tooMany as BadRequestError).message).toContain(
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
      );
      // Four are fine.
      expect(await attempt(five.slice(0, 4))).toMatchObject({ type: "message" });
    });
  });
});
