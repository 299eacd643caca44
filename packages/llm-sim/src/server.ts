import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { anthropicStopReason, parseAnthropicRequest } from "./anthropic.js";
import { answer, applyStopSequences, parseChatRequest, type ChatAnswer } from "./chat.js";
import { toolInput } from "./structured.js";
import { DEFAULT_DIMENSIONS, embed, toBase64 } from "./embeddings.js";
import { errorBody, invalid, SimError, type Dialect } from "./errors.js";
import {
  embedDimensions,
  embedText,
  googleInvalid,
  imageSize,
  parseGeminiRequest,
} from "./gemini.js";
import { stableHash, unitInterval } from "./hash.js";
import {
  FAIL_MODES,
  newModelProfile,
  resolveModels,
  type FailMode,
  type ModelProfile,
} from "./models.js";
import { tokenLogprobs } from "./logprobs.js";
import { solidPng } from "./png.js";
import { PromptCache } from "./prompt-cache.js";
import { countTokens } from "./tokenizer.js";

export const SYSTEM_FINGERPRINT = "ensemble-llm-sim";
const MAX_BODY_BYTES = 20 * 1024 * 1024;
const CREATED = 1_700_000_000; // models' "created": a fixed date keeps /v1/models deterministic

export interface SimulatorOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Per-model overrides; an unknown id adds a chat model. */
  models?: Record<string, Partial<ModelProfile>>;
  /** Applied to every model before its own overrides. */
  defaults?: Partial<ModelProfile>;
}

export interface Simulator {
  url: string;
  port: number;
  /**
   * Changes a model's profile while the server runs (merged over its current profile; an
   * unknown id adds a chat model). `{ fail: undefined }` clears a failure; setting `failFirst`
   * restarts its count, so `configure(id, { failFirst: 2 })` makes the next 2 requests fail.
   */
  configure(modelId: string, profile: Partial<ModelProfile>): void;
  /**
   * Requests received so far, on every endpoint: for one model id (as the request named it,
   * known or not), or in total (every request, including bad and unknown URLs).
   */
  requests(model?: string): number;
  close(): Promise<void>;
}

/** Per-request conditions: the model's profile, with x-sim-* headers winning. */
interface Conditions {
  latencyMs: number;
  ttftMs: number;
  tokensPerSecond: number;
  fail: FailMode | undefined;
  retryAfterSec: number;
  /** The key the request carried (any provider's header), echoed by the 401 failure. */
  apiKey: string;
}

function apiKeyOf(req: IncomingMessage): string {
  const auth = header(req, "authorization");
  if (auth?.toLowerCase().startsWith("bearer ")) return auth.slice(7).trim();
  return (
    header(req, "x-api-key") ??
    header(req, "x-goog-api-key") ??
    new URL(req.url ?? "/", "http://sim").searchParams.get("key") ??
    ""
  );
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function numberHeader(
  req: IncomingMessage,
  name: string,
  min: number,
  max: number,
): number | undefined {
  const raw = header(req, name);
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(v) || v < min || v > max) {
    throw invalid(
      `Invalid header '${name}': expected a number between ${min} and ${max}.`,
      name,
      "invalid_value",
    );
  }
  return v;
}

/**
 * The request's conditions. `failFirst` is a countdown owned by the server: `takeFailFirst` says
 * whether this request is one of the first N (it is asked only when no x-sim-fail* header
 * decides the outcome).
 */
function conditions(
  req: IncomingMessage,
  profile: ModelProfile | undefined,
  takeFailFirst: () => boolean = () => false,
): Conditions {
  const p = profile ?? { latencyMs: 0, ttftMs: 0, tokensPerSecond: 0, retryAfterSec: 1 };
  const failHeader = header(req, "x-sim-fail");
  if (failHeader !== undefined && !FAIL_MODES.includes(failHeader as FailMode)) {
    throw invalid(
      `Invalid header 'x-sim-fail': expected one of ${FAIL_MODES.join(", ")}.`,
      "x-sim-fail",
      "invalid_value",
    );
  }
  const failMode = (failHeader as FailMode | undefined) ?? profile?.fail;
  const headerRate = numberHeader(req, "x-sim-fail-rate", 0, 1);
  // A header mode without a rate always fails; a rate without a mode fails with 500. A profile
  // with failFirst uses `fail` as the mode of those first failures only.
  const profileRate =
    profile?.failRate ?? (failMode !== undefined && profile?.failFirst === undefined ? 1 : 0);
  const rate = headerRate ?? (failHeader !== undefined ? 1 : profileRate);
  let fail: FailMode | undefined;
  if (headerRate === undefined && failHeader === undefined && takeFailFirst()) {
    fail = failMode ?? "500";
  } else if (rate > 0) {
    const requestId = header(req, "x-request-id");
    const draw = requestId !== undefined ? unitInterval(requestId) : Math.random();
    if (draw < rate) fail = failMode ?? "500";
  }
  return {
    latencyMs: numberHeader(req, "x-sim-latency-ms", 0, 600_000) ?? p.latencyMs,
    ttftMs: numberHeader(req, "x-sim-ttft-ms", 0, 600_000) ?? p.ttftMs,
    tokensPerSecond: numberHeader(req, "x-sim-tokens-per-second", 0, 1e9) ?? p.tokensPerSecond,
    retryAfterSec: numberHeader(req, "x-sim-retry-after", 0, 86_400) ?? p.retryAfterSec,
    fail,
    apiKey: apiKeyOf(req),
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}

function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(invalid("The request body is too large.", null));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(
          invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            null,
          ),
        );
      }
    });
    req.on("error", reject);
  });
}

