import { create } from "@bufbuild/protobuf";
import {
  ChatDeltaSchema,
  ChatRole,
  FinishReason,
  ServedBySchema,
  StreamChatEndSchema,
  StreamChatStartSchema,
} from "@ensemble/proto";
import type OpenAI from "openai";
import { accumulateResponse } from "openai/lib/responses/ResponseAccumulator";
import { describe, expect, it } from "vitest";
import { parseResponsesRequest, ResponseEventEncoder } from "./responses.js";

type Event = OpenAI.Responses.ResponseStreamEvent;

/** The events of a server-sent text, as the SDK's stream decodes them. */
function events(sse: string): Event[] {
  return sse
    .split("\n\n")
    .filter((block) => block !== "")
    .map((block) => {
      const [eventLine, dataLine] = block.split("\n");
      const event = JSON.parse(dataLine!.slice("data: ".length)) as Event;
      expect(eventLine).toBe(`event: ${event.type}`);
      return event;
    });
}

function stream(
  deltas: Array<Parameters<typeof create<typeof ChatDeltaSchema>>[1]>,
  finishReason: FinishReason,
): Event[] {
  const encoder = new ResponseEventEncoder("fast", { tools: [] });
  const servedBy = create(ServedBySchema, { model: "sim-fast" });
  let sse = encoder.start(create(StreamChatStartSchema, { id: "chatcmpl-abc", servedBy }));
  for (const d of deltas) sse += encoder.delta(create(ChatDeltaSchema, d));
  sse += encoder.end(
    create(StreamChatEndSchema, {
      finishReason,
      usage: { inputTokens: 5n, outputTokens: 7n, totalTokens: 12n },
    }),
    servedBy,
  );
  return events(sse);
}

describe("responses API mapping", () => {
  it("responses stream - reasoning, text and a tool call become the items the SDK's accumulator builds", () => {
    const list = stream(
      [
        { reasoning: "think " },
        { reasoning: "more" },
        { content: "Hello " },
        { content: "world" },
        { toolCalls: [{ index: 0, id: "call_1", name: "lookup", arguments: '{"q"' }] },
        { toolCalls: [{ index: 0, arguments: ':"x"}' }] },
      ],
      FinishReason.TOOL_CALLS,
    );
    expect(list.map((e) => e.sequence_number)).toEqual(list.map((_, i) => i));
    let snapshot: OpenAI.Responses.Response | undefined;
    for (const e of list) snapshot = accumulateResponse(e, snapshot);
    const last = list.at(-1)!;
    expect(last.type).toBe("response.completed");
    const done = (last as OpenAI.Responses.ResponseCompletedEvent).response;
    expect(done.model).toBe("sim-fast");
    expect(done.usage).toMatchObject({ input_tokens: 5, output_tokens: 7, total_tokens: 12 });
    expect(done.output).toEqual([
      {
        type: "reasoning",
        id: "rs_abc",
        summary: [{ type: "summary_text", text: "think more" }],
      },
      {
        type: "message",
        id: "msg_abc",
        status: "completed",
        role: "assistant",
        content: [{ type: "output_text", text: "Hello world", annotations: [], logprobs: [] }],
      },
      {
        type: "function_call",
        id: "fc_call1",
        call_id: "call_1",
        name: "lookup",
        arguments: '{"q":"x"}',
        status: "completed",
      },
    ]);
    // The SDK's own snapshot, built from the incremental events, agrees with the final object.
    expect(snapshot?.output).toEqual(done.output);
    expect(snapshot?.output_text).toBe("Hello world");
  });

  it("responses stream - a length stop ends with response.incomplete; an empty answer is an empty message", () => {
    const cut = stream([{ content: "Hel" }], FinishReason.LENGTH).at(-1)!;
    expect(cut.type).toBe("response.incomplete");
    expect((cut as OpenAI.Responses.ResponseIncompleteEvent).response).toMatchObject({
      status: "incomplete",
      incomplete_details: { reason: "max_output_tokens" },
    });
    const empty = stream([], FinishReason.STOP);
    let snapshot: OpenAI.Responses.Response | undefined;
    for (const e of empty) snapshot = accumulateResponse(e, snapshot);
    expect(snapshot?.output.map((o) => o.type)).toEqual(["message"]);
    expect(snapshot?.output_text).toBe("");
  });

  it("responses stream - log probabilities arriving after their text still reach output_text.done and the message", () => {
    const lp = (token: string) => ({ token, logprob: -0.5, bytes: Buffer.from(token) });
    const list = stream(
      [{ content: "Hi there", logprobs: [lp("Hi")] }, { logprobs: [lp(" there")] }],
      FinishReason.STOP,
    );
    const done = list.find((e) => e.type === "response.output_text.done");
    expect((done as OpenAI.Responses.ResponseTextDoneEvent).logprobs.map((l) => l.token)).toEqual([
      "Hi",
      " there",
    ]);
    const last = list.at(-1) as OpenAI.Responses.ResponseCompletedEvent;
    const message = last.response.output[0] as OpenAI.Responses.ResponseOutputMessage;
    const part = message.content[0] as OpenAI.Responses.ResponseOutputText;
    expect(part.logprobs?.map((l) => l.token)).toEqual(["Hi", " there"]);
  });

  it("responses request - instructions apart, output items sent back become the assistant's turn, tool output a tool message", () => {
    const { request, echo, instructions, store } = parseResponsesRequest({
      model: "fast",
      instructions: "Be brief.",
      max_output_tokens: 50,
      input: [
        { role: "user", content: "weather?" },
        { type: "reasoning", id: "rs_1", summary: [] },
        {
          type: "message",
          id: "msg_1",
          role: "assistant",
          status: "completed",
          content: [{ type: "output_text", text: "Let me check.", annotations: [] }],
        },
        { type: "function_call", id: "fc_1", call_id: "c1", name: "w", arguments: "{}" },
        { type: "function_call_output", call_id: "c1", output: "sunny" },
      ],
    });
    expect(request.maxTokens).toBe(50);
    // Sent first, but not part of the conversation a continuation carries over.
    expect(instructions).toMatchObject({ role: ChatRole.SYSTEM });
    expect(store).toBe(true);
    expect(echo).toMatchObject({ instructions: "Be brief.", max_output_tokens: 50 });
    expect(
      request.messages?.map((m) => [
        m.role,
        m.content?.map((p) => (p.part?.case === "text" ? p.part.value : "")).join(""),
        m.toolCalls?.map((c) => c.id) ?? [],
        m.toolCallId ?? "",
      ]),
    ).toEqual([
      [ChatRole.USER, "weather?", [], ""],
      [ChatRole.ASSISTANT, "Let me check.", ["c1"], ""],
      [ChatRole.TOOL, "sunny", [], "c1"],
    ]);
  });
});
