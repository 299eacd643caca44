// POST /v1/chat/completions: OpenAI's request body -> ModelProxyService ChatRequest, and
// ChatResponse / StreamChatResponse -> `chat.completion` / `chat.completion.chunk`.
import type { JsonObject as ProtoJsonObject, MessageInitShape } from "@bufbuild/protobuf";
import {
  CacheMode,
  ChatRole,
  FinishReason,
  ImageDetail,
  ResponseFormat_Type,
  ToolChoice_Mode,
  type ChatDelta,
  type ChatMessageSchema,
  type ChatRequestSchema,
  type ChatResponse,
  type ContentPartSchema,
  type ServedBy,
  type StreamChatEnd,
  type StreamChatStart,
  type TokenLogprob,
  type ToolCallSchema,
  type ToolChoiceSchema,
  type ToolDefinitionSchema,
  type ResponseFormatSchema,
  type Usage,
} from "@ensemble/proto";
import { invalidRequest, type OpenAiError } from "./errors.js";
import {
  cacheControl,
  callLabels,
  missing,
  objectAt,
  onlyKeys,
  optBoolean,
  optEnum,
  optInt32,
  optNumber,
  optString,
  reqString,
  stringArray,
  wrongType,
  wrongValue,
  type JsonObject,
} from "./fields.js";

export type ChatRequestInit = MessageInitShape<typeof ChatRequestSchema>;
type MessageInit = MessageInitShape<typeof ChatMessageSchema>;
type PartInit = MessageInitShape<typeof ContentPartSchema>;

/** What the gateway needs to answer besides the upstream request. */
export interface ParsedChat {
  request: ChatRequestInit;
  stream: boolean;
  includeUsage: boolean;
  /** How many choices (`n`): each is its own model call (handler.ts). */
  n: number;
}

/** The most choices one chat completion may ask for (each is a model call, billed as one). */
export const MAX_CHOICES = 8;

/** "auto" on a gateway without the categorizer. */
export function autoModelError(): ReturnType<typeof invalidRequest> {
  return invalidRequest(
    'model "auto" (automatic model routing) needs the categorizer, which is not configured on this gateway (CATEGORIZER_ADDR). Name a model from GET /v1/models instead.',
    "model",
    "model_not_supported",
  );
}

const CHAT_KEYS = new Set([
  "model",
  "messages",
  "stream",
  "stream_options",
  "temperature",
  "top_p",
  "max_tokens",
  "max_completion_tokens",
  "stop",
  "presence_penalty",
  "frequency_penalty",
  "seed",
  "response_format",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "reasoning_effort",
  "user",
  "safety_identifier",
  "prompt_cache_key",
  "n",
  "logprobs",
  "top_logprobs",
  "store",
  "metadata",
  // Ensemble extensions
  "cache",
  "fallback_models",
  "log",
]);
const STREAM_OPTION_KEYS = new Set(["include_usage", "include_obfuscation"]);
const MESSAGE_KEYS = new Set(["role", "content", "name", "tool_calls", "tool_call_id", "refusal"]);
const TOOL_CALL_KEYS = new Set(["id", "type", "function"]);
const FUNCTION_CALL_KEYS = new Set(["name", "arguments"]);
// `cache_control` on tools and content parts: LiteLLM's convention for Anthropic's prompt-caching
// breakpoints on OpenAI bodies (cacheControl in fields.ts).
const TOOL_KEYS = new Set(["type", "function", "cache_control"]);
const FUNCTION_KEYS = new Set(["name", "description", "parameters", "strict"]);
const TEXT_PART_KEYS = new Set(["type", "text", "cache_control"]);
const IMAGE_PART_KEYS = new Set(["type", "image_url", "cache_control"]);
const IMAGE_URL_KEYS = new Set(["url", "detail"]);
const RESPONSE_FORMAT_KEYS = new Set(["type", "json_schema"]);
const JSON_SCHEMA_KEYS = new Set(["name", "description", "schema", "strict"]);
const TOOL_CHOICE_KEYS = new Set(["type", "function"]);
const TOOL_CHOICE_FUNCTION_KEYS = new Set(["name"]);

