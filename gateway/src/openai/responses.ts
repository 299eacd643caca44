// POST /v1/responses: OpenAI's Responses API (the default of the openai SDKs' newer helpers and
// of agent frameworks) over the same ModelProxyService Chat / StreamChat as chat completions.
// A conversation continues either with its earlier items in `input` (as the SDKs send them back)
// or with `previous_response_id`: unless a call says `store: false`, its answer and the
// conversation before it are kept by model-proxy (StoreResponse) for its user, and
// GET / DELETE /v1/responses/{id} read and remove them. Item references are refused. Function
// tools only.
import type { JsonObject as ProtoJsonObject, MessageInitShape } from "@bufbuild/protobuf";
import {
  ChatRole,
  FinishReason,
  ImageDetail,
  ResponseFormat_Type,
  ToolChoice_Mode,
  type ChatDelta,
  type ChatResponse,
  type ContentPartSchema,
  type ResponseFormatSchema,
  type ServedBy,
  type StreamChatEnd,
  type StreamChatStart,
  type TokenLogprob,
  type ToolChoiceSchema,
  type ToolDefinitionSchema,
  type Usage,
} from "@ensemble/proto";
import {
  ensembleJson,
  jsonSchemaFormat,
  logprobsJson,
  parseShared,
  REASONING_EFFORTS,
  topLogprobsOf,
  type ChatRequestInit,
} from "./chat.js";
import { invalidRequest, type OpenAiError } from "./errors.js";
import {
  missing,
  objectAt,
  onlyKeys,
  optBoolean,
  optEnum,
  optInt32,
  optString,
  reqString,
  wrongType,
  wrongValue,
  type JsonObject,
} from "./fields.js";

export type MessageInit = NonNullable<ChatRequestInit["messages"]>[number];
type PartInit = MessageInitShape<typeof ContentPartSchema>;

const KEYS = new Set([
  "model",
  "input",
  "instructions",
  "stream",
  "temperature",
  "top_p",
  "max_output_tokens",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "text",
  "reasoning",
  "metadata",
  "user",
  "safety_identifier",
  "prompt_cache_key",
  "store",
  "previous_response_id",
  "include",
  "top_logprobs",
  "truncation",
  // Ensemble extensions
  "cache",
  "fallback_models",
  "log",
]);
const MESSAGE_KEYS = new Set(["type", "role", "content", "id", "status"]);
const CALL_KEYS = new Set(["type", "call_id", "name", "arguments", "id", "status"]);
const OUTPUT_KEYS = new Set(["type", "call_id", "output", "id", "status"]);
const REASONING_ITEM_KEYS = new Set([
  "type",
  "id",
  "summary",
  "content",
  "encrypted_content",
  "status",
]);
const TOOL_KEYS = new Set(["type", "name", "description", "parameters", "strict"]);
const TEXT_KEYS = new Set(["format", "verbosity"]);
const FORMAT_KEYS = new Set(["type", "name", "description", "schema", "strict"]);
const REASONING_KEYS = new Set(["effort", "summary", "generate_summary"]);
const ROLES: Record<string, ChatRole> = {
  user: ChatRole.USER,
  assistant: ChatRole.ASSISTANT,
  system: ChatRole.SYSTEM,
  developer: ChatRole.DEVELOPER,
};
const DETAILS = { auto: ImageDetail.AUTO, low: ImageDetail.LOW, high: ImageDetail.HIGH } as const;
/** `include` values that change nothing here (no encrypted reasoning is ever produced). */
const HARMLESS_INCLUDES = new Set(["reasoning.encrypted_content"]);
/** The `include` value that asks for the output text's token log probabilities. */
const LOGPROBS_INCLUDE = "message.output_text.logprobs";

export interface ParsedResponses {
  /** The call; `messages` holds the input only (see conversation()). */
  request: ChatRequestInit;
  stream: boolean;
  /** A system message of the `instructions`: sent first, not carried over to a continuation. */
  instructions?: MessageInit | undefined;
  /** The stored response this call continues. */
  previousResponseId?: string | undefined;
  /** Keep the answer for previous_response_id and GET /v1/responses/{id} (default true). */
  store: boolean;
  /** Request fields the response object repeats, as OpenAI's does. */
  echo: Record<string, unknown>;
}

