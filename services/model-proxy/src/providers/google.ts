// Google's Gemini API (the Developer API, generativelanguage) through the official
// `@google/genai` SDK. The SDK's own retries are off: the router retries across deployments with
// its breakers and limits. Image generation goes through generateContent with image output (the
// SDK's generateImages/Imagen path exists only on Vertex AI).
import { create } from "@bufbuild/protobuf";
import {
  ChatMessageSchema,
  ChatRole,
  FinishReason,
  ResponseFormat_Type,
  ToolCallSchema,
  ToolChoice_Mode,
  type ChatMessage,
  type ChatRequest,
  type ImagePart,
  type ToolCall,
  type ToolCallDelta,
} from "@ensemble/proto";
import {
  ApiError,
  FunctionCallingConfigMode,
  GoogleGenAI,
  Modality,
  type Content,
  type FunctionCall,
  type GenerateContentConfig,
  type GenerateContentResponse,
  type GenerateContentResponseUsageMetadata,
  type Part,
  type ToolConfig,
} from "@google/genai";
import { Deadline, redact } from "./deadline.js";
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

/** Thinking budgets for reasoning_effort (Gemini 2.5's range is up to 24576 for Flash). */
const THINKING_BUDGET: Readonly<Record<string, number>> = { low: 1024, medium: 8192, high: 24576 };
/** Gemini's image aspect ratios; a "WxH" size is sent as the closest one. */
const ASPECT_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"];

/** What one call saw of the HTTP exchange: the SDK's ApiError carries no headers. */
interface Exchange {
  headers?: Headers;
}

