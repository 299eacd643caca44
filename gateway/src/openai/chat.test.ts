import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  CacheMode,
  ChatDeltaSchema,
  ChatRequestSchema,
  ChatResponseSchema,
  ChatRole,
  PromptCacheTtl,
  FinishReason,
  ImageDetail,
  ResponseFormat_Type,
  ServedBySchema,
  StreamChatEndSchema,
  StreamChatStartSchema,
  ToolChoice_Mode,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import {
  autoModelError,
  chatCompletionJson,
  chatParam,
  ChunkEncoder,
  parseChatRequest,
} from "./chat.js";
import { classifyInput } from "../auto.js";
import { OpenAiError } from "./errors.js";
import { parseResponsesRequest } from "./responses.js";

/** The OpenAiError a body is refused with. */
function refusal(body: Record<string, unknown>): OpenAiError {
  try {
    parseChatRequest(body);
  } catch (err) {
    if (err instanceof OpenAiError) return err;
    throw err;
  }
  throw new Error("accepted");
}

const hello = [{ role: "user", content: "hello" }];

describe("openai chat request", () => {
  it("mapping - every OpenAI field lands on the contract's ChatRequest", () => {
    const parsed = parseChatRequest({
      model: "sim-fast",
      messages: [
        { role: "system", content: "be brief" },
        { role: "developer", content: [{ type: "text", text: "dev rules" }] },
        {
          role: "user",
          name: "alice",
          content: [
            { type: "text", text: "what is this?" },
            { type: "image_url", image_url: { url: "https://x.example/cat.png", detail: "low" } },
          ],
        },
        {
          role: "assistant",
          content: null,
          tool_calls: [
            { id: "call_1", type: "function", function: { name: "look", arguments: '{"a":1}' } },
          ],
        },
        { role: "tool", tool_call_id: "call_1", content: "a cat" },
      ],
      temperature: 0.5,
      top_p: 0.9,
      max_completion_tokens: 64,
      stop: "END",
      presence_penalty: 0.1,
      frequency_penalty: -0.2,
      seed: 42,
      response_format: {
        type: "json_schema",
        json_schema: { name: "answer", schema: { type: "object" }, strict: true },
      },
      tools: [
        {
          type: "function",
          function: { name: "look", description: "looks", parameters: { type: "object" } },
        },
      ],
      tool_choice: { type: "function", function: { name: "look" } },
      reasoning_effort: "low",
      user: "end-user-7",
      metadata: { feature: "chat" },
      cache: "use",
      fallback_models: ["sim-medium"],
      parallel_tool_calls: true,
      n: 1,
    });
    expect(parsed.stream).toBe(false);
    const req = create(ChatRequestSchema, parsed.request);
    expect(req.model).toBe("sim-fast");
    expect(req.messages.map((m) => m.role)).toEqual([
      ChatRole.SYSTEM,
      ChatRole.DEVELOPER,
      ChatRole.USER,
      ChatRole.ASSISTANT,
      ChatRole.TOOL,
    ]);
    const user = req.messages[2];
    expect(user?.name).toBe("alice");
    expect(user?.content[0]?.part).toEqual({ case: "text", value: "what is this?" });
    const image = user?.content[1]?.part;
    expect(image?.case).toBe("image");
    if (image?.case === "image") {
      expect(image.value.source).toEqual({ case: "url", value: "https://x.example/cat.png" });
      expect(image.value.detail).toBe(ImageDetail.LOW);
    }
    expect(req.messages[3]?.content).toEqual([]);
    expect(req.messages[3]?.toolCalls.map((t) => [t.id, t.name, t.arguments])).toEqual([
      ["call_1", "look", '{"a":1}'],
    ]);
    expect(req.messages[4]?.toolCallId).toBe("call_1");
    expect(req.temperature).toBe(0.5);
    expect(req.topP).toBe(0.9);
    expect(req.maxTokens).toBe(64);
    expect(req.stop).toEqual(["END"]);
    expect(req.presencePenalty).toBe(0.1);
    expect(req.frequencyPenalty).toBe(-0.2);
    expect(req.seed).toBe(42n);
    expect(req.responseFormat?.type).toBe(ResponseFormat_Type.JSON_SCHEMA);
    expect(req.responseFormat?.schemaName).toBe("answer");
    expect(req.responseFormat?.jsonSchema).toEqual({ type: "object" });
    expect(req.responseFormat?.strict).toBe(true);
    expect(req.tools[0]?.name).toBe("look");
    expect(req.tools[0]?.parameters).toEqual({ type: "object" });
    expect(req.toolChoice?.choice).toEqual({ case: "function", value: "look" });
    expect(req.reasoningEffort).toBe("low");
    expect(req.metadata).toEqual({ feature: "chat", user: "end-user-7" });
    expect(req.cache).toBe(CacheMode.USE);
    expect(req.fallbackModels).toEqual(["sim-medium"]);
  });

  it("mapping - prompt_cache_key is passed on; safety_identifier labels the call like user", () => {
    const hello = [{ role: "user", content: "hi" }];
    const { request } = parseChatRequest({
      model: "m",
      messages: hello,
      prompt_cache_key: "tenant-42-support",
      safety_identifier: "end-user-9",
    });
    expect(create(ChatRequestSchema, request).promptCacheKey).toBe("tenant-42-support");
    expect(request.metadata).toEqual({ user: "end-user-9" });
    // `user` wins when both are given.
    const both = parseChatRequest({
      model: "m",
      messages: hello,
      user: "u",
      safety_identifier: "s",
    });
    expect(both.request.metadata).toEqual({ user: "u" });
    const responses = parseResponsesRequest({
      model: "m",
      input: "hi",
      prompt_cache_key: "k",
      safety_identifier: "s",
    });
    expect(responses.request.promptCacheKey).toBe("k");
    expect(responses.request.metadata).toEqual({ user: "s" });
  });

  it("mapping - optional sampling fields stay unset when absent or null", () => {
    const req = create(
      ChatRequestSchema,
      parseChatRequest({ model: "m", messages: hello, temperature: null, stop: ["a", "b"] })
        .request,
    );
    expect(req.temperature).toBeUndefined();
    expect(req.maxTokens).toBeUndefined();
    expect(req.seed).toBeUndefined();
    expect(req.stop).toEqual(["a", "b"]);
    expect(req.cache).toBe(CacheMode.UNSPECIFIED);
    const semantic = parseChatRequest({ model: "m", messages: hello, cache: "semantic" }).request;
    expect(semantic.cache).toBe(CacheMode.SEMANTIC);
    const modes = ["auto", "none", "required"].map(
      (tool_choice) =>
        create(
          ChatRequestSchema,
          parseChatRequest({ model: "m", messages: hello, tool_choice }).request,
        ).toolChoice?.choice,
    );
    expect(modes).toEqual([
      { case: "mode", value: ToolChoice_Mode.AUTO },
      { case: "mode", value: ToolChoice_Mode.NONE },
      { case: "mode", value: ToolChoice_Mode.REQUIRED },
    ]);
    expect(parseChatRequest({ model: "m", messages: hello, max_tokens: 7 }).request.maxTokens).toBe(
      7,
    );
  });

  it("streaming - stream and stream_options.include_usage are read; stream_options needs stream", () => {
    const parsed = parseChatRequest({
      model: "m",
      messages: hello,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(parsed).toMatchObject({ stream: true, includeUsage: true });
    const e = refusal({ model: "m", messages: hello, stream_options: { include_usage: true } });
    expect(e.status).toBe(400);
    expect(e.param).toBe("stream_options");
  });

  it("invalid - unknown fields, at any depth, are 400 with the parameter path", () => {
    const top = refusal({ model: "m", messages: hello, temprature: 1 });
    expect([top.status, top.type, top.param, top.code]).toEqual([
      400,
      "invalid_request_error",
      "temprature",
      "unknown_parameter",
    ]);
    expect(
      refusal({ model: "m", messages: [{ role: "user", content: "x", colour: 1 }] }).param,
    ).toBe("messages[0].colour");
  });

  it("invalid - wrong types and values name the parameter", () => {
    expect(refusal({ model: "m", messages: [hello[0], { role: "user", content: 5 }] }).param).toBe(
      "messages[1].content",
    );
    const role = refusal({ model: "m", messages: [{ role: "robot", content: "x" }] });
    expect(role.param).toBe("messages[0].role");
    expect(role.message).toContain("'developer'");
    expect(refusal({ model: "m" }).code).toBe("missing_required_parameter");
    expect(refusal({ model: "m", messages: [] }).param).toBe("messages");
    expect(refusal({ messages: hello }).param).toBe("model");
    expect(refusal({ model: "m", messages: hello, temperature: "hot" }).param).toBe("temperature");
    expect(refusal({ model: "m", messages: hello, seed: 1.5 }).param).toBe("seed");
    expect(refusal({ model: "m", messages: hello, max_tokens: 2 ** 40 }).param).toBe("max_tokens");
    expect(refusal({ model: "m", messages: hello, n: 9 }).param).toBe("n");
    expect(refusal({ model: "m", messages: hello, n: 0 }).param).toBe("n");
    expect(refusal({ model: "m", messages: hello, cache: "always" }).param).toBe("cache");
    expect(refusal({ model: "m", messages: [{ role: "tool", content: "x" }] }).param).toBe(
      "messages[0].tool_call_id",
    );
    expect(
      refusal({
        model: "m",
        messages: [{ role: "system", content: [{ type: "image_url", image_url: { url: "u" } }] }],
      }).param,
    ).toBe("messages[0].content[0].type");
    expect(
      refusal({ model: "m", messages: hello, max_tokens: 5, max_completion_tokens: 6 }).status,
    ).toBe(400);
    // An absent object is a missing parameter, not "expected an object, but got an object".
    const noFunction = refusal({ model: "m", messages: hello, tools: [{ type: "function" }] });
    expect(noFunction.code).toBe("missing_required_parameter");
    expect(noFunction.message).toBe("Missing required parameter: 'tools[0].function'.");
    const noSchema = refusal({
      model: "m",
      messages: hello,
      response_format: { type: "json_schema" },
    });
    expect(noSchema.param).toBe("response_format.json_schema");
    expect(noSchema.code).toBe("missing_required_parameter");
  });

  it("cache_control - LiteLLM's breakpoints on text and image parts and on tools become cache_breakpoint", () => {
    const marked = { type: "ephemeral" } as const;
    const req = create(
      ChatRequestSchema,
      parseChatRequest({
        model: "m",
        messages: [
          {
            role: "system",
            content: [
              { type: "text", text: "rules", cache_control: marked },
              { type: "text", text: "today" },
            ],
          },
          {
            role: "user",
            content: [
              { type: "text", text: "look", cache_control: null },
              {
                type: "image_url",
                image_url: { url: "https://x.example/a.png" },
                cache_control: { type: "ephemeral", ttl: "1h" },
              },
            ],
          },
          { role: "assistant", content: [{ type: "text", text: "ok", cache_control: marked }] },
          { role: "user", content: "plain string content has no parts to mark" },
        ],
        tools: [
          { type: "function", function: { name: "a" } },
          { type: "function", function: { name: "b" }, cache_control: { ...marked, ttl: "5m" } },
        ],
      }).request,
    );
    expect(req.messages.map((m) => m.content.map((p) => p.cacheBreakpoint))).toEqual([
      [true, false],
      [false, true],
      [true],
      [false],
    ]);
    expect(req.tools.map((t) => [t.name, t.cacheBreakpoint])).toEqual([
      ["a", false],
      ["b", true],
    ]);
    expect(req.messages[1]?.content.map((p) => p.cacheTtl)).toEqual([
      PromptCacheTtl.PROMPT_CACHE_TTL_UNSPECIFIED,
      PromptCacheTtl.PROMPT_CACHE_TTL_1H,
    ]);
    expect(req.tools[1]?.cacheTtl).toBe(PromptCacheTtl.PROMPT_CACHE_TTL_5M);
  });

  it("cache_control - checked as Anthropic checks it, and refused anywhere but parts and tools", () => {
    const part = (cache_control: unknown) => ({
      model: "m",
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "x" },
            { type: "text", text: "y", cache_control },
          ],
        },
      ],
    });
    const cases: [unknown, string, string][] = [
      ["ephemeral", "messages[0].content[1].cache_control", "invalid_type"],
      [{}, "messages[0].content[1].cache_control.type", "missing_required_parameter"],
      [{ type: "persistent" }, "messages[0].content[1].cache_control.type", "invalid_value"],
      [
        { type: "ephemeral", ttl: "24h" },
        "messages[0].content[1].cache_control.ttl",
        "invalid_value",
      ],
      [
        { type: "ephemeral", scope: "org" },
        "messages[0].content[1].cache_control.scope",
        "unknown_parameter",
      ],
    ];
    for (const [value, param, code] of cases) {
      const e = refusal(part(value));
      expect([e.status, e.type, e.param, e.code]).toEqual([
        400,
        "invalid_request_error",
        param,
        code,
      ]);
    }
    const tool = refusal({
      model: "m",
      messages: hello,
      tools: [{ type: "function", function: { name: "a" }, cache_control: { type: 1 } }],
    });
    expect(tool.param).toBe("tools[0].cache_control.type");

    const marked = { type: "ephemeral" };
    const elsewhere: [Record<string, unknown>, string][] = [
      [{ model: "m", messages: hello, cache_control: marked }, "cache_control"],
      [
        { model: "m", messages: [{ role: "user", content: "x", cache_control: marked }] },
        "messages[0].cache_control",
      ],
      [
        {
          model: "m",
          messages: [
            {
              role: "user",
              content: [{ type: "image_url", image_url: { url: "u", cache_control: marked } }],
            },
          ],
        },
        "messages[0].content[0].image_url.cache_control",
      ],
      [
        {
          model: "m",
          messages: hello,
          tools: [{ type: "function", function: { name: "a", cache_control: marked } }],
        },
        "tools[0].function.cache_control",
      ],
    ];
    for (const [body, param] of elsewhere) {
      expect([refusal(body).param, refusal(body).code]).toEqual([param, "unknown_parameter"]);
    }
  });

  it("auto - model auto is parsed; the categorizer is asked about the last user message", () => {
    const parsed = parseChatRequest({
      model: "auto",
      messages: [
        { role: "user", content: "first" },
        { role: "assistant", content: "ok" },
        {
          role: "user",
          content: [
            { type: "text", text: "what is in this image?" },
            { type: "image_url", image_url: { url: "https://example.com/a.png" } },
          ],
        },
      ],
    });
    expect(parsed.request.model).toBe("auto");
    expect(classifyInput(parsed.request)).toEqual({
      text: "what is in this image?",
      attachmentMimeTypes: ["image/*"],
    });
    expect(autoModelError().message).toMatch(/categorizer/);
  });

  it("params - contract paths of upstream errors are reported as OpenAI parameters", () => {
    expect(chatParam("chat.messages[0].role")).toBe("messages[0].role");
    expect(chatParam("tools[2].name")).toBe("tools[2].function.name");
    expect(chatParam("response_format.schema_name")).toBe("response_format.json_schema.name");
    expect(chatParam("temperature")).toBe("temperature");
  });
});

