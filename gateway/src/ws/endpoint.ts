// GET /v1/ws: run events and chat streaming over one WebSocket, for clients that prefer one
// socket to a stream per call (browsers watching several runs, chat UIs). JSON text frames (see
// protocol.ts); several subscriptions per socket, multiplexed by the client's ids.
//
// Same authentication as every other route: `Authorization: Bearer <token or API key>` or
// `x-api-key` on the upgrade request, or, because browsers cannot set headers on a WebSocket,
// the subprotocol `ensemble.bearer.<token>` offered beside `ensemble.v1` (the server selects
// `ensemble.v1`, never echoes the token). The upgrade is refused with an HTTP status (401, 403,
// 429) before any WebSocket exists. Each operation authenticates again from the same credential
// (an expired token or a revoked API key stops new operations), checks the API key's scope
// (watch_run: read; run, chat: write) and takes from the caller's rate limit. A socket whose
// credential is revoked while it is open (its session logged out, its user disabled or given
// another role, its API key revoked or rolled) ends at once: every open subscription gets an
// `unauthenticated` error frame and the socket closes with 4401 (../live.ts). A long-lived socket
// need not reconnect when its access token expires: an `auth` frame with a fresh token (or an
// API key) of the same user replaces its credential for the operations that follow and for
// revocation (decision: the user cannot change on a socket; subscriptions already running go
// on, as a stream outlives its token everywhere else).
//
// Upstream calls are the ones the other routes make, with the caller's token: RunService.WatchRun
// and Run on the workflow engine, ModelProxyService.StreamChat (the OpenAI mapping of
// ../openai/chat.ts). Cancelling a subscription, closing the socket or a dead peer (no pong
// within one ping interval) aborts its upstream calls.
import { randomUUID } from "node:crypto";
import type http from "node:http";
import type { Duplex } from "node:stream";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import {
  codeLabel,
  toConnectError,
  UnauthenticatedError,
  type GrpcClient,
  type Logger,
  type Metrics,
  type RateLimiter,
} from "@ensemble/kit";
import {
  Access,
  RunEventSchema,
  RunSchema,
  type CategorizerService,
  type ModelProxyService,
  type RunResponse,
  type RunService,
  type ServedBy,
  type StreamChatStart,
  type WatchRunResponse,
} from "@ensemble/proto";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { admit, type Authenticator, type Caller } from "../authn.js";
import type { LiveCalls } from "../live.js";
import { AUTO_MODEL, routeAuto } from "../auto.js";
import { autoModelError, chatParam, ChunkEncoder, parseChatRequest } from "../openai/chat.js";
import { invalidRequest, toOpenAiError } from "../openai/errors.js";
import { errorFrame, FrameError, parseFrame, type ClientFrame } from "./protocol.js";

export const WS_PATH = "/v1/ws";
/** The subprotocol the server speaks (selected when offered). */
export const WS_PROTOCOL = "ensemble.v1";
/** Subprotocol prefix carrying a credential for clients that cannot set headers. */
export const WS_BEARER_PREFIX = "ensemble.bearer.";

const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
/** Above this many unsent bytes a subscription waits for the socket before reading on. */
const HIGH_WATER_BYTES = 1024 * 1024;

export interface WsEndpointDeps {
  logger: Logger;
  metrics: Metrics;
  authenticator: Authenticator;
  /** Sockets are tracked here: one whose credential is revoked is ended. */
  live: LiveCalls;
  rateLimiter: RateLimiter;
  /** Absent when WORKFLOW_ADDR is not configured: watch_run and run answer unavailable. */
  runs: GrpcClient<typeof RunService> | undefined;
  /** Absent when MODEL_PROXY_ADDR is not configured: chat answers unavailable. */
  modelProxy: GrpcClient<typeof ModelProxyService> | undefined;
  /** `model: "auto"` in chat asks it; absent: a 400-like invalid_argument. */
  categorizer?: GrpcClient<typeof CategorizerService> | undefined;
  /** Largest frame accepted from a client; larger ones close the socket (1009). */
  maxMessageBytes: number;
  /** Deadline of a chat's upstream call (as /v1/chat/completions). */
  maxTimeoutMs: number;
  /** Aborted when the gateway's drain time is up: every socket closes (1001). */
  shutdownSignal: AbortSignal;
  /** The CORS policy: a browser page from another origin must be allowed by it. */
  originAllowed: (origin: string) => boolean;
  /** x-forwarded-for for the upstream. */
  clientAddress: (req: http.IncomingMessage) => string;
  /** Server pings this often; a socket that did not answer the previous ping is dropped. */
  pingIntervalMs?: number;
  /** Concurrent subscriptions per socket. */
  maxSubscriptions?: number;
}