const ROLES: Record<string, ChatRole> = {
  system: ChatRole.SYSTEM,
  developer: ChatRole.DEVELOPER,
  user: ChatRole.USER,
  assistant: ChatRole.ASSISTANT,
  tool: ChatRole.TOOL,
};
const ROLE_NAMES = Object.keys(ROLES);
const DETAILS = { auto: ImageDetail.AUTO, low: ImageDetail.LOW, high: ImageDetail.HIGH } as const;
export const REASONING_EFFORTS = ["minimal", "low", "medium", "high"] as const;
const CACHE_MODES = ["use", "bypass", "semantic"] as const;
const CACHE_MODE_OF = {
  use: CacheMode.USE,
  bypass: CacheMode.BYPASS,
  semantic: CacheMode.SEMANTIC,
} as const;

/** Checks an OpenAI chat body and maps it onto the contract's ChatRequest. */
export function parseChatRequest(body: JsonObject): ParsedChat {
  onlyKeys(body, CHAT_KEYS, "");
  const model = reqString(body, "model");
  const request: ChatRequestInit = { model, messages: parseMessages(body["messages"]) };

  const { stream, includeUsage } = parseStream(body);
  parseGeneration(body, request);

  if (body["response_format"] !== undefined && body["response_format"] !== null) {
    request.responseFormat = parseResponseFormat(body["response_format"]);
  }
  if (body["tools"] !== undefined && body["tools"] !== null) {
    request.tools = parseTools(body["tools"]);
  }
  if (body["tool_choice"] !== undefined && body["tool_choice"] !== null) {
    request.toolChoice = parseToolChoice(body["tool_choice"]);
  }
  optBoolean(body, "parallel_tool_calls"); // accepted; providers decide (their default is on)

  const effort = optEnum(body, "reasoning_effort", REASONING_EFFORTS);
  if (effort !== undefined) request.reasoningEffort = effort;

  // A boolean in chat completions: the answer's tokens with their log probabilities.
  if (optBoolean(body, "logprobs") === true) request.logprobs = true;
  const top = topLogprobsOf(body);
  if (top !== undefined) {
    if (top > 0 && request.logprobs !== true) {
      throw invalidRequest("top_logprobs needs logprobs: true.", "top_logprobs", "invalid_value");
    }
    request.topLogprobs = top;
  }
  const n = optInt32(body, "n") ?? 1;
  if (n < 1 || n > MAX_CHOICES) {
    throw invalidRequest(
      `n must be between 1 and ${MAX_CHOICES} (each choice is a model call of its own).`,
      "n",
      "integer_out_of_range",
    );
  }

  parseShared(body, request);
  return { request, stream, includeUsage, n };
}

/** `stream` and `stream_options` (chat completions and completions). */
export function parseStream(body: JsonObject): { stream: boolean; includeUsage: boolean } {
  const stream = optBoolean(body, "stream") ?? false;
  let includeUsage = false;
  if (body["stream_options"] !== undefined && body["stream_options"] !== null) {
    if (!stream) {
      throw invalidRequest(
        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        "stream_options",
      );
    }
    const options = objectAt(body["stream_options"], "stream_options");
    onlyKeys(options, STREAM_OPTION_KEYS, "stream_options");
    includeUsage = optBoolean(options, "include_usage", "stream_options") ?? false;
    optBoolean(options, "include_obfuscation", "stream_options"); // nothing to obfuscate
  }
  return { stream, includeUsage };
}

/**
 * The length and sampling fields chat completions and completions share: penalties,
 * `max_tokens` (and chat's `max_completion_tokens`), `stop`, `seed`.
 */
export function parseGeneration(body: JsonObject, request: ChatRequestInit): void {
  const presence = optNumber(body, "presence_penalty");
  if (presence !== undefined) request.presencePenalty = presence;
  const frequency = optNumber(body, "frequency_penalty");
  if (frequency !== undefined) request.frequencyPenalty = frequency;

  const maxTokens = optInt32(body, "max_tokens");
  const maxCompletion = optInt32(body, "max_completion_tokens");
  if (maxTokens !== undefined && maxCompletion !== undefined && maxTokens !== maxCompletion) {
    throw invalidRequest(
      "max_tokens and max_completion_tokens mean the same here; send one of them.",
      "max_tokens",
    );
  }
  const limit = maxCompletion ?? maxTokens;
  if (limit !== undefined) request.maxTokens = limit;

  const stop = body["stop"];
  if (typeof stop === "string") request.stop = [stop];
  else if (stop !== undefined && stop !== null) {
    if (!Array.isArray(stop)) throw wrongType("stop", "a string or an array of strings", stop);
    request.stop = stringArray(stop, "stop");
  }

  const seed = body["seed"];
  if (seed !== undefined && seed !== null) {
    if (typeof seed !== "number" || !Number.isSafeInteger(seed)) {
      throw wrongType("seed", "an integer", seed);
    }
    request.seed = BigInt(seed);
  }
}