/** Throws (after the latency) the failure picked for this request, or handles timeout. */
async function applyFailure(
  c: Conditions,
  res: ServerResponse,
  signal: AbortSignal,
): Promise<"handled" | "cut" | undefined> {
  switch (c.fail) {
    case "401":
      // Echoes the key as some providers do, so a client can prove it never repeats it.
      throw new SimError(
        401,
        `Incorrect API key provided: ${c.apiKey}. (simulated)`,
        "invalid_request_error",
        null,
        "invalid_api_key",
      );
    case "429":
      throw Object.assign(
        new SimError(
          429,
          "Rate limit reached for requests (simulated).",
          "requests",
          null,
          "rate_limit_exceeded",
        ),
        { retryAfterSec: c.retryAfterSec },
      );
    case "500":
      throw new SimError(
        500,
        "The server had an error while processing your request (simulated).",
        "server_error",
      );
    case "503":
      throw new SimError(
        503,
        "The engine is currently overloaded, please try again later (simulated).",
        "server_error",
      );
    case "timeout":
      // Accept and never answer: wait until the client goes away (or the simulator closes).
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        else signal.addEventListener("abort", () => resolve(), { once: true });
      });
      res.destroy();
      return "handled";
    case "cut":
      return "cut";
    default:
      return undefined;
  }
}

