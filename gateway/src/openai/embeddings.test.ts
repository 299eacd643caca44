import { create } from "@bufbuild/protobuf";
import { CacheMode, EmbedRequestSchema, EmbedResponseSchema } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { embeddingsJson, embedParam, float32Base64, parseEmbedRequest } from "./embeddings.js";
import { OpenAiError } from "./errors.js";
import { parseImageRequest } from "./images.js";

function refusal(body: Record<string, unknown>): OpenAiError {
  try {
    parseEmbedRequest(body);
  } catch (err) {
    if (err instanceof OpenAiError) return err;
    throw err;
  }
  throw new Error("accepted");
}

describe("openai embeddings", () => {
  it("request - a string or an array of strings; dimensions, cache and the encoding are read", () => {
    const one = parseEmbedRequest({ model: "sim-embed", input: "hello" });
    expect(create(EmbedRequestSchema, one.request).inputs).toEqual(["hello"]);
    expect(one.base64).toBe(false);
    const many = parseEmbedRequest({
      model: "sim-embed",
      input: ["a", "b"],
      dimensions: 64,
      encoding_format: "base64",
      cache: "bypass",
      user: "u",
    });
    const req = create(EmbedRequestSchema, many.request);
    expect(req.inputs).toEqual(["a", "b"]);
    expect(req.dimensions).toBe(64);
    expect(req.cache).toBe(CacheMode.BYPASS);
    expect(many.base64).toBe(true);
    // `user` and `metadata` label the call in the usage ledger, as on chat completions.
    expect(req.metadata).toEqual({ user: "u" });
    const labelled = parseEmbedRequest({
      model: "sim-embed",
      input: "a",
      metadata: { team: "search" },
      user: "u",
    });
    expect(create(EmbedRequestSchema, labelled.request).metadata).toEqual({
      team: "search",
      user: "u",
    });
  });

  it("invalid - token arrays, empty input, bad types and unknown fields are 400", () => {
    expect(refusal({ model: "m", input: [1, 2, 3] }).code).toBe("unsupported_value");
    expect(refusal({ model: "m", input: [] }).param).toBe("input");
    expect(refusal({ model: "m" }).param).toBe("input");
    expect(refusal({ model: "m", input: ["a", {}] }).param).toBe("input[1]");
    expect(refusal({ model: "m", input: "a", encoding_format: "hex" }).param).toBe(
      "encoding_format",
    );
    expect(refusal({ model: "m", input: "a", extra: 1 }).status).toBe(400);
    expect(embedParam("inputs[3]")).toBe("input[3]");
  });

  it("base64 - little-endian float32, the bytes OpenAI clients decode", () => {
    const values = [0.5, -1.25, 3.1415927410125732];
    const bytes = Buffer.from(float32Base64(values), "base64");
    expect(bytes.length).toBe(12);
    expect([0, 4, 8].map((o) => bytes.readFloatLE(o))).toEqual(values);
  });

  it("response - list shape with indexes, the answering model and prompt tokens", () => {
    const res = create(EmbedResponseSchema, {
      servedBy: { model: "sim-embed", provider: "simulator", simulated: true },
      embeddings: [
        { index: 0, values: [0.5, 0.25] },
        { index: 1, values: [1, 0] },
      ],
      dimensions: 2,
      usage: { inputTokens: 4n, totalTokens: 4n },
    });
    const floats = embeddingsJson(res, "embedding", false) as Record<string, unknown>;
    expect(floats).toMatchObject({
      object: "list",
      model: "sim-embed",
      data: [
        { object: "embedding", index: 0, embedding: [0.5, 0.25] },
        { object: "embedding", index: 1, embedding: [1, 0] },
      ],
      usage: { prompt_tokens: 4, total_tokens: 4 },
      ensemble: { simulated: true },
    });
    const b64 = embeddingsJson(res, "embedding", true) as { data: Array<{ embedding: string }> };
    expect(typeof b64.data[0]?.embedding).toBe("string");
  });
});

describe("openai images", () => {
  it("request - prompt, n, size, output format; the model defaults to the image role alias", () => {
    const parsed = parseImageRequest({
      prompt: "a cat",
      n: 2,
      size: "256x256",
      response_format: "url",
    });
    expect(parsed.request).toMatchObject({
      model: "image",
      prompt: "a cat",
      n: 2,
      size: "256x256",
    });
    expect(parsed.asUrl).toBe(true);
    expect(
      parseImageRequest({ prompt: "a", user: "u", metadata: { team: "art" } }).request,
    ).toMatchObject({ metadata: { team: "art", user: "u" } });
    expect(() => parseImageRequest({ prompt: "a", metadata: { team: 1 } })).toThrow(
      /metadata.team/,
    );
    expect(() => parseImageRequest({ model: "sim-image" })).toThrow(OpenAiError);
    expect(() => parseImageRequest({ prompt: "x", style: "vivid" })).toThrow(/style/);
  });
});
