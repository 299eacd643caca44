// The OpenAI-compatible HTTP API on the gateway (/v1/*), so any OpenAI client library can use
// Ensemble unchanged:
//   POST /v1/chat/completions   -> ModelProxyService.Chat, or StreamChat as SSE with `stream: true`
//   POST /v1/completions        -> the same, in the legacy text completions' shape (completions.ts)
//   POST /v1/responses          -> the same, in the Responses API's shape (responses.ts)
//   POST /v1/messages           -> the same, in Anthropic's Messages API shape (messages.ts)
//   POST /v1/embeddings         -> ModelProxyService.Embed
//   POST /v1/images/generations -> ModelProxyService.GenerateImage
//   GET  /v1/models[/{id}]      -> ModelProxyService.ListCallableModels
// Same authentication (access token or API key), API key scopes (models: read; the rest: write),
// per-caller rate limit, request ids and CORS as the Connect/gRPC routes; the upstream calls carry
// the caller's token. Every error is in OpenAI's shape (see errors.ts).
import type http from "node:http";
import type http2 from "node:http2";
import type { JsonObject as ProtoJsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import {
  addUsage,
  UnauthenticatedError,
  type GrpcClient,
  type Logger,
  type Metrics,
  type RateLimiter,
} from "@ensemble/kit";
import {
  Access,
  CacheMode,
  ChatRole,
  type CategorizerService,
  type ChatDelta,
  type ChatResponse,
  type ModelProxyService,
  type ServedBy,
  type StreamChatEnd,
  type StreamChatStart,
  type Usage,
} from "@ensemble/proto";
import { admit, type Authenticator, type Caller } from "../authn.js";
import { AUTO_MODEL, routeAuto, type AutoRouting } from "../auto.js";
import { CompletionChunkEncoder, completionJson, parseCompletionRequest } from "./completions.js";
import {
  autoModelError,
  chatCompletionJson,
  chatParam,
  choiceJson,
  ChunkEncoder,
  ensembleJson,
  parseChatRequest,
  usageJson,
  type ChatRequestInit,
  type ChunkIdentity,
  type ParsedChat,
} from "./chat.js";
import { embeddingsJson, embedParam, parseEmbedRequest } from "./embeddings.js";
import { invalidRequest, OpenAiError, toOpenAiError, type ErrorContext } from "./errors.js";
import { isObject, type JsonObject } from "./fields.js";
import { imagesJson, parseImageRequest } from "./images.js";
import {
  anthropicErrorBody,
  MessageEventEncoder,
  messageJson,
  messagesParam,
  parseCountTokensRequest,
  parseMessagesRequest,
} from "./messages.js";
import { callableModels, modelListJson } from "./models.js";
import {
  type MessageInit,
  parseResponsesRequest,
  responseJson,
  ResponseEventEncoder,
  responsesParam,
} from "./responses.js";

/** What turns a StreamChat stream into server-sent events (chat chunks, response events). */
interface StreamEncoder {
  start(start: StreamChatStart | undefined): string;
  delta(delta: ChatDelta): string;
  end(end: StreamChatEnd, startServedBy: ServedBy | undefined): string;
  /** The failure after the first byte; the stream ends with it. */
  error(error: OpenAiError): string;
  /** After end(): the answer as the API's object and as a chat message (see answerChat). */
  result?(): { json: Record<string, unknown>; output: MessageInit };
}

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

export interface OpenAiApiDeps {
  logger: Logger;
  metrics: Metrics;
  authenticator: Authenticator;
  rateLimiter: RateLimiter;
  /** Absent when MODEL_PROXY_ADDR is not configured: those routes answer 503. */
  modelProxy: GrpcClient<typeof ModelProxyService> | undefined;
  /** Absent when CATEGORIZER_ADDR is not configured: `model: "auto"` is a 400. */
  categorizer?: GrpcClient<typeof CategorizerService> | undefined;
  maxBodyBytes: number;
  /** Deadline of an upstream call (a client's x-stainless-timeout may shorten it). */
  maxTimeoutMs: number;
  /** Aborted when the gateway's drain time is up: open streams end. */
  shutdownSignal: AbortSignal;
  /** x-forwarded-for for the upstream. */
  clientAddress: (req: NodeRequest) => string;
}

export interface OpenAiApi {
  /** Serves a request whose path starts with /v1/. */
  handle(req: NodeRequest, res: NodeResponse, path: string): void;
  /** The routes, for the API reference (/docs). */
  readonly routes: ReadonlyArray<{ name: string; scope: "read" | "write"; summary: string }>;
}

interface Call {
  req: NodeRequest;
  res: NodeResponse;
  caller: Caller;
  /** Path parameter ({id} of /v1/models/{id}). */
  param: string;
  options: CallOptions;
  /** Upstream trailers (x-invalid-field, retry-after-ms), for the error mapping. */
  trailers: Headers | undefined;
  /** Set when a stream failed after its first byte (the status was already 200). */
  streamError?: OpenAiError;
  /** The JSON body (POST routes). */
  body: JsonObject;
}

interface Route {
  /** Metrics and log name, e.g. "POST /v1/chat/completions". */
  name: string;
  method: "GET" | "POST" | "DELETE";
  /** API key scope needed. */
  scope: "read" | "write";
  /** What it is, for the API reference. */
  summary: string;
  errors: Omit<ErrorContext, "trailers">;
  /** The error body clients of this route read; default OpenAI's. */
  errorBody?: (error: OpenAiError) => unknown;
  run(call: Call): Promise<void>;
}

const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  // Proxies such as nginx must not buffer the stream.
  "x-accel-buffering": "no",
};