/** `top_logprobs` (0-20), shared by chat completions and responses. */
export function topLogprobsOf(body: JsonObject): number | undefined {
  const top = optInt32(body, "top_logprobs");
  if (top !== undefined && (top < 0 || top > 20)) {
    throw invalidRequest(
      "top_logprobs must be between 0 and 20.",
      "top_logprobs",
      "integer_out_of_range",
    );
  }
  return top;
}

/** `n` other than 1 and `logprobs` are refused (text completions): one answer, no probabilities. */
export function refuseUnsupported(body: JsonObject): void {
  const n = optInt32(body, "n");
  if (n !== undefined && n !== 1) {
    throw invalidRequest("Only n=1 is supported.", "n", "unsupported_value");
  }
  const logprobs = body["logprobs"];
  if (logprobs !== undefined && logprobs !== null && logprobs !== false) {
    throw invalidRequest("logprobs are not supported.", "logprobs", "unsupported_value");
  }
}

/**
 * What chat completions and responses share: sampling (`temperature`, `top_p`), `metadata` and
 * `user` (kept in the ledger's metadata), `store` (accepted: every call is in the usage ledger
 * anyway) and Ensemble's extensions `cache`, `fallback_models` and `log` (keep the call in the
 * call log).
 */
export function parseShared(body: JsonObject, request: ChatRequestInit): void {
  const temperature = optNumber(body, "temperature");
  if (temperature !== undefined) request.temperature = temperature;
  const topP = optNumber(body, "top_p");
  if (topP !== undefined) request.topP = topP;
  optBoolean(body, "store");

  const metadata = callLabels(body);
  if (metadata !== undefined) request.metadata = metadata;
  const promptCacheKey = optString(body, "prompt_cache_key");
  if (promptCacheKey !== undefined) request.promptCacheKey = promptCacheKey;

  const cache = optEnum(body, "cache", CACHE_MODES);
  if (cache !== undefined) request.cache = CACHE_MODE_OF[cache];
  if (body["fallback_models"] !== undefined && body["fallback_models"] !== null) {
    request.fallbackModels = stringArray(body["fallback_models"], "fallback_models");
  }
  if (optBoolean(body, "log") === true) request.log = true;
}

function parseMessages(value: unknown): MessageInit[] {
  if (value === undefined || value === null) throw missing("messages");
  if (!Array.isArray(value)) throw wrongType("messages", "an array", value);
  if (value.length === 0) {
    throw invalidRequest(
      "Invalid 'messages': empty array. Expected an array with minimum length 1.",
      "messages",
      "empty_array",
    );
  }
  const out: MessageInit[] = new Array<MessageInit>(value.length);
  for (let i = 0; i < value.length; i++) out[i] = parseMessage(value[i], `messages[${i}]`);
  return out;
}

