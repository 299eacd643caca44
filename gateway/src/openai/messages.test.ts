import { create } from "@bufbuild/protobuf";
import {
  ChatDeltaSchema,
  ChatRole,
  PromptCacheTtl,
  FinishReason,
  ServedBySchema,
  StreamChatEndSchema,
  StreamChatStartSchema,
} from "@ensemble/proto";
import { MessageStream } from "@anthropic-ai/sdk/lib/MessageStream";
import { describe, expect, it } from "vitest";
import { anthropicErrorBody, MessageEventEncoder, parseMessagesRequest } from "./messages.js";
import { invalidRequest, OpenAiError } from "./errors.js";

/** The error a Messages body is refused with. */
function refusal(body: Record<string, unknown>): OpenAiError {
  try {
    parseMessagesRequest({ model: "m", max_tokens: 10, ...body });
  } catch (err) {
    if (err instanceof OpenAiError) return err;
    throw err;
  }
  throw new Error("accepted");
}

/** The data of each server-sent event, as one JSON line each (what MessageStream reads). */
function ndjson(sse: string): string {
  return sse
    .split("\n\n")
    .filter((block) => block !== "")
    .map((block) => {
      const [eventLine, dataLine] = block.split("\n");
      const data = JSON.parse(dataLine!.slice("data: ".length)) as { type: string };
      expect(eventLine).toBe(`event: ${data.type}`);
      return JSON.stringify(data);
    })
    .join("\n");
}

