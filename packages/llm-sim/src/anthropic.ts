// Anthropic Messages API (`POST /v1/messages`) on top of the OpenAI chat simulation: the request
// is checked the way Anthropic checks it, then rewritten as the equivalent OpenAI chat body, so
// the same conversation gets the same simulated text from either API.
import { contentTokens, promptSequence } from "./chat.js";
import { SimError } from "./errors.js";
import type { Breakpoint } from "./prompt-cache.js";
import type { ForcedCall } from "./structured.js";
import { tokens } from "./tokenizer.js";

export interface AnthropicRequest {
  /** The equivalent OpenAI chat body (model, messages, temperature, top_p, max_tokens). */
  openai: Record<string, unknown>;
  stream: boolean;
  stopSequences: string[];
  /** A tool the model must call (tool_choice `tool` or `any`), when tools are given. */
  forcedTool?: ForcedCall;
  /** The prompt's tokens (tool definitions, system, messages): its input tokens, cached or not. */
  prompt: string[];
  /** Its `cache_control` breakpoints, in prompt order. */
  breakpoints: Breakpoint[];
}

/** Anthropic's limit on blocks carrying cache_control in one request. */
const MAX_BREAKPOINTS = 4;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function bad(message: string): SimError {
  return new SimError(400, message, "invalid_request_error");
}

type OpenAIPart =
  { type: "text"; text: string } | { type: "image_url"; image_url: { url: string } };

/** Text-only content becomes a string (parts joined by a space), so plain prompts hash alike. */
function openAIContent(parts: OpenAIPart[]): string | OpenAIPart[] {
  if (parts.every((p) => p.type === "text")) return parts.map((p) => p.text).join(" ");
  return parts;
}

/** A `cache_control` mark in one content: it ends after the first `parts` parts. */
interface Mark {
  parts: number;
  ttl: Breakpoint["ttl"];
}

/**
 * Appends the content's blocks to `parts` as OpenAI parts, and each block's `cache_control` to
 * `marks` (a tool_result's inner blocks included, in order).
 */
function addBlocks(content: unknown, path: string, parts: OpenAIPart[], marks: Mark[]): void {
  if (typeof content === "string") {
    parts.push({ type: "text", text: content });
    return;
  }
  if (!Array.isArray(content)) {
    throw bad(`${path}: Input should be a valid string or a list of content blocks`);
  }
  content.forEach((block, j) => {
    const at = `${path}.${j}`;
    if (!isRecord(block)) throw bad(`${at}: Input should be a valid dictionary`);
    addBlock(block, at, parts, marks);
    const ttl = cacheTtl(block["cache_control"], at);
    if (ttl !== undefined) marks.push({ parts: parts.length, ttl });
  });
}

function addBlock(
  block: Record<string, unknown>,
  at: string,
  parts: OpenAIPart[],
  marks: Mark[],
): void {
  switch (block["type"]) {
    case "text":
      if (typeof block["text"] !== "string") throw bad(`${at}.text: Field required`);
      parts.push({ type: "text", text: block["text"] });
      return;
    case "image": {
      const src = block["source"];
      if (!isRecord(src)) throw bad(`${at}.source: Field required`);
      if (src["type"] === "base64") {
        if (typeof src["media_type"] !== "string" || typeof src["data"] !== "string") {
          throw bad(`${at}.source: media_type and data are required for a base64 source`);
        }
        parts.push({
          type: "image_url",
          image_url: { url: `data:${src["media_type"]};base64,${src["data"]}` },
        });
        return;
      }
      if (src["type"] === "url" && typeof src["url"] === "string") {
        parts.push({ type: "image_url", image_url: { url: src["url"] } });
        return;
      }
      throw bad(`${at}.source.type: Input should be 'base64' or 'url'`);
    }
    case "tool_result": {
      const inner = block["content"];
      if (inner !== undefined) addBlocks(inner, `${at}.content`, parts, marks);
      return;
    }
    case "tool_use":
    case "thinking":
    case "redacted_thinking":
      // What the model said earlier; it carries no new prompt text.
      return;
    default:
      throw bad(
        `${at}.type: Input tag '${String(block["type"])}' found using 'type' does not match any of the expected tags: 'text', 'image', 'tool_use', 'tool_result', 'thinking', 'redacted_thinking'`,
      );
  }
}

/** A block's `cache_control`, checked as Anthropic checks it: its TTL, or undefined for none. */
function cacheTtl(v: unknown, at: string): Breakpoint["ttl"] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isRecord(v)) throw bad(`${at}.cache_control: Input should be a valid dictionary`);
  if (v["type"] !== "ephemeral") throw bad(`${at}.cache_control.type: Input should be 'ephemeral'`);
  const ttl = v["ttl"] ?? "5m";
  if (ttl !== "5m" && ttl !== "1h")
    throw bad(`${at}.cache_control.ttl: Input should be '5m' or '1h'`);
  return ttl;
}

function unitNumber(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || v < 0 || v > 1) {
    throw bad(`${key}: Input should be a number between 0 and 1`);
  }
  return v;
}

