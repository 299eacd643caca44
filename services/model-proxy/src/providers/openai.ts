// Any OpenAI-compatible endpoint (OpenAI, OpenRouter, LiteLLM, vLLM, Ollama, llama.cpp server,
// Groq, Together, the LLM simulator) through the official `openai` SDK. The SDK's own retries are
// off: the router retries across deployments with its breakers and limits.
import { create } from "@bufbuild/protobuf";
import {
  ChatMessageSchema,
  ChatRole,
  FinishReason,
  ImageDetail,
  ImageFormat,
  ResponseFormat_Type,
  TokenLogprobSchema,
  ToolCallSchema,
  ToolChoice_Mode,
  type ChatMessage,
  type ChatRequest,
  type TokenLogprob,
  type ToolCallDelta,
} from "@ensemble/proto";
import OpenAI from "openai";
import type {
  ChatCompletionChunk,
  ChatCompletionContentPart,
  ChatCompletionCreateParamsBase,
  ChatCompletionMessageParam,
  ChatCompletionTokenLogprob,
  ChatCompletionToolChoiceOption,
} from "openai/resources/chat/completions";
import type { CompletionUsage } from "openai/resources/completions";
import { Deadline, LinkedSignal, redact } from "./deadline.js";
import { pooledFetch } from "./http.js";
import {
  kindOfStatus,
  ProviderError,
  retryAfterMs,
  type ChatCall,
  type ChatChunk,
  type ChatResult,
  type Deployment,
  type EmbedCall,
  type EmbedResult,
  type ImageCall,
  type ImageResult,
  type ProviderClient,
  type TokenCounts,
} from "./types.js";

