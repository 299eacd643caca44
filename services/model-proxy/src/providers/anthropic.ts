// Anthropic's Messages API through the official `@anthropic-ai/sdk`. The SDK's own retries are
// off: the router retries across deployments with its breakers and limits. Anthropic offers no
// embeddings and no image generation.
import { create } from "@bufbuild/protobuf";
import {
  ChatMessageSchema,
  ChatRole,
  FinishReason,
  ResponseFormat_Type,
  ToolCallSchema,
  ToolChoice_Mode,
  type ChatMessage,
  PromptCacheTtl,
  type ChatRequest,
  type ImagePart,
  type ToolCallDelta,
} from "@ensemble/proto";
import Anthropic, {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
} from "@anthropic-ai/sdk";
import type {
  CacheControlEphemeral,
  ContentBlockParam,
  ImageBlockParam,
  Message,
  MessageCreateParamsBase,
  MessageParam,
  RawMessageStreamEvent,
  TextBlockParam,
  ToolChoice,
} from "@anthropic-ai/sdk/resources/messages";
import { Deadline, redact } from "./deadline.js";
import {
  kindOfStatus,
  ProviderError,
  retryAfterMs,
  type ChatCall,
  type ChatChunk,
  type ChatResult,
  type Deployment,
  type ProviderClient,
  type ProviderErrorKind,
  type TokenCounts,
} from "./types.js";

/** Anthropic requires max_tokens; this is used when the caller sets none. */
export const DEFAULT_MAX_TOKENS = 4096;
/** Thinking budgets for reasoning_effort (Anthropic's minimum budget is 1024). */
const THINKING_BUDGET: Readonly<Record<string, number>> = { low: 1024, medium: 4096, high: 16384 };

export function createAnthropicClient(d: Deployment): ProviderClient {
  const client = new Anthropic({
    apiKey: d.apiKey ?? "none",
    ...(d.baseUrl !== undefined ? { baseURL: d.baseUrl } : {}),
    maxRetries: 0,
    // Also keeps the SDK from refusing large non-streaming max_tokens with its own estimate.
    timeout: d.timeoutMs,
    ...(d.headers !== undefined ? { defaultHeaders: d.headers } : {}),
  });

  return {
    // Not given by this API through our adapter: ChatRequest.logprobs is refused for it.
    logprobs: false,
    async chat(call: ChatCall): Promise<ChatResult> {
      const deadline = new Deadline(call.signal, d.timeoutMs);
      let msg: Message;
      try {
        msg = await client.messages.create(
          { ...messageParams(call.model, call.request), stream: false },
          { signal: deadline.signal },
        );
      } catch (err) {
        throw classify(d, err, deadline, false);
      } finally {
        deadline.dispose();
      }
      let text = "";
      let reasoning = "";
      const toolCalls = [];
      for (const block of msg.content) {
        if (block.type === "text") text += block.text;
        else if (block.type === "thinking") reasoning += block.thinking;
        else if (block.type === "tool_use") {
          toolCalls.push(
            create(ToolCallSchema, {
              id: block.id,
              name: block.name,
              arguments: JSON.stringify(block.input ?? {}),
            }),
          );
        }
      }
      return {
        message: create(ChatMessageSchema, {
          role: ChatRole.ASSISTANT,
          content: text !== "" ? [{ part: { case: "text", value: text } }] : [],
          toolCalls,
        }),
        reasoning,
        finishReason: finishReason(msg.stop_reason),
        ...inputTokens(msg.usage),
        outputTokens: msg.usage.output_tokens,
      };
    },

    async *streamChat(call: ChatCall): AsyncGenerator<ChatChunk> {
      const deadline = new Deadline(call.signal, d.timeoutMs);
      try {
        let stream: AsyncIterable<RawMessageStreamEvent>;
        try {
          stream = await client.messages.create(
            { ...messageParams(call.model, call.request), stream: true },
            { signal: deadline.signal },
          );
        } catch (err) {
          throw classify(d, err, deadline, false);
        }
        let input = inputTokens({ input_tokens: 0 });
        let output = 0;
        let finish: FinishReason = FinishReason.STOP;
        let stopped = false;
        // Anthropic numbers content blocks; tool calls are numbered among tool calls only.
        const toolIndex = new Map<number, number>();
        const delta = (
          content: string,
          reasoning: string,
          toolCalls: ToolCallDelta[] = [],
        ): ChatChunk => ({ type: "delta", content, reasoning, toolCalls });
        try {
          for await (const ev of stream) {
            deadline.touch();
            switch (ev.type) {
              case "message_start":
                input = inputTokens(ev.message.usage);
                output = ev.message.usage.output_tokens;
                break;
              case "content_block_start":
                if (ev.content_block.type === "tool_use") {
                  const index = toolIndex.size;
                  toolIndex.set(ev.index, index);
                  yield delta("", "", [
                    toolCallDelta(index, ev.content_block.id, ev.content_block.name, ""),
                  ]);
                } else if (ev.content_block.type === "text" && ev.content_block.text !== "") {
                  yield delta(ev.content_block.text, "");
                }
                break;
              case "content_block_delta":
                if (ev.delta.type === "text_delta") yield delta(ev.delta.text, "");
                else if (ev.delta.type === "thinking_delta") yield delta("", ev.delta.thinking);
                else if (ev.delta.type === "input_json_delta") {
                  const index = toolIndex.get(ev.index);
                  if (index !== undefined && ev.delta.partial_json !== "") {
                    yield delta("", "", [toolCallDelta(index, "", "", ev.delta.partial_json)]);
                  }
                }
                break;
              case "message_delta":
                finish = finishReason(ev.delta.stop_reason);
                output = ev.usage.output_tokens;
                if (ev.usage.input_tokens !== null && ev.usage.input_tokens !== undefined) {
                  // The split of writes by TTL comes only with message_start.
                  input = {
                    ...inputTokens({
                      input_tokens: ev.usage.input_tokens,
                      cache_creation_input_tokens: ev.usage.cache_creation_input_tokens,
                      cache_read_input_tokens: ev.usage.cache_read_input_tokens,
                    }),
                    cacheWrite1hInputTokens: input.cacheWrite1hInputTokens ?? 0,
                  };
                }
                break;
              case "message_stop":
                stopped = true;
                break;
              default:
                break;
            }
          }
        } catch (err) {
          throw classify(d, err, deadline, true);
        }
        // The SDK ends an aborted stream quietly, so the abort is checked here.
        if (!stopped) throw classify(d, undefined, deadline, true);
        yield { type: "end", finishReason: finish, ...input, outputTokens: output };
      } finally {
        deadline.dispose();
      }
    },

    embed(): Promise<never> {
      return Promise.reject(
        new ProviderError("invalid_request", `${d.name}: Anthropic does not offer embeddings`),
      );
    },

    generateImage(): Promise<never> {
      return Promise.reject(
        new ProviderError(
          "invalid_request",
          `${d.name}: Anthropic does not offer image generation`,
        ),
      );
    },
  };
}

