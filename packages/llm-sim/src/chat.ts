import { invalid, SimError } from "./errors.js";
import { stableHash } from "./hash.js";
import type { ModelProfile } from "./models.js";
import { MAX_TOP_LOGPROBS } from "./logprobs.js";
import { structuredAnswer, type ForcedCall } from "./structured.js";
import { tokenPieces, tokens } from "./tokenizer.js";

const ROLES = new Set(["system", "developer", "user", "assistant", "tool", "function"]);
/** Flat token cost of one image part, whatever its size (OpenAI's low-detail figure). */
export const IMAGE_TOKENS = 85;

export interface ChatRequest {
  model: string;
  messages: unknown[];
  stream: boolean;
  includeUsage: boolean;
  maxTokens?: number;
  /** A function the model must call (tool_choice `required` or a named function), when tools are given. */
  forcedTool?: ForcedCall;
  /** `response_format` when it asks for JSON (json_object or json_schema). */
  responseFormat?: Record<string, unknown>;
  /** With `logprobs: true`: how many `top_logprobs` each token carries (0 to 20). */
  topLogprobs?: number;
}

export interface ChatAnswer {
  /** Completion pieces (tokens with their leading whitespace), already truncated. */
  pieces: string[];
  finishReason: "stop" | "length";
  promptTokens: number;
  /** The prompt's tokens (promptTokens is their number), for prompt caching. */
  prompt: string[];
  hash: string;
  /**
   * Reasoning pieces, sent before the answer as `reasoning_content` (as vLLM and DeepSeek do),
   * only when the request sets `reasoning_effort`; counted in the completion tokens.
   */
  reasoning: string[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function positiveInt(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw invalid(`Invalid '${key}': expected an integer >= 1.`, key, "invalid_value");
  }
  return v;
}

/** Checks the body the way OpenAI does and returns what the simulator needs. */
export function parseChatRequest(
  body: unknown,
  models: ReadonlyMap<string, ModelProfile>,
): { req: ChatRequest; profile: ModelProfile } {
  if (!isRecord(body)) throw invalid("The request body must be a JSON object.", null);
  const model = body["model"];
  if (typeof model !== "string" || model === "") {
    throw invalid("you must provide a model parameter", "model", "missing_required_parameter");
  }
  const messages = body["messages"];
  if (messages === undefined) {
    throw invalid(
      "Missing required parameter: 'messages'.",
      "messages",
      "missing_required_parameter",
    );
  }
  if (!Array.isArray(messages)) {
    throw invalid("Invalid type for 'messages': expected an array.", "messages", "invalid_type");
  }
  if (messages.length === 0) {
    throw invalid(
      "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
      "messages",
      "empty_array",
    );
  }
  const profile = models.get(model);
  if (!profile) {
    throw new SimError(
      404,
      `The model \`${model}\` does not exist or you do not have access to it.`,
      "invalid_request_error",
      null,
      "model_not_found",
    );
  }
  if (profile.kind !== "chat") {
    throw invalid(
      `The model \`${model}\` is not a chat model and is not supported in the v1/chat/completions endpoint.`,
      "model",
      "model_not_supported",
    );
  }
  messages.forEach((m, i) => validateMessage(m, i, profile.vision));
  for (const key of ["temperature", "top_p"]) {
    const v = body[key];
    if (v !== undefined && v !== null && (typeof v !== "number" || v < 0 || v > 2)) {
      throw invalid(`Invalid '${key}': expected a number between 0 and 2.`, key, "invalid_value");
    }
  }
  const n = body["n"];
  if (n !== undefined && n !== null && n !== 1) {
    throw invalid("Invalid 'n': the simulator only supports n = 1.", "n", "invalid_value");
  }
  const stream = body["stream"];
  if (stream !== undefined && stream !== null && typeof stream !== "boolean") {
    throw invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type");
  }
  const topLogprobs = logprobsOf(body);
  const streamOptions = body["stream_options"];
  const maxTokens = positiveInt(body, "max_completion_tokens") ?? positiveInt(body, "max_tokens");
  const req: ChatRequest = {
    model,
    messages,
    stream: stream === true,
    includeUsage: isRecord(streamOptions) && streamOptions["include_usage"] === true,
  };
  if (maxTokens !== undefined) req.maxTokens = maxTokens;
  const forced = forcedTool(body, messages);
  if (forced !== undefined) req.forcedTool = forced;
  const format = responseFormat(body["response_format"]);
  if (format !== undefined) req.responseFormat = format;
  if (topLogprobs !== undefined) req.topLogprobs = topLogprobs;
  return { req, profile };
}

/**
 * `logprobs` (a boolean) and `top_logprobs` (an integer 0..20, only with `logprobs: true`),
 * checked as OpenAI checks them: the number of top entries per token, or undefined for none.
 */
function logprobsOf(body: Record<string, unknown>): number | undefined {
  const logprobs = body["logprobs"];
  if (logprobs !== undefined && logprobs !== null && typeof logprobs !== "boolean") {
    throw invalid("Invalid type for 'logprobs': expected a boolean.", "logprobs", "invalid_type");
  }
  const top = body["top_logprobs"];
  if (top === undefined || top === null) return logprobs === true ? 0 : undefined;
  if (typeof top !== "number" || !Number.isInteger(top) || top < 0 || top > MAX_TOP_LOGPROBS) {
    throw invalid(
      `Invalid 'top_logprobs': expected an integer between 0 and ${MAX_TOP_LOGPROBS}.`,
      "top_logprobs",
      "invalid_value",
    );
  }
  if (logprobs !== true) {
    throw invalid(
      "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
      "top_logprobs",
      "invalid_value",
    );
  }
  return top;
}

/** `response_format`, checked as OpenAI checks it; undefined for none or text. */
function responseFormat(v: unknown): Record<string, unknown> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isRecord(v)) {
    throw invalid(
      "Invalid type for 'response_format': expected an object.",
      "response_format",
      "invalid_type",
    );
  }
  const type = v["type"];
  if (type === "text") return undefined;
  if (type === "json_object") return v;
  if (type === "json_schema") {
    const spec = v["json_schema"];
    if (!isRecord(spec) || typeof spec["name"] !== "string" || spec["name"] === "") {
      throw invalid(
        "Missing required parameter: 'response_format.json_schema.name'.",
        "response_format.json_schema.name",
        "missing_required_parameter",
      );
    }
    if (spec["schema"] !== undefined && !isRecord(spec["schema"])) {
      throw invalid(
        "Invalid type for 'response_format.json_schema.schema': expected an object.",
        "response_format.json_schema.schema",
        "invalid_type",
      );
    }
    return v;
  }
  throw invalid(
    `Invalid value: '${String(type)}'. Supported values are: 'text', 'json_object', and 'json_schema'.`,
    "response_format.type",
    "invalid_value",
  );
}