const servedBy = create(ServedBySchema, {
  model: "sim-fast",
  requestedModel: "fast",
  provider: "simulator",
  deployment: "simulator",
  simulated: true,
  attempts: 1,
});

describe("openai chat response", () => {
  it("completion - text, usage, finish reason, the answering model and the ensemble fields", () => {
    const res = create(ChatResponseSchema, {
      id: "chatcmpl-1",
      servedBy,
      message: {
        role: ChatRole.ASSISTANT,
        content: [
          { part: { case: "text", value: "Hel" } },
          { part: { case: "text", value: "lo" } },
        ],
      },
      finishReason: FinishReason.LENGTH,
      usage: {
        inputTokens: 10n,
        outputTokens: 5n,
        totalTokens: 15n,
        costUsd: 0.002,
        cachedInputTokens: 4n,
        reasoningTokens: 3n,
      },
      createTime: timestampFromMs(1_700_000_000_000),
    });
    expect(chatCompletionJson(res, "fast")).toEqual({
      id: "chatcmpl-1",
      object: "chat.completion",
      created: 1_700_000_000,
      model: "sim-fast",
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: "Hello", refusal: null },
          logprobs: null,
          finish_reason: "length",
        },
      ],
      usage: {
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        prompt_tokens_details: { cached_tokens: 4 },
        completion_tokens_details: { reasoning_tokens: 3 },
      },
      ensemble: {
        served_by: {
          model: "sim-fast",
          requested_model: "fast",
          provider: "simulator",
          deployment: "simulator",
          provider_model_id: "",
          attempts: 1,
          fallbacks_tried: [],
        },
        cost_usd: 0.002,
        cache_hit: false,
        simulated: true,
      },
    });
  });

  it("completion - tool calls come back with content null and finish_reason tool_calls", () => {
    const res = create(ChatResponseSchema, {
      id: "c",
      servedBy,
      message: {
        role: ChatRole.ASSISTANT,
        toolCalls: [{ id: "call_9", name: "look", arguments: "{}" }],
      },
      finishReason: FinishReason.TOOL_CALLS,
      reasoning: "thought",
    });
    const json = chatCompletionJson(res, "m") as {
      choices: Array<{ message: Record<string, unknown>; finish_reason: string }>;
    };
    expect(json.choices[0]?.finish_reason).toBe("tool_calls");
    expect(json.choices[0]?.message).toEqual({
      role: "assistant",
      content: null,
      refusal: null,
      tool_calls: [{ id: "call_9", type: "function", function: { name: "look", arguments: "{}" } }],
      reasoning_content: "thought",
    });
  });
});