export function createGoogleClient(d: Deployment): ProviderClient {
  const ai = new GoogleGenAI({
    apiKey: d.apiKey ?? "none",
    httpOptions: {
      ...(d.baseUrl !== undefined ? { baseUrl: d.baseUrl } : {}),
      ...(d.headers !== undefined ? { headers: d.headers } : {}),
      // One attempt: no SDK retry (it retries only when retryOptions asks, but say so).
      retryOptions: { attempts: 1 },
    },
  });

  /** Per-call SDK options: our deadline's signal, and a fetch that keeps the response headers. */
  function perCall(deadline: Deadline, seen: Exchange): GenerateContentConfig {
    return {
      abortSignal: deadline.signal,
      httpOptions: {
        fetch: async (input: string | URL | Request, init?: RequestInit) => {
          const res = await fetch(input, init);
          seen.headers = res.headers;
          return res;
        },
      },
    };
  }

  async function unary<T>(
    signal: AbortSignal,
    fn: (config: GenerateContentConfig) => Promise<T>,
  ): Promise<T> {
    const deadline = new Deadline(signal, d.timeoutMs);
    const seen: Exchange = {};
    try {
      return await fn(perCall(deadline, seen));
    } catch (err) {
      throw classify(d, err, deadline, seen, false);
    } finally {
      deadline.dispose();
    }
  }

  return {
    // Not given by this API through our adapter: ChatRequest.logprobs is refused for it.
    logprobs: false,
    async chat(call: ChatCall): Promise<ChatResult> {
      const { contents, config } = toGemini(call.request);
      const res = await unary(call.signal, (sdk) =>
        ai.models.generateContent({ model: call.model, contents, config: { ...config, ...sdk } }),
      );
      const candidate = res.candidates?.[0];
      if (candidate === undefined) throw blocked(d, res);
      let text = "";
      let reasoning = "";
      const toolCalls: ToolCall[] = [];
      for (const part of candidate.content?.parts ?? []) {
        if (part.text !== undefined) {
          if (part.thought === true) reasoning += part.text;
          else text += part.text;
        }
        if (part.functionCall !== undefined) {
          const fc = functionCall(part.functionCall, toolCalls.length);
          toolCalls.push(create(ToolCallSchema, fc));
        }
      }
      return {
        message: create(ChatMessageSchema, {
          role: ChatRole.ASSISTANT,
          content: text !== "" ? [{ part: { case: "text", value: text } }] : [],
          toolCalls,
        }),
        reasoning,
        finishReason: finishReason(candidate.finishReason, toolCalls.length > 0),
        ...tokens(res.usageMetadata),
      };
    },

    async *streamChat(call: ChatCall): AsyncGenerator<ChatChunk> {
      const { contents, config } = toGemini(call.request);
      const deadline = new Deadline(call.signal, d.timeoutMs);
      const seen: Exchange = {};
      try {
        let stream: AsyncGenerator<GenerateContentResponse>;
        try {
          stream = await ai.models.generateContentStream({
            model: call.model,
            contents,
            config: { ...config, ...perCall(deadline, seen) },
          });
        } catch (err) {
          throw classify(d, err, deadline, seen, false);
        }
        let finish: string | undefined;
        let usage: GenerateContentResponseUsageMetadata | undefined;
        let calls = 0;
        let first = true;
        try {
          for await (const chunk of stream) {
            deadline.touch();
            if (chunk.usageMetadata !== undefined) usage = chunk.usageMetadata;
            const candidate = chunk.candidates?.[0];
            if (candidate === undefined) {
              // Only the first chunk may say the prompt itself was blocked.
              if (first && chunk.promptFeedback?.blockReason !== undefined) throw blocked(d, chunk);
              continue;
            }
            first = false;
            let content = "";
            let reasoning = "";
            const toolCalls: ToolCallDelta[] = [];
            for (const part of candidate.content?.parts ?? []) {
              if (part.text !== undefined) {
                if (part.thought === true) reasoning += part.text;
                else content += part.text;
              }
              if (part.functionCall !== undefined) {
                // Gemini sends each call whole, so one fragment carries all of it.
                const fc = functionCall(part.functionCall, calls);
                toolCalls.push({
                  $typeName: "ensemble.modelproxy.v1.ToolCallDelta",
                  index: calls,
                  ...fc,
                });
                calls++;
              }
            }
            if (content !== "" || reasoning !== "" || toolCalls.length > 0) {
              yield { type: "delta", content, reasoning, toolCalls };
            }
            if (candidate.finishReason !== undefined) finish = candidate.finishReason;
          }
        } catch (err) {
          throw classify(d, err, deadline, seen, true);
        }
        if (finish === undefined) {
          // Gemini has no end marker but the finishReason: a stream without one was cut.
          throw deadline.caller.aborted || deadline.timedOut
            ? classify(d, undefined, deadline, seen, true)
            : new ProviderError("stream_cut", `${d.name}: the stream ended without a finishReason`);
        }
        yield { type: "end", finishReason: finishReason(finish, calls > 0), ...tokens(usage) };
      } finally {
        deadline.dispose();
      }
    },

    async embed(call: EmbedCall): Promise<EmbedResult> {
      const res = await unary(call.signal, (sdk) =>
        ai.models.embedContent({
          model: call.model,
          contents: call.inputs,
          config: {
            ...(call.dimensions !== undefined ? { outputDimensionality: call.dimensions } : {}),
            ...sdk,
          },
        }),
      );
      const vectors = (res.embeddings ?? []).map((e) => e.values ?? []);
      if (vectors.length !== call.inputs.length || vectors.some((v) => v.length === 0)) {
        throw new ProviderError("server", `${d.name}: embeddings missing for some inputs`);
      }
      // The Gemini API reports no token usage for embeddings: estimated at 4 characters a token.
      const chars = call.inputs.reduce((n, s) => n + s.length, 0);
      return { vectors, inputTokens: Math.ceil(chars / 4) };
    },

    async generateImage(call: ImageCall): Promise<ImageResult> {
      const aspectRatio = closestAspectRatio(call.size);
      // One image per call: Gemini's image models answer one candidate.
      const answers = await Promise.all(
        Array.from({ length: Math.max(1, call.n) }, () =>
          unary(call.signal, (sdk) =>
            ai.models.generateContent({
              model: call.model,
              contents: call.prompt,
              config: {
                responseModalities: [Modality.IMAGE],
                ...(aspectRatio !== undefined ? { imageConfig: { aspectRatio } } : {}),
                ...sdk,
              },
            }),
          ),
        ),
      );
      const result: ImageResult = { images: [], inputTokens: 0, outputTokens: 0 };
      for (const res of answers) {
        const candidate = res.candidates?.[0];
        if (candidate === undefined) throw blocked(d, res);
        const parts = candidate.content?.parts ?? [];
        const image = parts.find((p) => p.inlineData?.data !== undefined)?.inlineData;
        if (image?.data === undefined) {
          throw finishReason(candidate.finishReason, false) === FinishReason.CONTENT_FILTER
            ? new ProviderError(
                "content_filter",
                `${d.name}: the image was refused (${candidate.finishReason})`,
              )
            : new ProviderError("server", `${d.name}: an answer without an image`);
        }
        result.images.push({
          data: Buffer.from(image.data, "base64"),
          mimeType: image.mimeType ?? "image/png",
          revisedPrompt: parts
            .filter((p) => p.text !== undefined && p.thought !== true)
            .map((p) => p.text)
            .join(""),
        });
        const t = tokens(res.usageMetadata);
        result.inputTokens += t.inputTokens;
        result.outputTokens += t.outputTokens;
      }
      return result;
    },
  };
}

