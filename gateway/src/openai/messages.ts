// POST /v1/messages: Anthropic's Messages API over the same ModelProxyService Chat / StreamChat,
// so clients written for Claude (the Anthropic SDKs, tools that take ANTHROPIC_BASE_URL) can use
// every model of the catalog through Ensemble. Errors in Anthropic's shape
// `{"type":"error","error":{"type","message"}}`. Client-side tools only (server tools such as
// web search run at Anthropic, not here).
import type { JsonObject as ProtoJsonObject, MessageInitShape } from "@bufbuild/protobuf";
import {
  ChatRole,
  FinishReason,
  ToolChoice_Mode,
  type ChatDelta,
  type ChatResponse,
  type ContentPartSchema,
  type ServedBy,
  type StreamChatEnd,
  type StreamChatStart,
  type ToolChoiceSchema,
  type ToolDefinitionSchema,
  type Usage,
} from "@ensemble/proto";
import { ensembleJson, parseShared, type ChatRequestInit } from "./chat.js";
import { invalidRequest, type OpenAiError } from "./errors.js";
import {
  cacheControl,
  type CacheMark,
  missing,
  objectAt,
  onlyKeys,
  optBoolean,
  optEnum,
  optInt32,
  optString,
  reqString,
  stringArray,
  wrongType,
  wrongValue,
  type JsonObject,
} from "./fields.js";

type MessageInit = NonNullable<ChatRequestInit["messages"]>[number];
type PartInit = MessageInitShape<typeof ContentPartSchema>;

const KEYS = new Set([
  "model",
  "max_tokens",
  "messages",
  "system",
  "temperature",
  "top_p",
  "stop_sequences",
  "stream",
  "tools",
  "tool_choice",
  "metadata",
  "thinking",
  // Ensemble extensions
  "cache",
  "fallback_models",
  "log",
]);
/**
 * Blocks and tools may carry `cache_control` (a prompt-caching breakpoint: the contract's
 * `cache_breakpoint`) and text blocks citations (which do not change the answer here).
 */
const TEXT_KEYS = new Set(["type", "text", "cache_control", "citations"]);
const IMAGE_KEYS = new Set(["type", "source", "cache_control"]);
const TOOL_USE_KEYS = new Set(["type", "id", "name", "input", "cache_control"]);
const TOOL_RESULT_KEYS = new Set(["type", "tool_use_id", "content", "is_error", "cache_control"]);
const TOOL_KEYS = new Set(["type", "name", "description", "input_schema", "cache_control"]);

export interface ParsedMessages {
  request: ChatRequestInit;
  stream: boolean;
}

/** Anthropic's limit on blocks and tools with `cache_control` in one request. */
const MAX_BREAKPOINTS = 4;

/** The request's `cache_control` marks: each one checked, all of them counted. */
class Breakpoints {
  #count = 0;

  /** The block's or tool's `cache_control` at `path`, if it has one. */
  at(obj: JsonObject, path: string): CacheMark | undefined {
    const mark = cacheControl(obj, path);
    if (mark !== undefined) this.#count += 1;
    return mark;
  }

  /** Refuses more marks than Anthropic takes, as Anthropic does (whichever model answers). */
  check(): void {
    if (this.#count > MAX_BREAKPOINTS) {
      throw invalidRequest(
        `A maximum of ${MAX_BREAKPOINTS} blocks with cache_control may be provided. Found ${this.#count}.`,
      );
    }
  }
}