function parseMessage(value: unknown, path: string): MessageInit {
  const msg = objectAt(value, path);
  onlyKeys(msg, MESSAGE_KEYS, path);
  const roleName = reqString(msg, "role", path);
  const role = ROLES[roleName];
  if (role === undefined) throw wrongValue(`${path}.role`, roleName, ROLE_NAMES);
  const out: MessageInit = { role, content: parseContent(msg["content"], role, `${path}.content`) };
  const name = optString(msg, "name", path);
  if (name !== undefined) out.name = name;
  optString(msg, "refusal", path); // an earlier refusal is context the providers do not take back

  if (msg["tool_calls"] !== undefined && msg["tool_calls"] !== null) {
    if (role !== ChatRole.ASSISTANT) {
      throw invalidRequest(
        `'${path}.tool_calls' is only allowed on assistant messages.`,
        `${path}.tool_calls`,
      );
    }
    out.toolCalls = parseToolCalls(msg["tool_calls"], `${path}.tool_calls`);
  }
  if (role === ChatRole.TOOL) {
    out.toolCallId = reqString(msg, "tool_call_id", path);
  } else if (msg["tool_call_id"] !== undefined && msg["tool_call_id"] !== null) {
    throw invalidRequest(
      `'${path}.tool_call_id' is only allowed on tool messages.`,
      `${path}.tool_call_id`,
    );
  }
  if (role !== ChatRole.ASSISTANT && (msg["content"] === undefined || msg["content"] === null)) {
    throw missing(`${path}.content`);
  }
  return out;
}

function parseContent(value: unknown, role: ChatRole, path: string): PartInit[] {
  if (value === undefined || value === null) return [];
  if (typeof value === "string") return [{ part: { case: "text", value } }];
  if (!Array.isArray(value)) {
    throw wrongType(path, "one of a string or array of objects", value);
  }
  const out: PartInit[] = new Array<PartInit>(value.length);
  for (let i = 0; i < value.length; i++) {
    const partPath = `${path}[${i}]`;
    const part = objectAt(value[i], partPath);
    const type = reqString(part, "type", partPath);
    if (type === "text") {
      onlyKeys(part, TEXT_PART_KEYS, partPath);
      out[i] = { part: { case: "text", value: reqString(part, "text", partPath) } };
    } else if (type === "image_url" && role === ChatRole.USER) {
      onlyKeys(part, IMAGE_PART_KEYS, partPath);
      const image = objectAt(part["image_url"], `${partPath}.image_url`);
      onlyKeys(image, IMAGE_URL_KEYS, `${partPath}.image_url`);
      const url = reqString(image, "url", `${partPath}.image_url`);
      const detail = optEnum(image, "detail", ["auto", "low", "high"], `${partPath}.image_url`);
      out[i] = {
        part: {
          case: "image",
          value: {
            source: { case: "url", value: url },
            ...(detail !== undefined ? { detail: DETAILS[detail] } : {}),
          },
        },
      };
    } else {
      const allowed = role === ChatRole.USER ? ["text", "image_url"] : ["text"];
      throw wrongValue(`${partPath}.type`, type, allowed);
    }
    const mark = cacheControl(part, partPath);
    if (mark !== undefined) Object.assign(out[i]!, mark);
  }
  return out;
}

function parseToolCalls(value: unknown, path: string): MessageInitShape<typeof ToolCallSchema>[] {
  if (!Array.isArray(value)) throw wrongType(path, "an array", value);
  return value.map((item, i) => {
    const callPath = `${path}[${i}]`;
    const call = objectAt(item, callPath);
    onlyKeys(call, TOOL_CALL_KEYS, callPath);
    const type = optEnum(call, "type", ["function"], callPath);
    if (type === undefined) throw missing(`${callPath}.type`);
    const fn = objectAt(call["function"], `${callPath}.function`);
    onlyKeys(fn, FUNCTION_CALL_KEYS, `${callPath}.function`);
    return {
      id: reqString(call, "id", callPath),
      name: reqString(fn, "name", `${callPath}.function`),
      arguments: optString(fn, "arguments", `${callPath}.function`) ?? "",
    };
  });
}

function parseTools(value: unknown): MessageInitShape<typeof ToolDefinitionSchema>[] {
  if (!Array.isArray(value)) throw wrongType("tools", "an array", value);
  return value.map((item, i) => {
    const path = `tools[${i}]`;
    const tool = objectAt(item, path);
    onlyKeys(tool, TOOL_KEYS, path);
    const type = reqString(tool, "type", path);
    if (type !== "function") throw wrongValue(`${path}.type`, type, ["function"]);
    const fn = objectAt(tool["function"], `${path}.function`);
    onlyKeys(fn, FUNCTION_KEYS, `${path}.function`);
    const out: MessageInitShape<typeof ToolDefinitionSchema> = {
      name: reqString(fn, "name", `${path}.function`),
    };
    const description = optString(fn, "description", `${path}.function`);
    if (description !== undefined) out.description = description;
    if (fn["parameters"] !== undefined && fn["parameters"] !== null) {
      out.parameters = objectAt(fn["parameters"], `${path}.function.parameters`) as ProtoJsonObject;
    }
    const strict = optBoolean(fn, "strict", `${path}.function`);
    if (strict !== undefined) out.strict = strict;
    const mark = cacheControl(tool, path);
    if (mark !== undefined) Object.assign(out, mark);
    return out;
  });
}

