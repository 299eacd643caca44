// POST /v1/images/generations: OpenAI's body -> GenerateImageRequest; the images come back as
// `b64_json` (default) or, with `response_format: "url"`, as `data:` URLs (the proxy already
// downloaded them, so there is no provider URL that could expire).
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ImageFormat,
  type GenerateImageRequestSchema,
  type GenerateImageResponse,
} from "@ensemble/proto";
import { ensembleJson } from "./chat.js";
import {
  callLabels,
  onlyKeys,
  optEnum,
  optInt32,
  optString,
  reqString,
  type JsonObject,
} from "./fields.js";

export type ImageRequestInit = MessageInitShape<typeof GenerateImageRequestSchema>;

export interface ParsedImage {
  request: ImageRequestInit;
  asUrl: boolean;
}

/** The catalog's role alias for image generation, used when the request names no model. */
export const DEFAULT_IMAGE_MODEL = "image";

const IMAGE_KEYS = new Set([
  "model",
  "prompt",
  "n",
  "size",
  "quality",
  "response_format",
  "output_format",
  "user",
  "metadata",
]);
const FORMATS = { png: ImageFormat.PNG, jpeg: ImageFormat.JPEG, webp: ImageFormat.WEBP } as const;

export function parseImageRequest(body: JsonObject): ParsedImage {
  onlyKeys(body, IMAGE_KEYS, "");
  const request: ImageRequestInit = {
    model: optString(body, "model") ?? DEFAULT_IMAGE_MODEL,
    prompt: reqString(body, "prompt"),
  };
  const n = optInt32(body, "n");
  if (n !== undefined) request.n = n;
  const size = optString(body, "size");
  if (size !== undefined && size !== "auto") request.size = size;
  const quality = optString(body, "quality");
  if (quality !== undefined && quality !== "auto") request.quality = quality;
  const format = optEnum(body, "output_format", ["png", "jpeg", "webp"]);
  if (format !== undefined) request.format = FORMATS[format];
  // Labels for the usage ledger: `user`, and `metadata` as on chat completions (an extension).
  const metadata = callLabels(body);
  if (metadata !== undefined) request.metadata = metadata;
  const responseFormat = optEnum(body, "response_format", ["b64_json", "url"]);
  return { request, asUrl: responseFormat === "url" };
}

export function imagesJson(res: GenerateImageResponse, asUrl: boolean): unknown {
  return {
    created: Math.floor(Date.now() / 1000),
    data: res.images.map((image) => {
      const b64 = Buffer.from(image.data).toString("base64");
      const out: Record<string, string> = asUrl
        ? { url: `data:${image.mimeType || "image/png"};base64,${b64}` }
        : { b64_json: b64 };
      if (image.revisedPrompt !== "") out["revised_prompt"] = image.revisedPrompt;
      return out;
    }),
    usage: {
      input_tokens: Number(res.usage?.inputTokens ?? 0n),
      output_tokens: Number(res.usage?.outputTokens ?? 0n),
      total_tokens: Number(res.usage?.totalTokens ?? 0n),
    },
    ensemble: { ...ensembleJson(res.servedBy, res.usage), model: res.servedBy?.model ?? "" },
  };
}