/** Checks a Messages body and maps it onto the contract's ChatRequest. */
export function parseMessagesRequest(body: JsonObject): ParsedMessages {
  onlyKeys(body, KEYS, "");
  const request: ChatRequestInit = { model: reqString(body, "model"), messages: [] };
  const maxTokens = optInt32(body, "max_tokens");
  if (maxTokens === undefined) throw missing("max_tokens");
  if (maxTokens < 1) throw invalidRequest("max_tokens: must be at least 1.", "max_tokens");
  request.maxTokens = maxTokens;
  const breakpoints = new Breakpoints();

  const system = body["system"];
  if (system !== undefined && system !== null) {
    const content: PartInit[] =
      typeof system === "string"
        ? [{ part: { case: "text", value: system } }]
        : systemParts(system, "system", breakpoints);
    if (content.some((p) => p.part?.case === "text" && p.part.value !== "")) {
      request.messages!.push({ role: ChatRole.SYSTEM, content });
    }
  }
  request.messages!.push(...parseMessages(body["messages"], breakpoints));

  // Anthropic's metadata is the end user's id, kept in the ledger's metadata as `user_id`.
  if (body["metadata"] !== undefined && body["metadata"] !== null) {
    onlyKeys(objectAt(body["metadata"], "metadata"), new Set(["user_id"]), "metadata");
  }
  parseShared(body, request);
  if (body["stop_sequences"] !== undefined && body["stop_sequences"] !== null) {
    request.stop = stringArray(body["stop_sequences"], "stop_sequences");
  }
  if (body["tools"] !== undefined && body["tools"] !== null) {
    if (!Array.isArray(body["tools"])) throw wrongType("tools", "an array", body["tools"]);
    request.tools = body["tools"].map((t, i) => parseTool(t, `tools.${i}`, breakpoints));
  }
  breakpoints.check();
  if (body["tool_choice"] !== undefined && body["tool_choice"] !== null) {
    request.toolChoice = parseToolChoice(body["tool_choice"]);
  }
  if (body["thinking"] !== undefined && body["thinking"] !== null) {
    const thinking = objectAt(body["thinking"], "thinking");
    onlyKeys(thinking, new Set(["type", "budget_tokens", "display"]), "thinking");
    const type = optEnum(thinking, "type", ["enabled", "disabled", "adaptive"], "thinking");
    const budget = optInt32(thinking, "budget_tokens", "thinking");
    // A thinking budget becomes the contract's effort (OpenAI-style providers take effort).
    if (type === "enabled") {
      request.reasoningEffort =
        budget === undefined || budget < 4_096 ? "low" : budget < 16_384 ? "medium" : "high";
    }
  }
  return { request, stream: optBoolean(body, "stream") ?? false };
}

const COUNT_KEYS = new Set(["model", "messages", "system", "tools", "tool_choice", "thinking"]);

/**
 * POST /v1/messages/count_tokens: the same conversation, counted by model-proxy's CountTokens
 * (exact for the OpenAI family, an estimate otherwise). Tool definitions are counted as the
 * JSON text they are sent as.
 */
export function parseCountTokensRequest(body: JsonObject): {
  model: string;
  messages: MessageInit[];
} {
  onlyKeys(body, COUNT_KEYS, "");
  const { request } = parseMessagesRequest({ ...body, max_tokens: 1 });
  const messages = request.messages ?? [];
  if (request.tools !== undefined && request.tools.length > 0) {
    const text = JSON.stringify(
      request.tools.map((t) => ({
        name: t.name,
        description: t.description,
        input_schema: t.parameters,
      })),
    );
    messages.unshift({ role: ChatRole.SYSTEM, content: [{ part: { case: "text", value: text } }] });
  }
  return { model: request.model ?? "", messages };
}

/** Text blocks (a system prompt, a tool result's content): each one's text and whether it is marked. */
function textBlocks(
  value: unknown,
  path: string,
  breakpoints: Breakpoints,
): { text: string; mark: CacheMark | undefined }[] {
  if (!Array.isArray(value)) throw wrongType(path, "a string or an array of text blocks", value);
  return value.map((raw, i) => {
    const block = objectAt(raw, `${path}.${i}`);
    const type = reqString(block, "type", `${path}.${i}`);
    if (type !== "text") throw wrongValue(`${path}.${i}.type`, type, ["text"]);
    onlyKeys(block, TEXT_KEYS, `${path}.${i}`);
    return {
      text: reqString(block, "text", `${path}.${i}`),
      mark: breakpoints.at(block, `${path}.${i}`),
    };
  });
}