export interface WsEndpoint {
  /** For the HTTP/1.1 server's `upgrade` event. */
  handleUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void;
  /**
   * Refuses new sockets and operations; idle sockets close now (1001, "going away"), busy ones
   * when their last subscription ends or the shutdown signal fires. Clients reconnect elsewhere
   * (watch_run resumes with after_sequence).
   */
  drain(): void;
  /** Open sockets (for tests and metrics). */
  readonly connections: number;
}

/** The close code of a socket whose credential was revoked (4000-4999: the application's). */
export const WS_CLOSE_REVOKED = 4401;

interface Subscription {
  controller: AbortController;
  cancelled: boolean;
  /** Ended because the socket's credential was revoked: the message its error frame carries. */
  revoked?: string;
}

interface Connection {
  ws: WebSocket;
  requestId: string;
  /** The credential, as the authenticator reads it; re-checked for every operation. */
  credential: Headers;
  /** Whom it authenticated at the upgrade (to find the sockets a change notice is about). */
  caller: Caller;
  /** Set when its credential was revoked: it closes (4401) once its subscriptions ended. */
  revoked?: string;
  /** Stops tracking its credential for revocation. */
  untrack: () => void;
  clientAddress: string;
  traceHeaders: Record<string, string>;
  subs: Map<string, Subscription>;
  closed: boolean;
  alive: boolean;
}

/** What an operation needs from the caller's API key scopes. */
const SCOPES = { watch_run: "read", run: "write", chat: "write" } as const;