const STATUS_CODES: Record<number, string> = {
  200: "OK",
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  405: "UNIMPLEMENTED",
  409: "ABORTED",
  413: "INVALID_ARGUMENT",
  415: "INVALID_ARGUMENT",
  429: "RESOURCE_EXHAUSTED",
  499: "CANCELLED",
  501: "UNIMPLEMENTED",
  503: "UNAVAILABLE",
  504: "DEADLINE_EXCEEDED",
};

export function createOpenAiApi(deps: OpenAiApiDeps): OpenAiApi {
  const { logger, metrics } = deps;

  function proxy(): GrpcClient<typeof ModelProxyService> {
    if (deps.modelProxy === undefined) {
      throw new OpenAiError(
        503,
        "model service is not configured on this gateway",
        "server_error",
        null,
        "unavailable",
      );
    }
    return deps.modelProxy;
  }

  const chat: Route = {
    name: "POST /v1/chat/completions",
    summary:
      'OpenAI chat completions (SSE with stream: true) → ModelProxyService Chat / StreamChat; model "auto" asks the categorizer',
    method: "POST",
    scope: "write",
    errors: { modelRoute: true, param: chatParam },
    async run(call) {
      const parsed = parseChatRequest(call.body);
      if (parsed.n > 1) {
        await answerChoices(call, chat, parsed);
        return;
      }
      await answerChat(call, chat, parsed.request, {
        stream: parsed.stream,
        json: chatCompletionJson,
        encoder: (model) => new ChunkEncoder(parsed.includeUsage, model),
      });
    },
  };

  const completions: Route = {
    name: "POST /v1/completions",
    summary:
      "OpenAI legacy text completions (SSE with stream: true): the prompt as one user message → Chat / StreamChat",
    method: "POST",
    scope: "write",
    errors: { modelRoute: true, param: chatParam },
    async run(call) {
      const parsed = parseCompletionRequest(call.body);
      await answerChat(call, completions, parsed.request, {
        stream: parsed.stream,
        json: completionJson,
        encoder: (model) => new CompletionChunkEncoder(parsed.includeUsage, model),
      });
    },
  };

  const responses: Route = {
    name: "POST /v1/responses",
    summary:
      "OpenAI Responses API → Chat / StreamChat; stored for previous_response_id unless store: false",
    method: "POST",
    scope: "write",
    errors: { modelRoute: true, param: responsesParam },
    async run(call) {
      const parsed = parseResponsesRequest(call.body);
      const conversation = [
        ...(await earlierTurns(call, parsed.previousResponseId)),
        ...(parsed.request.messages ?? []),
      ];
      parsed.request.messages =
        parsed.instructions !== undefined ? [parsed.instructions, ...conversation] : conversation;
      await answerChat(call, responses, parsed.request, {
        stream: parsed.stream,
        json: (res, model) => responseJson(res, model, parsed.echo),
        encoder: (model) => new ResponseEventEncoder(model, parsed.echo),
        // Kept for previous_response_id before the client can see that the answer is complete.
        ...(parsed.store
          ? {
              onAnswer: async (json: Record<string, unknown>, output: MessageInit) => {
                await proxy().storeResponse(
                  {
                    response: {
                      id: json["id"] as string,
                      messages: conversation,
                      output,
                      response: JSON.parse(JSON.stringify(json)) as ProtoJsonObject,
                    },
                  },
                  call.options,
                );
              },
            }
          : {}),
      });
    },
  };

  /** The conversation of a stored response this call continues (400 when there is none). */
  async function earlierTurns(call: Call, id: string | undefined): Promise<MessageInit[]> {
    if (id === undefined) return [];
    try {
      const stored = (await proxy().getStoredResponse({ id }, call.options)).response;
      return stored === undefined
        ? []
        : [...stored.messages, ...(stored.output ? [stored.output] : [])];
    } catch (err) {
      if (ConnectError.from(err).code === Code.NotFound) {
        throw invalidRequest(
          `Previous response with id '${id}' not found.`,
          "previous_response_id",
          "previous_response_not_found",
        );
      }
      throw err;
    }
  }

  const getResponse: Route = {
    name: "GET /v1/responses/{id}",
    summary: "a stored response (yours only) → ModelProxyService GetStoredResponse",
    method: "GET",
    scope: "read",
    errors: { modelRoute: false },
    async run(call) {
      const res = await proxy().getStoredResponse({ id: call.param }, call.options);
      sendJson(call.res, 200, res.response?.response ?? {});
    },
  };

  const deleteResponse: Route = {
    name: "DELETE /v1/responses/{id}",
    summary: "deletes a stored response → ModelProxyService DeleteStoredResponse",
    method: "DELETE",
    scope: "write",
    errors: { modelRoute: false },
    async run(call) {
      await proxy().deleteStoredResponse({ id: call.param }, call.options);
      sendJson(call.res, 200, { id: call.param, object: "response", deleted: true });
    },
  };

  /**
   * One chat in an API's shape (chat completions, responses, messages): `model: "auto"` routed
   * by the categorizer, then the unary answer as `json` makes it (the routing added under
   * `ensemble.routing`) or the stream as `encoder` writes it. `onAnswer` sees the whole answer
   * before the client is told it is complete.
   */
  async function answerChat(
    call: Call,
    r: Route,
    request: ChatRequestInit,
    how: {
      stream: boolean;
      json: (res: ChatResponse, requestedModel: string) => unknown;
      encoder: (requestedModel: string) => StreamEncoder;
      onAnswer?: (json: Record<string, unknown>, output: MessageInit) => Promise<void>;
    },
  ): Promise<void> {
    const requested = request.model ?? "";
    let routing: AutoRouting | undefined;
    if (requested === AUTO_MODEL) {
      routing = await route(call, request);
      request.model = routing.model;
    }
    const onAnswer = how.onAnswer;
    if (!how.stream) {
      const res = await proxy().chat(request, call.options);
      const json = how.json(res, requested) as Record<string, unknown>;
      const ensemble = json["ensemble"] as Record<string, unknown> | undefined;
      if (routing !== undefined && ensemble !== undefined) ensemble["routing"] = routing;
      await onAnswer?.(json, res.message ?? { role: ChatRole.ASSISTANT });
      sendJson(call.res, 200, json);
      return;
    }
    const encoder = how.encoder(requested);
    await streamChat(
      call,
      r,
      request,
      encoder,
      onAnswer === undefined
        ? undefined
        : async () => {
            const done = encoder.result?.();
            if (done !== undefined) await onAnswer(done.json, done.output);
          },
    );
  }

  /**
   * Chat completions with `n` > 1 (decision): n model calls of the same request made at once, each
   * its own call in model-proxy (billed, limited, logged and guarded as one; the first may be
   * answered by the cache, the others bypass it so that they are fresh samples), gathered into
   * choices 0..n-1 with the usage and cost summed. A provider's native `n` would bill the prompt
   * once; this works for every provider alike. The first failure ends the completion and
   * cancels the calls still running.
   */
  async function answerChoices(call: Call, r: Route, parsed: ParsedChat): Promise<void> {
    const request = parsed.request;
    const requested = request.model ?? "";
    let routing: AutoRouting | undefined;
    if (requested === AUTO_MODEL) {
      routing = await route(call, request);
      request.model = routing.model;
    }
    const requests = Array.from({ length: parsed.n }, (_, i) =>
      i === 0 ? request : { ...request, cache: CacheMode.BYPASS },
    );
    const abort = new AbortController();
    const signal =
      call.options.signal !== undefined
        ? AbortSignal.any([call.options.signal, abort.signal])
        : abort.signal;
    const options = { ...call.options, signal };
    if (!parsed.stream) {
      let answers: ChatResponse[];
      try {
        answers = await Promise.all(requests.map((q) => proxy().chat(q, options)));
      } finally {
        abort.abort(); // the others, after a failure (nothing is left running otherwise)
      }
      const json = chatCompletionJson(answers[0]!, requested) as Record<string, unknown>;
      const usage = answers.reduce<Usage | undefined>(
        (sum, a) => addUsage(sum, a.usage),
        undefined,
      );
      json["choices"] = answers.map((a, i) => choiceJson(a, i));
      json["usage"] = usageJson(usage);
      const ensemble = ensembleJson(answers[0]!.servedBy, usage);
      if (routing !== undefined) ensemble["routing"] = routing;
      json["ensemble"] = ensemble;
      sendJson(call.res, 200, json);
      return;
    }
    const { res } = call;
    const client = proxy();
    const ended = metrics.rpcServer.streamStarted(r.name);
    const identity: ChunkIdentity = {};
    const usages: Array<Usage | undefined> = [];
    let started = false;
    let last: ChunkEncoder | undefined;
    const begin = (): void => {
      if (started) return;
      res.writeHead(200, SSE_HEADERS);
      started = true;
    };
    // After a failure the response has ended while other choices' chunks may still be in hand.
    const put = (text: string) => (res.writableEnded ? undefined : write(res, text));
    try {
      await Promise.all(
        requests.map(async (q, index) => {
          const encoder = new ChunkEncoder(parsed.includeUsage, requested, index, identity);
          let startServedBy: ServedBy | undefined;
          for await (const message of client.streamChat({ chat: q }, options)) {
            const event = message.event;
            if (event.case === undefined) continue;
            if (!encoder.started) {
              begin();
              if (event.case === "start") startServedBy = event.value.servedBy;
              await put(encoder.start(event.case === "start" ? event.value : undefined));
            }
            if (event.case === "delta") {
              const text = encoder.delta(event.value);
              if (text !== "") await put(text);
            } else if (event.case === "end") {
              usages[index] = event.value.usage;
              last = encoder;
              await put(encoder.finish(event.value, startServedBy));
              return;
            }
          }
          throw new ConnectError("stream ended without its end message", Code.Internal);
        }),
      );
      const usage = usages.reduce<Usage | undefined>((sum, u) => addUsage(sum, u), undefined);
      res.end(
        `${parsed.includeUsage && last !== undefined ? last.usage(usage) : ""}data: [DONE]\n\n`,
      );
    } catch (err) {
      abort.abort();
      if (!started) throw err;
      const error = toOpenAiError(err, { ...r.errors, trailers: call.trailers }, logger);
      call.streamError = error;
      if (!res.destroyed && !res.writableEnded)
        res.end(`data: ${JSON.stringify(error.body())}\n\n`);
    } finally {
      ended();
    }
  }

  /**
   * `model: "auto"`: the categorizer picks a model (only model routes are allowed here: a chat
   * completion is one model's answer). The decision is returned under `ensemble.routing` and,
   * for streams, in the x-ensemble-routed-model / x-ensemble-category headers.
   */
  async function route(call: Call, request: ChatRequestInit): Promise<AutoRouting> {
    if (deps.categorizer === undefined) throw autoModelError();
    const routing = await routeAuto(deps.categorizer, request, call.options);
    call.res.setHeader("x-ensemble-routed-model", routing.model);
    call.res.setHeader("x-ensemble-category", routing.category);
    return routing;
  }

  async function streamChat(
    call: Call,
    route: Route,
    request: ChatRequestInit,
    encoder: StreamEncoder,
    /** Runs after the answer is complete, before its end is written (a failure is the stream's). */
    beforeEnd?: () => Promise<void>,
  ): Promise<void> {
    const { res } = call;
    const client = proxy();
    const ended = metrics.rpcServer.streamStarted(route.name);
    let started = false;
    let startServedBy: ServedBy | undefined;
    const begin = (start: StreamChatStart | undefined): string => {
      res.writeHead(200, SSE_HEADERS);
      started = true;
      startServedBy = start?.servedBy;
      return encoder.start(start);
    };
    try {
      for await (const message of client.streamChat({ chat: request }, call.options)) {
        const event = message.event;
        switch (event.case) {
          case "start":
            if (!started) await write(res, begin(event.value));
            break;
          case "delta": {
            // The contract sends `start` first; a proxy that did not still gets a well-formed stream.
            if (!started) await write(res, begin(undefined));
            const text = encoder.delta(event.value);
            if (text !== "") await write(res, text);
            break;
          }
          case "end": {
            if (!started) await write(res, begin(undefined));
            const tail = encoder.end(event.value, startServedBy);
            await beforeEnd?.();
            res.end(tail);
            return;
          }
          default:
            break;
        }
      }
      // An OK status without `end` is not a complete answer.
      throw new ConnectError("stream ended without its end message", Code.Internal);
    } catch (err) {
      if (!started) throw err;
      // Headers (200) are gone: the failure becomes an error event and the stream ends
      // without its normal end, so OpenAI clients raise an error instead of seeing a clean end.
      const error = toOpenAiError(err, { ...route.errors, trailers: call.trailers }, logger);
      call.streamError = error;
      if (!res.destroyed && !res.writableEnded) res.end(encoder.error(error));
    } finally {
      ended();
    }
  }

  const messages: Route = {
    name: "POST /v1/messages",
    summary: "Anthropic Messages API (errors in Anthropic's shape) → Chat / StreamChat",
    method: "POST",
    scope: "write",
    errors: { modelRoute: true, param: messagesParam },
    errorBody: anthropicErrorBody,
    async run(call) {
      const parsed = parseMessagesRequest(call.body);
      await answerChat(call, messages, parsed.request, {
        stream: parsed.stream,
        json: messageJson,
        encoder: (model) => new MessageEventEncoder(model),
      });
    },
  };

  const countTokens: Route = {
    name: "POST /v1/messages/count_tokens",
    summary: "Anthropic token counting → ModelProxyService CountTokens",
    method: "POST",
    scope: "read",
    errors: { modelRoute: true, param: messagesParam },
    errorBody: anthropicErrorBody,
    async run(call) {
      const parsed = parseCountTokensRequest(call.body);
      if (parsed.model === AUTO_MODEL) {
        throw invalidRequest(
          'model "auto" is chosen per request; count the tokens of a named model',
          "model",
        );
      }
      const res = await proxy().countTokens(parsed, call.options);
      sendJson(call.res, 200, { input_tokens: Number(res.tokens) });
    },
  };

  const embeddings: Route = {
    name: "POST /v1/embeddings",
    summary: "OpenAI embeddings → ModelProxyService Embed",
    method: "POST",
    scope: "write",
    errors: { modelRoute: true, param: embedParam },
    async run(call) {
      const parsed = parseEmbedRequest(call.body);
      const res = await proxy().embed(parsed.request, call.options);
      sendJson(call.res, 200, embeddingsJson(res, parsed.request.model ?? "", parsed.base64));
    },
  };

  const images: Route = {
    name: "POST /v1/images/generations",
    summary: "OpenAI image generation → ModelProxyService GenerateImage",
    method: "POST",
    scope: "write",
    errors: { modelRoute: true },
    async run(call) {
      const parsed = parseImageRequest(call.body);
      const res = await proxy().generateImage(parsed.request, call.options);
      sendJson(call.res, 200, imagesJson(res, parsed.asUrl));
    },
  };

  const listModels: Route = {
    name: "GET /v1/models",
    summary:
      "what can be called here: auto, the aliases, the served models → ModelProxyService ListCallableModels",
    method: "GET",
    scope: "read",
    errors: { modelRoute: false },
    async run(call) {
      const res = await proxy().listCallableModels({}, call.options);
      sendJson(call.res, 200, modelListJson(callableModels(res, deps.categorizer !== undefined)));
    },
  };

  const getModel: Route = {
    name: "GET /v1/models/{id}",
    summary: "one of them, or 404 model_not_found",
    method: "GET",
    scope: "read",
    errors: { modelRoute: true },
    async run(call) {
      const res = await proxy().listCallableModels({}, call.options);
      const model = callableModels(res, deps.categorizer !== undefined).find(
        (m) => m.id === call.param,
      );
      if (model === undefined) {
        throw new OpenAiError(
          404,
          `The model '${call.param}' does not exist or cannot be called here`,
          "invalid_request_error",
          "model",
          "model_not_found",
        );
      }
      sendJson(call.res, 200, model);
    },
  };

  const exact = new Map<string, Route>([
    ["/v1/chat/completions", chat],
    ["/v1/completions", completions],
    ["/v1/responses", responses],
    ["/v1/messages", messages],
    ["/v1/messages/count_tokens", countTokens],
    ["/v1/embeddings", embeddings],
    ["/v1/images/generations", images],
    ["/v1/models", listModels],
  ]);

  /** Routes with an {id} in the path, by prefix and method (the first is the default). */
  const byId: Array<[string, Route[]]> = [
    ["/v1/models/", [getModel]],
    ["/v1/responses/", [getResponse, deleteResponse]],
  ];

  function resolve(path: string, method: string): { route: Route; param: string } | undefined {
    const route = exact.get(path.endsWith("/") && path.length > 4 ? path.slice(0, -1) : path);
    if (route !== undefined) return { route, param: "" };
    for (const [prefix, routes] of byId) {
      if (!path.startsWith(prefix)) continue;
      let id: string;
      try {
        id = decodeURIComponent(path.slice(prefix.length));
      } catch {
        return undefined;
      }
      if (id === "" || id.includes("/")) return undefined;
      return { route: routes.find((r) => r.method === method) ?? routes[0]!, param: id };
    }
    return undefined;
  }

  // ---- the request pipeline -----------------------------------------------------------------

  async function authenticate(req: NodeRequest, route: Route): Promise<Caller> {
    const headers = new Headers();
    const authorization = req.headers.authorization;
    if (typeof authorization === "string") headers.set("authorization", authorization);
    const apiKey = req.headers["x-api-key"];
    if (typeof apiKey === "string") headers.set("x-api-key", apiKey);
    const caller = await deps.authenticator.authenticate(headers);
    if (caller === undefined) {
      throw new UnauthenticatedError(
        "missing credentials: send an access token or an API key as 'Authorization: Bearer <token>', or an API key as 'x-api-key'",
      );
    }
    await admit(caller, Access.USER, route.scope, deps.rateLimiter);
    return caller;
  }

  function upstreamOptions(req: NodeRequest, call: Call, signal: AbortSignal): CallOptions {
    const headers: Record<string, string> = {
      authorization: `Bearer ${call.caller.token}`,
    };
    const requestId = req.headers["x-request-id"];
    if (typeof requestId === "string") headers["x-request-id"] = requestId;
    for (const name of ["traceparent", "tracestate"]) {
      const value = req.headers[name];
      if (typeof value === "string" && value.length <= 512) headers[name] = value;
    }
    const forwardedFor = deps.clientAddress(req);
    if (forwardedFor !== "") headers["x-forwarded-for"] = forwardedFor;
    // The openai SDKs announce their own timeout (seconds); no point working past it.
    let timeoutMs = deps.maxTimeoutMs;
    const announced = Number(req.headers["x-stainless-timeout"]);
    if (Number.isFinite(announced) && announced > 0) {
      timeoutMs = Math.min(timeoutMs, announced * 1000);
    }
    return {
      headers,
      signal,
      timeoutMs,
      onTrailer: (trailers) => (call.trailers = trailers),
    };
  }

  async function serve(route: Route, param: string, req: NodeRequest, res: NodeResponse) {
    const started = performance.now();
    const controller = new AbortController();
    // The client went away: the upstream call (and the provider's) stops too.
    const onClose = (): void => {
      if (!res.writableEnded) controller.abort(new ConnectError("client went away", Code.Canceled));
    };
    res.once("close", onClose);
    const onShutdown = (): void =>
      controller.abort(new ConnectError("gateway shutting down", Code.Unavailable));
    deps.shutdownSignal.addEventListener("abort", onShutdown, { once: true });

    let caller: Caller | undefined;
    let call: Call | undefined;
    let status = 200;
    try {
      caller = await authenticate(req, route);
      const body = route.method === "POST" ? await readJson(req, deps.maxBodyBytes) : {};
      call = {
        req,
        res,
        caller,
        param,
        body,
        trailers: undefined,
        options: {},
      };
      call.options = upstreamOptions(req, call, controller.signal);
      await route.run(call);
      if (call.streamError !== undefined) status = call.streamError.status;
    } catch (err) {
      const error = toOpenAiError(
        controller.signal.aborted && !(err instanceof OpenAiError)
          ? (controller.signal.reason as unknown)
          : err,
        { ...route.errors, trailers: call?.trailers },
        logger,
      );
      status = error.status;
      if (!res.headersSent && !res.destroyed) sendError(req, res, error, route.errorBody);
      else if (!res.writableEnded) res.end();
    } finally {
      res.off("close", onClose);
      deps.shutdownSignal.removeEventListener("abort", onShutdown);
      const ms = performance.now() - started;
      const code = STATUS_CODES[status] ?? "INTERNAL";
      metrics.rpcServer.observe(route.name, code, ms / 1000);
      logger.info(
        {
          requestId: req.headers["x-request-id"],
          method: route.name,
          protocol: "openai",
          status,
          code,
          durationMs: Math.round(ms * 10) / 10,
          ...(caller !== undefined
            ? {
                tenant: caller.principal.tenantId,
                user: caller.principal.subject,
                ...(caller.apiKey !== undefined ? { apiKeyId: caller.apiKey.id } : {}),
              }
            : {}),
        },
        "call",
      );
    }
  }

  return {
    routes: [...exact.values(), ...byId.flatMap(([, r]) => r)].map(({ name, scope, summary }) => ({
      name,
      scope,
      summary,
    })),
    handle(req, res, path) {
      const found = resolve(path, req.method ?? "");
      if (found === undefined) {
        sendError(
          req,
          res,
          new OpenAiError(
            404,
            `Unknown request URL: ${req.method ?? ""} ${path}.`,
            "invalid_request_error",
            null,
            "unknown_url",
          ),
        );
        return;
      }
      if (req.method !== found.route.method) {
        res.setHeader("allow", found.route.method);
        sendError(
          req,
          res,
          new OpenAiError(
            405,
            `Method ${req.method ?? ""} is not allowed for ${path}; use ${found.route.method}.`,
            "invalid_request_error",
            null,
            "method_not_allowed",
          ),
        );
        return;
      }
      serve(found.route, found.param, req, res).catch((err: unknown) => {
        logger.error({ err }, "openai route failed");
        if (!res.headersSent)
          sendJson(res, 500, new OpenAiError(500, "internal error", "server_error").body());
        else res.end();
      });
    },
  };
}