function toolCallDelta(index: number, id: string, name: string, args: string): ToolCallDelta {
  return { $typeName: "ensemble.modelproxy.v1.ToolCallDelta", index, id, name, arguments: args };
}

/**
 * Anthropic's `input_tokens` leaves out the prompt cache's reads and writes; ours counts every
 * input token and says how many of them were cached or written (billed at their own prices).
 */
function inputTokens(u: {
  input_tokens: number;
  cache_creation_input_tokens?: number | null;
  cache_read_input_tokens?: number | null;
  cache_creation?: { ephemeral_1h_input_tokens?: number } | null;
}): Pick<
  TokenCounts,
  "inputTokens" | "cachedInputTokens" | "cacheWriteInputTokens" | "cacheWrite1hInputTokens"
> {
  const written = u.cache_creation_input_tokens ?? 0;
  const cached = u.cache_read_input_tokens ?? 0;
  return {
    inputTokens: u.input_tokens + written + cached,
    cachedInputTokens: cached,
    cacheWriteInputTokens: written,
    cacheWrite1hInputTokens: u.cache_creation?.ephemeral_1h_input_tokens ?? 0,
  };
}

function finishReason(reason: string | null | undefined): FinishReason {
  switch (reason) {
    case "max_tokens":
    case "model_context_window_exceeded":
      return FinishReason.LENGTH;
    case "tool_use":
      return FinishReason.TOOL_CALLS;
    case "refusal":
      return FinishReason.CONTENT_FILTER;
    default:
      // end_turn, stop_sequence, pause_turn
      return FinishReason.STOP;
  }
}

/** Kinds for errors Anthropic sends inside a stream (`event: error`), which carry no status. */
const KIND_OF_TYPE: Readonly<Record<string, ProviderErrorKind>> = {
  rate_limit_error: "rate_limit",
  overloaded_error: "server",
  api_error: "server",
  timeout_error: "timeout",
  authentication_error: "auth",
  permission_error: "auth",
  invalid_request_error: "invalid_request",
  not_found_error: "invalid_request",
  request_too_large: "invalid_request",
};