function functionCall(
  fc: FunctionCall,
  index: number,
): { id: string; name: string; arguments: string } {
  return {
    // Gemini 2.x ids are optional; an id is needed to pair the tool result with its call.
    id: fc.id ?? `call_${index}_${fc.name ?? ""}`,
    name: fc.name ?? "",
    arguments: JSON.stringify(fc.args ?? {}),
  };
}

function tokens(u: GenerateContentResponseUsageMetadata | undefined): TokenCounts {
  return {
    // promptTokenCount includes what the (implicit or explicit) context cache supplied.
    inputTokens: u?.promptTokenCount ?? 0,
    cachedInputTokens: u?.cachedContentTokenCount ?? 0,
    // Thinking tokens are billed as output (candidatesTokenCount leaves them out).
    outputTokens: (u?.candidatesTokenCount ?? 0) + (u?.thoughtsTokenCount ?? 0),
    reasoningTokens: u?.thoughtsTokenCount ?? 0,
  };
}

const FILTERED = new Set([
  "SAFETY",
  "RECITATION",
  "BLOCKLIST",
  "PROHIBITED_CONTENT",
  "SPII",
  "IMAGE_SAFETY",
  "IMAGE_PROHIBITED_CONTENT",
  "IMAGE_RECITATION",
]);

function finishReason(reason: string | undefined, toolCalls: boolean): FinishReason {
  if (reason === "MAX_TOKENS") return FinishReason.LENGTH;
  if (reason !== undefined && FILTERED.has(reason)) return FinishReason.CONTENT_FILTER;
  // Gemini ends a function-calling turn with STOP; callers expect OpenAI's "tool_calls".
  return toolCalls ? FinishReason.TOOL_CALLS : FinishReason.STOP;
}

/** No candidate at all: the prompt was blocked (promptFeedback) or the answer is empty. */
function blocked(d: Deployment, res: GenerateContentResponse): ProviderError {
  const reason = res.promptFeedback?.blockReason;
  return reason !== undefined
    ? new ProviderError("content_filter", `${d.name}: the prompt was blocked (${reason})`)
    : new ProviderError("server", `${d.name}: an answer without candidates`);
}

/** google.rpc.RetryInfo's retryDelay ("30s", "1.5s") from a Google error body, as ms. */
function retryDelayMs(body: unknown): number | undefined {
  const details = (body as { error?: { details?: unknown } } | undefined)?.error?.details;
  if (!Array.isArray(details)) return undefined;
  for (const detail of details as Array<Record<string, unknown>>) {
    const delay = detail["retryDelay"];
    if (typeof delay === "string") {
      const m = /^(\d+(?:\.\d+)?)s$/.exec(delay);
      if (m?.[1] !== undefined) return Math.round(Number(m[1]) * 1000);
    }
  }
  return undefined;
}