/** Reads and parses a JSON object body within `max` bytes (413), as application/json (415). */
export function readJson(req: NodeRequest, max: number): Promise<JsonObject> {
  const type = req.headers["content-type"];
  if (typeof type !== "string" || !/^application\/json\s*(;|$)/i.test(type)) {
    return Promise.reject(
      new OpenAiError(
        415,
        "Unsupported content type: send the body as 'Content-Type: application/json'.",
        "invalid_request_error",
        null,
        "unsupported_media_type",
      ),
    );
  }
  const encoding = req.headers["content-encoding"];
  if (encoding !== undefined && encoding !== "identity") {
    return Promise.reject(
      new OpenAiError(
        415,
        "Compressed request bodies are not supported.",
        "invalid_request_error",
        null,
        "unsupported_media_type",
      ),
    );
  }
  const tooLarge = (): OpenAiError =>
    new OpenAiError(
      413,
      `The request body is larger than ${max} bytes.`,
      "invalid_request_error",
      null,
      "request_too_large",
    );
  if (Number(req.headers["content-length"]) > max) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const fail = (err: Error): void => {
      if (done) return;
      done = true;
      cleanup();
      reject(err);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > max) {
        fail(tooLarge());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      if (done) return;
      done = true;
      cleanup();
      const text =
        (chunks.length === 1 ? chunks[0] : Buffer.concat(chunks))?.toString("utf8") ?? "";
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        reject(
          invalidRequest(
            "We could not parse the JSON body of your request: the body must be a JSON object.",
            null,
            "invalid_json",
          ),
        );
        return;
      }
      if (!isObject(parsed)) {
        reject(invalidRequest("The request body must be a JSON object.", null, "invalid_json"));
        return;
      }
      resolve(parsed);
    };
    const onError = (): void => fail(new ConnectError("request body not received", Code.Canceled));
    const onClose = (): void => {
      if (!done) fail(new ConnectError("request body not received", Code.Canceled));
    };
    const cleanup = (): void => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
}

function sendJson(
  res: NodeResponse,
  status: number,
  body: unknown,
  extra?: Record<string, string>,
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(text)),
    ...extra,
  });
  res.end(text);
}

function sendError(
  req: NodeRequest,
  res: NodeResponse,
  error: OpenAiError,
  body: (error: OpenAiError) => unknown = (e) => e.body(),
): void {
  const headers = { ...error.headers };
  // An unread oversized body is not drained: this HTTP/1.1 connection closes after the answer.
  if (error.status === 413 && req.httpVersionMajor === 1) headers["connection"] = "close";
  sendJson(res, error.status, body(error), headers);
}

/** Resolves when `res` can take more data (or is gone). */
function write(res: NodeResponse, text: string): Promise<void> | undefined {
  // Both response types take a string; their overloads only differ in the callback forms.
  if ((res as { write(chunk: string): boolean }).write(text)) return undefined;
  return new Promise((resolve) => {
    const done = (): void => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}