/** Checks a Responses body and maps it onto the contract's ChatRequest. */
export function parseResponsesRequest(body: JsonObject): ParsedResponses {
  onlyKeys(body, KEYS, "");
  const model = reqString(body, "model");
  const previousResponseId = optString(body, "previous_response_id");
  const store = optBoolean(body, "store") ?? true;
  const instructions = optString(body, "instructions");
  const request: ChatRequestInit = { model, messages: parseInput(body["input"]) };
  parseShared(body, request);
  const limit = optInt32(body, "max_output_tokens");
  if (limit !== undefined) request.maxTokens = limit;

  let tools: unknown[] = [];
  if (body["tools"] !== undefined && body["tools"] !== null) {
    if (!Array.isArray(body["tools"])) throw wrongType("tools", "an array", body["tools"]);
    tools = body["tools"];
    request.tools = tools.map((t, i) => parseTool(t, `tools[${i}]`));
  }
  let toolChoice: unknown = "auto";
  if (body["tool_choice"] !== undefined && body["tool_choice"] !== null) {
    toolChoice = body["tool_choice"];
    request.toolChoice = parseToolChoice(toolChoice);
  }
  const parallel = optBoolean(body, "parallel_tool_calls") ?? true;

  let format: JsonObject = { type: "text" };
  if (body["text"] !== undefined && body["text"] !== null) {
    const text = objectAt(body["text"], "text");
    onlyKeys(text, TEXT_KEYS, "text");
    optEnum(text, "verbosity", ["low", "medium", "high"], "text");
    if (text["format"] !== undefined && text["format"] !== null) {
      format = objectAt(text["format"], "text.format");
      request.responseFormat = parseFormat(format);
    }
  }
  let effort: string | undefined;
  if (body["reasoning"] !== undefined && body["reasoning"] !== null) {
    const reasoning = objectAt(body["reasoning"], "reasoning");
    onlyKeys(reasoning, REASONING_KEYS, "reasoning");
    effort = optEnum(reasoning, "effort", REASONING_EFFORTS, "reasoning");
    if (effort !== undefined) request.reasoningEffort = effort;
    optEnum(reasoning, "summary", ["auto", "concise", "detailed"], "reasoning");
    optEnum(reasoning, "generate_summary", ["auto", "concise", "detailed"], "reasoning");
  }
  if (body["include"] !== undefined && body["include"] !== null) {
    if (!Array.isArray(body["include"])) throw wrongType("include", "an array", body["include"]);
    body["include"].forEach((v, i) => {
      if (v === LOGPROBS_INCLUDE) {
        request.logprobs = true;
        return;
      }
      if (typeof v !== "string" || !HARMLESS_INCLUDES.has(v)) {
        throw invalidRequest(
          `include[${i}]: ${JSON.stringify(v)} is not supported here.`,
          `include[${i}]`,
          "unsupported_value",
        );
      }
    });
  }
  const top = topLogprobsOf(body);
  if (top !== undefined) {
    // The alternatives come with the tokens' own log probabilities.
    if (top > 0) request.logprobs = true;
    request.topLogprobs = top;
  }
  const truncation = optEnum(body, "truncation", ["auto", "disabled"]) ?? "disabled";
  return {
    request,
    stream: optBoolean(body, "stream") ?? false,
    ...(instructions !== undefined && instructions !== ""
      ? {
          instructions: {
            role: ChatRole.SYSTEM,
            content: [{ part: { case: "text", value: instructions } }],
          },
        }
      : {}),
    ...(previousResponseId !== undefined && previousResponseId !== ""
      ? { previousResponseId }
      : {}),
    store,
    echo: {
      previous_response_id: previousResponseId ?? null,
      store,
      instructions: instructions ?? null,
      max_output_tokens: limit ?? null,
      parallel_tool_calls: parallel,
      reasoning: { effort: effort ?? null, summary: null },
      temperature: request.temperature ?? null,
      text: { format },
      tool_choice: toolChoice,
      tools,
      top_p: request.topP ?? null,
      truncation,
      metadata: request.metadata ?? {},
      user: optString(body, "user") ?? null,
    },
  };
}

