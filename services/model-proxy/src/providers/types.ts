// What every provider adapter implements: one normalised shape over the provider SDKs (openai
// for every OpenAI-compatible endpoint, @anthropic-ai/sdk, @google/genai). The router above it
// owns retries, breakers, fallbacks, limits and accounting; an adapter only translates one call
// and classifies its failure.
import type {
  ChatMessage,
  ChatRequest,
  FinishReason,
  ImageFormat,
  TokenLogprob,
  ToolCallDelta,
} from "@ensemble/proto";

/** The wire API a deployment speaks. */
export type ProviderApi = "openai" | "anthropic" | "google";

/** One endpoint + key of a provider. Several deployments may serve the same catalog provider. */
export interface Deployment {
  /** Unique name, e.g. "openai", "openai-eu", "simulator". Appears in metrics and ServedBy. */
  name: string;
  /** The catalog provider it serves (registry `Model.provider`): "openai", "simulator", ... */
  provider: string;
  api: ProviderApi;
  /** Base URL (OpenAI-compatible: ".../v1"); unset = the SDK's default. */
  baseUrl?: string;
  /** Never logged, never in an error message. */
  apiKey?: string;
  /** Extra HTTP headers sent with every call (e.g. OpenRouter's HTTP-Referer / X-Title). */
  headers?: Record<string, string>;
  /** Relative share of traffic among the deployments of one provider; default 1. */
  weight: number;
  /** Requests per minute across every replica; unset = no limit. */
  rpm?: number;
  /** Tokens (input + expected output) per minute across every replica; unset = no limit. */
  tpm?: number;
  /** Per-attempt timeout of one provider call. */
  timeoutMs: number;
  /** Only these provider model ids (empty/unset = every model of the provider). */
  models?: string[];
  /** True for the LLM simulator: answers are marked simulated. */
  simulated: boolean;
}

export interface ChatCall {
  /** The provider's model id (registry `Model.provider_model_id`). */
  model: string;
  request: ChatRequest;
  signal: AbortSignal;
}

export interface TokenCounts {
  inputTokens: number;
  outputTokens: number;
  /** Of inputTokens: read from the provider's prompt cache. */
  cachedInputTokens?: number;
  /** Of inputTokens: written to the provider's prompt cache. */
  cacheWriteInputTokens?: number;
  /** Of cacheWriteInputTokens: written for an hour (Anthropic), at its own price. */
  cacheWrite1hInputTokens?: number;
  /** Of outputTokens: reasoning ("thinking"). */
  reasoningTokens?: number;
}

export interface ChatResult extends TokenCounts {
  /** The assistant message: text parts and/or tool calls. */
  message: ChatMessage;
  reasoning: string;
  finishReason: FinishReason;
  /** The answer's tokens with their log probabilities, when the request asked (logprobs). */
  logprobs?: TokenLogprob[];
}

export type ChatChunk =
  | {
      type: "delta";
      content: string;
      reasoning: string;
      toolCalls: ToolCallDelta[];
      /** The log probabilities of `content`'s tokens, when the request asked. */
      logprobs?: TokenLogprob[];
    }
  | ({ type: "end"; finishReason: FinishReason } & TokenCounts);

export interface EmbedCall {
  model: string;
  inputs: string[];
  dimensions?: number;
  signal: AbortSignal;
}

export interface EmbedResult {
  /** In the order of `inputs`. */
  vectors: number[][];
  inputTokens: number;
}

export interface ImageCall {
  model: string;
  prompt: string;
  n: number;
  /** "WxH" or "" for the model's default. */
  size: string;
  quality: string;
  format: ImageFormat;
  signal: AbortSignal;
}

export interface ImageResult extends TokenCounts {
  images: Array<{ data: Uint8Array; mimeType: string; revisedPrompt: string }>;
}

/** One deployment's client. Created once per deployment and reused. */
export interface ProviderClient {
  /** Whether its API gives token log probabilities (ChatRequest.logprobs). */
  readonly logprobs: boolean;
  chat(call: ChatCall): Promise<ChatResult>;
  /**
   * Deltas, then exactly one `end`. A provider stream that stops without its end (cut
   * connection, missing finish) throws ProviderError("stream_cut"), never ends cleanly.
   */
  streamChat(call: ChatCall): AsyncIterable<ChatChunk>;
  embed(call: EmbedCall): Promise<EmbedResult>;
  generateImage(call: ImageCall): Promise<ImageResult>;
}

export type ProviderErrorKind =
  /** 429: retry after `retryAfterMs` (or backoff). */
  | "rate_limit"
  /** 5xx, 529 overloaded. */
  | "server"
  /** No answer within the deployment's timeout. */
  | "timeout"
  /** Connection refused / reset before an answer. */
  | "network"
  /** A stream that broke before its end. */
  | "stream_cut"
  /** 400/404/422: the request itself is wrong for this model; never retried. */
  | "invalid_request"
  /** 401/403: the deployment's key is wrong; not retried on this deployment. */
  | "auth"
  /** The provider refused the content (safety). */
  | "content_filter";

const RETRYABLE: ReadonlySet<ProviderErrorKind> = new Set([
  "rate_limit",
  "server",
  "timeout",
  "network",
  "stream_cut",
]);

/** A provider call that failed, classified. Its message never contains the key. */
export class ProviderError extends Error {
  override readonly name = "ProviderError";
  readonly kind: ProviderErrorKind;
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(
    kind: ProviderErrorKind,
    message: string,
    opts: { status?: number; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.kind = kind;
    this.status = opts.status;
    this.retryAfterMs = opts.retryAfterMs;
  }

  /** Worth another attempt (same or another deployment). */
  get retryable(): boolean {
    return RETRYABLE.has(this.kind);
  }

  /** Counts against the deployment's circuit breaker (its health, not the request's fault). */
  get deploymentFault(): boolean {
    return this.kind !== "invalid_request" && this.kind !== "content_filter";
  }
}

/** Retry-After (seconds or an HTTP date) and retry-after-ms, as milliseconds. */
export function retryAfterMs(headers: Headers | undefined): number | undefined {
  if (headers === undefined) return undefined;
  const ms = headers.get("retry-after-ms");
  if (ms !== null && Number.isFinite(Number(ms)) && Number(ms) >= 0) return Number(ms);
  const raw = headers.get("retry-after");
  if (raw === null) return undefined;
  const seconds = Number(raw);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(raw);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** Classifies an HTTP status from a provider. */
export function kindOfStatus(status: number): ProviderErrorKind {
  if (status === 429) return "rate_limit";
  if (status === 401 || status === 403) return "auth";
  if (status === 408) return "timeout";
  if (status >= 500) return "server";
  return "invalid_request";
}