/** Turns any failure into a ProviderError, or rethrows the caller's own abort. */
function classify(d: Deployment, err: unknown, deadline: Deadline, streaming: boolean): unknown {
  if (err instanceof ProviderError) return err;
  if (deadline.caller.aborted) return deadline.caller.reason ?? err;
  if (deadline.timedOut || err instanceof APIConnectionTimeoutError) {
    return new ProviderError("timeout", `${d.name}: no answer within ${d.timeoutMs} ms`, {
      ...(err !== undefined ? { cause: err } : {}),
    });
  }
  if (err === undefined) {
    return new ProviderError("stream_cut", `${d.name}: the stream ended before message_stop`);
  }
  if (err instanceof APIError && !(err instanceof APIConnectionError)) {
    // The negated instanceof leaves the SDK's generic parameters as any; restate them.
    const e = err as APIError;
    const status = e.status;
    const kind =
      status !== undefined
        ? kindOfStatus(status)
        : (KIND_OF_TYPE[e.type ?? ""] ?? (streaming ? "stream_cut" : "server"));
    const wait = retryAfterMs(e.headers);
    return new ProviderError(kind, `${d.name}: ${redact(d, e.apiMessage ?? e.message)}`, {
      ...(status !== undefined ? { status } : {}),
      ...(wait !== undefined ? { retryAfterMs: wait } : {}),
      cause: err,
    });
  }
  // Connection refused/reset before an answer, or a body that broke off mid-stream.
  const what = err instanceof Error ? err.message : "unknown failure";
  return new ProviderError(
    streaming ? "stream_cut" : "network",
    `${d.name}: ${streaming ? "the stream broke" : "connection failed"} (${redact(d, what)})`,
    { cause: err },
  );
}

function textOf(m: ChatMessage): string {
  let text = "";
  for (const p of m.content) if (p.part.case === "text") text += p.part.value;
  return text;
}

function imageBlock(img: ImagePart): ImageBlockParam {
  const src = img.source;
  if (src.case === "data") {
    return {
      type: "image",
      source: {
        type: "base64",
        media_type: img.mimeType as "image/png",
        data: Buffer.from(src.value).toString("base64"),
      },
    };
  }
  const url = src.value ?? "";
  const data = /^data:([^;,]+);base64,(.*)$/s.exec(url);
  if (data?.[1] !== undefined && data[2] !== undefined) {
    return {
      type: "image",
      source: { type: "base64", media_type: data[1] as "image/png", data: data[2] },
    };
  }
  return { type: "image", source: { type: "url", url } };
}

/** Anthropic caches the prompt only up to blocks marked so (at most 4 per request). */
const MAX_CACHE_BREAKPOINTS = 4;

/** `cache_control` for a block or tool marked with this TTL. */
function cacheControl(ttl: PromptCacheTtl): { cache_control: CacheControlEphemeral } {
  const cache_control: CacheControlEphemeral = { type: "ephemeral" };
  if (ttl === PromptCacheTtl.PROMPT_CACHE_TTL_1H) cache_control.ttl = "1h";
  else if (ttl === PromptCacheTtl.PROMPT_CACHE_TTL_5M) cache_control.ttl = "5m";
  return { cache_control };
}

/**
 * `cache_control` for a block holding these parts: set when one of them is a breakpoint (with
 * the longest TTL asked among them).
 */
function cacheMark(parts: ChatMessage["content"]): { cache_control?: CacheControlEphemeral } {
  const marked = parts.filter((p) => p.cacheBreakpoint);
  return marked.length === 0 ? {} : cacheControl(Math.max(...marked.map((p) => p.cacheTtl)));
}

function blocksOf(m: ChatMessage): ContentBlockParam[] {
  const blocks: ContentBlockParam[] = [];
  for (const p of m.content) {
    if (p.part.case === "text" && p.part.value !== "") {
      blocks.push({ type: "text", text: p.part.value, ...cacheMark([p]) });
    } else if (p.part.case === "image") {
      blocks.push({ ...imageBlock(p.part.value), ...cacheMark([p]) });
    }
  }
  return blocks;
}

function parseArgs(text: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(text === "" ? "{}" : text);
    return typeof v === "object" && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : { value: v };
  } catch {
    // Anthropic wants an object; keep what the model produced rather than lose it.
    return { arguments: text };
  }
}

/**
 * Anthropic has one top-level `system`, two roles, and tool results inside user turns; turns of
 * the same role are merged (tool results first, as Anthropic requires).
 */
