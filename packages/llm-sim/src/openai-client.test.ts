import OpenAI, { APIError, RateLimitError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "./server.js";
import { distinctWords } from "./test-words.js";
import { countTokens } from "./tokenizer.js";

// The official client is the judge of "OpenAI-compatible": if it parses our shapes, so will others.
let sim: Simulator;
let client: OpenAI;

beforeAll(async () => {
  sim = await startSimulator({ port: 0 });
  client = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "sim-key", maxRetries: 0 });
});
afterAll(async () => {
  await sim.close();
});

const messages = [{ role: "user" as const, content: "Name three rivers" }];

describe("llm-sim with the openai client", () => {
  it("openai client - chat, streaming with usage, embeddings and models parse", async () => {
    const unary = await client.chat.completions.create({ model: "sim-medium", messages });
    const content = unary.choices[0]?.message.content ?? "";
    expect(content.startsWith("[simulated sim-medium]")).toBe(true);

    const stream = await client.chat.completions.create({
      model: "sim-medium",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(content);
    expect(usage).toEqual(unary.usage);

    // The SDK asks for base64 by default and decodes it to floats.
    const emb = await client.embeddings.create({
      model: "sim-embed",
      input: "rivers and lakes",
      dimensions: 64,
    });
    expect(emb.data[0]?.embedding).toHaveLength(64);

    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain("sim-thinking");
  });

  it("openai client - logprobs and top_logprobs parse, unary and streamed; top_logprobs without logprobs is a 400", async () => {
    const unary = await client.chat.completions.create({
      model: "sim-medium",
      messages,
      logprobs: true,
      top_logprobs: 2,
    });
    const content = unary.choices[0]?.message.content ?? "";
    const entries = unary.choices[0]?.logprobs?.content ?? [];
    expect(entries.length).toBe(unary.usage?.completion_tokens);
    expect(entries.map((e) => e.token).join("")).toBe(content);
    for (const e of entries) {
      expect(e.top_logprobs).toHaveLength(2);
      expect(e.top_logprobs[0]?.token).toBe(e.token);
      expect(e.top_logprobs[0]?.logprob).toBe(e.logprob);
      expect(e.top_logprobs[1]!.logprob).toBeLessThan(e.logprob);
      expect(e.logprob).toBeLessThanOrEqual(0);
    }

    const stream = await client.chat.completions.create({
      model: "sim-medium",
      messages,
      logprobs: true,
      top_logprobs: 2,
      stream: true,
    });
    let tokens = "";
    for await (const chunk of stream) {
      tokens += (chunk.choices[0]?.logprobs?.content ?? []).map((e) => e.token).join("");
    }
    expect(tokens).toBe(content);

    const bad = await client.chat.completions
      .create({ model: "sim-medium", messages, top_logprobs: 2 })
      .catch((err: unknown) => err);
    expect(bad).toBeInstanceOf(APIError);
    expect((bad as APIError).status).toBe(400);
    expect((bad as APIError).param).toBe("top_logprobs");
  });

  it("openai client - a cut stream surfaces as an error, 429 as RateLimitError, 400 as APIError", async () => {
    const stream = await client.chat.completions.create(
      { model: "sim-fast", messages, stream: true },
      { headers: { "x-sim-fail": "cut" } },
    );
    const consume = async (): Promise<void> => {
      for await (const _ of stream) {
        // drain
      }
    };
    await expect(consume()).rejects.toThrow();

    const limited = await client.chat.completions
      .create(
        { model: "sim-fast", messages },
        { headers: { "x-sim-fail": "429", "x-sim-retry-after": "3" } },
      )
      .catch((err: unknown) => err);
    expect(limited).toBeInstanceOf(RateLimitError);
    expect((limited as RateLimitError).headers.get("retry-after")).toBe("3");

    const bad = await client.chat.completions
      .create({ model: "sim-fast", messages: [] })
      .catch((err: unknown) => err);
    expect(bad).toBeInstanceOf(APIError);
    expect((bad as APIError).status).toBe(400);
    expect((bad as APIError).code).toBe("empty_array");
  });

  it("openai client - tool_choice required or named calls the tool, unary and streamed; a tool result gets text", async () => {
    const tools: OpenAI.ChatCompletionTool[] = [
      { type: "function", function: { name: "get_time", parameters: { type: "object" } } },
      {
        type: "function",
        function: {
          name: "get_weather",
          parameters: {
            type: "object",
            properties: { city: { type: "string" }, days: { type: "integer", minimum: 1 } },
            required: ["city", "days"],
          },
        },
      },
    ];
    const required = await client.chat.completions.create({
      model: "sim-fast",
      messages,
      tools,
      tool_choice: "required",
    });
    const choice = required.choices[0]!;
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBeNull();
    const call = choice.message.tool_calls?.[0];
    expect(call).toMatchObject({
      type: "function",
      function: { name: "get_time", arguments: "{}" },
    });
    expect(call?.id).toMatch(/^call_sim/);

    // The SDK's stream helper assembles the streamed call.
    const streamed = await client.chat.completions
      .stream({
        model: "sim-fast",
        messages,
        tools,
        tool_choice: { type: "function", function: { name: "get_weather" } },
      })
      .finalChatCompletion();
    expect(streamed.choices[0]?.finish_reason).toBe("tool_calls");
    expect(streamed.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      // The arguments are an instance of the tool's parameters.
      function: { name: "get_weather", arguments: '{"city":"[simulated sim-fast] city","days":1}' },
    });

    // After the tool's result the model answers in text; "auto" never volunteers a call.
    const after = await client.chat.completions.create({
      model: "sim-fast",
      tools,
      tool_choice: "required",
      messages: [
        ...messages,
        choice.message,
        { role: "tool", tool_call_id: call!.id, content: "12:00" },
      ],
    });
    expect(after.choices[0]?.finish_reason).toBe("stop");
    expect(after.choices[0]?.message.content).toContain(
      '[simulated sim-fast] The tool answered: "12:00"',
    );
    const auto = await client.chat.completions.create({ model: "sim-fast", messages, tools });
    expect(auto.choices[0]?.message.tool_calls ?? []).toHaveLength(0);

    const unknown = await client.chat.completions
      .create({
        model: "sim-fast",
        messages,
        tools,
        tool_choice: { type: "function", function: { name: "nope" } },
      })
      .catch((err: unknown) => err);
    expect(unknown).toBeInstanceOf(APIError);
    expect((unknown as APIError).status).toBe(400);
    expect((unknown as APIError).message).toContain("function 'nope' is not one of the tools");
  });

  it("openai client - response_format json_schema answers an instance of the schema, json_object a JSON object", async () => {
    const schema = {
      type: "object",
      properties: {
        title: { type: "string" },
        year: { type: "integer", minimum: 1900 },
        score: { type: "number" },
        genre: { type: "string", enum: ["drama", "comedy"] },
        tags: { type: "array", items: { type: "string" }, minItems: 2 },
        director: { $ref: "#/$defs/person" },
        sequel: { anyOf: [{ type: "null" }, { type: "boolean" }] },
        note: { type: ["string", "null"] },
      },
      required: ["title", "year", "score", "genre", "tags", "director", "sequel", "note"],
      additionalProperties: false,
      $defs: {
        person: {
          type: "object",
          properties: { name: { type: "string" } },
          required: ["name"],
          additionalProperties: false,
        },
      },
    };
    const res = await client.chat.completions.create({
      model: "sim-fast",
      messages,
      response_format: { type: "json_schema", json_schema: { name: "film", schema, strict: true } },
    });
    expect(res.choices[0]?.finish_reason).toBe("stop");
    expect(JSON.parse(res.choices[0]?.message.content ?? "")).toEqual({
      title: "[simulated sim-fast] title",
      year: 1900,
      score: 0,
      genre: "drama",
      tags: ["[simulated sim-fast] tags", "[simulated sim-fast] tags"],
      director: { name: "[simulated sim-fast] name" },
      sequel: false,
      note: "[simulated sim-fast] note",
    });
    // Streamed, the pieces add up to the same JSON; usage counts it.
    const stream = await client.chat.completions.create({
      model: "sim-fast",
      messages,
      stream: true,
      response_format: { type: "json_schema", json_schema: { name: "film", schema } },
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    expect(text).toBe(res.choices[0]?.message.content);

    const object = await client.chat.completions.create({
      model: "sim-fast",
      messages,
      response_format: { type: "json_object" },
    });
    const parsed = JSON.parse(object.choices[0]?.message.content ?? "") as { answer: string };
    expect(parsed.answer).toContain("[simulated sim-fast]");

    const nameless = await client.chat.completions
      .create({
        model: "sim-fast",
        messages,
        response_format: { type: "json_schema", json_schema: { schema } } as never,
      })
      .catch((err: unknown) => err);
    expect(nameless).toBeInstanceOf(APIError);
    expect((nameless as APIError).status).toBe(400);
    expect((nameless as APIError).param).toBe("response_format.json_schema.name");
  });

  it("openai client - prompt caching: a repeated 1100-token prompt reads 1024 cached tokens, unary and streamed", async () => {
    // Keys of their own, so no other test shares this cache.
    const keyA = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "cache-key-a", maxRetries: 0 });
    const keyB = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "cache-key-b", maxRetries: 0 });
    // Prompt tokens = 3 (reply primer) + 3 (framing) + 1 (role) + the words.
    const ask = (text: string): OpenAI.ChatCompletionMessageParam[] => [
      { role: "user", content: text },
    ];
    const unary = async (client: OpenAI, text: string): Promise<OpenAI.CompletionUsage> => {
      const res = await client.chat.completions.create({ model: "sim-fast", messages: ask(text) });
      return res.usage!;
    };
    const streamed = async (client: OpenAI, text: string): Promise<OpenAI.CompletionUsage> => {
      const stream = await client.chat.completions.create({
        model: "sim-fast",
        messages: ask(text),
        stream: true,
        stream_options: { include_usage: true },
      });
      let usage: OpenAI.CompletionUsage | undefined;
      for await (const chunk of stream) usage = chunk.usage ?? usage;
      return usage!;
    };

    const prompt = distinctWords(1093);
    const first = await unary(keyA, prompt);
    expect(first.prompt_tokens).toBe(1100);
    expect(first.prompt_tokens_details?.cached_tokens).toBe(0);
    const second = await unary(keyA, prompt);
    expect(second.prompt_tokens).toBe(1100);
    expect(second.prompt_tokens_details?.cached_tokens).toBe(1024);
    // Streamed, the final usage chunk says the same.
    expect(await streamed(keyA, prompt)).toEqual(second);
    const other = distinctWords(1093, 50_000);
    expect((await streamed(keyA, other)).prompt_tokens_details?.cached_tokens).toBe(0);
    expect((await streamed(keyA, other)).prompt_tokens_details?.cached_tokens).toBe(1024);

    // Another key has its own cache.
    expect((await unary(keyB, prompt)).prompt_tokens_details?.cached_tokens).toBe(0);
    // Sharing the first 500 tokens is not enough: the shortest cached prefix is 1024.
    const half = `${distinctWords(493)} ${distinctWords(600, 100_000)}`;
    const shared = await unary(keyA, half);
    expect(shared.prompt_tokens).toBe(1100);
    expect(shared.prompt_tokens_details?.cached_tokens).toBe(0);
    // A longer prompt starting with the cached one reads it, then is cached in 128-token steps.
    const longer = `${prompt} ${distinctWords(300, 200_000)}`;
    expect((await unary(keyA, longer)).prompt_tokens_details?.cached_tokens).toBe(1024);
    expect((await unary(keyA, longer)).prompt_tokens_details?.cached_tokens).toBe(1280);
    // Under 1024 tokens, never.
    const short = distinctWords(1000, 300_000);
    for (let i = 0; i < 3; i++) {
      const usage = await unary(keyA, short);
      expect(usage.prompt_tokens).toBe(1007);
      expect(usage.prompt_tokens_details?.cached_tokens).toBe(0);
    }
  });

  it("openai client - prompt caching: a 429 is not processed, so not cached; a cut answer was", async () => {
    const client = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "cache-key-c", maxRetries: 0 });
    const create = (text: string, fail?: string) =>
      client.chat.completions.create(
        { model: "sim-fast", messages: [{ role: "user", content: text }] },
        fail !== undefined ? { headers: { "x-sim-fail": fail } } : {},
      );
    const limited = distinctWords(1093, 400_000);
    await expect(create(limited, "429")).rejects.toBeInstanceOf(RateLimitError);
    expect((await create(limited)).usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const cut = distinctWords(1093, 500_000);
    await expect(create(cut, "cut")).rejects.toThrow();
    expect((await create(cut)).usage?.prompt_tokens_details?.cached_tokens).toBe(1024);
  });

  it("openai client - reasoning_tokens counts the reasoning in completion_tokens; 0 without reasoning", async () => {
    const thinking = await client.chat.completions.create({
      model: "sim-thinking",
      messages,
      reasoning_effort: "medium",
    });
    const message = thinking.choices[0]!.message as OpenAI.ChatCompletionMessage & {
      reasoning_content: string;
    };
    const usage = thinking.usage!;
    expect(usage.completion_tokens_details?.reasoning_tokens).toBe(
      countTokens(message.reasoning_content),
    );
    expect(usage.completion_tokens_details?.reasoning_tokens).toBeGreaterThan(0);
    expect(usage.completion_tokens).toBe(
      countTokens(message.content ?? "") + countTokens(message.reasoning_content),
    );
    const stream = await client.chat.completions.create({
      model: "sim-thinking",
      messages,
      reasoning_effort: "medium",
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) streamed = chunk.usage ?? streamed;
    expect(streamed?.completion_tokens_details).toEqual(usage.completion_tokens_details);

    const plain = await client.chat.completions.create({ model: "sim-fast", messages });
    expect(plain.usage?.completion_tokens_details?.reasoning_tokens).toBe(0);
    expect(plain.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
  });
});