/**
 * System text blocks as the text parts of one system message, joined by blank lines as before.
 * A part ends at each block with `cache_control`, so the breakpoint ends where the client put
 * it (the blank line starts the next part); unmarked blocks share a part, so a system prompt
 * without marks is still one part, and every provider gets the same text either way.
 */
function systemParts(value: unknown, path: string, breakpoints: Breakpoints): PartInit[] {
  const parts: PartInit[] = [];
  let text = "";
  textBlocks(value, path, breakpoints).forEach((block, i) => {
    text += (i > 0 ? "\n\n" : "") + block.text;
    if (block.mark !== undefined) {
      parts.push({ part: { case: "text", value: text }, ...block.mark });
      text = "";
    }
  });
  if (text !== "" || parts.length === 0) parts.push({ part: { case: "text", value: text } });
  return parts;
}

function parseMessages(value: unknown, breakpoints: Breakpoints): MessageInit[] {
  if (value === undefined || value === null) throw missing("messages");
  if (!Array.isArray(value)) throw wrongType("messages", "an array", value);
  if (value.length === 0)
    throw invalidRequest("messages: at least one message is required.", "messages");
  const out: MessageInit[] = [];
  value.forEach((raw, i) => {
    const path = `messages.${i}`;
    const msg = objectAt(raw, path);
    onlyKeys(msg, new Set(["role", "content"]), path);
    const role = optEnum(msg, "role", ["user", "assistant"], path);
    if (role === undefined) throw missing(`${path}.role`);
    const content = msg["content"];
    if (typeof content === "string") {
      out.push({
        role: role === "user" ? ChatRole.USER : ChatRole.ASSISTANT,
        content: [{ part: { case: "text", value: content } }],
      });
      return;
    }
    if (!Array.isArray(content))
      throw wrongType(`${path}.content`, "a string or an array of blocks", content);
    if (role === "assistant") out.push(assistantMessage(content, `${path}.content`, breakpoints));
    else out.push(...userMessages(content, `${path}.content`, breakpoints));
  });
  return out;
}

/** Text, and tool_use blocks as tool calls; earlier thinking is not sent again. */
function assistantMessage(blocks: unknown[], path: string, breakpoints: Breakpoints): MessageInit {
  const out: MessageInit = { role: ChatRole.ASSISTANT, content: [] };
  let toolUseMark: CacheMark | undefined;
  blocks.forEach((raw, i) => {
    const blockPath = `${path}.${i}`;
    const block = objectAt(raw, blockPath);
    const type = reqString(block, "type", blockPath);
    switch (type) {
      case "text": {
        onlyKeys(block, TEXT_KEYS, blockPath);
        const part: PartInit = {
          part: { case: "text", value: reqString(block, "text", blockPath) },
        };
        Object.assign(part, breakpoints.at(block, blockPath));
        out.content!.push(part);
        break;
      }
      case "tool_use": {
        onlyKeys(block, TOOL_USE_KEYS, blockPath);
        toolUseMark = breakpoints.at(block, blockPath) ?? toolUseMark;
        const input =
          block["input"] === undefined ? {} : objectAt(block["input"], `${blockPath}.input`);
        out.toolCalls = [
          ...(out.toolCalls ?? []),
          {
            id: reqString(block, "id", blockPath),
            name: reqString(block, "name", blockPath),
            arguments: JSON.stringify(input),
          },
        ];
        break;
      }
      case "thinking":
      case "redacted_thinking":
        break;
      default:
        throw wrongValue(`${blockPath}.type`, type, ["text", "tool_use", "thinking"]);
    }
  });
  // A tool call has no content part to carry a breakpoint, and every provider adapter puts a
  // message's tool calls after its text, so a marked tool_use marks the message's last text
  // part: the cached prefix then ends just before the calls. Without any text it is dropped:
  // an empty text part would reach Anthropic as an empty text block, which it refuses.
  const last = out.content!.at(-1);
  if (toolUseMark !== undefined && last !== undefined) Object.assign(last, toolUseMark);
  return out;
}