export function parseAnthropicRequest(body: unknown): AnthropicRequest {
  if (!isRecord(body)) throw bad("The request body must be a JSON object.");
  const model = body["model"];
  if (typeof model !== "string" || model === "") throw bad("model: Field required");
  const maxTokens = body["max_tokens"];
  if (maxTokens === undefined || maxTokens === null) throw bad("max_tokens: Field required");
  if (typeof maxTokens !== "number" || !Number.isInteger(maxTokens) || maxTokens < 1) {
    throw bad("max_tokens: Input should be an integer greater than or equal to 1");
  }
  const messages = body["messages"];
  if (!Array.isArray(messages)) throw bad("messages: Field required");
  if (messages.length === 0) throw bad("messages: at least one message is required");

  // The prompt in Anthropic's order: tool definitions, system, messages. Each message's parts
  // and cache_control marks are kept to place its breakpoints once the prompt is laid out.
  const { tokens: toolTokens, breakpoints } = toolsPrompt(body["tools"]);
  const out: Array<Record<string, unknown>> = [];
  const contents: Array<{ parts: OpenAIPart[]; marks: Mark[] }> = [];
  const add = (role: string, content: unknown, path: string): OpenAIPart[] => {
    const parts: OpenAIPart[] = [];
    const marks: Mark[] = [];
    addBlocks(content, path, parts, marks);
    out.push({ role, content: openAIContent(parts) });
    contents.push({ parts, marks });
    return parts;
  };
  const system = body["system"];
  if (system !== undefined && system !== null) {
    const parts = add("system", system, "system");
    if (parts.some((p) => p.type !== "text")) throw bad("system: only text blocks are allowed");
  }
  messages.forEach((m, i) => {
    if (!isRecord(m)) throw bad(`messages.${i}: Input should be a valid dictionary`);
    const role = m["role"];
    if (role !== "user" && role !== "assistant") {
      throw bad(`messages.${i}.role: Input should be 'user' or 'assistant'`);
    }
    if (m["content"] === undefined) throw bad(`messages.${i}.content: Field required`);
    add(role, m["content"], `messages.${i}.content`);
  });
  const marked = breakpoints.length + contents.reduce((n, c) => n + c.marks.length, 0);
  if (marked > MAX_BREAKPOINTS) {
    throw bad(
      `A maximum of ${MAX_BREAKPOINTS} blocks with cache_control may be provided. Found ${marked}.`,
    );
  }
  const sequence = promptSequence(out);
  contents.forEach(({ parts, marks }, i) => {
    const start = toolTokens.length + (sequence.contentStarts[i] ?? 0);
    for (const { parts: n, ttl } of marks) {
      breakpoints.push({ length: start + contentTokens(parts.slice(0, n)).length, ttl });
    }
  });

  const stop = body["stop_sequences"];
  if (stop !== undefined && (!Array.isArray(stop) || !stop.every((s) => typeof s === "string"))) {
    throw bad("stop_sequences: Input should be a list of strings");
  }
  const stream = body["stream"];
  if (stream !== undefined && typeof stream !== "boolean") {
    throw bad("stream: Input should be a valid boolean");
  }
  const openai: Record<string, unknown> = { model, messages: out, max_tokens: maxTokens };
  const temperature = unitNumber(body, "temperature");
  const topP = unitNumber(body, "top_p");
  if (temperature !== undefined) openai["temperature"] = temperature;
  if (topP !== undefined) openai["top_p"] = topP;
  const req: AnthropicRequest = {
    openai,
    stream: stream === true,
    stopSequences: stop ?? [],
    prompt: toolTokens.concat(sequence.tokens),
    breakpoints,
  };
  const forced = forcedTool(body, messages);
  if (forced !== undefined) req.forcedTool = forced;
  return req;
}

/**
 * The tool definitions' tokens (each one's JSON, its cache_control left out) and their
 * cache_control breakpoints. Anthropic bills tool definitions as input, and they come first in
 * its prompt, so a breakpoint on the last tool caches them all.
 */
function toolsPrompt(tools: unknown): { tokens: string[]; breakpoints: Breakpoint[] } {
  let out: string[] = [];
  const breakpoints: Breakpoint[] = [];
  (Array.isArray(tools) ? (tools as unknown[]) : []).forEach((tool, i) => {
    if (!isRecord(tool)) return;
    const definition = Object.entries(tool).filter(([k]) => k !== "cache_control");
    out = out.concat(tokens(JSON.stringify(Object.fromEntries(definition))));
    const ttl = cacheTtl(tool["cache_control"], `tools.${i}`);
    if (ttl !== undefined) breakpoints.push({ length: out.length, ttl });
  });
  return { tokens: out, breakpoints };
}

/**
 * tool_choice `{type:"tool",name}` or `{type:"any"}` forces a call (of the first tool for `any`),
 * unless the conversation already ends with tool results: then the model answers in text.
 */
function forcedTool(body: Record<string, unknown>, messages: unknown[]): ForcedCall | undefined {
  const tools = body["tools"];
  const choice = body["tool_choice"];
  if (!Array.isArray(tools) || tools.length === 0 || !isRecord(choice)) return undefined;
  const last = messages[messages.length - 1];
  if (
    isRecord(last) &&
    Array.isArray(last["content"]) &&
    last["content"].some((b) => isRecord(b) && b["type"] === "tool_result")
  ) {
    return undefined;
  }
  const names = tools.map((t) => (isRecord(t) ? t["name"] : undefined));
  const schemaOf = (name: string): unknown => {
    const tool: unknown = tools[names.indexOf(name)];
    return isRecord(tool) ? tool["input_schema"] : undefined;
  };
  if (choice["type"] === "tool" && typeof choice["name"] === "string") {
    if (!names.includes(choice["name"])) {
      throw bad(`tool_choice.name: '${choice["name"]}' is not one of the tools`);
    }
    return { name: choice["name"], schema: schemaOf(choice["name"]) };
  }
  if (choice["type"] === "any" && typeof names[0] === "string")
    return { name: names[0], schema: schemaOf(names[0]) };
  return undefined;
}

export function anthropicStopReason(finish: "stop" | "length" | "stop_sequence" | "tool_use") {
  return finish === "stop" ? "end_turn" : finish === "length" ? "max_tokens" : finish;
}