/** The JSON payloads of an SSE text ("[DONE]" kept as a string). */
function events(sse: string): unknown[] {
  return sse
    .split("\n\n")
    .filter((e) => e !== "")
    .map((e) => {
      expect(e.startsWith("data: ")).toBe(true);
      const data = e.slice(6);
      return data === "[DONE]" ? data : (JSON.parse(data) as unknown);
    });
}

describe("openai chat stream", () => {
  const start = create(StreamChatStartSchema, {
    id: "chatcmpl-s",
    servedBy,
    createTime: timestampFromMs(1_700_000_001_000),
  });
  const end = create(StreamChatEndSchema, {
    finishReason: FinishReason.STOP,
    usage: { inputTokens: 3n, outputTokens: 2n, totalTokens: 5n, costUsd: 0.5 },
  });

  it("chunks - role first, then content deltas, then finish, usage only when asked, then [DONE]", () => {
    const enc = new ChunkEncoder(true, "fast");
    const text =
      enc.start(start) +
      enc.delta(create(ChatDeltaSchema, { content: "Hi" })) +
      enc.delta(create(ChatDeltaSchema, {})) +
      enc.end(end, servedBy);
    const out = events(text);
    expect(out).toHaveLength(5);
    expect(out[0]).toEqual({
      id: "chatcmpl-s",
      object: "chat.completion.chunk",
      created: 1_700_000_001,
      model: "sim-fast",
      choices: [
        {
          index: 0,
          delta: { role: "assistant", content: "" },
          logprobs: null,
          finish_reason: null,
        },
      ],
      usage: null,
    });
    expect(out[1]).toMatchObject({ choices: [{ delta: { content: "Hi" }, finish_reason: null }] });
    expect(out[2]).toMatchObject({
      choices: [{ delta: {}, finish_reason: "stop" }],
      ensemble: { cost_usd: 0.5, simulated: true, served_by: { model: "sim-fast" } },
    });
    expect(out[3]).toEqual({
      id: "chatcmpl-s",
      object: "chat.completion.chunk",
      created: 1_700_000_001,
      model: "sim-fast",
      choices: [],
      // The details as OpenAI sends them, zeros included.
      usage: {
        prompt_tokens: 3,
        completion_tokens: 2,
        total_tokens: 5,
        prompt_tokens_details: { cached_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: 0 },
      },
    });
    expect(out[4]).toBe("[DONE]");
  });

  it("chunks - without include_usage there is no usage chunk and no usage field", () => {
    const enc = new ChunkEncoder(false, "fast");
    const out = events(enc.start(start) + enc.end(end, servedBy));
    expect(out).toHaveLength(3);
    expect(out[0]).not.toHaveProperty("usage");
    expect(out[1]).toMatchObject({ choices: [{ finish_reason: "stop" }] });
    expect(out[2]).toBe("[DONE]");
  });

  it("chunks - tool call fragments carry id and type on the first piece only", () => {
    const enc = new ChunkEncoder(false, "m");
    enc.start(start);
    const first = events(
      enc.delta(
        create(ChatDeltaSchema, {
          toolCalls: [{ index: 0, id: "call_1", name: "look", arguments: '{"a"' }],
        }),
      ),
    )[0];
    const next = events(
      enc.delta(create(ChatDeltaSchema, { toolCalls: [{ index: 0, arguments: ":1}" }] })),
    )[0];
    expect(first).toMatchObject({
      choices: [
        {
          delta: {
            tool_calls: [
              {
                index: 0,
                id: "call_1",
                type: "function",
                function: { name: "look", arguments: '{"a"' },
              },
            ],
          },
        },
      ],
    });
    expect(next).toMatchObject({
      choices: [{ delta: { tool_calls: [{ index: 0, function: { arguments: ":1}" } }] } }],
    });
  });
});
