// Google Gemini API (`/v1beta/models/{model}:generateContent` and friends) on top of the OpenAI
// chat simulation: contents are checked the way Gemini checks them, then rewritten as the
// equivalent OpenAI chat body, so the same conversation gets the same simulated text.
import { SimError } from "./errors.js";
import type { ForcedCall } from "./structured.js";

export interface GeminiRequest {
  /** The equivalent OpenAI chat body (model, messages, temperature, top_p, seed, max_tokens). */
  openai: Record<string, unknown>;
  stopSequences: string[];
  /** A function the model must call (functionCallingConfig mode ANY), when tools are given. */
  forcedTool?: ForcedCall;
  /** generationConfig.imageConfig.aspectRatio, for image models. */
  aspectRatio?: string;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function googleInvalid(message: string): SimError {
  return new SimError(400, message, "invalid_request_error");
}

type OpenAIPart =
  { type: "text"; text: string } | { type: "image_url"; image_url: { url: string } };

function partsOf(content: unknown, path: string): OpenAIPart[] {
  if (!isRecord(content) || !Array.isArray(content["parts"])) {
    throw googleInvalid(
      `* GenerateContentRequest.${path}.parts: contents.parts must not be empty.`,
    );
  }
  const out: OpenAIPart[] = [];
  content["parts"].forEach((p, j) => {
    const at = `${path}.parts[${j}]`;
    if (!isRecord(p)) throw googleInvalid(`* GenerateContentRequest.${at}: must be an object.`);
    if (p["thought"] === true) return; // earlier reasoning, not prompt text
    if (typeof p["text"] === "string") {
      out.push({ type: "text", text: p["text"] });
    } else if (isRecord(p["inlineData"])) {
      const d = p["inlineData"];
      if (typeof d["mimeType"] !== "string" || typeof d["data"] !== "string") {
        throw googleInvalid(
          `* GenerateContentRequest.${at}.inline_data: mime_type and data are required.`,
        );
      }
      out.push({
        type: "image_url",
        image_url: { url: `data:${d["mimeType"]};base64,${d["data"]}` },
      });
    } else if (isRecord(p["fileData"]) && typeof p["fileData"]["fileUri"] === "string") {
      out.push({ type: "image_url", image_url: { url: p["fileData"]["fileUri"] } });
    } else if (isRecord(p["functionResponse"])) {
      out.push({ type: "text", text: JSON.stringify(p["functionResponse"]["response"] ?? {}) });
    } else if (!isRecord(p["functionCall"])) {
      throw googleInvalid(
        `* GenerateContentRequest.${at}.data: required oneof field 'data' must have one initialized field`,
      );
    }
  });
  return out;
}

function openAIContent(parts: OpenAIPart[]): string | OpenAIPart[] {
  if (parts.every((p) => p.type === "text")) return parts.map((p) => p.text).join(" ");
  return parts;
}

function numberIn(
  cfg: Record<string, unknown>,
  key: string,
  min: number,
  max: number,
): number | undefined {
  const v = cfg[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || v < min || v > max) {
    throw googleInvalid(
      `* GenerateContentRequest.generation_config.${key}: must be between ${min} and ${max}.`,
    );
  }
  return v;
}

export function parseGeminiRequest(model: string, body: unknown): GeminiRequest {
  if (!isRecord(body)) throw googleInvalid("Invalid JSON payload received. Expected an object.");
  const contents = body["contents"];
  if (!Array.isArray(contents) || contents.length === 0) {
    throw googleInvalid("* GenerateContentRequest.contents: contents is not specified");
  }
  const messages: Array<Record<string, unknown>> = [];
  const system = body["systemInstruction"] ?? body["system_instruction"];
  if (system !== undefined && system !== null) {
    messages.push({
      role: "system",
      content: openAIContent(partsOf(system, "system_instruction")),
    });
  }
  contents.forEach((c, i) => {
    const role = isRecord(c) ? (c["role"] ?? "user") : undefined;
    if (role !== "user" && role !== "model" && role !== "function") {
      throw googleInvalid(
        `* GenerateContentRequest.contents[${i}].role: Please use a valid role: user, model.`,
      );
    }
    messages.push({
      role: role === "model" ? "assistant" : "user",
      content: openAIContent(partsOf(c, `contents[${i}]`)),
    });
  });
  const cfg = isRecord(body["generationConfig"]) ? body["generationConfig"] : {};
  const openai: Record<string, unknown> = { model, messages };
  const temperature = numberIn(cfg, "temperature", 0, 2);
  const topP = numberIn(cfg, "topP", 0, 1);
  const maxTokens = numberIn(cfg, "maxOutputTokens", 1, 1e9);
  if (temperature !== undefined) openai["temperature"] = temperature;
  if (topP !== undefined) openai["top_p"] = topP;
  if (maxTokens !== undefined) openai["max_tokens"] = Math.floor(maxTokens);
  if (typeof cfg["seed"] === "number") openai["seed"] = cfg["seed"];
  // JSON mode: responseMimeType application/json, with a schema (responseJsonSchema, or the
  // OpenAPI-style responseSchema, close enough for an instance) or without.
  if (cfg["responseMimeType"] === "application/json") {
    const schema = cfg["responseJsonSchema"] ?? cfg["responseSchema"];
    openai["response_format"] = isRecord(schema)
      ? { type: "json_schema", json_schema: { name: "response", schema: lowerTypes(schema) } }
      : { type: "json_object" };
  }
  const stop = cfg["stopSequences"];
  const req: GeminiRequest = {
    openai,
    stopSequences: Array.isArray(stop)
      ? stop.filter((s): s is string => typeof s === "string")
      : [],
  };
  const image = cfg["imageConfig"];
  if (isRecord(image) && typeof image["aspectRatio"] === "string") {
    req.aspectRatio = image["aspectRatio"];
  }
  const forced = forcedFunction(body, contents);
  if (forced !== undefined) req.forcedTool = forced;
  return req;
}

/** Mode ANY forces a call (of the first allowed function), unless function results end the chat. */
function forcedFunction(
  body: Record<string, unknown>,
  contents: unknown[],
): ForcedCall | undefined {
  const cfg = isRecord(body["toolConfig"])
    ? body["toolConfig"]["functionCallingConfig"]
    : undefined;
  if (!isRecord(cfg) || cfg["mode"] !== "ANY") return undefined;
  const last = contents[contents.length - 1];
  if (
    isRecord(last) &&
    Array.isArray(last["parts"]) &&
    last["parts"].some((p) => isRecord(p) && isRecord(p["functionResponse"]))
  ) {
    return undefined;
  }
  const decls: Array<Record<string, unknown>> = [];
  for (const t of Array.isArray(body["tools"]) ? (body["tools"] as unknown[]) : []) {
    const list: unknown = isRecord(t) ? t["functionDeclarations"] : undefined;
    if (Array.isArray(list)) decls.push(...(list as unknown[]).filter(isRecord));
  }
  const allowed: unknown = cfg["allowedFunctionNames"];
  const name =
    Array.isArray(allowed) && typeof allowed[0] === "string" ? allowed[0] : decls[0]?.["name"];
  if (typeof name !== "string") return undefined;
  const decl = decls.find((d) => d["name"] === name);
  return { name, schema: decl?.["parametersJsonSchema"] ?? lowerTypes(decl?.["parameters"]) };
}

/** The texts of an embedContent request (`content.parts[].text`, joined). */
export function embedText(req: unknown, path: string): string {
  const content = isRecord(req) ? req["content"] : undefined;
  const parts = isRecord(content) ? content["parts"] : undefined;
  if (!Array.isArray(parts) || parts.length === 0) {
    throw googleInvalid(`* ${path}.content: content is not specified`);
  }
  const text = parts
    .map((p) => (isRecord(p) && typeof p["text"] === "string" ? p["text"] : ""))
    .join(" ");
  if (text.trim() === "") throw googleInvalid(`* ${path}.content: text content is empty`);
  return text;
}

/** outputDimensionality (1–4096) or undefined. */
export function embedDimensions(req: unknown, path: string): number | undefined {
  const d = isRecord(req) ? req["outputDimensionality"] : undefined;
  if (d === undefined || d === null) return undefined;
  if (typeof d !== "number" || !Number.isInteger(d) || d < 1 || d > 4096) {
    throw googleInvalid(`* ${path}.output_dimensionality: must be between 1 and 4096.`);
  }
  return d;
}

/** Image size for an aspect ratio "W:H": the longer side 256 px, like the OpenAI default. */
export function imageSize(aspectRatio: string | undefined): [number, number] {
  const m = /^(\d+):(\d+)$/.exec(aspectRatio ?? "1:1");
  const w = Number(m?.[1] ?? 1) || 1;
  const h = Number(m?.[2] ?? 1) || 1;
  return w >= h
    ? [256, Math.max(1, Math.round((256 * h) / w))]
    : [Math.max(1, Math.round((256 * w) / h)), 256];
}

/** Gemini's OpenAPI-style schemas spell types in capitals (OBJECT, STRING); JSON Schema does not. */
function lowerTypes(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(lowerTypes);
  if (!isRecord(schema)) return schema;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    out[k] = k === "type" && typeof v === "string" ? v.toLowerCase() : lowerTypes(v);
  }
  return out;
}