function toMessages(r: ChatRequest): { system: TextBlockParam[]; messages: MessageParam[] } {
  const system: TextBlockParam[] = [];
  const messages: MessageParam[] = [];
  const push = (role: "user" | "assistant", blocks: ContentBlockParam[]): void => {
    if (blocks.length === 0) return;
    const last = messages[messages.length - 1];
    if (last !== undefined && last.role === role && Array.isArray(last.content)) {
      last.content.push(...blocks);
    } else {
      messages.push({ role, content: blocks });
    }
  };
  for (const m of r.messages) {
    switch (m.role) {
      case ChatRole.SYSTEM:
      case ChatRole.DEVELOPER:
        // A marked prompt keeps its parts as blocks, so the cache ends where the mark is.
        if (m.content.some((p) => p.cacheBreakpoint)) {
          for (const p of m.content) {
            if (p.part.case === "text") {
              system.push({ type: "text", text: p.part.value, ...cacheMark([p]) });
            }
          }
        } else system.push({ type: "text", text: textOf(m) });
        break;
      case ChatRole.ASSISTANT:
        push("assistant", [
          ...blocksOf(m).filter((b) => b.type === "text"),
          ...m.toolCalls.map((t) => ({
            type: "tool_use" as const,
            id: t.id,
            name: t.name,
            input: parseArgs(t.arguments),
          })),
        ]);
        break;
      case ChatRole.TOOL:
        push("user", [
          {
            type: "tool_result",
            tool_use_id: m.toolCallId,
            content: textOf(m),
            ...cacheMark(m.content),
          },
        ]);
        break;
      default:
        push("user", blocksOf(m));
    }
  }
  // A user turn that is only text is sent as a plain string, the shape most callers use.
  for (const msg of messages) {
    const c = msg.content;
    if (Array.isArray(c) && c.every((b) => b.type === "text" && b.cache_control === undefined)) {
      msg.content = c.map((b) => (b.type === "text" ? b.text : "")).join("");
    }
  }
  return { system: system.filter((b) => b.text !== ""), messages };
}

function toolChoice(r: ChatRequest): ToolChoice | undefined {
  const c = r.toolChoice?.choice;
  if (c === undefined || c.case === undefined) return undefined;
  if (c.case === "function") return { type: "tool", name: c.value };
  switch (c.value) {
    case ToolChoice_Mode.AUTO:
      return { type: "auto" };
    case ToolChoice_Mode.NONE:
      return { type: "none" };
    case ToolChoice_Mode.REQUIRED:
      return { type: "any" };
    default:
      return undefined;
  }
}

export function messageParams(model: string, r: ChatRequest): MessageCreateParamsBase {
  const { system, messages } = toMessages(r);
  const params: MessageCreateParamsBase = {
    model,
    messages,
    max_tokens: r.maxTokens ?? DEFAULT_MAX_TOKENS,
  };
  const rf = r.responseFormat;
  if (rf?.type === ResponseFormat_Type.JSON_SCHEMA && rf.jsonSchema !== undefined) {
    params.output_config = { format: { type: "json_schema", schema: rf.jsonSchema } };
  } else if (rf?.type === ResponseFormat_Type.JSON_OBJECT) {
    // Anthropic has no "any JSON object" mode; an instruction is the documented way.
    system.push({ type: "text", text: "Answer with a single JSON object and nothing else." });
  }
  // One string, the shape most callers use, unless a block is to be cached.
  if (system.some((b) => b.cache_control !== undefined)) params.system = system;
  else if (system.length > 0) params.system = system.map((b) => b.text).join("\n\n");
  // temperature, top_p, seed and the penalties are not sent: the Messages API (as of SDK 1.x)
  // has no sampling parameters.
  if (r.stop.length > 0) params.stop_sequences = [...r.stop];
  if (r.tools.length > 0) {
    params.tools = r.tools.map((t) => ({
      name: t.name,
      ...(t.description !== "" ? { description: t.description } : {}),
      input_schema: (t.parameters ?? { type: "object", properties: {} }) as {
        type: "object";
        [k: string]: unknown;
      },
      ...(t.strict ? { strict: true } : {}),
      ...(t.cacheBreakpoint ? cacheControl(t.cacheTtl) : {}),
    }));
    const choice = toolChoice(r);
    if (choice !== undefined) params.tool_choice = choice;
  }
  // Extended thinking: a budget below max_tokens; Anthropic refuses it with forced tool use.
  const budget = THINKING_BUDGET[r.reasoningEffort];
  const forced = params.tool_choice?.type === "any" || params.tool_choice?.type === "tool";
  if (budget !== undefined && !forced) {
    if (r.maxTokens === undefined) params.max_tokens = budget + DEFAULT_MAX_TOKENS;
    if (params.max_tokens > budget) {
      params.thinking = { type: "enabled", budget_tokens: budget };
    }
  }
  const breakpoints = countCacheBreakpoints(params);
  if (breakpoints > MAX_CACHE_BREAKPOINTS) {
    throw new ProviderError(
      "invalid_request",
      `Anthropic caches at most ${MAX_CACHE_BREAKPOINTS} prompt cache breakpoints per request; this one marks ${breakpoints} (cache_breakpoint on content parts and tools)`,
    );
  }
  return params;
}

function countCacheBreakpoints(params: MessageCreateParamsBase): number {
  const marked = (blocks: unknown): number =>
    Array.isArray(blocks)
      ? blocks.filter((b: { cache_control?: unknown }) => b.cache_control !== undefined).length
      : 0;
  return (
    marked(params.system) +
    marked(params.tools) +
    params.messages.reduce((n, m) => n + marked(m.content), 0)
  );
}