function parseToolChoice(value: unknown): MessageInitShape<typeof ToolChoiceSchema> {
  if (typeof value === "string") {
    switch (value) {
      case "auto":
        return { choice: { case: "mode", value: ToolChoice_Mode.AUTO } };
      case "none":
        return { choice: { case: "mode", value: ToolChoice_Mode.NONE } };
      case "required":
        return { choice: { case: "mode", value: ToolChoice_Mode.REQUIRED } };
      default:
        throw wrongValue("tool_choice", value, ["none", "auto", "required"]);
    }
  }
  const choice = objectAt(value, "tool_choice");
  onlyKeys(choice, TOOL_CHOICE_KEYS, "tool_choice");
  const type = reqString(choice, "type", "tool_choice");
  if (type !== "function") throw wrongValue("tool_choice.type", type, ["function"]);
  const fn = objectAt(choice["function"], "tool_choice.function");
  onlyKeys(fn, TOOL_CHOICE_FUNCTION_KEYS, "tool_choice.function");
  return { choice: { case: "function", value: reqString(fn, "name", "tool_choice.function") } };
}

function parseResponseFormat(value: unknown): MessageInitShape<typeof ResponseFormatSchema> {
  const format = objectAt(value, "response_format");
  onlyKeys(format, RESPONSE_FORMAT_KEYS, "response_format");
  const type = reqString(format, "type", "response_format");
  switch (type) {
    case "text":
      return { type: ResponseFormat_Type.TEXT };
    case "json_object":
      return { type: ResponseFormat_Type.JSON_OBJECT };
    case "json_schema": {
      const spec = objectAt(format["json_schema"], "response_format.json_schema");
      onlyKeys(spec, JSON_SCHEMA_KEYS, "response_format.json_schema");
      return jsonSchemaFormat(spec, "response_format.json_schema");
    }
    default:
      throw wrongValue("response_format.type", type, ["text", "json_object", "json_schema"]);
  }
}

/**
 * A `json_schema` format from the object holding its `name`, `description`, `schema` and
 * `strict` (chat completions nest it under `json_schema`, the Responses API does not).
 */
export function jsonSchemaFormat(
  spec: JsonObject,
  path: string,
): MessageInitShape<typeof ResponseFormatSchema> {
  optString(spec, "description", path);
  const schema = spec["schema"];
  return {
    type: ResponseFormat_Type.JSON_SCHEMA,
    schemaName: reqString(spec, "name", path),
    // OpenAI allows the schema to be left out (any JSON object); the contract needs one.
    jsonSchema: (schema === undefined || schema === null
      ? { type: "object" }
      : objectAt(schema, `${path}.schema`)) as ProtoJsonObject,
    strict: optBoolean(spec, "strict", path) ?? false,
  };
}

/** Contract field paths in upstream errors -> OpenAI parameter names. */
export function chatParam(path: string): string {
  let p = path.startsWith("chat.") ? path.slice(5) : path;
  p = p
    .replace(/^tools\[(\d+)\]\.(name|description|parameters|strict)/, "tools[$1].function.$2")
    .replace(/^response_format\.json_schema/, "response_format.json_schema.schema")
    .replace(/^response_format\.schema_name/, "response_format.json_schema.name")
    .replace(/\.content\[(\d+)\]\.image\.url/, ".content[$1].image_url.url")
    .replace(/\.tool_calls\[(\d+)\]\.(name|arguments)/, ".tool_calls[$1].function.$2");
  return p;
}

// ---- responses --------------------------------------------------------------------------------

export function finishReason(reason: FinishReason): string {
  switch (reason) {
    case FinishReason.LENGTH:
      return "length";
    case FinishReason.TOOL_CALLS:
      return "tool_calls";
    case FinishReason.CONTENT_FILTER:
      return "content_filter";
    default:
      return "stop";
  }
}

