import Anthropic, { APIError, AuthenticationError, RateLimitError } from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "./server.js";

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
});
