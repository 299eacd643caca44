import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { answer, parseChatRequest } from "./chat.js";
import { DEFAULT_DIMENSIONS, embed, toBase64 } from "./embeddings.js";
import { invalid, SimError } from "./errors.js";
import { stableHash, unitInterval } from "./hash.js";
import { FAIL_MODES, resolveModels, type FailMode, type ModelProfile } from "./models.js";
import { solidPng } from "./png.js";
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
  close(): Promise<void>;
}

/** Per-request conditions: the model's profile, with x-sim-* headers winning. */
interface Conditions {
  latencyMs: number;
  ttftMs: number;
  tokensPerSecond: number;
  fail: FailMode | undefined;
  retryAfterSec: number;
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

function conditions(req: IncomingMessage, profile: ModelProfile | undefined): Conditions {
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
  // A header mode without a rate always fails; a rate without a mode fails with 500.
  const rate =
    headerRate ?? (failHeader !== undefined ? 1 : (profile?.failRate ?? (failMode ? 1 : 0)));
  let fail: FailMode | undefined;
  if (rate > 0) {
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

  async function handle(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const url = new URL(req.url ?? "/", "http://sim");
    const route = `${req.method ?? "GET"} ${url.pathname.replace(/\/+$/, "")}`;
    switch (route) {
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
    const { req: chatReq, profile } = parseChatRequest(body, models);
    const c = conditions(req, profile);
    const ans = answer(body as Record<string, unknown>, chatReq);
    await sleep(c.latencyMs, signal);
    const failure = await applyFailure(c, res, signal);
    if (failure === "handled" || signal.aborted) return;
    const id = `chatcmpl-sim${ans.hash}`;
    const created = Math.floor(Date.now() / 1000);
    const completionTokens = ans.pieces.length;
    const usage = {
      prompt_tokens: ans.promptTokens,
      completion_tokens: completionTokens,
      total_tokens: ans.promptTokens + completionTokens,
    };
    const delayPerToken = c.tokensPerSecond > 0 ? 1000 / c.tokensPerSecond : 0;

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
            message: { role: "assistant", content: ans.pieces.join(""), refusal: null },
            logprobs: null,
            finish_reason: ans.finishReason,
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
    const send = (delta: Record<string, unknown>, finish: string | null): void => {
      const chunk: Record<string, unknown> = {
        id,
        object: "chat.completion.chunk",
        created,
        model: chatReq.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      };
      if (chatReq.includeUsage) chunk["usage"] = null;
      res.write(`data: ${JSON.stringify(chunk)}\n\n`);
    };
    send({ role: "assistant", content: "", refusal: null }, null);
    await sleep(c.ttftMs, signal);
    // Chunks of 1 to 3 tokens, sizes fixed by the answer's hash so a stream replays identically.
    const sizes = ans.hash.split("").map((ch) => (parseInt(ch, 16) % 3) + 1);
    const cutAt = failure === "cut" ? Math.max(1, Math.floor(ans.pieces.length / 2)) : Infinity;
    let i = 0;
    for (let k = 0; i < ans.pieces.length; k++) {
      if (signal.aborted) return;
      const size = sizes[k % sizes.length] ?? 1;
      const piece = ans.pieces.slice(i, i + size);
      if (k > 0) await sleep(delayPerToken * piece.length, signal);
      send({ content: piece.join("") }, null);
      i += piece.length;
      if (i >= cutAt) {
        // Let the bytes reach the client, then drop the connection with no finish and no [DONE].
        await sleep(10, signal);
        res.destroy();
        return;
      }
    }
    if (signal.aborted) return;
    send({}, ans.finishReason);
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
    const c = conditions(req, profile);
    await sleep(c.latencyMs, signal);
    const failure = await applyFailure(c, res, signal);
    if (failure === "handled" || signal.aborted) return;
    if (failure === "cut") {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"object":"list","data":[');
      await sleep(10, signal);
      res.destroy();
      return;
    }
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
    const c = conditions(req, profile);
    await sleep(c.latencyMs, signal);
    const failure = await applyFailure(c, res, signal);
    if (failure === "handled" || signal.aborted) return;
    if (failure === "cut") {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"created":');
      await sleep(10, signal);
      res.destroy();
      return;
    }
    const data = Array.from({ length: n }, (_, i) => {
      const h = stableHash({ model, prompt, size, i });
      const rgb: [number, number, number] = [
        parseInt(h.slice(0, 2), 16),
        parseInt(h.slice(2, 4), 16),
        parseInt(h.slice(4, 6), 16),
      ];
      const b64 = solidPng(width, height, rgb).toString("base64");
      const revised_prompt = `[simulated ${model}] ${prompt}`;
      return format === "url"
        ? { url: `data:image/png;base64,${b64}`, revised_prompt }
        : { b64_json: b64, revised_prompt };
    });
    sendJson(res, 200, { created: Math.floor(Date.now() / 1000), data });
  }

  const server: Server = createServer((req, res) => {
    const ac = new AbortController();
    const abort = (): void => ac.abort();
    res.on("close", abort);
    closing.signal.addEventListener("abort", abort, { once: true });
    res.on("close", () => closing.signal.removeEventListener("abort", abort));
    const requestId = header(req, "x-request-id") ?? randomUUID();
    res.setHeader("x-request-id", requestId);
    handle(req, res, ac.signal).catch((err: unknown) => {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      // Only OpenAI-shaped messages reach the client; anything unexpected is a bare 500.
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
      sendJson(res, e.status, e.body(), headers);
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