export function startSimulator(opts: SimulatorOptions = {}): Promise<Simulator> {
  const models = resolveModels(opts.models, opts.defaults);
  const closing = new AbortController();
  let total = 0;
  const perModel = new Map<string, number>();
  // Failures still owed by failFirst, per model.
  const failFirstLeft = new Map<string, number>();
  for (const [id, p] of models) if (p.failFirst !== undefined) failFirstLeft.set(id, p.failFirst);
  const promptCache = new PromptCache();

  /**
   * The scope a prompt is cached in: providers keep caches per organisation (here its key) and
   * model, and each API its own. Asked once the request is past its simulated failure: a
   * provider caches a prompt as it processes it, before it answers, so a 429, 5xx, 401 or
   * timeout (refused before processing) leaves the cache alone, while a cut answer or a client
   * that leaves has already been processed and counts.
   */
  function cacheScope(dialect: Dialect, c: Conditions, model: string): string {
    return JSON.stringify([dialect, c.apiKey, model]);
  }

  function configure(modelId: string, profile: Partial<ModelProfile>): void {
    const current = models.get(modelId) ?? newModelProfile(opts.defaults);
    models.set(modelId, { ...current, ...profile });
    if ("failFirst" in profile) failFirstLeft.set(modelId, profile.failFirst ?? 0);
  }

  function countModel(model: unknown): void {
    if (typeof model === "string" && model !== "") {
      perModel.set(model, (perModel.get(model) ?? 0) + 1);
    }
  }

  function conditionsFor(
    req: IncomingMessage,
    modelId: string,
    profile: ModelProfile | undefined,
  ): Conditions {
    return conditions(req, profile, () => {
      const left = failFirstLeft.get(modelId) ?? 0;
      if (left <= 0) return false;
      failFirstLeft.set(modelId, left - 1);
      return true;
    });
  }

  /**
   * A one-shot (not streamed) answer's conditions, once its latency has passed and its failure
   * (if any) is applied: undefined when that failure answered, the body was cut after
   * `cutPrefix`, or the client left.
   */
  async function beforeAnswer(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    model: string,
    profile: ModelProfile,
    cutPrefix: string,
  ): Promise<Conditions | undefined> {
    const c = conditionsFor(req, model, profile);
    await sleep(c.latencyMs, signal);
    const failure = await applyFailure(c, res, signal);
    if (failure === "handled" || signal.aborted) return undefined;
    if (failure === "cut") {
      await cutBody(res, cutPrefix, signal);
      return undefined;
    }
    return c;
  }

  async function handle(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    ctx: { dialect: Dialect },
  ): Promise<void> {
    const url = new URL(req.url ?? "/", "http://sim");
    const path = url.pathname.replace(/\/+$/, "");
    const route = `${req.method ?? "GET"} ${path}`;
    if (path.startsWith("/v1beta/")) {
      ctx.dialect = "google";
      const g = /^POST \/v1beta\/models\/([^/:]+):([A-Za-z]+)$/.exec(route);
      if (g?.[1] !== undefined && g[2] !== undefined) {
        return gemini(req, res, signal, decodeURIComponent(g[1]), g[2], url);
      }
      throw new SimError(
        404,
        `Method not found: ${req.method ?? "GET"} ${url.pathname}`,
        "not_found",
      );
    }
    switch (route) {
      case "POST /v1/messages":
        ctx.dialect = "anthropic";
        return anthropicMessages(req, res, signal);
      case "GET /v1/models":
        return listModels(req, res, signal);
      case "POST /v1/chat/completions":
        return chat(req, res, signal);
      case "POST /v1/embeddings":
        return embeddings(req, res, signal);
      case "POST /v1/images/generations":
        return images(req, res, signal);
      default: {
        const m = /^GET \/v1\/models\/(.+)$/.exec(route);
        if (m?.[1] !== undefined) return getModel(res, decodeURIComponent(m[1]));
        throw new SimError(
          404,
          `Invalid URL (${req.method ?? "GET"} ${url.pathname})`,
          "invalid_request_error",
        );
      }
    }
  }

  function modelObject(id: string): Record<string, unknown> {
    return { id, object: "model", created: CREATED, owned_by: "ensemble-llm-sim" };
  }

  async function listModels(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const c = conditions(req, undefined);
    await sleep(c.latencyMs, signal);
    sendJson(res, 200, { object: "list", data: [...models.keys()].map(modelObject) });
  }

  function getModel(res: ServerResponse, id: string): void {
    if (!models.has(id)) throw modelNotFound(id);
    sendJson(res, 200, modelObject(id));
  }

  async function chat(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const body = await readJson(req);
    countModel((body as Record<string, unknown> | null)?.["model"]);
    const { req: chatReq, profile } = parseChatRequest(body, models);
    const c = conditionsFor(req, chatReq.model, profile);
    const ans = answer(body as Record<string, unknown>, chatReq);
    await sleep(c.latencyMs, signal);
    const failure = await applyFailure(c, res, signal);
    if (failure === "handled" || signal.aborted) return;
    const cached = promptCache.automatic(cacheScope("openai", c, chatReq.model), ans.prompt);
    const id = `chatcmpl-sim${ans.hash}`;
    const created = Math.floor(Date.now() / 1000);
    const call =
      chatReq.forcedTool !== undefined
        ? {
            id: `call_sim${ans.hash}`,
            type: "function",
            function: {
              name: chatReq.forcedTool.name,
              arguments: JSON.stringify(
                toolInput(chatReq.forcedTool.schema, `[simulated ${chatReq.model}]`),
              ),
            },
          }
        : undefined;
    const completionTokens =
      (call ? countTokens(JSON.stringify(call)) : ans.pieces.length) + ans.reasoning.length;
    // The details as OpenAI sends them, zeros included; prompt_tokens includes the cached ones.
    const usage = {
      prompt_tokens: ans.promptTokens,
      completion_tokens: completionTokens,
      total_tokens: ans.promptTokens + completionTokens,
      prompt_tokens_details: { cached_tokens: cached, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: ans.reasoning.length,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    };
    const delayPerToken = c.tokensPerSecond > 0 ? 1000 / c.tokensPerSecond : 0;
    // With `logprobs`, one entry per answer token (none for a tool call, nor for reasoning).
    const logprobs =
      chatReq.topLogprobs !== undefined && !call
        ? tokenLogprobs(ans.pieces, ans.hash, chatReq.topLogprobs)
        : undefined;

    if (!chatReq.stream) {
      if (failure === "cut") {
        // Headers and half a body, then the connection drops.
        res.writeHead(200, { "content-type": "application/json" });
        res.write(
          `{"id":"${id}","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`,
        );
        await sleep(10, signal);
        res.destroy();
        return;
      }
      await sleep(c.ttftMs + delayPerToken * completionTokens, signal);
      if (signal.aborted) return;
      sendJson(res, 200, {
        id,
        object: "chat.completion",
        created,
        model: chatReq.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: [
          {
            index: 0,
            message: call
              ? { role: "assistant", content: null, tool_calls: [call], refusal: null }
              : {
                  role: "assistant",
                  content: ans.pieces.join(""),
                  refusal: null,
                  ...(ans.reasoning.length > 0
                    ? { reasoning_content: ans.reasoning.join("") }
                    : {}),
                },
            logprobs:
              chatReq.topLogprobs !== undefined
                ? { content: logprobs ?? null, refusal: null }
                : null,
            finish_reason: call ? "tool_calls" : ans.finishReason,
          },
        ],
        usage,
      });
      return;
    }

    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
    });
    res.flushHeaders();
    const send = (
      delta: Record<string, unknown>,
      finish: string | null,
      chunkLogprobs: unknown = null,
    ): void => {
      const chunk: Record<string, unknown> = {
        id,
        object: "chat.completion.chunk",
        created,
        model: chatReq.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: [{ index: 0, delta, logprobs: chunkLogprobs, finish_reason: finish }],
      };
      if (chatReq.includeUsage) chunk["usage"] = null;
      res.write(`data: ${JSON.stringify(chunk)}\n\n`);
    };
    if (call) {
      const { name } = call.function;
      send(
        {
          role: "assistant",
          content: null,
          tool_calls: [
            { index: 0, id: call.id, type: "function", function: { name, arguments: "" } },
          ],
          refusal: null,
        },
        null,
      );
      await sleep(c.ttftMs, signal);
      if (failure === "cut") return cutStream(res, signal);
      send({ tool_calls: [{ index: 0, function: { arguments: call.function.arguments } }] }, null);
      send({}, "tool_calls");
    } else {
      send({ role: "assistant", content: "", refusal: null }, null);
      for (const piece of ans.reasoning) send({ reasoning_content: piece }, null);
      // A content chunk carries the logprobs of exactly its own tokens.
      const completed = await streamPieces(
        ans,
        c,
        failure === "cut",
        res,
        signal,
        (text, from, to) =>
          send(
            { content: text },
            null,
            logprobs ? { content: logprobs.slice(from, to), refusal: null } : null,
          ),
      );
      if (!completed) return;
      send({}, ans.finishReason);
    }
    if (chatReq.includeUsage) {
      res.write(
        `data: ${JSON.stringify({
          id,
          object: "chat.completion.chunk",
          created,
          model: chatReq.model,
          system_fingerprint: SYSTEM_FINGERPRINT,
          choices: [],
          usage,
        })}\n\n`,
      );
    }
    res.end("data: [DONE]\n\n");
  }

  /** The parts every chat dialect shares: conditions, failure, latency; undefined = handled. */
  async function prepareChat(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    openaiBody: Record<string, unknown>,
    stream: boolean,
    stopSequences: readonly string[],
  ): Promise<
    | { ans: ChatAnswer; stopSequence: string | null; c: Conditions; cut: boolean; model: string }
    | undefined
  > {
    const { req: chatReq, profile } = parseChatRequest({ ...openaiBody, stream }, models);
    const c = conditionsFor(req, chatReq.model, profile);
    const stopped = applyStopSequences(answer(openaiBody, chatReq), stopSequences);
    await sleep(c.latencyMs, signal);
    const failure = await applyFailure(c, res, signal);
    if (failure === "handled" || signal.aborted) return undefined;
    return { ...stopped, c, cut: failure === "cut", model: chatReq.model };
  }

  async function anthropicMessages(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const body = await readJson(req);
    countModel((body as Record<string, unknown> | null)?.["model"]);
    const a = parseAnthropicRequest(body);
    const p = await prepareChat(req, res, signal, a.openai, a.stream, a.stopSequences);
    if (!p) return;
    const { ans, c } = p;
    const cache = promptCache.explicit(
      cacheScope("anthropic", c, p.model),
      a.prompt,
      a.breakpoints,
    );
    // input_tokens is only what was neither read from nor written to the cache, as Anthropic
    // bills it; the three add up to the prompt.
    const inputUsage = {
      input_tokens: cache.uncached,
      cache_creation_input_tokens: cache.written["5m"] + cache.written["1h"],
      cache_read_input_tokens: cache.read,
    };
    const cacheCreation = {
      ephemeral_5m_input_tokens: cache.written["5m"],
      ephemeral_1h_input_tokens: cache.written["1h"],
    };
    const id = `msg_sim${ans.hash}`;
    const tool =
      a.forcedTool !== undefined
        ? {
            type: "tool_use",
            id: `toolu_sim${ans.hash}`,
            name: a.forcedTool.name,
            input: toolInput(a.forcedTool.schema, `[simulated ${p.model}]`),
          }
        : undefined;
    const outputTokens = tool ? countTokens(JSON.stringify(tool)) : ans.pieces.length;
    const stopReason = tool
      ? "tool_use"
      : anthropicStopReason(p.stopSequence !== null ? "stop_sequence" : ans.finishReason);
    const headers = { "request-id": `req_sim${ans.hash}` };

    if (!a.stream) {
      if (p.cut)
        return cutBody(
          res,
          `{"id":"${id}","type":"message","content":[{"type":"text","text":"`,
          signal,
        );
      await sleep(c.ttftMs + perToken(c) * outputTokens, signal);
      if (signal.aborted) return;
      sendJson(
        res,
        200,
        {
          id,
          type: "message",
          role: "assistant",
          model: p.model,
          content: tool ? [tool] : [{ type: "text", text: ans.pieces.join("") }],
          stop_reason: stopReason,
          stop_sequence: p.stopSequence,
          usage: { ...inputUsage, cache_creation: cacheCreation, output_tokens: outputTokens },
        },
        headers,
      );
      return;
    }

    startSse(res, headers);
    const event = (type: string, data: Record<string, unknown>): void => {
      res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
    };
    event("message_start", {
      message: {
        id,
        type: "message",
        role: "assistant",
        model: p.model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { ...inputUsage, cache_creation: cacheCreation, output_tokens: 1 },
      },
    });
    if (tool) {
      event("content_block_start", { index: 0, content_block: { ...tool, input: {} } });
      event("ping", {});
      await sleep(c.ttftMs, signal);
      if (p.cut) return cutStream(res, signal);
      event("content_block_delta", {
        index: 0,
        delta: { type: "input_json_delta", partial_json: JSON.stringify(tool.input) },
      });
    } else {
      event("content_block_start", { index: 0, content_block: { type: "text", text: "" } });
      event("ping", {});
      const completed = await streamPieces(ans, c, p.cut, res, signal, (text) =>
        event("content_block_delta", { index: 0, delta: { type: "text_delta", text } }),
      );
      if (!completed) return;
    }
    event("content_block_stop", { index: 0 });
    event("message_delta", {
      delta: { stop_reason: stopReason, stop_sequence: p.stopSequence },
      // Anthropic now repeats the input counts here; model-proxy reads them when present.
      usage: { ...inputUsage, output_tokens: outputTokens },
    });
    event("message_stop", {});
    res.end();
  }

  async function gemini(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    model: string,
    method: string,
    url: URL,
  ): Promise<void> {
    const known = [
      "generateContent",
      "streamGenerateContent",
      "embedContent",
      "batchEmbedContents",
    ];
    if (!known.includes(method)) {
      throw new SimError(404, `Method not found: models/${model}:${method}`, "not_found");
    }
    countModel(model);
    const body = await readJson(req);
    const profile = models.get(model);
    if (!profile) {
      throw new SimError(
        404,
        `models/${model} is not found for API version v1beta, or is not supported for ${method}.`,
        "not_found",
      );
    }
    if (method === "embedContent" || method === "batchEmbedContents") {
      return geminiEmbed(req, res, signal, model, profile, method, body);
    }
    const g = parseGeminiRequest(model, body);
    const stream = method === "streamGenerateContent";
    if (profile.kind === "image") {
      if (stream) throw googleInvalid(`models/${model} does not support streaming.`);
      return geminiImage(req, res, signal, model, profile, g.openai, g.aspectRatio);
    }
    if (profile.kind !== "chat") {
      throw googleInvalid(`models/${model} does not support generateContent.`);
    }
    const p = await prepareChat(req, res, signal, g.openai, stream, g.stopSequences);
    if (!p) return;
    const { ans, c } = p;
    // Gemini 2.5's implicit caching; the simulator uses OpenAI's 128-token steps for the prefix
    // lengths it recognises (Google does not document its granularity).
    const cached = promptCache.automatic(cacheScope("google", c, model), ans.prompt);
    const responseId = `sim${ans.hash}`;
    const call =
      g.forcedTool !== undefined
        ? {
            functionCall: {
              name: g.forcedTool.name,
              args: toolInput(g.forcedTool.schema, `[simulated ${model}]`),
            },
          }
        : undefined;
    const outputTokens = call ? countTokens(JSON.stringify(call)) : ans.pieces.length;
    const usageMetadata = {
      promptTokenCount: ans.promptTokens,
      candidatesTokenCount: outputTokens,
      totalTokenCount: ans.promptTokens + outputTokens,
      // Google omits the field when nothing was cached.
      ...(cached > 0 ? { cachedContentTokenCount: cached } : {}),
    };
    const finishReason = ans.finishReason === "length" && !call ? "MAX_TOKENS" : "STOP";
    const chunk = (parts: unknown[], last: boolean): Record<string, unknown> => ({
      candidates: [
        {
          content: { role: "model", parts },
          ...(last ? { finishReason } : {}),
          index: 0,
        },
      ],
      ...(last ? { usageMetadata } : {}),
      modelVersion: model,
      responseId,
    });

    if (!stream) {
      if (p.cut) return cutBody(res, `{"candidates":[{"content":{"parts":[{"text":"`, signal);
      await sleep(c.ttftMs + perToken(c) * outputTokens, signal);
      if (signal.aborted) return;
      sendJson(res, 200, chunk(call ? [call] : [{ text: ans.pieces.join("") }], true));
      return;
    }
    // Without alt=sse Gemini streams one JSON array; the simulator sends it whole at the end.
    const sse = url.searchParams.get("alt") === "sse";
    const chunks: unknown[] = [];
    const emit = (parts: unknown[], last: boolean): void => {
      if (sse) res.write(`data: ${JSON.stringify(chunk(parts, last))}\r\n\r\n`);
      else chunks.push(chunk(parts, last));
    };
    if (sse) startSse(res, {});
    if (call) {
      await sleep(c.ttftMs, signal);
      if (p.cut) return cutStream(res, signal);
    } else {
      const completed = await streamPieces(ans, c, p.cut, res, signal, (text) =>
        emit([{ text }], false),
      );
      if (!completed) return;
    }
    emit(call ? [call] : [{ text: "" }], true);
    if (sse) res.end();
    else sendJson(res, 200, chunks);
  }

  async function geminiEmbed(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    model: string,
    profile: ModelProfile,
    method: string,
    body: unknown,
  ): Promise<void> {
    if (profile.kind !== "embedding") {
      throw googleInvalid(`models/${model} does not support ${method}.`);
    }
    let requests: unknown[];
    if (method === "embedContent") {
      requests = [body];
    } else {
      const r = (body as Record<string, unknown> | null)?.["requests"];
      if (!Array.isArray(r) || r.length === 0) {
        throw googleInvalid("* BatchEmbedContentsRequest.requests: requests is not specified");
      }
      r.forEach((one, i) => {
        const m = (one as Record<string, unknown> | null)?.["model"];
        if (m !== undefined && m !== `models/${model}`) {
          throw googleInvalid(
            `* BatchEmbedContentsRequest.requests[${i}].model: the model must be models/${model}, as in the URL.`,
          );
        }
      });
      requests = r;
    }
    const vectors = requests.map((one, i) => {
      const path =
        method === "embedContent"
          ? "EmbedContentRequest"
          : `BatchEmbedContentsRequest.requests[${i}]`;
      return embed(embedText(one, path), embedDimensions(one, path) ?? DEFAULT_DIMENSIONS);
    });
    const c = await beforeAnswer(req, res, signal, model, profile, '{"embeddings":[{"values":[');
    if (c === undefined) return;
    await sleep(c.ttftMs, signal);
    if (signal.aborted) return;
    sendJson(
      res,
      200,
      method === "embedContent"
        ? { embedding: { values: vectors[0] } }
        : { embeddings: vectors.map((values) => ({ values })) },
    );
  }

  async function geminiImage(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    model: string,
    profile: ModelProfile,
    openaiBody: Record<string, unknown>,
    aspectRatio: string | undefined,
  ): Promise<void> {
    const messages = openaiBody["messages"] as Array<Record<string, unknown>>;
    const last = [...messages].reverse().find((m) => m["role"] === "user");
    const content = last?.["content"];
    const prompt = typeof content === "string" ? content : "";
    if (prompt.trim() === "") throw googleInvalid("The image prompt must contain text.");
    const [width, height] = imageSize(aspectRatio);
    const c = await beforeAnswer(
      req,
      res,
      signal,
      model,
      profile,
      '{"candidates":[{"content":{"parts":[',
    );
    if (c === undefined) return;
    const what = { model, prompt, size: `${width}x${height}`, i: 0 };
    const rgb = colourOf(what);
    const promptTokens = countTokens(prompt);
    sendJson(res, 200, {
      candidates: [
        {
          content: {
            role: "model",
            parts: [
              {
                inlineData: {
                  mimeType: "image/png",
                  data: solidPng(width, height, rgb).toString("base64"),
                },
              },
            ],
          },
          finishReason: "STOP",
          index: 0,
        },
      ],
      usageMetadata: {
        promptTokenCount: promptTokens,
        candidatesTokenCount: IMAGE_OUTPUT_TOKENS,
        totalTokenCount: promptTokens + IMAGE_OUTPUT_TOKENS,
      },
      modelVersion: model,
      responseId: `sim${stableHash(what).slice(0, 12)}`,
    });
  }

  async function embeddings(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const body = await readJson(req);
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw invalid("The request body must be a JSON object.", null);
    }
    const b = body as Record<string, unknown>;
    const model = b["model"];
    if (typeof model !== "string" || model === "") {
      throw invalid("you must provide a model parameter", "model", "missing_required_parameter");
    }
    const profile = models.get(model);
    if (!profile) throw modelNotFound(model);
    if (profile.kind !== "embedding") {
      throw invalid(
        `The model \`${model}\` does not support embeddings.`,
        "model",
        "model_not_supported",
      );
    }
    countModel(model);
    const inputs = embeddingInputs(b["input"]);
    const dims = b["dimensions"];
    if (
      dims !== undefined &&
      (typeof dims !== "number" || !Number.isInteger(dims) || dims < 1 || dims > 4096)
    ) {
      throw invalid(
        "Invalid 'dimensions': expected an integer between 1 and 4096.",
        "dimensions",
        "invalid_value",
      );
    }
    const format = b["encoding_format"] ?? "float";
    if (format !== "float" && format !== "base64") {
      throw invalid(
        "Invalid 'encoding_format': expected 'float' or 'base64'.",
        "encoding_format",
        "invalid_value",
      );
    }
    const c = await beforeAnswer(req, res, signal, model, profile, '{"object":"list","data":[');
    if (c === undefined) return;
    const dimensions = typeof dims === "number" ? dims : DEFAULT_DIMENSIONS;
    const tokens = inputs.reduce((s, t) => s + countTokens(t), 0);
    await sleep(c.ttftMs, signal);
    sendJson(res, 200, {
      object: "list",
      data: inputs.map((text, index) => {
        const v = embed(text, dimensions);
        return { object: "embedding", index, embedding: format === "base64" ? toBase64(v) : v };
      }),
      model,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    });
  }

  async function images(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const body = await readJson(req);
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw invalid("The request body must be a JSON object.", null);
    }
    const b = body as Record<string, unknown>;
    const prompt = b["prompt"];
    if (typeof prompt !== "string" || prompt === "") {
      throw invalid(
        "Missing required parameter: 'prompt'.",
        "prompt",
        "missing_required_parameter",
      );
    }
    const model = b["model"] ?? "sim-image";
    if (typeof model !== "string")
      throw invalid("Invalid type for 'model': expected a string.", "model", "invalid_type");
    countModel(model);
    const profile = models.get(model);
    if (!profile) throw modelNotFound(model);
    if (profile.kind !== "image") {
      throw invalid(
        `The model \`${model}\` does not support image generation.`,
        "model",
        "model_not_supported",
      );
    }
    const n = b["n"] ?? 1;
    if (typeof n !== "number" || !Number.isInteger(n) || n < 1 || n > 10) {
      throw invalid("Invalid 'n': expected an integer between 1 and 10.", "n", "invalid_value");
    }
    const size = b["size"] ?? "256x256";
    const sm = typeof size === "string" ? /^(\d{1,4})x(\d{1,4})$/.exec(size) : null;
    const width = Number(sm?.[1]);
    const height = Number(sm?.[2]);
    if (!sm || width < 1 || height < 1 || width > 2048 || height > 2048) {
      throw invalid(
        "Invalid 'size': expected WIDTHxHEIGHT, each between 1 and 2048.",
        "size",
        "invalid_value",
      );
    }
    const format = b["response_format"] ?? "b64_json";
    if (format !== "b64_json" && format !== "url") {
      throw invalid(
        "Invalid 'response_format': expected 'url' or 'b64_json'.",
        "response_format",
        "invalid_value",
      );
    }
    if ((await beforeAnswer(req, res, signal, model, profile, '{"created":')) === undefined) return;
    const data = Array.from({ length: n }, (_, i) => {
      const b64 = solidPng(width, height, colourOf({ model, prompt, size, i })).toString("base64");
      const revised_prompt = `[simulated ${model}] ${prompt}`;
      return format === "url"
        ? { url: `data:image/png;base64,${b64}`, revised_prompt }
        : { b64_json: b64, revised_prompt };
    });
    // Usage as gpt-image-1 reports it: the prompt's tokens in, image tokens out (its medium
    // quality: 1,056 per 1024x1024, in proportion to the area).
    const input_tokens = countTokens(prompt);
    const output_tokens = n * Math.max(1, Math.ceil((1056 * width * height) / (1024 * 1024)));
    sendJson(res, 200, {
      created: Math.floor(Date.now() / 1000),
      data,
      usage: { input_tokens, output_tokens, total_tokens: input_tokens + output_tokens },
    });
  }

  const server: Server = createServer((req, res) => {
    const ac = new AbortController();
    const abort = (): void => ac.abort();
    res.on("close", abort);
    closing.signal.addEventListener("abort", abort, { once: true });
    res.on("close", () => closing.signal.removeEventListener("abort", abort));
    const requestId = header(req, "x-request-id") ?? randomUUID();
    res.setHeader("x-request-id", requestId);
    total++;
    const ctx: { dialect: Dialect } = { dialect: "openai" };
    handle(req, res, ac.signal, ctx).catch((err: unknown) => {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      // Only the API's own error shape reaches the client; anything unexpected is a bare 500.
      const e =
        err instanceof SimError
          ? err
          : new SimError(
              500,
              "The server had an error while processing your request.",
              "server_error",
            );
      const headers: Record<string, string> = {};
      const retry = (err as { retryAfterSec?: number }).retryAfterSec;
      if (e.status === 429 && retry !== undefined) headers["retry-after"] = String(retry);
      if (ctx.dialect === "anthropic") headers["request-id"] = `req_sim${requestId}`;
      sendJson(res, e.status, errorBody(e, ctx.dialect, retry), headers);
    });
  });

  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, opts.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      const { port, address } = server.address() as AddressInfo;
      const host = address.includes(":") ? `[${address}]` : address;
      resolve({
        url: `http://${host}:${port}`,
        port,
        configure,
        requests: (model?: string) => (model === undefined ? total : (perModel.get(model) ?? 0)),
        close: () =>
          new Promise<void>((done, fail) => {
            closing.abort();
            server.close((err) => (err ? fail(err) : done()));
            server.closeAllConnections();
          }),
      });
    });
  });
}