export function createWsEndpoint(deps: WsEndpointDeps): WsEndpoint {
  const { logger, metrics } = deps;
  const pingIntervalMs = deps.pingIntervalMs ?? 30_000;
  const maxSubscriptions = deps.maxSubscriptions ?? 32;
  const connections = new Set<Connection>();
  let draining = false;

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: deps.maxMessageBytes,
    // Compression costs CPU and memory per socket, and frames are small JSON.
    perMessageDeflate: false,
    // Never select the credential-carrying entry.
    handleProtocols: (protocols) => (protocols.has(WS_PROTOCOL) ? WS_PROTOCOL : false),
  });

  deps.shutdownSignal.addEventListener(
    "abort",
    () => {
      for (const conn of connections) closeConnection(conn, 1001, "gateway shutting down");
    },
    { once: true },
  );

  // ---- the upgrade ---------------------------------------------------------------------------

  function handleUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const incoming = req.headers["x-request-id"];
    const requestId =
      typeof incoming === "string" && REQUEST_ID_PATTERN.test(incoming) ? incoming : randomUUID();
    const path = (req.url ?? "/").split("?")[0];
    if (path !== WS_PATH) return refuse(socket, requestId, 404, "not_found", "not found");
    if (req.method !== "GET") {
      return refuse(socket, requestId, 405, "unimplemented", "use GET to open a WebSocket");
    }
    if (req.headers.upgrade?.toLowerCase() !== "websocket") {
      return refuse(socket, requestId, 400, "invalid_argument", "only WebSocket upgrades");
    }
    if (draining) {
      return refuse(socket, requestId, 503, "unavailable", "gateway shutting down");
    }
    const origin = req.headers.origin;
    if (typeof origin === "string" && !sameOrigin(origin, req) && !deps.originAllowed(origin)) {
      return refuse(socket, requestId, 403, "permission_denied", "origin not allowed");
    }
    upgrade(req, socket, head, requestId).catch((err: unknown) => {
      logger.error({ err, requestId }, "websocket upgrade failed");
      refuse(socket, requestId, 500, "internal", "internal error");
    });
  }

  async function upgrade(
    req: http.IncomingMessage,
    socket: Duplex,
    head: Buffer,
    requestId: string,
  ): Promise<void> {
    const started = performance.now();
    const credential = credentialOf(req);
    let caller: Caller;
    try {
      caller = await authorize(credential, undefined);
    } catch (err) {
      const error = toConnectError(err);
      const status = HTTP_STATUS[error.code] ?? 500;
      const message = status === 500 || status === 503 ? safeMessage(error) : error.rawMessage;
      const retryAfterMs = Number(error.metadata.get("retry-after-ms"));
      refuse(
        socket,
        requestId,
        status,
        codeLabel(error.code).toLowerCase(),
        message,
        Number.isFinite(retryAfterMs) && retryAfterMs > 0 ? retryAfterMs : undefined,
      );
      logCall("WS upgrade", error.code, started, requestId, undefined);
      return;
    }
    if (socket.destroyed) return;
    if (draining) {
      refuse(socket, requestId, 503, "unavailable", "gateway shutting down");
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const traceHeaders: Record<string, string> = {};
      for (const name of ["traceparent", "tracestate"]) {
        const value = req.headers[name];
        if (typeof value === "string" && value.length <= 512) traceHeaders[name] = value;
      }
      open({
        ws,
        requestId,
        credential,
        caller,
        untrack: () => undefined,
        clientAddress: deps.clientAddress(req),
        traceHeaders,
        subs: new Map(),
        closed: false,
        alive: true,
      });
      logCall("WS upgrade", 0, started, requestId, caller);
    });
  }

  /** The credential headers: Authorization / x-api-key, else the `ensemble.bearer.` subprotocol. */
  function credentialOf(req: http.IncomingMessage): Headers {
    const headers = new Headers();
    const authorization = req.headers.authorization;
    if (typeof authorization === "string") headers.set("authorization", authorization);
    const apiKey = req.headers["x-api-key"];
    if (typeof apiKey === "string") headers.set("x-api-key", apiKey);
    const offered = req.headers["sec-websocket-protocol"];
    if (!headers.has("authorization") && typeof offered === "string") {
      for (const entry of offered.split(",")) {
        const p = entry.trim();
        if (p.startsWith(WS_BEARER_PREFIX) && p.length > WS_BEARER_PREFIX.length) {
          headers.set("authorization", `Bearer ${p.slice(WS_BEARER_PREFIX.length)}`);
          break;
        }
      }
    }
    return headers;
  }

  /** Authentication, the USER rule, the API key's scope (for an operation) and the rate limit. */
  async function authorize(
    credential: Headers,
    scope: "read" | "write" | undefined,
  ): Promise<Caller> {
    const caller = await deps.authenticator.authenticate(credential);
    if (caller === undefined) {
      throw new UnauthenticatedError(
        `missing credentials: send 'Authorization: Bearer <token or API key>' on the upgrade, or offer the subprotocols '${WS_PROTOCOL}' and '${WS_BEARER_PREFIX}<token>'`,
      );
    }
    await admit(caller, Access.USER, scope ?? "public", deps.rateLimiter);
    return caller;
  }

  // ---- a socket ------------------------------------------------------------------------------

  function open(conn: Connection): void {
    const { ws } = conn;
    connections.add(conn);
    track(conn);
    const opened = performance.now();
    let operations = 0;
    const timer = setInterval(() => {
      if (!conn.alive) {
        // No pong since the last ping: the peer is gone without a close.
        ws.terminate();
        return;
      }
      conn.alive = false;
      ws.ping();
    }, pingIntervalMs);
    timer.unref();

    ws.on("pong", () => (conn.alive = true));
    ws.on("message", (data: RawData, isBinary: boolean) => {
      conn.alive = true;
      if (isBinary) {
        post(conn, errorFrame(undefined, Code.InvalidArgument, "send JSON text frames"));
        return;
      }
      let frame: ClientFrame;
      try {
        frame = parseFrame(textOf(data));
      } catch (err) {
        const e =
          err instanceof FrameError ? err : new FrameError(Code.InvalidArgument, "bad frame");
        post(conn, errorFrame(e.id, e.code, e.message));
        return;
      }
      if (frame.type !== "ping" && frame.type !== "cancel") operations += 1;
      dispatch(conn, frame);
    });
    // Protocol violations (an oversized frame, bad UTF-8): ws closes the socket itself.
    ws.on("error", (err) => logger.debug({ err, requestId: conn.requestId }, "websocket error"));
    ws.once("close", (code: number) => {
      clearInterval(timer);
      conn.untrack();
      conn.closed = true;
      connections.delete(conn);
      for (const sub of conn.subs.values()) {
        sub.controller.abort(new ConnectError("client went away", Code.Canceled));
      }
      logger.info(
        {
          requestId: conn.requestId,
          protocol: "websocket",
          closeCode: code,
          operations,
          durationMs: Math.round(performance.now() - opened),
        },
        "websocket closed",
      );
    });
  }

  function dispatch(conn: Connection, frame: ClientFrame): void {
    switch (frame.type) {
      case "ping":
        post(
          conn,
          JSON.stringify(
            frame.id !== undefined ? { id: frame.id, type: "pong" } : { type: "pong" },
          ),
        );
        return;
      case "auth":
        reauthenticate(conn, frame).catch((err: unknown) => {
          logger.error({ err, requestId: conn.requestId }, "websocket re-authentication failed");
        });
        return;
      case "cancel": {
        const sub = conn.subs.get(frame.id);
        if (sub === undefined) {
          post(
            conn,
            errorFrame(frame.id, Code.NotFound, `no open subscription with id ${frame.id}`),
          );
          return;
        }
        sub.cancelled = true;
        sub.controller.abort(new ConnectError("cancelled by the client", Code.Canceled));
        return;
      }
      default:
        break;
    }
    if (draining) {
      post(conn, errorFrame(frame.id, Code.Unavailable, "gateway shutting down: reconnect"));
      return;
    }
    if (conn.revoked !== undefined) {
      post(conn, errorFrame(frame.id, Code.Unauthenticated, conn.revoked));
      return;
    }
    if (conn.subs.has(frame.id)) {
      post(conn, errorFrame(frame.id, Code.AlreadyExists, `id ${frame.id} is already in use`));
      return;
    }
    if (conn.subs.size >= maxSubscriptions) {
      post(
        conn,
        errorFrame(
          frame.id,
          Code.ResourceExhausted,
          `at most ${maxSubscriptions} subscriptions per socket`,
        ),
      );
      return;
    }
    const sub: Subscription = { controller: new AbortController(), cancelled: false };
    conn.subs.set(frame.id, sub);
    operate(conn, frame, sub).catch((err: unknown) => {
      logger.error({ err, requestId: conn.requestId }, "websocket operation failed");
    });
  }

  /** Follows the socket's current credential for revocation (see endRevoked). */
  function track(conn: Connection): void {
    conn.untrack();
    conn.untrack = deps.live.track(conn.caller, conn.credential, (message) =>
      endRevoked(conn, message),
    );
  }

  /** An `auth` frame: a fresh credential of the same user for what the socket does next. */
  async function reauthenticate(
    conn: Connection,
    frame: Extract<ClientFrame, { type: "auth" }>,
  ): Promise<void> {
    const started = performance.now();
    const credential = new Headers({ authorization: `Bearer ${frame.token}` });
    let caller: Caller | undefined;
    let code: Code | 0 = 0;
    try {
      if (conn.revoked !== undefined) throw new UnauthenticatedError(conn.revoked);
      caller = await authorize(credential, undefined);
      const before = conn.caller.principal;
      const now = caller.principal;
      if (now.tenantId !== before.tenantId || now.subject !== before.subject) {
        throw new ConnectError(
          "this credential is another user's: a socket keeps the user it was opened by; open a new socket for another user",
          Code.PermissionDenied,
        );
      }
      if (conn.closed || conn.revoked !== undefined) return;
      conn.credential = credential;
      conn.caller = caller;
      track(conn);
      post(
        conn,
        JSON.stringify({
          ...(frame.id !== undefined ? { id: frame.id } : {}),
          type: "authenticated",
          // An API key's exchanged token is renewed by the gateway: it has no end to announce.
          ...(caller.apiKey === undefined
            ? { expire_time: caller.principal.expiresAt.toISOString() }
            : {}),
        }),
      );
    } catch (err) {
      const error = toConnectError(err);
      code = error.code;
      post(conn, errorFrame(frame.id, error.code, safeMessage(error)));
    } finally {
      logCall("WS auth", code, started, conn.requestId, caller);
    }
  }

  // ---- an operation --------------------------------------------------------------------------

  async function operate(
    conn: Connection,
    frame: Extract<ClientFrame, { type: "watch_run" | "run" | "chat" }>,
    sub: Subscription,
  ): Promise<void> {
    const { id } = frame;
    const method = `WS ${frame.type}`;
    const started = performance.now();
    const ended = metrics.rpcServer.streamStarted(method);
    const signal = sub.controller.signal;
    let trailers: Headers | undefined;
    let caller: Caller | undefined;
    let code: Code | 0 = 0;
    const requestId = `${conn.requestId.slice(0, 60)}:${id}`;
    /** Sends a frame of this subscription unless it was cancelled meanwhile. */
    const emit = (text: string): Promise<void> | undefined => {
      signal.throwIfAborted();
      return send(conn, text);
    };
    try {
      caller = await authorize(conn.credential, SCOPES[frame.type]);
      signal.throwIfAborted();
      const options: CallOptions = {
        headers: {
          authorization: `Bearer ${caller.token}`,
          "x-request-id": requestId,
          ...conn.traceHeaders,
          ...(conn.clientAddress !== "" ? { "x-forwarded-for": conn.clientAddress } : {}),
        },
        signal,
        onTrailer: (t) => (trailers = t),
      };
      switch (frame.type) {
        case "watch_run":
          for await (const res of runs().watchRun(frame.request, options)) {
            await runItem(id, res.item, emit);
          }
          break;
        case "run":
          for await (const res of runs().run(frame.request, options)) {
            await runItem(id, res.item, emit);
          }
          break;
        case "chat":
          await chat(id, frame.body, { ...options, timeoutMs: deps.maxTimeoutMs }, emit);
          break;
      }
      await emit(JSON.stringify({ id, type: "end" }));
    } catch (err) {
      if (sub.cancelled) {
        code = Code.Canceled;
        post(conn, JSON.stringify({ id, type: "end", cancelled: true }));
      } else if (sub.revoked !== undefined) {
        code = Code.Unauthenticated;
        post(conn, errorFrame(id, Code.Unauthenticated, sub.revoked));
      } else if (conn.closed) {
        code = Code.Canceled;
      } else if (signal.aborted) {
        // The gateway is shutting down.
        code = Code.Unavailable;
        post(conn, errorFrame(id, Code.Unavailable, "gateway shutting down: reconnect"));
      } else {
        const wire = frame.type === "chat" ? chatError(err, trailers) : runError(err, trailers);
        code = wire.code;
        post(conn, errorFrame(id, wire.code, wire.message, wire.extra));
      }
    } finally {
      conn.subs.delete(id);
      ended();
      logCall(method, code, started, requestId, caller);
      if (conn.subs.size === 0 && conn.revoked !== undefined) {
        conn.ws.close(WS_CLOSE_REVOKED, "credentials revoked");
      } else if (draining && conn.subs.size === 0) {
        closeConnection(conn, 1001, "gateway shutting down");
      }
    }
  }

  function runs(): GrpcClient<typeof RunService> {
    if (deps.runs === undefined) {
      throw new ConnectError("runs are not configured on this gateway", Code.Unavailable);
    }
    return deps.runs;
  }

  async function runItem(
    id: string,
    item: RunResponse["item"] | WatchRunResponse["item"],
    emit: (text: string) => Promise<void> | undefined,
  ): Promise<void> {
    if (item.case === "event") {
      await emit(JSON.stringify({ id, type: "event", event: toJson(RunEventSchema, item.value) }));
    } else if (item.case === "run") {
      await emit(JSON.stringify({ id, type: "run", run: toJson(RunSchema, item.value) }));
    }
  }

  /** A chat as OpenAI `chat.completion.chunk` objects (the SSE route's encoder), then `end`. */
  async function chat(
    id: string,
    body: Record<string, unknown>,
    options: CallOptions,
    emit: (text: string) => Promise<void> | undefined,
  ): Promise<void> {
    if (deps.modelProxy === undefined) {
      throw new ConnectError("model service is not configured on this gateway", Code.Unavailable);
    }
    // The socket always streams; `stream` in the body may say anything.
    const parsed = parseChatRequest({ ...body, stream: true });
    if (parsed.n > 1) {
      throw invalidRequest(
        "n > 1 is answered by POST /v1/chat/completions; over the WebSocket a chat streams one choice.",
        "n",
        "unsupported_value",
      );
    }
    const requested = parsed.request.model ?? "";
    if (requested === AUTO_MODEL) {
      if (deps.categorizer === undefined) throw autoModelError();
      const routing = await routeAuto(deps.categorizer, parsed.request, options);
      parsed.request.model = routing.model;
      await emit(JSON.stringify({ id, type: "routing", routing }));
    }
    const encoder = new ChunkEncoder(parsed.includeUsage, requested);
    const prefix = `{"id":${JSON.stringify(id)},"type":"chunk","chunk":`;
    // The encoder writes SSE (`data: {...}\n\n`); each event's JSON goes into one frame as is.
    const chunks = async (sse: string): Promise<void> => {
      for (const event of sse.split("\n\n")) {
        if (!event.startsWith("data: ")) continue;
        const json = event.slice("data: ".length);
        if (json !== "[DONE]") await emit(`${prefix}${json}}`);
      }
    };
    let started = false;
    let startServedBy: ServedBy | undefined;
    const begin = (start: StreamChatStart | undefined): string => {
      started = true;
      startServedBy = start?.servedBy;
      return encoder.start(
        start ??
          ({ id: "", servedBy: undefined, createTime: undefined } as unknown as StreamChatStart),
      );
    };
    for await (const message of deps.modelProxy.streamChat({ chat: parsed.request }, options)) {
      const event = message.event;
      switch (event.case) {
        case "start":
          if (!started) await chunks(begin(event.value));
          break;
        case "delta":
          if (!started) await chunks(begin(undefined));
          await chunks(encoder.delta(event.value));
          break;
        case "end":
          if (!started) await chunks(begin(undefined));
          await chunks(encoder.end(event.value, startServedBy));
          return;
        default:
          break;
      }
    }
    throw new ConnectError("stream ended without its end message", Code.Internal);
  }

  // ---- errors --------------------------------------------------------------------------------

  interface WireError {
    code: Code;
    message: string;
    extra: { retryAfterMs?: number; param?: string };
  }

  /** Upstream (or our own) failure of watch_run / run, with forward.ts's rules for messages. */
  function runError(err: unknown, trailers: Headers | undefined): WireError {
    if (err instanceof FrameError) return { code: err.code, message: err.message, extra: {} };
    const error = toConnectError(err);
    const retryAfterMs = Number(
      trailers?.get("retry-after-ms") ?? error.metadata.get("retry-after-ms"),
    );
    return {
      code: error.code,
      message: safeMessage(error),
      extra:
        error.code === Code.ResourceExhausted && Number.isFinite(retryAfterMs) && retryAfterMs > 0
          ? { retryAfterMs }
          : {},
    };
  }

  /** A chat failure, explained as /v1/chat/completions does (model_not_found, field names). */
  function chatError(err: unknown, trailers: Headers | undefined): WireError {
    // The gateway's own rate limit carries its wait in the error, an upstream's in trailers.
    const source = trailers ?? (err instanceof ConnectError ? err.metadata : undefined);
    const e = toOpenAiError(err, { modelRoute: true, param: chatParam, trailers: source }, logger);
    const retryAfterMs = Number(e.headers["retry-after-ms"]);
    return {
      code: OPENAI_CODES[e.status] ?? Code.Internal,
      message: e.message,
      extra: {
        ...(e.param !== null ? { param: e.param } : {}),
        ...(Number.isFinite(retryAfterMs) && retryAfterMs > 0 ? { retryAfterMs } : {}),
      },
    };
  }

  /** Messages that can carry peer addresses or driver text are replaced (the original logged). */
  function safeMessage(error: ConnectError): string {
    switch (error.code) {
      case Code.Unavailable:
        logger.warn(
          { code: codeLabel(error.code), upstreamMessage: error.rawMessage },
          "websocket call failed",
        );
        return error.rawMessage.includes("not configured") ||
          error.rawMessage.includes("shutting down")
          ? error.rawMessage
          : "service unavailable";
      case Code.Internal:
      case Code.Unknown:
      case Code.DataLoss:
        logger.warn(
          { code: codeLabel(error.code), upstreamMessage: error.rawMessage },
          "websocket call failed",
        );
        return "internal error";
      case Code.DeadlineExceeded:
        return "deadline exceeded";
      case Code.Canceled:
        return "cancelled";
      default:
        return error.rawMessage;
    }
  }

  // ---- plumbing ------------------------------------------------------------------------------

  /** Sends a frame; resolves when the socket can take more (or is gone). */
  function send(conn: Connection, text: string): Promise<void> | undefined {
    const { ws } = conn;
    if (conn.closed || ws.readyState !== ws.OPEN) return undefined;
    if (ws.bufferedAmount < HIGH_WATER_BYTES) {
      ws.send(text);
      return undefined;
    }
    // A slow reader: this subscription waits until its frame is written, which also stops
    // reading the upstream stream (gRPC flow control carries the back-pressure further).
    return new Promise((resolve) => ws.send(text, () => resolve()));
  }

  /** Sends a control frame (errors, pongs, ends): small, never waited for. */
  function post(conn: Connection, text: string): void {
    if (!conn.closed && conn.ws.readyState === conn.ws.OPEN) conn.ws.send(text);
  }

  function closeConnection(conn: Connection, code: number, reason: string): void {
    if (conn.closed) return;
    for (const sub of conn.subs.values()) {
      sub.controller.abort(new ConnectError(reason, Code.Unavailable));
    }
    conn.ws.close(code, reason);
  }

  function logCall(
    method: string,
    code: Code | 0,
    started: number,
    requestId: string,
    caller: Caller | undefined,
  ): void {
    const ms = performance.now() - started;
    metrics.rpcServer.observe(method, code, ms / 1000);
    logger.info(
      {
        requestId,
        method,
        protocol: "websocket",
        code: codeLabel(code),
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

  /** Ends every subscription with `message` (unauthenticated), then the socket (4401). */
  function endRevoked(conn: Connection, message: string): void {
    if (conn.closed) return;
    logger.info(
      { requestId: conn.requestId, subscriptions: conn.subs.size },
      "websocket credential revoked; closing it",
    );
    for (const sub of conn.subs.values()) {
      sub.revoked = message;
      sub.controller.abort(new ConnectError(message, Code.Unauthenticated));
    }
    conn.revoked = message;
    // Otherwise after the subscriptions' error frames, as the last of them ends (operate).
    if (conn.subs.size === 0) conn.ws.close(WS_CLOSE_REVOKED, "credentials revoked");
  }

  return {
    handleUpgrade,
    drain() {
      draining = true;
      for (const conn of connections) {
        if (conn.subs.size === 0) closeConnection(conn, 1001, "gateway shutting down");
      }
    },
    get connections() {
      return connections.size;
    },
  };
}

const HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.Unavailable]: 503,
};