function parseInput(value: unknown): MessageInit[] {
  if (value === undefined || value === null) throw missing("input");
  if (typeof value === "string") {
    return [{ role: ChatRole.USER, content: [{ part: { case: "text", value } }] }];
  }
  if (!Array.isArray(value)) throw wrongType("input", "a string or an array of items", value);
  if (value.length === 0) {
    throw invalidRequest("Invalid 'input': empty array.", "input", "empty_array");
  }
  const out: MessageInit[] = [];
  value.forEach((raw, i) => {
    const path = `input[${i}]`;
    const item = objectAt(raw, path);
    const type = optString(item, "type", path) ?? (item["role"] !== undefined ? "message" : "");
    switch (type) {
      case "message": {
        onlyKeys(item, MESSAGE_KEYS, path);
        const roleName = reqString(item, "role", path);
        const role = ROLES[roleName];
        if (role === undefined) throw wrongValue(`${path}.role`, roleName, Object.keys(ROLES));
        out.push({ role, content: parseContent(item["content"], role, `${path}.content`) });
        break;
      }
      case "function_call": {
        onlyKeys(item, CALL_KEYS, path);
        const call = {
          id: reqString(item, "call_id", path),
          name: reqString(item, "name", path),
          arguments: optString(item, "arguments", path) ?? "",
        };
        // Calls follow the assistant's message of the same turn, as the SDKs send output back.
        const last = out.at(-1);
        if (last?.role === ChatRole.ASSISTANT) last.toolCalls = [...(last.toolCalls ?? []), call];
        else out.push({ role: ChatRole.ASSISTANT, content: [], toolCalls: [call] });
        break;
      }
      case "function_call_output": {
        onlyKeys(item, OUTPUT_KEYS, path);
        const output = item["output"];
        const text =
          typeof output === "string"
            ? output
            : Array.isArray(output)
              ? parseContent(output, ChatRole.TOOL, `${path}.output`)
                  .map((p) => (p.part?.case === "text" ? p.part.value : ""))
                  .join("")
              : undefined;
        if (text === undefined) throw wrongType(`${path}.output`, "a string", output);
        out.push({
          role: ChatRole.TOOL,
          toolCallId: reqString(item, "call_id", path),
          content: [{ part: { case: "text", value: text } }],
        });
        break;
      }
      case "reasoning":
        // Earlier reasoning is the model's own scratch work: not sent again.
        onlyKeys(item, REASONING_ITEM_KEYS, path);
        break;
      case "item_reference":
        throw invalidRequest(
          `${path}: item references are not supported here; send the item itself, or continue a stored response with previous_response_id.`,
          `${path}.type`,
          "unsupported_value",
        );
      default:
        throw wrongValue(`${path}.type`, type, [
          "message",
          "function_call",
          "function_call_output",
          "reasoning",
        ]);
    }
  });
  return out;
}