/** Tokens Gemini bills for one generated image (its published figure for 1024x1024). */
const IMAGE_OUTPUT_TOKENS = 1290;

function perToken(c: Conditions): number {
  return c.tokensPerSecond > 0 ? 1000 / c.tokensPerSecond : 0;
}

function startSse(res: ServerResponse, headers: Record<string, string>): void {
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    ...headers,
  });
  res.flushHeaders();
}

/** Headers and the start of a JSON body, then the connection drops (the unary `cut`). */
/** The colour of a simulated image: a function of what was asked. */
function colourOf(what: Record<string, unknown>): [number, number, number] {
  const h = stableHash(what);
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)];
}

async function cutBody(res: ServerResponse, prefix: string, signal: AbortSignal): Promise<void> {
  res.writeHead(200, { "content-type": "application/json" });
  res.write(prefix);
  await sleep(10, signal);
  res.destroy();
}

/** Lets what was written reach the client, then drops the connection with no final event. */
async function cutStream(res: ServerResponse, signal: AbortSignal): Promise<void> {
  await sleep(10, signal);
  res.destroy();
}

/**
 * Streams the answer after the time to first token, in chunks of 1 to 3 tokens (sizes fixed by
 * the answer's hash so a stream replays identically) at the token rate. With `cut`, stops after
 * half the tokens and drops the connection. True when every piece was sent. `emit` gets each
 * chunk's text and the range of `ans.pieces` it holds.
 */
