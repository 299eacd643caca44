import { create } from "@bufbuild/protobuf";
import {
  ChatDeltaSchema,
  ChatRole,
  FinishReason,
  ServedBySchema,
  StreamChatEndSchema,
  StreamChatStartSchema,
} from "@ensemble/proto";
import { MessageStream } from "@anthropic-ai/sdk/lib/MessageStream";
import { describe, expect, it } from "vitest";
import { anthropicErrorBody, MessageEventEncoder, parseMessagesRequest } from "./messages.js";
import { invalidRequest } from "./errors.js";

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

  it("messages errors - Anthropic's shape, the parameter leading the message", () => {
    expect(anthropicErrorBody(invalidRequest("must be at least 1.", "max_tokens"))).toEqual({
      type: "error",
      error: { type: "invalid_request_error", message: "max_tokens: must be at least 1." },
    });
  });
});