/**
 * tool_choice `"required"` or `{type:"function", function:{name}}` forces a call (of the first
 * tool for `required`), unless the conversation already ends with a tool result: then the model
 * answers in text. `"auto"` and `"none"` answer in text (the simulator never volunteers a call).
 */
function forcedTool(body: Record<string, unknown>, messages: unknown[]): ForcedCall | undefined {
  const tools = body["tools"];
  const choice = body["tool_choice"];
  if (choice === undefined || choice === null || choice === "auto" || choice === "none")
    return undefined;
  if (!Array.isArray(tools) || tools.length === 0) {
    throw invalid(
      "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
      "tool_choice",
      "invalid_value",
    );
  }
  const fns = tools.map((t) => (isRecord(t) && isRecord(t["function"]) ? t["function"] : {}));
  const names = fns.map((f) => f["name"]);
  let name: unknown;
  if (choice === "required") name = names[0];
  else if (isRecord(choice) && choice["type"] === "function" && isRecord(choice["function"])) {
    name = choice["function"]["name"];
    if (!names.includes(name)) {
      throw invalid(
        `Invalid value for 'tool_choice': function '${String(name)}' is not one of the tools.`,
        "tool_choice",
        "invalid_value",
      );
    }
  } else {
    throw invalid(
      "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function.",
      "tool_choice",
      "invalid_value",
    );
  }
  if (typeof name !== "string") return undefined;
  const last = messages[messages.length - 1];
  if (isRecord(last) && last["role"] === "tool") return undefined;
  return { name, schema: fns[names.indexOf(name)]?.["parameters"] };
}

function validateMessage(m: unknown, i: number, vision: boolean): void {
  if (!isRecord(m))
    throw invalid(
      `Invalid 'messages[${i}]': expected an object.`,
      `messages.[${i}]`,
      "invalid_type",
    );
  const role = m["role"];
  if (typeof role !== "string" || !ROLES.has(role)) {
    throw invalid(
      `Invalid value for 'messages[${i}].role': expected one of ${[...ROLES].join(", ")}.`,
      `messages.[${i}].role`,
      "invalid_value",
    );
  }
  const content = m["content"];
  if (typeof content === "string") return;
  if (content === null || content === undefined) {
    if (role === "assistant") return;
    throw invalid(
      `Missing required parameter: 'messages[${i}].content'.`,
      `messages.[${i}].content`,
      "missing_required_parameter",
    );
  }
  if (!Array.isArray(content)) {
    throw invalid(
      `Invalid type for 'messages[${i}].content': expected a string or an array.`,
      `messages.[${i}].content`,
      "invalid_type",
    );
  }
  content.forEach((part, j) => {
    const param = `messages.[${i}].content.[${j}]`;
    if (!isRecord(part))
      throw invalid(`Invalid '${param}': expected an object.`, param, "invalid_type");
    if (part["type"] === "text" && typeof part["text"] === "string") return;
    if (part["type"] === "image_url") {
      const url: unknown = isRecord(part["image_url"]) ? part["image_url"]["url"] : undefined;
      if (typeof url !== "string" || url === "") {
        throw invalid(
          `Missing required parameter: '${param}.image_url.url'.`,
          `${param}.image_url.url`,
          "missing_required_parameter",
        );
      }
      if (!vision) {
        throw invalid(
          "Invalid content type. image_url is only supported by certain models.",
          `${param}.type`,
          "invalid_value",
        );
      }
      return;
    }
    throw invalid(
      `Invalid value for '${param}.type': expected 'text' or 'image_url'.`,
      `${param}.type`,
      "invalid_value",
    );
  });
}