/** OpenAI's usage object; cached prompt and reasoning tokens are parts of the totals there too. */
export function usageJson(usage: Usage | undefined): {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  completion_tokens_details: { reasoning_tokens: number };
} {
  const prompt = Number(usage?.inputTokens ?? 0n);
  const completion = Number(usage?.outputTokens ?? 0n);
  const total = Number(usage?.totalTokens ?? 0n);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: total > 0 ? total : prompt + completion,
    prompt_tokens_details: { cached_tokens: Number(usage?.cachedInputTokens ?? 0n) },
    completion_tokens_details: { reasoning_tokens: Number(usage?.reasoningTokens ?? 0n) },
  };
}

/** Ensemble's extension fields: who answered, what it cost, whether it was cached or simulated. */
export function ensembleJson(
  servedBy: ServedBy | undefined,
  usage: Usage | undefined,
): Record<string, unknown> {
  return {
    served_by: {
      model: servedBy?.model ?? "",
      requested_model: servedBy?.requestedModel ?? "",
      provider: servedBy?.provider ?? "",
      deployment: servedBy?.deployment ?? "",
      provider_model_id: servedBy?.providerModelId ?? "",
      attempts: servedBy?.attempts ?? 0,
      fallbacks_tried: servedBy?.fallbacksTried ?? [],
    },
    cost_usd: usage?.costUsd ?? 0,
    cache_hit: servedBy?.cacheHit ?? false,
    // 1 for an identical request's answer, below 1 for a similar one's (cache: "semantic").
    ...(servedBy?.cacheHit === true ? { cache_similarity: servedBy.cacheSimilarity } : {}),
    simulated: servedBy?.simulated ?? false,
  };
}

export function seconds(ts: { seconds: bigint } | undefined): number {
  return ts !== undefined ? Number(ts.seconds) : Math.floor(Date.now() / 1000);
}

/** `chat.completion` for a unary answer. */
export function chatCompletionJson(res: ChatResponse, requestedModel: string): unknown {
  return {
    id: res.id,
    object: "chat.completion",
    created: seconds(res.createTime),
    model: res.servedBy?.model || requestedModel,
    choices: [choiceJson(res, 0)],
    usage: usageJson(res.usage),
    ensemble: ensembleJson(res.servedBy, res.usage),
  };
}

/** One answer as a `chat.completion` choice. */
export function choiceJson(res: ChatResponse, index: number): Record<string, unknown> {
  const message = res.message;
  let text = "";
  for (const part of message?.content ?? []) {
    if (part.part.case === "text") text += part.part.value;
  }
  const toolCalls = message?.toolCalls ?? [];
  const out: Record<string, unknown> = {
    role: "assistant",
    content: text === "" && toolCalls.length > 0 ? null : text,
    refusal: null,
  };
  if (toolCalls.length > 0) {
    out["tool_calls"] = toolCalls.map((c) => ({
      id: c.id,
      type: "function",
      function: { name: c.name, arguments: c.arguments },
    }));
  }
  if (res.reasoning !== "") out["reasoning_content"] = res.reasoning;
  return {
    index,
    message: out,
    logprobs: logprobsJson(res.logprobs),
    finish_reason: finishReason(res.finishReason),
  };
}

/** A choice's `logprobs` in OpenAI's shape, or null when the answer carries none. */
export function logprobsJson(
  logprobs: readonly TokenLogprob[],
): { content: unknown[]; refusal: null } | null {
  if (logprobs.length === 0) return null;
  return {
    content: logprobs.map((t) => ({
      token: t.token,
      logprob: t.logprob,
      bytes: [...t.bytes],
      top_logprobs: t.topLogprobs.map((a) => ({
        token: a.token,
        logprob: a.logprob,
        bytes: [...a.bytes],
      })),
    })),
    refusal: null,
  };
}

/** The id and time every choice's chunks carry (n > 1: the first choice to start sets them). */
export interface ChunkIdentity {
  id?: string;
  created?: number;
}

