import { create } from "@bufbuild/protobuf";
import {
  CacheMode,
  ChatMessageSchema,
  ChatRequestSchema,
  ChatRole,
  ContentPartSchema,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { collectionFor, splitLastUserText } from "./semantic-cache.js";

const text = (value: string) => ({ part: { case: "text" as const, value } });

function chat(
  last: string,
  over: {
    model?: string;
    cache?: CacheMode;
    temperature?: number;
    metadata?: Record<string, string>;
    attribution?: { runId: string };
  } = {},
) {
  return create(ChatRequestSchema, {
    model: "sim-fast",
    ...over,
    messages: [
      { role: ChatRole.SYSTEM, content: [text("You are terse.")] },
      { role: ChatRole.USER, content: [text(last)] },
    ],
  });
}

describe("semantic cache", () => {
  it("partition - everything but the last user message's text counts; cache mode, attribution and metadata do not", () => {
    const a = splitLastUserText(chat("What is the capital of France?"), "u-1");
    const b = splitLastUserText(
      chat("Tell me France's capital", {
        cache: CacheMode.SEMANTIC,
        metadata: { user: "u-1" },
        attribution: { runId: "r" },
      }),
      "u-1",
    );
    expect(a?.text).toBe("What is the capital of France?");
    expect(b?.partition).toBe(a?.partition);
    expect(
      splitLastUserText(chat("What is the capital of France?", { model: "sim-code" }), "u-1")
        ?.partition,
    ).not.toBe(a?.partition);
    expect(
      splitLastUserText(chat("What is the capital of France?", { temperature: 0.2 }), "u-1")
        ?.partition,
    ).not.toBe(a?.partition);
    expect(splitLastUserText(chat("What is the capital of France?"), "u-2")?.partition).not.toBe(
      a?.partition,
    );
    const otherSystem = chat("What is the capital of France?");
    otherSystem.messages[0]!.content = [create(ContentPartSchema, text("Answer like a pirate."))];
    expect(splitLastUserText(otherSystem, "u-1")?.partition).not.toBe(a?.partition);
  });

  it("partition - nothing to compare: the last message is not the user's, has an image, or no text", () => {
    const assistantLast = chat("hi");
    assistantLast.messages.push(
      create(ChatMessageSchema, { role: ChatRole.ASSISTANT, content: [text("hello")] }),
    );
    expect(splitLastUserText(assistantLast, "u-1")).toBeUndefined();
    const image = chat("what is this?");
    image.messages[1]!.content.push(
      create(ContentPartSchema, {
        part: {
          case: "image",
          value: { source: { case: "data", value: new Uint8Array([1]) }, mimeType: "image/png" },
        },
      }),
    );
    expect(splitLastUserText(image, "u-1")).toBeUndefined();
    expect(splitLastUserText(chat("   "), "u-1")).toBeUndefined();
  });

  it("collection - one per embedding model, always a valid collection id", () => {
    expect(collectionFor("sim-embed")).toBe("ensemble.response-cache.sim-embed");
    expect(collectionFor("openai/Text-Embedding 3")).toBe(
      "ensemble.response-cache.openai-text-embedding-3",
    );
    expect(collectionFor("x".repeat(300))).toHaveLength(128);
    // Cut where a separator falls: still a valid id (ends in a letter or digit).
    expect(collectionFor(`${"x".repeat(103)}-yyyy`)).toMatch(/^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/);
  });
});