function parseContent(value: unknown, role: ChatRole, path: string): PartInit[] {
  if (typeof value === "string") return [{ part: { case: "text", value } }];
  if (!Array.isArray(value)) throw wrongType(path, "a string or an array of content parts", value);
  return value.map((raw, i): PartInit => {
    const partPath = `${path}[${i}]`;
    const part = objectAt(raw, partPath);
    const type = reqString(part, "type", partPath);
    switch (type) {
      case "input_text":
      case "output_text":
        // Assistant text sent back carries its annotations and logprobs: not needed again.
        onlyKeys(part, new Set(["type", "text", "annotations", "logprobs"]), partPath);
        return { part: { case: "text", value: reqString(part, "text", partPath) } };
      case "refusal":
        onlyKeys(part, new Set(["type", "refusal"]), partPath);
        return { part: { case: "text", value: reqString(part, "refusal", partPath) } };
      case "input_image": {
        if (role !== ChatRole.USER) throw wrongValue(`${partPath}.type`, type, ["input_text"]);
        onlyKeys(part, new Set(["type", "image_url", "detail", "file_id"]), partPath);
        if (part["file_id"] !== undefined && part["file_id"] !== null) {
          throw invalidRequest(
            `${partPath}.file_id: files are not stored here; send the image as image_url (an https or data: URL).`,
            `${partPath}.file_id`,
            "unsupported_parameter",
          );
        }
        const detail = optEnum(part, "detail", ["auto", "low", "high"], partPath);
        return {
          part: {
            case: "image",
            value: {
              source: { case: "url", value: reqString(part, "image_url", partPath) },
              ...(detail !== undefined ? { detail: DETAILS[detail] } : {}),
            },
          },
        };
      }
      default:
        throw wrongValue(
          `${partPath}.type`,
          type,
          role === ChatRole.USER ? ["input_text", "input_image"] : ["input_text", "output_text"],
        );
    }
  });
}

function parseTool(value: unknown, path: string): MessageInitShape<typeof ToolDefinitionSchema> {
  const tool = objectAt(value, path);
  const type = reqString(tool, "type", path);
  if (type !== "function") {
    throw invalidRequest(
      `${path}.type: only function tools are supported here (got ${JSON.stringify(type)}).`,
      `${path}.type`,
      "unsupported_value",
    );
  }
  onlyKeys(tool, TOOL_KEYS, path);
  const out: MessageInitShape<typeof ToolDefinitionSchema> = {
    name: reqString(tool, "name", path),
  };
  const description = optString(tool, "description", path);
  if (description !== undefined) out.description = description;
  if (tool["parameters"] !== undefined && tool["parameters"] !== null) {
    out.parameters = objectAt(tool["parameters"], `${path}.parameters`) as ProtoJsonObject;
  }
  const strict = optBoolean(tool, "strict", path);
  if (strict !== undefined) out.strict = strict;
  return out;
}

function parseToolChoice(value: unknown): MessageInitShape<typeof ToolChoiceSchema> {
  if (typeof value === "string") {
    const modes = {
      auto: ToolChoice_Mode.AUTO,
      none: ToolChoice_Mode.NONE,
      required: ToolChoice_Mode.REQUIRED,
    };
    const mode = modes[value as keyof typeof modes];
    if (mode === undefined) throw wrongValue("tool_choice", value, Object.keys(modes));
    return { choice: { case: "mode", value: mode } };
  }
  const choice = objectAt(value, "tool_choice");
  onlyKeys(choice, new Set(["type", "name"]), "tool_choice");
  const type = reqString(choice, "type", "tool_choice");
  if (type !== "function") throw wrongValue("tool_choice.type", type, ["function"]);
  return { choice: { case: "function", value: reqString(choice, "name", "tool_choice") } };
}

function parseFormat(format: JsonObject): MessageInitShape<typeof ResponseFormatSchema> {
  onlyKeys(format, FORMAT_KEYS, "text.format");
  const type = reqString(format, "type", "text.format");
  switch (type) {
    case "text":
      return { type: ResponseFormat_Type.TEXT };
    case "json_object":
      return { type: ResponseFormat_Type.JSON_OBJECT };
    case "json_schema":
      return jsonSchemaFormat(format, "text.format");
    default:
      throw wrongValue("text.format.type", type, ["text", "json_object", "json_schema"]);
  }
}

/** Contract field paths in upstream errors -> Responses parameter names. */
export function responsesParam(path: string): string {
  const p = path.startsWith("chat.") ? path.slice(5) : path;
  if (p.startsWith("messages")) return "input";
  return p
    .replace(/^max_tokens/, "max_output_tokens")
    .replace(/^response_format\.json_schema/, "text.format.schema")
    .replace(/^response_format\.schema_name/, "text.format.name")
    .replace(/^response_format/, "text.format");
}

// ---- responses --------------------------------------------------------------------------------