describe("anthropic messages mapping", () => {
  it("messages stream - thinking, text and two tool calls become the blocks the SDK's MessageStream builds", async () => {
    const encoder = new MessageEventEncoder("fast");
    const servedBy = create(ServedBySchema, { model: "sim-fast" });
    const deltas = [
      { reasoning: "let me " },
      { reasoning: "think" },
      { content: "Checking " },
      { content: "both." },
      { toolCalls: [{ index: 0, id: "toolu_1", name: "a", arguments: '{"x"' }] },
      { toolCalls: [{ index: 0, arguments: ":1}" }] },
      { toolCalls: [{ index: 1, id: "toolu_2", name: "b", arguments: "{}" }] },
    ];
    let sse = encoder.start(create(StreamChatStartSchema, { id: "chatcmpl-9", servedBy }));
    for (const d of deltas) sse += encoder.delta(create(ChatDeltaSchema, d));
    sse += encoder.end(
      create(StreamChatEndSchema, {
        finishReason: FinishReason.TOOL_CALLS,
        usage: { inputTokens: 11n, outputTokens: 5n, totalTokens: 16n },
      }),
      servedBy,
    );
    const body = new Blob([ndjson(sse)]).stream();
    const message = await MessageStream.fromReadableStream(body).finalMessage();
    expect(message).toMatchObject({
      id: "msg_9",
      model: "sim-fast",
      stop_reason: "tool_use",
      usage: { input_tokens: 11, output_tokens: 5 },
    });
    expect(message.content).toEqual([
      { type: "thinking", thinking: "let me think", signature: "" },
      { type: "text", text: "Checking both." },
      { type: "tool_use", id: "toolu_1", name: "a", input: { x: 1 } },
      { type: "tool_use", id: "toolu_2", name: "b", input: {} },
    ]);
  });

  it("messages request - system first, tool_use as tool calls, tool_result as tool messages before the user's text", () => {
    const { request } = parseMessagesRequest({
      model: "fast",
      max_tokens: 100,
      system: [{ type: "text", text: "Be brief.", cache_control: { type: "ephemeral" } }],
      stop_sequences: ["END"],
      messages: [
        { role: "user", content: "weather?" },
        {
          role: "assistant",
          content: [
            { type: "thinking", thinking: "hmm", signature: "s" },
            { type: "text", text: "Checking." },
            { type: "tool_use", id: "t1", name: "w", input: { city: "Paris" } },
          ],
        },
        {
          role: "user",
          content: [
            { type: "tool_result", tool_use_id: "t1", content: "no data", is_error: true },
            { type: "text", text: "and now?" },
          ],
        },
      ],
    });
    expect(request).toMatchObject({ maxTokens: 100, stop: ["END"] });
    expect(
      request.messages?.map((m) => [
        m.role,
        m.content?.map((p) => (p.part?.case === "text" ? p.part.value : "")).join(""),
        m.toolCalls?.map((c) => `${c.id}:${c.arguments}`) ?? [],
        m.toolCallId ?? "",
      ]),
    ).toEqual([
      [ChatRole.SYSTEM, "Be brief.", [], ""],
      [ChatRole.USER, "weather?", [], ""],
      [ChatRole.ASSISTANT, "Checking.", ['t1:{"city":"Paris"}'], ""],
      [ChatRole.TOOL, "Error: no data", [], "t1"],
      [ChatRole.USER, "and now?", [], ""],
    ]);
  });

  it("cache_control - system blocks keep their text, and a part ends at each marked block", () => {
    const marked = { type: "ephemeral" } as const;
    const { request } = parseMessagesRequest({
      model: "m",
      max_tokens: 10,
      system: [
        { type: "text", text: "A", cache_control: marked },
        { type: "text", text: "B" },
        { type: "text", text: "C", cache_control: { type: "ephemeral", ttl: "1h" } },
        { type: "text", text: "D" },
      ],
      messages: [{ role: "user", content: "hi" }],
      tools: [
        { name: "a", input_schema: { type: "object" } },
        { name: "b", input_schema: { type: "object" }, cache_control: marked },
      ],
    });
    const system = request.messages?.[0];
    expect(system?.role).toBe(ChatRole.SYSTEM);
    expect(system?.content?.map((p) => [p.part?.value, p.cacheBreakpoint ?? false])).toEqual([
      ["A", true],
      ["\n\nB\n\nC", true],
      ["\n\nD", false],
    ]);
    // The TTL asked goes with the mark.
    expect(system?.content?.map((p) => p.cacheTtl)).toEqual([
      PromptCacheTtl.PROMPT_CACHE_TTL_UNSPECIFIED,
      PromptCacheTtl.PROMPT_CACHE_TTL_1H,
      undefined,
    ]);
    expect(request.tools?.map((t) => [t.name, t.cacheBreakpoint ?? false])).toEqual([
      ["a", false],
      ["b", true],
    ]);
    // Without marks the system prompt is one part, as before.
    const plain = parseMessagesRequest({
      model: "m",
      max_tokens: 10,
      system: [
        { type: "text", text: "A" },
        { type: "text", text: "B", cache_control: null },
      ],
      messages: [{ role: "user", content: "hi" }],
    }).request.messages?.[0];
    expect(plain?.content?.map((p) => [p.part?.value, p.cacheBreakpoint ?? false])).toEqual([
      ["A\n\nB", false],
    ]);
  });

  it("cache_control - text, image and tool_result blocks mark their part; a tool_use marks its message's last text", () => {
    const marked = { type: "ephemeral" } as const;
    const image = { type: "base64", media_type: "image/png", data: "iVBOR" };
    const { request } = parseMessagesRequest({
      model: "m",
      max_tokens: 10,
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "see", cache_control: marked },
            { type: "image", source: image },
          ],
        },
        {
          role: "assistant",
          content: [
            { type: "text", text: "One." },
            { type: "text", text: "Two." },
            { type: "tool_use", id: "t1", name: "w", input: {}, cache_control: marked },
          ],
        },
        {
          role: "user",
          content: [
            {
              type: "tool_result",
              tool_use_id: "t1",
              content: [
                { type: "text", text: "r1", cache_control: marked },
                { type: "text", text: "r2" },
              ],
            },
            { type: "image", source: image, cache_control: marked },
          ],
        },
      ],
    });
    const marks = (i: number) =>
      request.messages?.[i]?.content?.map((p) => p.cacheBreakpoint ?? false);
    expect(request.messages?.map((m) => m.role)).toEqual([
      ChatRole.USER,
      ChatRole.ASSISTANT,
      ChatRole.TOOL,
      ChatRole.USER,
    ]);
    expect([marks(0), marks(1), marks(2), marks(3)]).toEqual([
      [true, false],
      [false, true],
      [true],
      [true],
    ]);

    // A marked tool_use in a message without text has no part to carry it; the rest is kept.
    const bare = parseMessagesRequest({
      model: "m",
      max_tokens: 10,
      messages: [
        { role: "user", content: "go" },
        {
          role: "assistant",
          content: [{ type: "tool_use", id: "t1", name: "w", input: {}, cache_control: marked }],
        },
        {
          role: "user",
          content: [
            { type: "tool_result", tool_use_id: "t1", content: "ok", cache_control: marked },
          ],
        },
      ],
    }).request;
    expect(bare.messages?.map((m) => m.content?.map((p) => p.cacheBreakpoint ?? false))).toEqual([
      [false],
      [],
      [true],
    ]);
    expect(bare.messages?.[1]?.toolCalls?.map((c) => c.id)).toEqual(["t1"]);
  });

  it("cache_control - checked as Anthropic checks it (at most 4), and refused anywhere else", () => {
    const user = (cache_control: unknown) => ({
      messages: [{ role: "user", content: [{ type: "text", text: "x", cache_control }] }],
    });
    const cases: [Record<string, unknown>, string][] = [
      [user("ephemeral"), "messages.0.content.0.cache_control"],
      [user({ type: "persistent" }), "messages.0.content.0.cache_control.type"],
      [user({ type: "ephemeral", ttl: "2h" }), "messages.0.content.0.cache_control.ttl"],
      [
        {
          system: [{ type: "text", text: "s", cache_control: {} }],
          messages: [{ role: "user", content: "x" }],
        },
        "system.0.cache_control.type",
      ],
      [
        {
          messages: [{ role: "user", content: "x" }],
          tools: [{ name: "a", input_schema: {}, cache_control: { type: "ephemeral", x: 1 } }],
        },
        "tools.0.cache_control.x",
      ],
      // Where Anthropic takes no cache_control: the request, a message, an image's source.
      [{ ...user(undefined), cache_control: { type: "ephemeral" } }, "cache_control"],
      [
        { messages: [{ role: "user", content: "x", cache_control: { type: "ephemeral" } }] },
        "messages.0.cache_control",
      ],
      [
        {
          messages: [
            {
              role: "user",
              content: [
                {
                  type: "image",
                  source: { type: "url", url: "u", cache_control: { type: "ephemeral" } },
                },
              ],
            },
          ],
        },
        "messages.0.content.0.source.cache_control",
      ],
    ];
    for (const [body, param] of cases) {
      const e = refusal(body);
      expect([e.status, e.param]).toEqual([400, param]);
      const shape = anthropicErrorBody(e) as {
        type: string;
        error: { type: string; message: string };
      };
      expect([shape.type, shape.error.type]).toEqual(["error", "invalid_request_error"]);
      expect(shape.error.message).toContain(param);
    }

    const marked = { type: "ephemeral" };
    const text = (t: string) => ({ type: "text", text: t, cache_control: marked });
    const four = {
      system: [text("s")],
      messages: [{ role: "user", content: [text("a"), text("b")] }],
      tools: [{ name: "a", input_schema: {}, cache_control: marked }],
    };
    expect(() => parseMessagesRequest({ model: "m", max_tokens: 10, ...four })).not.toThrow();
    const five = refusal({
      ...four,
      messages: [{ role: "user", content: [text("a"), text("b"), text("c")] }],
    });
    expect(five.status).toBe(400);
    expect(five.message).toBe("A maximum of 4 blocks with cache_control may be provided. Found 5.");
  });

  it("messages errors - Anthropic's shape, the parameter leading the message", () => {
    expect(anthropicErrorBody(invalidRequest("must be at least 1.", "max_tokens"))).toEqual({
      type: "error",
      error: { type: "invalid_request_error", message: "max_tokens: must be at least 1." },
    });
  });
});