async function streamPieces(
  ans: ChatAnswer,
  c: Conditions,
  cut: boolean,
  res: ServerResponse,
  signal: AbortSignal,
  emit: (text: string, from: number, to: number) => void,
): Promise<boolean> {
  await sleep(c.ttftMs, signal);
  const sizes = ans.hash.split("").map((ch) => (parseInt(ch, 16) % 3) + 1);
  const cutAt = cut ? Math.max(1, Math.floor(ans.pieces.length / 2)) : Infinity;
  const delayPerToken = perToken(c);
  let i = 0;
  for (let k = 0; i < ans.pieces.length; k++) {
    if (signal.aborted) return false;
    const size = sizes[k % sizes.length] ?? 1;
    const piece = ans.pieces.slice(i, i + size);
    if (k > 0) await sleep(delayPerToken * piece.length, signal);
    emit(piece.join(""), i, i + piece.length);
    i += piece.length;
    if (i >= cutAt) {
      await cutStream(res, signal);
      return false;
    }
  }
  if (cut) {
    // Nothing to send (an empty answer): drop before the final event all the same.
    await cutStream(res, signal);
    return false;
  }
  return !signal.aborted;
}

function modelNotFound(model: string): SimError {
  return new SimError(
    404,
    `The model \`${model}\` does not exist or you do not have access to it.`,
    "invalid_request_error",
    null,
    "model_not_found",
  );
}

function embeddingInputs(input: unknown): string[] {
  const bad = (): SimError =>
    invalid(
      "Invalid 'input': expected a non-empty string, an array of strings, or token arrays.",
      "input",
      "invalid_value",
    );
  if (input === undefined)
    throw invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter");
  if (typeof input === "string") {
    if (input === "") throw bad();
    return [input];
  }
  if (!Array.isArray(input) || input.length === 0) throw bad();
  // Token ids (number[] or number[][]) are embedded as their decimal text: stable, if not meaningful.
  if (input.every((x) => typeof x === "number")) return [input.join(" ")];
  return input.map((x) => {
    if (typeof x === "string" && x !== "") return x;
    if (Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === "number"))
      return x.join(" ");
    throw bad();
  });
}