export function createOpenAiClient(d: Deployment): ProviderClient {
  const client = new OpenAI({
    apiKey: d.apiKey ?? "none",
    ...(d.baseUrl !== undefined ? { baseURL: d.baseUrl } : {}),
    maxRetries: 0,
    timeout: d.timeoutMs,
    fetch: pooledFetch(),
    // The SDK's own debug logging formats every request even when off; ours logs calls.
    logLevel: "off",
    ...(d.headers !== undefined ? { defaultHeaders: d.headers } : {}),
  });
  // Only OpenAI itself knows the "developer" role and `max_completion_tokens`; compatible
  // servers get "system" and `max_tokens`.
  const native = d.provider === "openai";

  return {
    logprobs: true,
    async chat(call: ChatCall): Promise<ChatResult> {
      const completion = await guard(d, call.signal, (signal) =>
        client.chat.completions.create(
          { ...chatParams(call.model, call.request, native), stream: false },
          { signal },
        ),
      );
      const choice = completion.choices[0];
      if (choice === undefined)
        throw new ProviderError("server", `${d.name}: an answer without choices`);
      const msg = choice.message as typeof choice.message & {
        reasoning_content?: string;
        reasoning?: string;
      };
      const message = create(ChatMessageSchema, {
        role: ChatRole.ASSISTANT,
        content:
          typeof msg.content === "string" && msg.content !== ""
            ? [{ part: { case: "text", value: msg.content } }]
            : [],
        toolCalls: (msg.tool_calls ?? []).flatMap((t) =>
          t.type === "function"
            ? [
                create(ToolCallSchema, {
                  id: t.id,
                  name: t.function.name,
                  arguments: t.function.arguments,
                }),
              ]
            : [],
        ),
      });
      return {
        message,
        reasoning: msg.reasoning_content ?? msg.reasoning ?? "",
        ...(call.request.logprobs ? { logprobs: tokenLogprobs(choice.logprobs?.content) } : {}),
        finishReason: finishReason(choice.finish_reason),
        ...tokens(completion.usage),
      };
    },

    async *streamChat(call: ChatCall): AsyncGenerator<ChatChunk> {
      // The SDK's timeout ends at the response headers; a stream that stalls afterwards is
      // bounded by the same time between chunks.
      const deadline = new Deadline(call.signal, d.timeoutMs);
      let finish: FinishReason | undefined;
      let usage: ChatCompletionChunk["usage"] | undefined;
      let opened = false;
      try {
        const stream = await client.chat.completions.create(
          {
            ...chatParams(call.model, call.request, native),
            stream: true,
            stream_options: { include_usage: true },
          },
          { signal: deadline.signal },
        );
        opened = true;
        deadline.touch();
        for await (const chunk of stream) {
          deadline.touch();
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices[0];
          if (choice === undefined) continue;
          const delta = choice.delta as typeof choice.delta & {
            reasoning_content?: string;
            reasoning?: string;
          };
          const content = delta.content ?? "";
          const reasoning = delta.reasoning_content ?? delta.reasoning ?? "";
          const toolCalls: ToolCallDelta[] = (delta.tool_calls ?? []).map((t) => ({
            $typeName: "ensemble.modelproxy.v1.ToolCallDelta",
            index: t.index,
            id: t.id ?? "",
            name: t.function?.name ?? "",
            arguments: t.function?.arguments ?? "",
          }));
          const logprobs = call.request.logprobs
            ? tokenLogprobs(choice.logprobs?.content)
            : undefined;
          if (content !== "" || reasoning !== "" || toolCalls.length > 0) {
            yield {
              type: "delta",
              content,
              reasoning,
              toolCalls,
              ...(logprobs ? { logprobs } : {}),
            };
          }
          if (choice.finish_reason) finish = finishReason(choice.finish_reason);
        }
      } catch (err) {
        if (deadline.timedOut) {
          throw new ProviderError("timeout", `${d.name}: no progress within ${d.timeoutMs} ms`, {
            cause: err,
          });
        }
        throw classify(d, err, call.signal, opened);
      } finally {
        deadline.dispose();
      }
      if (finish === undefined) {
        throw new ProviderError("stream_cut", `${d.name}: the stream ended before its finish`);
      }
      yield {
        type: "end",
        finishReason: finish,
        ...tokens(usage),
      };
    },

    async embed(call: EmbedCall): Promise<EmbedResult> {
      const res = await guard(d, call.signal, (signal) =>
        client.embeddings.create(
          {
            model: call.model,
            input: call.inputs,
            ...(call.dimensions !== undefined ? { dimensions: call.dimensions } : {}),
          },
          { signal },
        ),
      );
      const vectors: number[][] = new Array<number[]>(call.inputs.length);
      for (const item of res.data) vectors[item.index] = item.embedding;
      if (vectors.some((v) => v === undefined) || res.data.length !== call.inputs.length) {
        throw new ProviderError("server", `${d.name}: embeddings missing for some inputs`);
      }
      return { vectors, inputTokens: res.usage?.prompt_tokens ?? 0 };
    },

    async generateImage(call: ImageCall): Promise<ImageResult> {
      const dalle = call.model.startsWith("dall-e");
      const res = await guard(d, call.signal, (signal) =>
        client.images.generate(
          {
            model: call.model,
            prompt: call.prompt,
            n: call.n,
            ...(call.size !== "" ? { size: call.size } : {}),
            ...(call.quality !== "" ? { quality: call.quality as "standard" } : {}),
            // gpt-image models always answer base64 and refuse response_format.
            ...(dalle || !native ? { response_format: "b64_json" as const } : {}),
            ...(!dalle && native && call.format !== ImageFormat.UNSPECIFIED
              ? { output_format: formatName(call.format) }
              : {}),
          },
          { signal },
        ),
      );
      const images = await Promise.all(
        (res.data ?? []).map(async (img) => {
          let data: Uint8Array;
          let mimeType = `image/${formatName(call.format)}`;
          if (img.b64_json !== undefined && img.b64_json !== null) {
            data = Buffer.from(img.b64_json, "base64");
          } else if (img.url !== undefined && img.url !== null) {
            const got = await download(d, img.url, call.signal);
            data = got.data;
            mimeType = got.mimeType;
          } else {
            throw new ProviderError("server", `${d.name}: an image without data`);
          }
          return { data, mimeType, revisedPrompt: img.revised_prompt ?? "" };
        }),
      );
      const usage = (res as { usage?: { input_tokens?: number; output_tokens?: number } }).usage;
      return {
        images,
        inputTokens: usage?.input_tokens ?? 0,
        outputTokens: usage?.output_tokens ?? 0,
      };
    },
  };
}

function formatName(format: ImageFormat): "png" | "jpeg" | "webp" {
  return format === ImageFormat.JPEG ? "jpeg" : format === ImageFormat.WEBP ? "webp" : "png";
}

async function download(
  d: Deployment,
  url: string,
  signal: AbortSignal,
): Promise<{ data: Uint8Array; mimeType: string }> {
  if (url.startsWith("data:")) {
    const comma = url.indexOf(",");
    const mimeType = url.slice(5, url.indexOf(";"));
    return { data: Buffer.from(url.slice(comma + 1), "base64"), mimeType };
  }
  const res = await fetch(url, { signal });
  if (!res.ok)
    throw new ProviderError("server", `${d.name}: image download failed (${res.status})`);
  return {
    data: new Uint8Array(await res.arrayBuffer()),
    mimeType: res.headers.get("content-type") ?? "image/png",
  };
}

