import OpenAI, { APIError, RateLimitError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "./server.js";

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
});