function usageJson(usage: Usage | undefined) {
  const input = Number(usage?.inputTokens ?? 0n);
  const output = Number(usage?.outputTokens ?? 0n);
  const total = Number(usage?.totalTokens ?? 0n);
  return {
    input_tokens: input,
    input_tokens_details: { cached_tokens: Number(usage?.cachedInputTokens ?? 0n) },
    output_tokens: output,
    output_tokens_details: { reasoning_tokens: Number(usage?.reasoningTokens ?? 0n) },
    total_tokens: total > 0 ? total : input + output,
  };
}

/** `completed`, or `incomplete` with the reason OpenAI gives. */
function statusOf(reason: FinishReason): { status: string; incomplete_details: unknown } {
  if (reason === FinishReason.LENGTH) {
    return { status: "incomplete", incomplete_details: { reason: "max_output_tokens" } };
  }
  if (reason === FinishReason.CONTENT_FILTER) {
    return { status: "incomplete", incomplete_details: { reason: "content_filter" } };
  }
  return { status: "completed", incomplete_details: null };
}

/** The upstream id without its chat-completion prefix, for resp_/msg_/rs_ ids. */
function idPart(id: string): string {
  return id.replace(/^chatcmpl-/, "").replace(/[^A-Za-z0-9]/g, "");
}

function textPart(text: string, logprobs: unknown[] = []) {
  return { type: "output_text", text, annotations: [], logprobs };
}

function messageItem(id: string, text: string, status: string, logprobs: unknown[] = []) {
  return {
    type: "message",
    id,
    status,
    role: "assistant",
    content: status === "in_progress" ? [] : [textPart(text, logprobs)],
  };
}

/** Token log probabilities as the Responses API lists them (the chat completions entries). */
function logprobEntries(logprobs: readonly TokenLogprob[]): unknown[] {
  return logprobsJson(logprobs)?.content ?? [];
}

function callItem(call: { id: string; name: string; arguments: string }, status: string) {
  return {
    type: "function_call",
    id: `fc_${idPart(call.id)}`,
    call_id: call.id,
    name: call.name,
    arguments: call.arguments,
    status,
  };
}

function reasoningItem(id: string, text: string) {
  return { type: "reasoning", id, summary: text === "" ? [] : [{ type: "summary_text", text }] };
}

/** The `response` object around its output, as both answers and stream events carry it. */
function responseObject(
  id: string,
  createdAt: number,
  model: string,
  echo: Record<string, unknown>,
  fields: Record<string, unknown>,
): Record<string, unknown> {
  return {
    id,
    object: "response",
    created_at: createdAt,
    status: "in_progress",
    background: false,
    error: null,
    incomplete_details: null,
    model,
    output: [],
    usage: null,
    ...echo,
    ...fields,
  };
}

/** The `response` for a unary answer. */
export function responseJson(
  res: ChatResponse,
  requestedModel: string,
  echo: Record<string, unknown>,
): Record<string, unknown> {
  const base = idPart(res.id);
  let text = "";
  for (const part of res.message?.content ?? []) {
    if (part.part.case === "text") text += part.part.value;
  }
  const calls = res.message?.toolCalls ?? [];
  const output: unknown[] = [];
  if (res.reasoning !== "") output.push(reasoningItem(`rs_${base}`, res.reasoning));
  if (text !== "" || calls.length === 0) {
    output.push(messageItem(`msg_${base}`, text, "completed", logprobEntries(res.logprobs)));
  }
  for (const c of calls) output.push(callItem(c, "completed"));
  return responseObject(
    `resp_${base}`,
    res.createTime !== undefined ? Number(res.createTime.seconds) : Math.floor(Date.now() / 1000),
    res.servedBy?.model || requestedModel,
    echo,
    {
      ...statusOf(res.finishReason),
      output,
      usage: usageJson(res.usage),
      ensemble: ensembleJson(res.servedBy, res.usage),
    },
  );
}

/**
 * Turns a StreamChat stream into the Responses API's server-sent events: `response.created` and
 * `response.in_progress`; a reasoning item (summary text deltas), a message item (output text
 * deltas) and one function_call item per tool call (argument deltas), each opened when its first
 * piece arrives; at the end every item's `.done` events and `response.completed` (or
 * `response.incomplete`). Every event carries its `sequence_number`.
 */