/**
 * Runs one SDK call on a signal linked to the caller's (see LinkedSignal), turning any failure
 * into a ProviderError (or the caller's abort).
 */
async function guard<T>(
  d: Deployment,
  caller: AbortSignal,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const link = new LinkedSignal(caller);
  try {
    return await fn(link.signal);
  } catch (err) {
    throw classify(d, err, caller, false);
  } finally {
    link.dispose();
  }
}

/** streaming: a failure once the stream was open is a cut stream, not a refused connection. */
function classify(d: Deployment, err: unknown, signal: AbortSignal, streaming: boolean): unknown {
  if (err instanceof ProviderError) return err;
  if (signal.aborted) return signal.reason ?? err; // the caller gave up: not the deployment's fault
  if (err instanceof OpenAI.APIConnectionTimeoutError) {
    return new ProviderError("timeout", `${d.name}: no answer within ${d.timeoutMs} ms`, {
      cause: err,
    });
  }
  if (err instanceof OpenAI.APIUserAbortError) {
    return new ProviderError("timeout", `${d.name}: the call was aborted`, { cause: err });
  }
  if (err instanceof OpenAI.APIConnectionError) {
    return new ProviderError(streaming ? "stream_cut" : "network", `${d.name}: connection failed`, {
      cause: err,
    });
  }
  if (err instanceof OpenAI.APIError && typeof err.status === "number") {
    const status: number = err.status;
    const kind = kindOfStatus(status);
    const wait = retryAfterMs(err.headers as Headers | undefined);
    // The provider's message is kept (it explains a bad request) but never our key.
    const detail = redact(d, err.message);
    return new ProviderError(kind, `${d.name}: ${detail}`, {
      status,
      ...(wait !== undefined ? { retryAfterMs: wait } : {}),
      cause: err,
    });
  }
  // A broken SSE body surfaces as a plain Error from the stream reader.
  return new ProviderError(
    streaming ? "stream_cut" : "network",
    `${d.name}: ${redact(d, String(err))}`,
    {
      cause: err,
    },
  );
}

/** OpenAI's token log probabilities in the contract's shape. */
function tokenLogprobs(content: ChatCompletionTokenLogprob[] | null | undefined): TokenLogprob[] {
  const bytesOf = (token: string, bytes: number[] | null | undefined) =>
    bytes != null ? Uint8Array.from(bytes) : new TextEncoder().encode(token);
  return (content ?? []).map((t) =>
    create(TokenLogprobSchema, {
      token: t.token,
      logprob: t.logprob,
      bytes: bytesOf(t.token, t.bytes),
      topLogprobs: (t.top_logprobs ?? []).map((a) => ({
        token: a.token,
        logprob: a.logprob,
        bytes: bytesOf(a.token, a.bytes),
      })),
    }),
  );
}

function finishReason(reason: string | null | undefined): FinishReason {
  switch (reason) {
    case "length":
      return FinishReason.LENGTH;
    case "tool_calls":
    case "function_call":
      return FinishReason.TOOL_CALLS;
    case "content_filter":
      return FinishReason.CONTENT_FILTER;
    default:
      return FinishReason.STOP;
  }
}