/** tool_result blocks become tool messages (first, as they answer the previous turn), the rest one user message. */
function userMessages(blocks: unknown[], path: string, breakpoints: Breakpoints): MessageInit[] {
  const results: MessageInit[] = [];
  const parts: PartInit[] = [];
  blocks.forEach((raw, i) => {
    const blockPath = `${path}.${i}`;
    const block = objectAt(raw, blockPath);
    const type = reqString(block, "type", blockPath);
    switch (type) {
      case "text": {
        onlyKeys(block, TEXT_KEYS, blockPath);
        const part: PartInit = {
          part: { case: "text", value: reqString(block, "text", blockPath) },
        };
        Object.assign(part, breakpoints.at(block, blockPath));
        parts.push(part);
        break;
      }
      case "image": {
        onlyKeys(block, IMAGE_KEYS, blockPath);
        const part = imagePart(block["source"], `${blockPath}.source`);
        Object.assign(part, breakpoints.at(block, blockPath));
        parts.push(part);
        break;
      }
      case "tool_result": {
        onlyKeys(block, TOOL_RESULT_KEYS, blockPath);
        const content = block["content"];
        // The result is one text part: a mark on the block or on any block inside it marks that
        // part (a mark inside then ends the cached prefix a little later, at the result's end).
        let mark = breakpoints.at(block, blockPath);
        let text = "";
        if (typeof content === "string") text = content;
        else if (content !== undefined && content !== null) {
          const inner = textBlocks(content, `${blockPath}.content`, breakpoints);
          text = inner.map((b) => b.text).join("\n\n");
          mark ??= inner.find((b) => b.mark !== undefined)?.mark;
        }
        if (optBoolean(block, "is_error", blockPath) === true) text = `Error: ${text}`;
        results.push({
          role: ChatRole.TOOL,
          toolCallId: reqString(block, "tool_use_id", blockPath),
          content: [{ part: { case: "text", value: text }, ...mark }],
        });
        break;
      }
      default:
        throw wrongValue(`${blockPath}.type`, type, ["text", "image", "tool_result"]);
    }
  });
  return parts.length > 0 ? [...results, { role: ChatRole.USER, content: parts }] : results;
}

function imagePart(value: unknown, path: string): PartInit {
  const source = objectAt(value, path);
  const type = reqString(source, "type", path);
  if (type === "base64") {
    onlyKeys(source, new Set(["type", "media_type", "data"]), path);
    const mediaType = reqString(source, "media_type", path);
    return {
      part: {
        case: "image",
        value: {
          source: {
            case: "url",
            value: `data:${mediaType};base64,${reqString(source, "data", path)}`,
          },
        },
      },
    };
  }
  if (type === "url") {
    onlyKeys(source, new Set(["type", "url"]), path);
    return {
      part: {
        case: "image",
        value: { source: { case: "url", value: reqString(source, "url", path) } },
      },
    };
  }
  throw wrongValue(`${path}.type`, type, ["base64", "url"]);
}

function parseTool(
  value: unknown,
  path: string,
  breakpoints: Breakpoints,
): MessageInitShape<typeof ToolDefinitionSchema> {
  const tool = objectAt(value, path);
  const type = optString(tool, "type", path);
  if (type !== undefined && type !== "custom") {
    throw invalidRequest(
      `${path}.type: ${JSON.stringify(type)} is a tool Anthropic runs on its servers; only client tools (name, description, input_schema) are supported here.`,
      `${path}.type`,
    );
  }
  onlyKeys(tool, TOOL_KEYS, path);
  const out: MessageInitShape<typeof ToolDefinitionSchema> = {
    name: reqString(tool, "name", path),
  };
  const description = optString(tool, "description", path);
  if (description !== undefined) out.description = description;
  if (tool["input_schema"] === undefined || tool["input_schema"] === null)
    throw missing(`${path}.input_schema`);
  out.parameters = objectAt(tool["input_schema"], `${path}.input_schema`) as ProtoJsonObject;
  Object.assign(out, breakpoints.at(tool, path));
  return out;
}