const HTTP_REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** The OpenAI mapping's HTTP statuses back to codes (chat errors). */
const OPENAI_CODES: Record<number, Code> = {
  400: Code.InvalidArgument,
  401: Code.Unauthenticated,
  403: Code.PermissionDenied,
  404: Code.NotFound,
  409: Code.Aborted,
  429: Code.ResourceExhausted,
  499: Code.Canceled,
  501: Code.Unimplemented,
  503: Code.Unavailable,
  504: Code.DeadlineExceeded,
};

/** Answers an upgrade request with a plain HTTP error; no WebSocket is opened. */
function refuse(
  socket: Duplex,
  requestId: string,
  status: number,
  code: string,
  message: string,
  retryAfterMs?: number,
): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify({ code, message });
  const head = [
    `HTTP/1.1 ${status} ${HTTP_REASONS[status] ?? "Error"}`,
    "content-type: application/json",
    `content-length: ${Buffer.byteLength(body)}`,
    `x-request-id: ${requestId}`,
    "connection: close",
    ...(status === 401 ? ['www-authenticate: Bearer realm="ensemble"'] : []),
    ...(retryAfterMs !== undefined
      ? [
          `retry-after: ${Math.max(1, Math.ceil(retryAfterMs / 1000))}`,
          `retry-after-ms: ${Math.ceil(retryAfterMs)}`,
        ]
      : []),
  ];
  socket.once("finish", () => socket.destroy());
  socket.end(`${head.join("\r\n")}\r\n\r\n${body}`);
}

/** A page served by this gateway itself (e.g. the console) may always connect. */
function sameOrigin(origin: string, req: http.IncomingMessage): boolean {
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

function textOf(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString("utf8");
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  return Buffer.from(data).toString("utf8");
}
