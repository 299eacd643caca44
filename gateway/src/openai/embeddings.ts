// POST /v1/embeddings: OpenAI's body -> EmbedRequest; EmbedResponse -> OpenAI's list of
// embeddings, as float arrays or, with `encoding_format: "base64"` (what the openai SDKs ask for
// by default), as base64 of little-endian float32.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { CacheMode, type EmbedRequestSchema, type EmbedResponse } from "@ensemble/proto";
import { ensembleJson } from "./chat.js";
import { invalidRequest } from "./errors.js";
import {
  callLabels,
  missing,
  onlyKeys,
  optEnum,
  optInt32,
  reqString,
  wrongType,
  type JsonObject,
} from "./fields.js";

export type EmbedRequestInit = MessageInitShape<typeof EmbedRequestSchema>;

export interface ParsedEmbed {
  request: EmbedRequestInit;
  base64: boolean;
}

const EMBED_KEYS = new Set([
  "model",
  "input",
  "encoding_format",
  "dimensions",
  "user",
  "metadata",
  "cache",
]);

export function parseEmbedRequest(body: JsonObject): ParsedEmbed {
  onlyKeys(body, EMBED_KEYS, "");
  const model = reqString(body, "model");
  const input = body["input"];
  let inputs: string[];
  if (input === undefined || input === null) throw missing("input");
  if (typeof input === "string") inputs = [input];
  else if (Array.isArray(input)) {
    if (input.length === 0) {
      throw invalidRequest(
        "Invalid 'input': empty array. Expected at least one text.",
        "input",
        "empty_array",
      );
    }
    for (let i = 0; i < input.length; i++) {
      const item: unknown = input[i];
      if (typeof item === "string") continue;
      if (typeof item === "number" || Array.isArray(item)) {
        throw invalidRequest(
          "Token arrays are not supported as 'input' here: send the text.",
          "input",
          "unsupported_value",
        );
      }
      throw wrongType(`input[${i}]`, "a string", item);
    }
    inputs = input as string[];
  } else {
    throw wrongType("input", "a string or an array of strings", input);
  }
  const request: EmbedRequestInit = { model, inputs };
  const dimensions = optInt32(body, "dimensions");
  if (dimensions !== undefined) request.dimensions = dimensions;
  const cache = optEnum(body, "cache", ["use", "bypass"]);
  if (cache !== undefined) request.cache = cache === "use" ? CacheMode.USE : CacheMode.BYPASS;
  // Labels for the usage ledger: `user`, and `metadata` as on chat completions (an extension).
  const metadata = callLabels(body);
  if (metadata !== undefined) request.metadata = metadata;
  const format = optEnum(body, "encoding_format", ["float", "base64"]);
  return { request, base64: format === "base64" };
}

/** Contract field paths in upstream errors -> OpenAI parameter names. */
export function embedParam(path: string): string {
  return path.replace(/^inputs/, "input");
}

/** The vector as base64 of little-endian float32 (OpenAI's `encoding_format: "base64"`). */
export function float32Base64(values: readonly number[]): string {
  const buf = Buffer.allocUnsafe(values.length * 4);
  for (let i = 0; i < values.length; i++) buf.writeFloatLE(values[i] ?? 0, i * 4);
  return buf.toString("base64");
}

export function embeddingsJson(
  res: EmbedResponse,
  requestedModel: string,
  base64: boolean,
): unknown {
  const input = Number(res.usage?.inputTokens ?? 0n);
  const total = Number(res.usage?.totalTokens ?? 0n);
  return {
    object: "list",
    data: res.embeddings.map((e) => ({
      object: "embedding",
      index: e.index,
      embedding: base64 ? float32Base64(e.values) : e.values,
    })),
    model: res.servedBy?.model || requestedModel,
    usage: { prompt_tokens: input, total_tokens: total > 0 ? total : input },
    ensemble: ensembleJson(res.servedBy, res.usage),
  };
}