function parseToolChoice(value: unknown): MessageInitShape<typeof ToolChoiceSchema> {
  const choice = objectAt(value, "tool_choice");
  onlyKeys(choice, new Set(["type", "name", "disable_parallel_tool_use"]), "tool_choice");
  optBoolean(choice, "disable_parallel_tool_use", "tool_choice");
  const type = reqString(choice, "type", "tool_choice");
  switch (type) {
    case "auto":
      return { choice: { case: "mode", value: ToolChoice_Mode.AUTO } };
    case "any":
      return { choice: { case: "mode", value: ToolChoice_Mode.REQUIRED } };
    case "none":
      return { choice: { case: "mode", value: ToolChoice_Mode.NONE } };
    case "tool":
      return { choice: { case: "function", value: reqString(choice, "name", "tool_choice") } };
    default:
      throw wrongValue("tool_choice.type", type, ["auto", "any", "tool", "none"]);
  }
}

/** Contract field paths in upstream errors -> Messages parameter names. */
export function messagesParam(path: string): string {
  const p = path.startsWith("chat.") ? path.slice(5) : path;
  if (p.startsWith("messages")) return "messages";
  return p
    .replace(/^stop/, "stop_sequences")
    .replace(/^tools\[(\d+)\]\.parameters/, "tools.$1.input_schema");
}

/** Anthropic's error type for a status. */
function errorType(status: number): string {
  switch (status) {
    case 400:
    case 415:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 503:
      return "overloaded_error";
    default:
      return "api_error";
  }
}

/** The error body Anthropic's clients read (the parameter, when known, leads the message). */
export function anthropicErrorBody(error: OpenAiError): unknown {
  const message =
    error.param !== null && !error.message.includes(error.param)
      ? `${error.param}: ${error.message}`
      : error.message;
  return { type: "error", error: { type: errorType(error.status), message } };
}

// ---- responses --------------------------------------------------------------------------------

function stopReason(reason: FinishReason): string {
  switch (reason) {
    case FinishReason.LENGTH:
      return "max_tokens";
    case FinishReason.TOOL_CALLS:
      return "tool_use";
    case FinishReason.CONTENT_FILTER:
      return "refusal";
    default:
      return "end_turn";
  }
}

/** Anthropic's usage: its `input_tokens` leaves out what the prompt cache read or wrote. */
function usageJson(usage: Usage | undefined) {
  const written = Number(usage?.cacheWriteInputTokens ?? 0n);
  const read = Number(usage?.cachedInputTokens ?? 0n);
  return {
    input_tokens: Math.max(0, Number(usage?.inputTokens ?? 0n) - written - read),
    output_tokens: Number(usage?.outputTokens ?? 0n),
    cache_creation_input_tokens: written,
    cache_read_input_tokens: read,
  };
}

function messageId(id: string): string {
  return `msg_${id.replace(/^chatcmpl-/, "").replace(/[^A-Za-z0-9]/g, "")}`;
}