/** Turns any failure into a ProviderError, or rethrows the caller's own abort. */
function classify(
  d: Deployment,
  err: unknown,
  deadline: Deadline,
  seen: Exchange,
  streaming: boolean,
): unknown {
  if (err instanceof ProviderError) return err;
  if (deadline.caller.aborted) return deadline.caller.reason ?? err;
  if (deadline.timedOut) {
    return new ProviderError("timeout", `${d.name}: no answer within ${d.timeoutMs} ms`, {
      ...(err !== undefined ? { cause: err } : {}),
    });
  }
  if (err instanceof ApiError) {
    // The SDK puts the whole JSON error body in the message.
    let body: unknown;
    try {
      body = JSON.parse(err.message);
    } catch {
      body = undefined;
    }
    const message = (body as { error?: { message?: unknown } } | undefined)?.error?.message;
    const wait = retryAfterMs(seen.headers) ?? retryDelayMs(body);
    return new ProviderError(
      kindOfStatus(err.status),
      `${d.name}: ${redact(d, typeof message === "string" ? message : err.message)}`,
      { status: err.status, ...(wait !== undefined ? { retryAfterMs: wait } : {}), cause: err },
    );
  }
  // Connection refused/reset before an answer, or a body that broke off mid-stream.
  const what = err instanceof Error ? err.message : "unknown failure";
  return new ProviderError(
    streaming ? "stream_cut" : "network",
    `${d.name}: ${streaming ? "the stream broke" : "connection failed"} (${redact(d, what)})`,
    { cause: err },
  );
}

function closestAspectRatio(size: string): string | undefined {
  const m = /^(\d+)x(\d+)$/.exec(size);
  if (m?.[1] === undefined || m[2] === undefined) return undefined;
  const want = Number(m[1]) / Number(m[2]);
  let best: string | undefined;
  let bestDiff = Infinity;
  for (const r of ASPECT_RATIOS) {
    const [w, h] = r.split(":").map(Number) as [number, number];
    const diff = Math.abs(Math.log(w / h / want));
    if (diff < bestDiff) {
      bestDiff = diff;
      best = r;
    }
  }
  return best;
}

function textOf(m: ChatMessage): string {
  let text = "";
  for (const p of m.content) if (p.part.case === "text") text += p.part.value;
  return text;
}