export function chatParams(
  model: string,
  r: ChatRequest,
  native: boolean,
): ChatCompletionCreateParamsBase {
  const params: ChatCompletionCreateParamsBase = {
    model,
    messages: r.messages.map((m) => toMessage(m, native)),
  };
  if (r.temperature !== undefined) params.temperature = r.temperature;
  if (r.topP !== undefined) params.top_p = r.topP;
  if (r.maxTokens !== undefined) {
    if (native) params.max_completion_tokens = r.maxTokens;
    else params.max_tokens = r.maxTokens;
  }
  if (r.stop.length > 0) params.stop = [...r.stop];
  if (r.presencePenalty !== undefined) params.presence_penalty = r.presencePenalty;
  if (r.frequencyPenalty !== undefined) params.frequency_penalty = r.frequencyPenalty;
  if (r.seed !== undefined) params.seed = Number(r.seed);
  if (r.logprobs) {
    params.logprobs = true;
    if (r.topLogprobs > 0) params.top_logprobs = r.topLogprobs;
  }
  if (native && r.promptCacheKey !== "") params.prompt_cache_key = r.promptCacheKey;
  if (r.reasoningEffort !== "") {
    params.reasoning_effort = r.reasoningEffort as NonNullable<
      ChatCompletionCreateParamsBase["reasoning_effort"]
    >;
  }
  const rf = r.responseFormat;
  if (rf !== undefined) {
    if (rf.type === ResponseFormat_Type.JSON_OBJECT)
      params.response_format = { type: "json_object" };
    else if (rf.type === ResponseFormat_Type.JSON_SCHEMA) {
      params.response_format = {
        type: "json_schema",
        json_schema: {
          name: rf.schemaName,
          strict: rf.strict,
          ...(rf.jsonSchema !== undefined ? { schema: rf.jsonSchema } : {}),
        },
      };
    } else if (rf.type === ResponseFormat_Type.TEXT) params.response_format = { type: "text" };
  }
  if (r.tools.length > 0) {
    params.tools = r.tools.map((t) => ({
      type: "function" as const,
      function: {
        name: t.name,
        ...(t.description !== "" ? { description: t.description } : {}),
        ...(t.parameters !== undefined ? { parameters: t.parameters } : {}),
        ...(t.strict ? { strict: true } : {}),
      },
    }));
  }
  const choice = toolChoice(r);
  if (choice !== undefined) params.tool_choice = choice;
  return params;
}

function toolChoice(r: ChatRequest): ChatCompletionToolChoiceOption | undefined {
  const c = r.toolChoice?.choice;
  if (c === undefined || c.case === undefined) return undefined;
  if (c.case === "function") return { type: "function", function: { name: c.value } };
  switch (c.value) {
    case ToolChoice_Mode.AUTO:
      return "auto";
    case ToolChoice_Mode.NONE:
      return "none";
    case ToolChoice_Mode.REQUIRED:
      return "required";
    default:
      return undefined;
  }
}

function textOf(m: ChatMessage): string {
  let text = "";
  for (const p of m.content) if (p.part.case === "text") text += p.part.value;
  return text;
}

function toMessage(m: ChatMessage, native: boolean): ChatCompletionMessageParam {
  const name = m.name !== "" ? { name: m.name } : {};
  switch (m.role) {
    case ChatRole.SYSTEM:
      return { role: "system", content: textOf(m), ...name };
    case ChatRole.DEVELOPER:
      return native
        ? { role: "developer", content: textOf(m), ...name }
        : { role: "system", content: textOf(m), ...name };
    case ChatRole.ASSISTANT:
      return {
        role: "assistant",
        content: textOf(m),
        ...name,
        ...(m.toolCalls.length > 0
          ? {
              tool_calls: m.toolCalls.map((t) => ({
                id: t.id,
                type: "function" as const,
                function: { name: t.name, arguments: t.arguments },
              })),
            }
          : {}),
      };
    case ChatRole.TOOL:
      return { role: "tool", content: textOf(m), tool_call_id: m.toolCallId };
    default: {
      const hasImage = m.content.some((p) => p.part.case === "image");
      if (!hasImage) return { role: "user", content: textOf(m), ...name };
      const parts: ChatCompletionContentPart[] = m.content.flatMap(
        (p): ChatCompletionContentPart[] => {
          if (p.part.case === "text") return [{ type: "text", text: p.part.value }];
          if (p.part.case !== "image") return [];
          const img = p.part.value;
          const url =
            img.source.case === "url"
              ? img.source.value
              : img.source.case === "data"
                ? `data:${img.mimeType};base64,${Buffer.from(img.source.value).toString("base64")}`
                : "";
          const detail =
            img.detail === ImageDetail.LOW
              ? "low"
              : img.detail === ImageDetail.HIGH
                ? "high"
                : "auto";
          return [{ type: "image_url", image_url: { url, detail } }];
        },
      );
      return { role: "user", content: parts, ...name };
    }
  }
}

/** Token counts from OpenAI's usage: cached prompt tokens and reasoning tokens are parts of it. */
function tokens(u: CompletionUsage | null | undefined): TokenCounts {
  return {
    inputTokens: u?.prompt_tokens ?? 0,
    outputTokens: u?.completion_tokens ?? 0,
    cachedInputTokens: u?.prompt_tokens_details?.cached_tokens ?? 0,
    reasoningTokens: u?.completion_tokens_details?.reasoning_tokens ?? 0,
  };
}