/** Tool arguments as the `input` object Anthropic's clients expect ({} when not JSON). */
function inputOf(args: string): unknown {
  try {
    const value: unknown = JSON.parse(args === "" ? "{}" : args);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

/** The `message` for a unary answer. */
export function messageJson(res: ChatResponse, requestedModel: string): Record<string, unknown> {
  const content: unknown[] = [];
  if (res.reasoning !== "")
    content.push({ type: "thinking", thinking: res.reasoning, signature: "" });
  let text = "";
  for (const part of res.message?.content ?? []) {
    if (part.part.case === "text") text += part.part.value;
  }
  const calls = res.message?.toolCalls ?? [];
  if (text !== "" || calls.length === 0) content.push({ type: "text", text });
  for (const c of calls)
    content.push({ type: "tool_use", id: c.id, name: c.name, input: inputOf(c.arguments) });
  return {
    id: messageId(res.id),
    type: "message",
    role: "assistant",
    model: res.servedBy?.model || requestedModel,
    content,
    stop_reason: stopReason(res.finishReason),
    stop_sequence: null,
    usage: usageJson(res.usage),
    ensemble: ensembleJson(res.servedBy, res.usage),
  };
}

/**
 * A StreamChat stream as Anthropic's events: `message_start`, then content blocks one at a time
 * (`content_block_start`, its deltas: `thinking_delta`, `text_delta`, `input_json_delta`;
 * `content_block_stop` when the next kind starts), `message_delta` with the stop reason and the
 * usage, `message_stop`.
 */
export class MessageEventEncoder {
  #model: string;
  #block: { index: number; kind: "thinking" | "text" | "tool"; tool?: number } | undefined;
  #blocks = 0;

  constructor(requestedModel: string) {
    this.#model = requestedModel;
  }

  #event(type: string, fields: Record<string, unknown>): string {
    return `event: ${type}\ndata: ${JSON.stringify({ type, ...fields })}\n\n`;
  }

  start(start: StreamChatStart | undefined): string {
    if (start?.servedBy?.model) this.#model = start.servedBy.model;
    return this.#event("message_start", {
      message: {
        id: messageId(start?.id ?? Date.now().toString(36)),
        type: "message",
        role: "assistant",
        model: this.#model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: usageJson(undefined),
      },
    });
  }

  /** Closes the open block unless it is the same kind (and tool call); opens one if needed. */
  #switch(
    kind: "thinking" | "text" | "tool",
    open: Record<string, unknown>,
    tool?: number,
  ): string {
    const b = this.#block;
    if (b !== undefined && b.kind === kind && b.tool === tool) return "";
    let out = this.#close();
    this.#block = { index: this.#blocks++, kind, ...(tool !== undefined ? { tool } : {}) };
    out += this.#event("content_block_start", { index: this.#block.index, content_block: open });
    return out;
  }

  #close(): string {
    const b = this.#block;
    if (b === undefined) return "";
    this.#block = undefined;
    return this.#event("content_block_stop", { index: b.index });
  }

  delta(delta: ChatDelta): string {
    let out = "";
    if (delta.reasoning !== "") {
      out += this.#switch("thinking", { type: "thinking", thinking: "", signature: "" });
      out += this.#event("content_block_delta", {
        index: this.#block!.index,
        delta: { type: "thinking_delta", thinking: delta.reasoning },
      });
    }
    if (delta.content !== "") {
      out += this.#switch("text", { type: "text", text: "" });
      out += this.#event("content_block_delta", {
        index: this.#block!.index,
        delta: { type: "text_delta", text: delta.content },
      });
    }
    for (const t of delta.toolCalls) {
      out += this.#switch("tool", { type: "tool_use", id: t.id, name: t.name, input: {} }, t.index);
      if (t.arguments !== "") {
        out += this.#event("content_block_delta", {
          index: this.#block!.index,
          delta: { type: "input_json_delta", partial_json: t.arguments },
        });
      }
    }
    return out;
  }

  end(end: StreamChatEnd, startServedBy: ServedBy | undefined): string {
    // A stream that said nothing still answers with an (empty) text block.
    let out = this.#blocks === 0 ? this.#switch("text", { type: "text", text: "" }) : "";
    out += this.#close();
    const servedBy = end.servedBy ?? startServedBy;
    out += this.#event("message_delta", {
      delta: { stop_reason: stopReason(end.finishReason), stop_sequence: null },
      usage: usageJson(end.usage),
      ensemble: ensembleJson(servedBy, end.usage),
    });
    return out + this.#event("message_stop", {});
  }

  /** A failure after the stream began: an `error` event, which Anthropic's clients raise. */
  error(error: OpenAiError): string {
    return `event: error\ndata: ${JSON.stringify(anthropicErrorBody(error))}\n\n`;
  }
}