export class ResponseEventEncoder {
  #seq = 0;
  #id = "";
  #createdAt = 0;
  #model: string;
  readonly #echo: Record<string, unknown>;
  #reasoning: { index: number; id: string; text: string } | undefined;
  #message: { index: number; id: string; text: string; logprobs: unknown[] } | undefined;
  readonly #calls = new Map<
    number,
    { index: number; id: string; name: string; arguments: string }
  >();
  #items = 0;
  #final: Record<string, unknown> | undefined;

  constructor(requestedModel: string, echo: Record<string, unknown>) {
    this.#model = requestedModel;
    this.#echo = echo;
  }

  #event(type: string, fields: Record<string, unknown>): string {
    const data = JSON.stringify({ type, sequence_number: this.#seq++, ...fields });
    return `event: ${type}\ndata: ${data}\n\n`;
  }

  #response(fields: Record<string, unknown>): Record<string, unknown> {
    return responseObject(this.#id, this.#createdAt, this.#model, this.#echo, fields);
  }

  start(start: StreamChatStart | undefined): string {
    this.#id = `resp_${idPart(start?.id ?? "") || Date.now().toString(36)}`;
    this.#createdAt =
      start?.createTime !== undefined
        ? Number(start.createTime.seconds)
        : Math.floor(Date.now() / 1000);
    if (start?.servedBy?.model) this.#model = start.servedBy.model;
    const response = this.#response({});
    return (
      this.#event("response.created", { response }) +
      this.#event("response.in_progress", { response })
    );
  }

  /** The events of one delta ("" when it carries nothing). */
  delta(delta: ChatDelta): string {
    let out = "";
    const base = this.#id.slice("resp_".length);
    if (delta.reasoning !== "") {
      if (this.#reasoning === undefined) {
        this.#reasoning = { index: this.#items++, id: `rs_${base}`, text: "" };
        const r = this.#reasoning;
        out += this.#event("response.output_item.added", {
          output_index: r.index,
          item: reasoningItem(r.id, ""),
        });
        out += this.#event("response.reasoning_summary_part.added", {
          item_id: r.id,
          output_index: r.index,
          summary_index: 0,
          part: { type: "summary_text", text: "" },
        });
      }
      const r = this.#reasoning;
      r.text += delta.reasoning;
      out += this.#event("response.reasoning_summary_text.delta", {
        item_id: r.id,
        output_index: r.index,
        summary_index: 0,
        delta: delta.reasoning,
      });
    }
    if (delta.content !== "") {
      if (this.#message === undefined) {
        this.#message = { index: this.#items++, id: `msg_${base}`, text: "", logprobs: [] };
        const m = this.#message;
        out += this.#event("response.output_item.added", {
          output_index: m.index,
          item: messageItem(m.id, "", "in_progress"),
        });
        out += this.#event("response.content_part.added", {
          item_id: m.id,
          output_index: m.index,
          content_index: 0,
          part: textPart(""),
        });
      }
      const m = this.#message;
      m.text += delta.content;
      const logprobs = logprobEntries(delta.logprobs);
      m.logprobs.push(...logprobs);
      out += this.#event("response.output_text.delta", {
        item_id: m.id,
        output_index: m.index,
        content_index: 0,
        delta: delta.content,
        logprobs,
      });
    } else if (delta.logprobs.length > 0 && this.#message !== undefined) {
      // Log probabilities of text already sent (the output guard releases them after their
      // text): kept for output_text.done and the final message, as chat completions keeps them.
      this.#message.logprobs.push(...logprobEntries(delta.logprobs));
    }
    for (const t of delta.toolCalls) {
      let call = this.#calls.get(t.index);
      if (call === undefined) {
        call = { index: this.#items++, id: t.id, name: t.name, arguments: "" };
        this.#calls.set(t.index, call);
        out += this.#event("response.output_item.added", {
          output_index: call.index,
          item: callItem(call, "in_progress"),
        });
      }
      if (t.arguments !== "") {
        call.arguments += t.arguments;
        out += this.#event("response.function_call_arguments.delta", {
          item_id: callItem(call, "").id,
          output_index: call.index,
          delta: t.arguments,
        });
      }
    }
    return out;
  }

  /** Every open item's `.done` events, then `response.completed` / `response.incomplete`. */
  end(end: StreamChatEnd, startServedBy: ServedBy | undefined): string {
    const servedBy = end.servedBy ?? startServedBy;
    if (servedBy?.model) this.#model = servedBy.model;
    let out = "";
    const output: unknown[] = [];
    const r = this.#reasoning;
    if (r !== undefined) {
      const part = { type: "summary_text", text: r.text };
      out += this.#event("response.reasoning_summary_text.done", {
        item_id: r.id,
        output_index: r.index,
        summary_index: 0,
        text: r.text,
      });
      out += this.#event("response.reasoning_summary_part.done", {
        item_id: r.id,
        output_index: r.index,
        summary_index: 0,
        part,
      });
      const item = reasoningItem(r.id, r.text);
      out += this.#event("response.output_item.done", { output_index: r.index, item });
      output[r.index] = item;
    }
    // A stream that said nothing and called nothing still answers with an (empty) message.
    if (this.#message === undefined && this.#calls.size === 0) {
      this.#message = {
        index: this.#items++,
        id: `msg_${this.#id.slice(5)}`,
        text: "",
        logprobs: [],
      };
      out += this.#event("response.output_item.added", {
        output_index: this.#message.index,
        item: messageItem(this.#message.id, "", "in_progress"),
      });
      out += this.#event("response.content_part.added", {
        item_id: this.#message.id,
        output_index: this.#message.index,
        content_index: 0,
        part: textPart(""),
      });
    }
    const m = this.#message;
    if (m !== undefined) {
      out += this.#event("response.output_text.done", {
        item_id: m.id,
        output_index: m.index,
        content_index: 0,
        text: m.text,
        logprobs: m.logprobs,
      });
      out += this.#event("response.content_part.done", {
        item_id: m.id,
        output_index: m.index,
        content_index: 0,
        part: textPart(m.text, m.logprobs),
      });
      const item = messageItem(m.id, m.text, "completed", m.logprobs);
      out += this.#event("response.output_item.done", { output_index: m.index, item });
      output[m.index] = item;
    }
    for (const call of this.#calls.values()) {
      const item = callItem(call, "completed");
      out += this.#event("response.function_call_arguments.done", {
        item_id: item.id,
        output_index: call.index,
        name: call.name,
        arguments: call.arguments,
      });
      out += this.#event("response.output_item.done", { output_index: call.index, item });
      output[call.index] = item;
    }
    const status = statusOf(end.finishReason);
    const response = this.#response({
      ...status,
      output,
      usage: usageJson(end.usage),
      ensemble: ensembleJson(servedBy, end.usage),
    });
    this.#final = response;
    const type = status.status === "completed" ? "response.completed" : "response.incomplete";
    return out + this.#event(type, { response });
  }

  /** After end(): the response object it completed with, and the answer as a chat message. */
  result(): { json: Record<string, unknown>; output: MessageInit } {
    return { json: this.#final ?? {}, output: this.#output() };
  }

  #output(): MessageInit {
    return {
      role: ChatRole.ASSISTANT,
      content:
        this.#message !== undefined && this.#message.text !== ""
          ? [{ part: { case: "text", value: this.#message.text } }]
          : [],
      toolCalls: [...this.#calls.values()].map((c) => ({
        id: c.id,
        name: c.name,
        arguments: c.arguments,
      })),
    };
  }

  /**
   * A failure after the stream began: an `error` event (the SDKs raise it as an APIError, as
   * they do for an error body) and the stream ends without `response.completed`.
   */
  error(error: OpenAiError): string {
    const body = error.body();
    return this.#event("error", {
      code: body.error.code,
      message: body.error.message,
      param: body.error.param,
      error: body.error,
    });
  }
}
