// POST /v1/completions: OpenAI's legacy text completions, for the tools that still send them
// (older LangChain LLM classes, editors' code completion, scripts). Served by the same
// ModelProxyService Chat / StreamChat: the prompt becomes one user message, as gateways such as
// LiteLLM do for chat models, so the answer is a chat model's reply to the prompt rather than a
// raw continuation. One prompt per request; `suffix` (insertion), `echo`, `logprobs`,
// `best_of` > 1, `n` > 1 and `logit_bias` are refused with a clear 400.
import {
  ChatRole,
  type ChatDelta,
  type ChatResponse,
  type ServedBy,
  type StreamChatEnd,
  type StreamChatStart,
} from "@ensemble/proto";
import {
  ensembleJson,
  finishReason,
  parseGeneration,
  parseShared,
  parseStream,
  refuseUnsupported,
  seconds,
  usageJson,
  type ChatRequestInit,
} from "./chat.js";
import { invalidRequest, type OpenAiError } from "./errors.js";
import { onlyKeys, optBoolean, optInt32, optString, reqString, type JsonObject } from "./fields.js";

const COMPLETION_KEYS = new Set([
  "model",
  "prompt",
  "suffix",
  "max_tokens",
  "temperature",
  "top_p",
  "n",
  "best_of",
  "stream",
  "stream_options",
  "logprobs",
  "echo",
  "stop",
  "presence_penalty",
  "frequency_penalty",
  "logit_bias",
  "user",
  "seed",
  // Ensemble's and shared extensions (chat.ts parseShared).
  "metadata",
  "store",
  "cache",
  "fallback_models",
  "log",
]);

/** OpenAI's default for this API (chat completions have none). */
const DEFAULT_MAX_TOKENS = 16;

export interface ParsedCompletion {
  request: ChatRequestInit;
  stream: boolean;
  includeUsage: boolean;
}

export function parseCompletionRequest(body: JsonObject): ParsedCompletion {
  onlyKeys(body, COMPLETION_KEYS, "");
  const model = reqString(body, "model");
  const request: ChatRequestInit = {
    model,
    messages: [
      {
        role: ChatRole.USER,
        content: [{ part: { case: "text", value: promptOf(body["prompt"]) } }],
      },
    ],
  };
  const { stream, includeUsage } = parseStream(body);
  parseGeneration(body, request);
  request.maxTokens ??= DEFAULT_MAX_TOKENS;
  refuseUnsupported(body);
  const bestOf = optInt32(body, "best_of");
  if (bestOf !== undefined && bestOf !== 1) {
    throw invalidRequest("Only best_of=1 is supported.", "best_of", "unsupported_value");
  }
  if (optBoolean(body, "echo") === true) {
    throw invalidRequest("echo is not supported.", "echo", "unsupported_value");
  }
  const suffix = optString(body, "suffix");
  if (suffix !== undefined && suffix !== "") {
    throw invalidRequest(
      "suffix (text insertion) is not supported; send the text before the gap as the prompt.",
      "suffix",
      "unsupported_value",
    );
  }
  const bias = body["logit_bias"];
  if (bias !== undefined && bias !== null && Object.keys(bias).length > 0) {
    throw invalidRequest("logit_bias is not supported.", "logit_bias", "unsupported_value");
  }
  parseShared(body, request);
  return { request, stream, includeUsage };
}

/** The prompt: a string, or an array holding exactly one string. */
function promptOf(value: unknown): string {
  if (typeof value === "string" && value !== "") return value;
  if (Array.isArray(value) && value.length === 1 && typeof value[0] === "string") {
    if (value[0] !== "") return value[0];
  } else if (
    Array.isArray(value) &&
    value.length > 1 &&
    value.every((p) => typeof p === "string")
  ) {
    throw invalidRequest(
      "Only one prompt per request is supported; send one request per prompt.",
      "prompt",
      "unsupported_value",
    );
  } else if (Array.isArray(value) && value.length > 0) {
    throw invalidRequest(
      "prompt: token ids are not supported; send the prompt as text.",
      "prompt",
      "unsupported_value",
    );
  }
  if (value === undefined || value === null) {
    throw invalidRequest("you must provide a prompt", "prompt");
  }
  throw invalidRequest("prompt: must be a non-empty string", "prompt");
}

function textOf(res: ChatResponse): string {
  let text = "";
  for (const part of res.message?.content ?? [])
    if (part.part.case === "text") text += part.part.value;
  return text;
}

/** The id of a completion: model-proxy's, with this API's prefix. */
function completionId(id: string): string {
  return id.replace(/^chatcmpl-/, "cmpl-");
}

/** `text_completion` for a unary answer. */
export function completionJson(res: ChatResponse, requestedModel: string): unknown {
  return {
    id: completionId(res.id),
    object: "text_completion",
    created: seconds(res.createTime),
    model: res.servedBy?.model || requestedModel,
    choices: [
      {
        text: textOf(res),
        index: 0,
        logprobs: null,
        finish_reason: finishReason(res.finishReason),
      },
    ],
    usage: usageJson(res.usage),
    ensemble: ensembleJson(res.servedBy, res.usage),
  };
}

/** The SSE of a streamed completion: text chunks, the finish chunk, usage when asked, [DONE]. */
export class CompletionChunkEncoder {
  #head = "";
  readonly #includeUsage: boolean;
  readonly #requestedModel: string;

  constructor(includeUsage: boolean, requestedModel: string) {
    this.#includeUsage = includeUsage;
    this.#requestedModel = requestedModel;
  }

  /** Nothing is sent until there is text (this API has no role chunk). */
  start(start: StreamChatStart | undefined): string {
    const model = start?.servedBy?.model || this.#requestedModel;
    this.#head =
      `{"id":${JSON.stringify(completionId(start?.id ?? ""))},"object":"text_completion",` +
      `"created":${seconds(start?.createTime)},"model":${JSON.stringify(model)},"choices":`;
    return "";
  }

  delta(delta: ChatDelta): string {
    return delta.content === "" ? "" : this.#chunk(delta.content, null);
  }

  end(end: StreamChatEnd, startServedBy: ServedBy | undefined): string {
    const ensemble = JSON.stringify(ensembleJson(end.servedBy ?? startServedBy, end.usage));
    let out =
      `data: ${this.#head}[{"text":"","index":0,"logprobs":null,` +
      `"finish_reason":${JSON.stringify(finishReason(end.finishReason))}}]` +
      `${this.#includeUsage ? ',"usage":null' : ""},"ensemble":${ensemble}}\n\n`;
    if (this.#includeUsage) {
      out += `data: ${this.#head}[],"usage":${JSON.stringify(usageJson(end.usage))}}\n\n`;
    }
    return `${out}data: [DONE]\n\n`;
  }

  error(error: OpenAiError): string {
    return `data: ${JSON.stringify(error.body())}\n\n`;
  }

  #chunk(text: string, finish: string | null): string {
    return (
      `data: ${this.#head}[{"text":${JSON.stringify(text)},"index":0,"logprobs":null,` +
      `"finish_reason":${JSON.stringify(finish)}}]${this.#includeUsage ? ',"usage":null' : ""}}\n\n`
    );
  }
}