function guessMime(url: string): string {
  const ext = /\.([a-z0-9]+)(?:[?#].*)?$/i.exec(url)?.[1]?.toLowerCase();
  if (ext === "png") return "image/png";
  if (ext === "webp") return "image/webp";
  if (ext === "gif") return "image/gif";
  return "image/jpeg";
}

function imagePart(img: ImagePart): Part {
  const src = img.source;
  if (src.case === "data") {
    return {
      inlineData: { mimeType: img.mimeType, data: Buffer.from(src.value).toString("base64") },
    };
  }
  const url = src.value ?? "";
  const data = /^data:([^;,]+);base64,(.*)$/s.exec(url);
  if (data?.[1] !== undefined && data[2] !== undefined) {
    return { inlineData: { mimeType: data[1], data: data[2] } };
  }
  return {
    fileData: { fileUri: url, mimeType: img.mimeType !== "" ? img.mimeType : guessMime(url) },
  };
}

function parseArgs(text: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(text === "" ? "{}" : text);
    return typeof v === "object" && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : { value: v };
  } catch {
    return { arguments: text };
  }
}

/**
 * Gemini has one systemInstruction, roles user/model, and function results as user parts named
 * after the function (found from the assistant's earlier call with that id). Turns of the same
 * role are merged.
 */
function toGemini(r: ChatRequest): { contents: Content[]; config: GenerateContentConfig } {
  const system: string[] = [];
  const contents: Content[] = [];
  const callNames = new Map<string, string>();
  const push = (role: "user" | "model", parts: Part[]): void => {
    if (parts.length === 0) return;
    const last = contents[contents.length - 1];
    if (last !== undefined && last.role === role) (last.parts ??= []).push(...parts);
    else contents.push({ role, parts });
  };
  for (const m of r.messages) {
    switch (m.role) {
      case ChatRole.SYSTEM:
      case ChatRole.DEVELOPER:
        system.push(textOf(m));
        break;
      case ChatRole.ASSISTANT: {
        const text = textOf(m);
        for (const t of m.toolCalls) callNames.set(t.id, t.name);
        push("model", [
          ...(text !== "" ? [{ text }] : []),
          ...m.toolCalls.map((t) => ({
            functionCall: { id: t.id, name: t.name, args: parseArgs(t.arguments) },
          })),
        ]);
        break;
      }
      case ChatRole.TOOL: {
        const text = textOf(m);
        const parsed = parseArgs(text);
        push("user", [
          {
            functionResponse: {
              id: m.toolCallId,
              name: callNames.get(m.toolCallId) ?? m.name,
              // Gemini wants an object; plain text goes under "result".
              response:
                "arguments" in parsed && Object.keys(parsed).length === 1
                  ? { result: text }
                  : parsed,
            },
          },
        ]);
        break;
      }
      default:
        push(
          "user",
          m.content.flatMap((p): Part[] =>
            p.part.case === "text"
              ? [{ text: p.part.value }]
              : p.part.case === "image"
                ? [imagePart(p.part.value)]
                : [],
          ),
        );
    }
  }
  const config: GenerateContentConfig = {};
  const instructions = system.filter((s) => s !== "").join("\n\n");
  if (instructions !== "") config.systemInstruction = instructions;
  if (r.temperature !== undefined) config.temperature = r.temperature;
  if (r.topP !== undefined) config.topP = r.topP;
  if (r.maxTokens !== undefined) config.maxOutputTokens = r.maxTokens;
  if (r.stop.length > 0) config.stopSequences = [...r.stop];
  if (r.seed !== undefined) config.seed = Number(r.seed);
  if (r.presencePenalty !== undefined) config.presencePenalty = r.presencePenalty;
  if (r.frequencyPenalty !== undefined) config.frequencyPenalty = r.frequencyPenalty;
  const rf = r.responseFormat;
  if (
    rf?.type === ResponseFormat_Type.JSON_OBJECT ||
    rf?.type === ResponseFormat_Type.JSON_SCHEMA
  ) {
    config.responseMimeType = "application/json";
    if (rf.type === ResponseFormat_Type.JSON_SCHEMA && rf.jsonSchema !== undefined) {
      config.responseJsonSchema = rf.jsonSchema;
    }
  }
  if (r.tools.length > 0) {
    config.tools = [
      {
        functionDeclarations: r.tools.map((t) => ({
          name: t.name,
          ...(t.description !== "" ? { description: t.description } : {}),
          ...(t.parameters !== undefined ? { parametersJsonSchema: t.parameters } : {}),
        })),
      },
    ];
    const toolConfig = toolChoice(r);
    if (toolConfig !== undefined) config.toolConfig = toolConfig;
  }
  const budget = THINKING_BUDGET[r.reasoningEffort];
  if (budget !== undefined)
    config.thinkingConfig = { thinkingBudget: budget, includeThoughts: true };
  return { contents, config };
}

function toolChoice(r: ChatRequest): ToolConfig | undefined {
  const c = r.toolChoice?.choice;
  if (c === undefined || c.case === undefined) return undefined;
  if (c.case === "function") {
    return {
      functionCallingConfig: {
        mode: FunctionCallingConfigMode.ANY,
        allowedFunctionNames: [c.value],
      },
    };
  }
  const mode =
    c.value === ToolChoice_Mode.NONE
      ? FunctionCallingConfigMode.NONE
      : c.value === ToolChoice_Mode.REQUIRED
        ? FunctionCallingConfigMode.ANY
        : c.value === ToolChoice_Mode.AUTO
          ? FunctionCallingConfigMode.AUTO
          : undefined;
  return mode !== undefined ? { functionCallingConfig: { mode } } : undefined;
}