/**
 * Turns a StreamChat stream into SSE `chat.completion.chunk` events of choice `index`. The
 * id/created/model prefix is serialised once per stream; each delta costs one small
 * JSON.stringify. With n > 1 one encoder per choice shares `identity`, writes its choice's
 * chunks and `finish`, and the handler writes `usage` (summed) and `[DONE]` once.
 */
export class ChunkEncoder {
  #prefix = "";
  #suffix: string;
  readonly #includeUsage: boolean;
  readonly #requestedModel: string;
  readonly #index: number;
  readonly #identity: ChunkIdentity;

  constructor(
    includeUsage: boolean,
    requestedModel: string,
    index = 0,
    identity: ChunkIdentity = {},
  ) {
    this.#includeUsage = includeUsage;
    this.#requestedModel = requestedModel;
    this.#index = index;
    this.#identity = identity;
    // OpenAI sends "usage": null on every chunk but the last when usage was asked for.
    this.#suffix = includeUsage ? '}],"usage":null}' : "}]}";
  }

  /** Whether `start` was written. */
  get started(): boolean {
    return this.#prefix !== "";
  }

  /** The first event: role "assistant" with empty content. */
  start(start: StreamChatStart | undefined): string {
    const model = start?.servedBy?.model || this.#requestedModel;
    this.#identity.id ??= start?.id ?? "";
    this.#identity.created ??= seconds(start?.createTime);
    this.#prefix =
      `{"id":${JSON.stringify(this.#identity.id)},"object":"chat.completion.chunk",` +
      `"created":${this.#identity.created},"model":${JSON.stringify(model)},"choices":[{"index":${this.#index},"delta":`;
    return this.#chunk('{"role":"assistant","content":""}', "null");
  }

  /** A delta event, or "" when the delta carries nothing. */
  delta(delta: ChatDelta): string {
    const out: Record<string, unknown> = {};
    let any = false;
    if (delta.content !== "") {
      out["content"] = delta.content;
      any = true;
    }
    if (delta.reasoning !== "") {
      out["reasoning_content"] = delta.reasoning;
      any = true;
    }
    if (delta.toolCalls.length > 0) {
      out["tool_calls"] = delta.toolCalls.map((t) => {
        const fn: Record<string, string> = { arguments: t.arguments };
        if (t.name !== "") fn["name"] = t.name;
        return t.id !== ""
          ? { index: t.index, id: t.id, type: "function", function: fn }
          : { index: t.index, function: fn };
      });
      any = true;
    }
    const logprobs = logprobsJson(delta.logprobs);
    if (!any && logprobs === null) return "";
    return this.#chunk(
      JSON.stringify(out),
      "null",
      logprobs === null ? "null" : JSON.stringify(logprobs),
    );
  }

  /** The finish chunk, the usage chunk when asked for, and `[DONE]`. */
  end(end: StreamChatEnd, startServedBy: ServedBy | undefined): string {
    return `${this.finish(end, startServedBy)}${this.#includeUsage ? this.usage(end.usage) : ""}data: [DONE]\n\n`;
  }

  /** This choice's finish chunk (with Ensemble's extension: who answered, what it cost). */
  finish(end: StreamChatEnd, startServedBy: ServedBy | undefined): string {
    const servedBy = end.servedBy ?? startServedBy;
    const ensemble = JSON.stringify(ensembleJson(servedBy, end.usage));
    return (
      `data: ${this.#prefix}{},"logprobs":null,"finish_reason":${JSON.stringify(finishReason(end.finishReason))}` +
      `}]${this.#includeUsage ? ',"usage":null' : ""},"ensemble":${ensemble}}\n\n`
    );
  }

  /** The usage chunk (no choices), of the whole completion. */
  usage(usage: Usage | undefined): string {
    const head = this.#prefix.slice(0, this.#prefix.indexOf('[{"index":'));
    return `data: ${head}[],"usage":${JSON.stringify(usageJson(usage))}}\n\n`;
  }

  /** A failure after the first chunk: its error body, and no `[DONE]`. */
  error(error: OpenAiError): string {
    return `data: ${JSON.stringify(error.body())}\n\n`;
  }

  #chunk(delta: string, finish: string, logprobs = "null"): string {
    return `data: ${this.#prefix}${delta},"logprobs":${logprobs},"finish_reason":${finish}${this.#suffix}\n\n`;
  }
}