function textOf(content: unknown): { text: string; images: number } {
  if (typeof content === "string") return { text: content, images: 0 };
  if (!Array.isArray(content)) return { text: "", images: 0 };
  let text = "";
  let images = 0;
  for (const part of content as Array<Record<string, unknown>>) {
    if (part["type"] === "text") text += (text ? " " : "") + String(part["text"]);
    else images++;
  }
  return { text, images };
}

/** A message content's tokens in order: its text's tokens, IMAGE_TOKENS for each image. */
export function contentTokens(content: unknown): string[] {
  if (typeof content === "string") return tokens(content);
  if (!Array.isArray(content)) return [];
  return (content as Array<Record<string, unknown>>).flatMap((part) => {
    if (part["type"] === "text") return tokens(String(part["text"]));
    // Named after the image, so that a different image makes a different prompt to cache.
    const image = `<image ${stableHash(part).slice(0, 16)}>`;
    return Array.from({ length: IMAGE_TOKENS }, () => image);
  });
}

/**
 * The prompt as a token sequence: for each message 3 tokens of framing + the role + its
 * content, then 3 for the reply primer (the same shape as OpenAI's cookbook count). Its length
 * is the prompt's token count; prompt caching compares its prefixes. `contentStarts[i]` is
 * where message i's content begins.
 */
export function promptSequence(messages: readonly unknown[]): {
  tokens: string[];
  contentStarts: number[];
} {
  const out: string[] = [];
  const contentStarts: number[] = [];
  // A loop, not push(...many): a long prompt would overflow the call stack.
  const add = (more: readonly string[]): void => {
    for (const t of more) out.push(t);
  };
  for (const m of messages as Array<Record<string, unknown>>) {
    add(["<|start|>", ...tokens(String(m["role"])), "<|message|>"]);
    contentStarts.push(out.length);
    add(contentTokens(m["content"]));
    out.push("<|end|>");
  }
  add(["<|start|>", "assistant", "<|message|>"]);
  return { tokens: out, contentStarts };
}

/** The answer is a pure function of (model, messages, temperature, top_p, seed), shaped by response_format. */
export function answer(body: Record<string, unknown>, req: ChatRequest): ChatAnswer {
  const hash = stableHash({
    model: req.model,
    messages: req.messages,
    temperature: body["temperature"],
    top_p: body["top_p"],
    seed: body["seed"],
  }).slice(0, 12);
  const msgs = req.messages as Array<Record<string, unknown>>;
  // After a tool's result, the answer is about that result (as an agent loop expects).
  const last = msgs[msgs.length - 1];
  const fromTool = last?.["role"] === "tool";
  const lastUser = fromTool
    ? last
    : ([...msgs].reverse().find((m) => m["role"] === "user") ?? last);
  const { text, images } = textOf(lastUser?.["content"]);
  const said = text.replace(/\s+/g, " ").trim();
  const quoted = said.length > 300 ? `${said.slice(0, 300)}…` : said;
  const imageNote = images > 0 ? ` I received ${images} image${images > 1 ? "s" : ""}.` : "";
  const sentence = `[simulated ${req.model}] ${fromTool ? "The tool answered" : "You said"}: "${quoted}".${imageNote} Simulated answer ${hash}.`;
  const full =
    structuredAnswer(req.responseFormat, sentence, `[simulated ${req.model}]`) ?? sentence;
  const all = tokenPieces(full);
  const truncated = req.maxTokens !== undefined && all.length > req.maxTokens;
  const effort = body["reasoning_effort"];
  const prompt = promptSequence(req.messages).tokens;
  return {
    pieces: truncated ? all.slice(0, req.maxTokens) : all,
    finishReason: truncated ? "length" : "stop",
    promptTokens: prompt.length,
    prompt,
    hash,
    reasoning:
      typeof effort === "string" && effort !== ""
        ? tokenPieces(`[simulated reasoning, ${effort} effort] Thinking about: "${quoted}".`)
        : [],
  };
}

/**
 * Cuts the answer before the first stop sequence it contains (Anthropic `stop_sequences`,
 * Gemini `stopSequences`), as a model would stop there.
 */
export function applyStopSequences(
  ans: ChatAnswer,
  stops: readonly string[],
): { ans: ChatAnswer; stopSequence: string | null } {
  const text = ans.pieces.join("");
  let at = -1;
  let which: string | null = null;
  for (const s of stops) {
    const i = s === "" ? -1 : text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) {
      at = i;
      which = s;
    }
  }
  if (which === null) return { ans, stopSequence: null };
  return {
    ans: { ...ans, pieces: tokenPieces(text.slice(0, at)), finishReason: "stop" },
    stopSequence: which,
  };
}
