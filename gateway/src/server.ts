// build(deps): the gateway's HTTP handler (Connect, gRPC and gRPC-web routes for every
// non-INTERNAL method of every configured upstream, plus the operational endpoints). Never
// listens by itself: `listen()` binds one port for HTTP/1.1 and h2c (see listen.ts).
import { MethodOptions_IdempotencyLevel, timestampDate } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { setMaxListeners } from "node:events";
import type http from "node:http";
import type http2 from "node:http2";
import { toJson, type DescMethod, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  type CallOptions,
  type ConnectRouter,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  codeLabel,
  createClient,
  isUnexpected,
  toConnectError,
  UnauthenticatedError,
  type GrpcClient,
  type Logger,
  type Metrics,
  type TokenVerifier,
} from "@ensemble/kit";
import {
  Access,
  AuthService,
  CategorizerService,
  GetJwksResponseSchema,
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  ModelProxyService,
  RunService,
  type ChangeNotice,
  type ChatRequest,
  type StreamChatRequest,
} from "@ensemble/proto";
import { admit, Authenticator, ServiceTokenSource, type AuthApi } from "./authn.js";
import { AUTO_MODEL, routeAuto } from "./auto.js";
import { openConsole } from "./console.js";
import { renderDocs } from "./docs.js";
import {
  accessOf,
  callerKey,
  clientAddressKey,
  forwardingImpl,
  malformedAsInvalidArgument,
  routedMethods,
} from "./forward.js";
import { listenDual, type Listener } from "./listen.js";
import { createOpenAiApi } from "./openai/handler.js";
import { LiveCalls } from "./live.js";
import { createWsEndpoint } from "./ws/endpoint.js";
import type { Notices, RateLimiter } from "@ensemble/kit";
import type { Upstream } from "./services.js";

const idOf = (n: ChangeNotice) => ({ tenantId: n.tenantId, id: n.id });

/** When the notice's change was stored (its receipt time from a publisher without one). */
function noticeTime(n: ChangeNotice): number {
  return n.time !== undefined ? timestampDate(n.time).getTime() : Date.now();
}

/** Longest `listen` waits for the stored revocations before it serves anyway. */
const READY_WAIT_MS = 10_000;

export interface GatewayDeps {
  version: string;
  logger: Logger;
  /** Verifies access tokens against auth's JWKS. */
  verifier: TokenVerifier;
  metrics: Metrics;
  upstreams: Upstream[];
  rateLimiter: RateLimiter;
  /**
   * Auth's change notices: a key revoked, rolled or updated, or a user disabled or given another
   * role, through any replica, drops this replica's cached exchanges at once; a session that
   * ended, and a user's earlier tokens after such a change, are refused from then on.
   */
  notices: Notices;
  /** Bootstrap service token; without it (or without an auth upstream) API keys are refused. */
  serviceToken?: string;
  /** Exact origins allowed by CORS; "*" only honoured when `development` is true. */
  corsOrigins?: string[];
  development?: boolean;
  /** Behind a TLS-terminating proxy: send HSTS and trust its X-Forwarded-For. */
  behindTls?: boolean;
  maxMessageBytes?: number;
  maxTimeoutMs?: number;
  apiKeyCacheMs?: number;
  /** The built web console (gateway/console/dist), served at `/`; none when unset or unbuilt. */
  consoleDir?: string;
  /** WebSocket keepalive (GET /v1/ws): ping interval; a peer that misses a pong is dropped. */
  wsPingIntervalMs?: number;
}

export interface Gateway {
  /** The request handler, for http.createServer or http2.createServer. */
  readonly handler: (req: NodeRequest, res: NodeResponse) => void;
  readonly authenticator: Authenticator;
  /** Binds one port for HTTP/1.1 and h2c; resolves the bound port. */
  listen(port: number, host?: string): Promise<number>;
  /** /ready answers 503 from now on; streams are ended; the listener closes. */
  shutdown(opts?: { timeoutMs?: number }): Promise<void>;
}

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

const CORS_ALLOW_HEADERS = [
  "authorization",
  "content-type",
  "connect-protocol-version",
  "connect-timeout-ms",
  "connect-content-encoding",
  "connect-accept-encoding",
  "grpc-timeout",
  "x-grpc-web",
  "x-user-agent",
  "x-api-key",
  "x-request-id",
  // What the openai SDKs send from a browser (/v1/*; the anthropic SDKs send x-stainless-* too).
  "openai-organization",
  "openai-project",
  "x-stainless-arch",
  "x-stainless-lang",
  "x-stainless-os",
  "x-stainless-package-version",
  "x-stainless-retry-count",
  "x-stainless-runtime",
  "x-stainless-runtime-version",
  "x-stainless-timeout",
  // What the anthropic SDKs send from a browser (/v1/messages).
  "anthropic-version",
  "anthropic-beta",
  "anthropic-dangerous-direct-browser-access",
].join(", ");
const CORS_EXPOSE_HEADERS = [
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "x-request-id",
  "retry-after",
  "retry-after-ms",
  "x-should-retry",
].join(", ");

export function build(deps: GatewayDeps): Gateway {
  const { logger, metrics } = deps;
  const development = deps.development === true;
  const corsOrigins = new Set(deps.corsOrigins ?? []);
  const shutdownController = new AbortController();
  // Connect links every call's signal to this one (a listener per call in flight): not a leak.
  setMaxListeners(0, shutdownController.signal);
  let draining = false;

  // One client per upstream contract (grpc-js shares the connection per address).
  const healthClients = new Map<string, GrpcClient<typeof Health>>();
  const routedServices: DescService[] = [];
  let authClient: GrpcClient<typeof AuthService> | undefined;
  const clients: Array<{ service: DescService; client: GrpcClient<DescService> }> = [];
  for (const upstream of deps.upstreams) {
    healthClients.set(upstream.name, createClient(Health, upstream.address, { metrics }));
    for (const service of upstream.services) {
      const client = createClient(service, upstream.address, {
        metrics,
        channelOptions: {
          "grpc.max_receive_message_length": deps.maxMessageBytes ?? 4 * 1024 * 1024,
          "grpc.max_send_message_length": deps.maxMessageBytes ?? 4 * 1024 * 1024,
        },
      });
      clients.push({ service, client });
      routedServices.push(service);
      if (service.typeName === AuthService.typeName) {
        authClient = client as unknown as GrpcClient<typeof AuthService>;
      }
    }
  }

  const authApi: AuthApi | undefined = authClient;
  const serviceToken =
    authApi !== undefined && deps.serviceToken !== undefined
      ? new ServiceTokenSource(authApi, deps.serviceToken)
      : undefined;
  const authenticator = new Authenticator({
    verifier: deps.verifier,
    ...(authApi !== undefined ? { auth: authApi } : {}),
    ...(serviceToken !== undefined ? { serviceToken } : {}),
    ...(deps.apiKeyCacheMs !== undefined ? { apiKeyCacheMs: deps.apiKeyCacheMs } : {}),
  });
  // Revocations are read from the stored notices, from the last day on: a replica that starts
  // after a logout (a rolling deploy) or was disconnected when it went out still refuses the
  // tokens. `listen` waits until they are read.
  // Streams open with the credential (WebSockets, forwarded server streams) are checked again
  // after each (live.ts).
  const live = new LiveCalls(authenticator);
  const revocations = deps.notices.replay(["user", "session"], (kind, n) => {
    if (kind === "session") {
      authenticator.revokeSession(n.tenantId, n.id, noticeTime(n));
    } else {
      authenticator.forgetUser(n.tenantId, n.id);
      authenticator.revokeUserTokens(n.tenantId, n.id, noticeTime(n));
    }
    void live.changed({ kind: kind === "session" ? "session" : "user", ...idOf(n) });
  });
  const noticeSubs = [
    deps.notices.subscribe("api-key", (n) => {
      authenticator.forgetApiKey(n.id);
      void live.changed({ kind: "api-key", ...idOf(n) });
    }),
    revocations,
  ];

  const methodPath = (m: DescMethod): string => `/${m.parent.typeName}/${m.name}`;

  // Authentication, access policy, API key scopes and the rate limit, before the request body
  // is even read.
  async function gate(ctx: HandlerContext): Promise<void> {
    const started = performance.now();
    try {
      const access = accessOf(ctx.method);
      if (access === Access.INTERNAL) {
        // Never registered; defence in depth.
        throw new ConnectError("not found", Code.Unimplemented);
      }
      if (access === Access.PUBLIC) return;
      const caller = await authenticator.authenticate(ctx.requestHeader);
      if (caller === undefined) throw new UnauthenticatedError("missing access token");
      const kind =
        access === Access.ADMIN
          ? "admin"
          : ctx.method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS
            ? "read"
            : "write";
      await admit(caller, access, kind, deps.rateLimiter);
      ctx.values.set(callerKey, caller);
    } catch (err) {
      const error = toConnectError(err);
      if (isUnexpected(error)) logger.error({ err, method: methodPath(ctx.method) }, "gate failed");
      finishCall(
        {
          method: ctx.method,
          header: ctx.requestHeader,
          values: ctx.values,
          protocol: ctx.protocolName,
        },
        error.code,
        started,
      );
      throw error;
    }
  }

  interface CallFacts {
    method: DescMethod;
    header: Headers;
    values: ContextValues;
    protocol: string;
  }

  function finishCall(call: CallFacts, code: Code | 0, started: number): void {
    const path = methodPath(call.method);
    const ms = performance.now() - started;
    metrics.rpcServer.observe(path, code, ms / 1000);
    const caller = call.values.get(callerKey);
    logger.info(
      {
        requestId: call.header.get("x-request-id") ?? undefined,
        method: path,
        protocol: call.protocol,
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

  // Metrics and the one log line per forwarded call (gate refusals are counted in gate()).
  const observe: Interceptor = (next) => async (req) => {
    const started = performance.now();
    const ctx: CallFacts = {
      method: req.method,
      header: req.header,
      values: req.contextValues,
      protocol: protocolOf(req.header.get("content-type")),
    };
    const end = req.stream ? metrics.rpcServer.streamStarted(methodPath(req.method)) : undefined;
    try {
      const res = await next(req);
      if (!res.stream) {
        finishCall(ctx, 0, started);
        return res;
      }
      const inner = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* inner;
            finishCall(ctx, 0, started);
          } catch (err) {
            finishCall(ctx, ConnectError.from(err).code, started);
            throw err;
          } finally {
            end?.();
          }
        })(),
      };
    } catch (err) {
      end?.();
      finishCall(ctx, ConnectError.from(err).code, started);
      throw err;
    }
  };

  // `model: "auto"` in ModelProxyService Chat / StreamChat: the categorizer picks the model, as
  // on /v1/chat/completions (the decision in the x-ensemble-routed-model / -category headers).
  const clientOf = (service: DescService): GrpcClient<DescService> | undefined =>
    clients.find((c) => c.service.typeName === service.typeName)?.client;
  const categorizer = clientOf(CategorizerService) as
    GrpcClient<typeof CategorizerService> | undefined;
  const routeAutoChat = async (
    method: DescMethod,
    req: unknown,
    ctx: HandlerContext,
    options: CallOptions,
  ): Promise<void> => {
    const chat =
      method === ModelProxyService.method.chat
        ? (req as ChatRequest)
        : method === ModelProxyService.method.streamChat
          ? (req as StreamChatRequest).chat
          : undefined;
    if (chat?.model !== AUTO_MODEL) return;
    if (categorizer === undefined) {
      throw new ConnectError(
        'model "auto" (automatic model routing) needs the categorizer, which is not configured on this gateway (CATEGORIZER_ADDR); name a catalog model instead',
        Code.InvalidArgument,
      );
    }
    const routing = await routeAuto(categorizer, chat, options);
    chat.model = routing.model;
    ctx.responseHeader.set("x-ensemble-routed-model", routing.model);
    ctx.responseHeader.set("x-ensemble-category", routing.category);
  };

  // Only routed methods are registered, one by one: router.service() would also add the
  // omitted (INTERNAL) methods as UNIMPLEMENTED routes, and they must not exist at all.
  const routes = (router: ConnectRouter): void => {
    for (const { service, client } of clients) {
      const impl = forwardingImpl(service, client, {
        logger,
        prepare: routeAutoChat,
        track: (ctx, end) => {
          const caller = ctx.values.get(callerKey);
          return caller === undefined ? () => {} : live.track(caller, ctx.requestHeader, end);
        },
        afterUnary: (method, req) => {
          // A revoked key, or the old secret of a rolled one, must stop here at once (another
          // replica's cache ends within GATEWAY_API_KEY_CACHE_MS).
          if (
            method === AuthService.method.revokeApiKey ||
            method === AuthService.method.rollApiKey
          ) {
            authenticator.forgetApiKey((req as { id: string }).id);
          }
        },
      }) as Record<string, unknown>;
      for (const method of routedMethods(service)) {
        const fn = impl[method.localName];
        if (fn !== undefined) router.rpc(method, fn as Parameters<ConnectRouter["rpc"]>[1]);
      }
    }
    // connectNodeAdapter reads router.handlers after this returns: wrap them in place.
    router.handlers.splice(
      0,
      router.handlers.length,
      ...router.handlers.map(malformedAsInvalidArgument),
    );
  };

  const connectHandler = connectNodeAdapter({
    routes,
    requestGate: gate,
    interceptors: [observe],
    readMaxBytes: deps.maxMessageBytes ?? 4 * 1024 * 1024,
    writeMaxBytes: deps.maxMessageBytes ?? 4 * 1024 * 1024,
    // JSON bodies are read strictly: a misspelt field or enum name is INVALID_ARGUMENT naming
    // it. Lenient parsing (connect-es' default) drops both silently, so `"mode": "COMPARE"` for
    // RUN_MODE_COMPARE ran an AUTO run and a misspelt filter listed everything.
    jsonOptions: { ignoreUnknownFields: false },
    maxTimeoutMs: deps.maxTimeoutMs ?? 300_000,
    shutdownSignal: shutdownController.signal,
    contextValues: (req) =>
      createContextValues().set(clientAddressKey, forwardedFor(req, deps.behindTls === true)),
    // Unknown and INTERNAL methods: the route does not exist (Connect/gRPC clients read UNIMPLEMENTED).
    fallback: (_req, res) =>
      sendJson(res, 404, { code: "unimplemented", message: "no such method" }),
  });

  // The OpenAI-compatible API (/v1/*) on the same clients, authenticator and rate limiter.
  const openai = createOpenAiApi({
    logger,
    metrics,
    authenticator,
    rateLimiter: deps.rateLimiter,
    modelProxy: clientOf(ModelProxyService) as GrpcClient<typeof ModelProxyService> | undefined,
    categorizer,
    maxBodyBytes: deps.maxMessageBytes ?? 4 * 1024 * 1024,
    maxTimeoutMs: deps.maxTimeoutMs ?? 300_000,
    shutdownSignal: shutdownController.signal,
    clientAddress: (req) => forwardedFor(req, deps.behindTls === true),
  });

  // Run events and chat over a WebSocket (GET /v1/ws), same authentication and clients.
  const ws = createWsEndpoint({
    logger,
    metrics,
    authenticator,
    live,
    rateLimiter: deps.rateLimiter,
    runs: clientOf(RunService) as GrpcClient<typeof RunService> | undefined,
    modelProxy: clientOf(ModelProxyService) as GrpcClient<typeof ModelProxyService> | undefined,
    categorizer,
    maxMessageBytes: deps.maxMessageBytes ?? 4 * 1024 * 1024,
    maxTimeoutMs: deps.maxTimeoutMs ?? 300_000,
    shutdownSignal: shutdownController.signal,
    originAllowed: (origin) => corsOrigins.has(origin) || (development && corsOrigins.has("*")),
    clientAddress: (req) => forwardedFor(req, deps.behindTls === true),
    ...(deps.wsPingIntervalMs !== undefined ? { pingIntervalMs: deps.wsPingIntervalMs } : {}),
  });

  // --- operational endpoints ---------------------------------------------------------------

  const consoleSite = deps.consoleDir !== undefined ? openConsole(deps.consoleDir) : undefined;
  let docsHtml: string | undefined;
  let jwksCache: { body: string; fetchedAt: number } | undefined;

  async function healthOf(): Promise<{ ok: boolean; services: Record<string, string> }> {
    const entries = await Promise.all(
      [...healthClients].map(async ([name, client]) => {
        try {
          const res = await client.check({ service: "" }, { timeoutMs: 2_000 });
          return [name, ServingStatus[res.status]] as const;
        } catch (err) {
          return [name, err instanceof ConnectError ? codeLabel(err.code) : "UNAVAILABLE"] as const;
        }
      }),
    );
    return {
      ok: entries.every(([, status]) => status === "SERVING"),
      services: Object.fromEntries(entries),
    };
  }

  async function jwks(): Promise<string | undefined> {
    const now = Date.now();
    if (jwksCache !== undefined && now - jwksCache.fetchedAt < 60_000) return jwksCache.body;
    if (authClient === undefined) return undefined;
    try {
      const res = await authClient.getJwks({}, { timeoutMs: 3_000 });
      jwksCache = { body: JSON.stringify(toJson(GetJwksResponseSchema, res)), fetchedAt: now };
    } catch (err) {
      logger.warn({ err }, "could not refresh the JWKS from auth");
    }
    return jwksCache?.body;
  }

  async function endpoint(path: string, res: NodeResponse): Promise<boolean> {
    switch (path) {
      case "/live":
        sendJson(res, 200, { status: "alive" });
        return true;
      case "/ready": {
        if (draining) {
          sendJson(res, 503, { status: "draining" });
          return true;
        }
        const health = await healthOf();
        sendJson(res, health.ok ? 200 : 503, { status: health.ok ? "ready" : "not ready" });
        return true;
      }
      case "/health": {
        const health = await healthOf();
        const ok = health.ok && !draining;
        sendJson(res, ok ? 200 : 503, {
          status: ok ? "ok" : draining ? "draining" : "degraded",
          services: health.services,
        });
        return true;
      }
      case "/info":
        sendJson(res, 200, {
          name: "ensemble-gateway",
          version: deps.version,
          protocols: ["connect", "grpc", "grpc-web"],
          services: deps.upstreams.map((u) => ({
            name: u.name,
            contracts: u.services.map((s) => s.typeName),
          })),
        });
        return true;
      case "/metrics": {
        const text = await metrics.text();
        res.writeHead(200, { "content-type": metrics.registry.contentType });
        res.end(text);
        return true;
      }
      case "/.well-known/jwks.json": {
        const body = await jwks();
        if (body === undefined) {
          sendJson(res, 503, { code: "unavailable", message: "signing keys unavailable" });
        } else {
          res.writeHead(200, {
            "content-type": "application/json",
            "cache-control": "public, max-age=60",
          });
          res.end(body);
        }
        return true;
      }
      case "/docs":
      case "/docs/": {
        docsHtml ??= renderDocs(routedServices, deps.version, openai.routes);
        res.writeHead(200, {
          "content-type": "text/html; charset=utf-8",
          "content-security-policy":
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        });
        res.end(docsHtml);
        return true;
      }
      default:
        return false;
    }
  }

  // --- the HTTP front ------------------------------------------------------------------------

  function handler(req: NodeRequest, res: NodeResponse): void {
    // Request id: the caller's when sane, else ours; seen by the routes, returned to the caller.
    const incoming = req.headers["x-request-id"];
    const requestId =
      typeof incoming === "string" && REQUEST_ID_PATTERN.test(incoming) ? incoming : randomUUID();
    req.headers["x-request-id"] = requestId;
    res.setHeader("x-request-id", requestId);
    res.setHeader("x-content-type-options", "nosniff");
    res.setHeader("content-security-policy", "frame-ancestors 'none'");
    res.setHeader("x-frame-options", "DENY");
    res.setHeader("referrer-policy", "no-referrer");
    if (deps.behindTls === true) {
      res.setHeader("strict-transport-security", "max-age=63072000; includeSubDomains");
    }

    const origin = req.headers.origin;
    const originAllowed =
      typeof origin === "string" &&
      (corsOrigins.has(origin) || (development && corsOrigins.has("*")));
    if (typeof origin === "string") res.setHeader("vary", "origin");
    if (originAllowed) {
      res.setHeader("access-control-allow-origin", origin);
      res.setHeader("access-control-expose-headers", CORS_EXPOSE_HEADERS);
    }
    if (req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined) {
      if (!originAllowed) {
        res.writeHead(403, { "content-type": "text/plain" });
        res.end("origin not allowed");
        return;
      }
      res.writeHead(204, {
        "access-control-allow-methods": "GET, POST, DELETE",
        "access-control-allow-headers": CORS_ALLOW_HEADERS,
        "access-control-max-age": "7200",
      });
      res.end();
      return;
    }

    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (path.startsWith("/v1/")) {
      openai.handle(req, res, path);
      return;
    }
    if (req.method === "GET" && !path.startsWith("/ensemble.") && !path.startsWith("/grpc.")) {
      endpoint(path, res)
        .then(async (handled) => {
          if (handled) return true;
          const etag = req.headers["if-none-match"];
          return (
            consoleSite?.serve(path, typeof etag === "string" ? etag : undefined, res) ?? false
          );
        })
        .then(
          (handled) => {
            if (!handled) sendJson(res, 404, { code: "not_found", message: "not found" });
          },
          (err: unknown) => {
            logger.error({ err, path }, "endpoint failed");
            if (!res.headersSent)
              sendJson(res, 500, { code: "internal", message: "internal error" });
            else res.end();
          },
        );
      return;
    }
    connectHandler(req, res);
  }

  let listener: Listener | undefined;
  return {
    handler,
    authenticator,
    async listen(port, host = "127.0.0.1") {
      let waited: NodeJS.Timeout | undefined;
      const known = await Promise.race([
        revocations.ready.then(() => true),
        new Promise<false>((resolve) => (waited = setTimeout(() => resolve(false), READY_WAIT_MS))),
      ]);
      clearTimeout(waited);
      if (!known) {
        logger.warn(
          { waitedMs: READY_WAIT_MS },
          "the stored revocations are not read yet (NATS?): listening anyway; tokens revoked before this replica started are refused once they are",
        );
      }
      listener = await listenDual(handler, host, port, {
        onUpgrade: (req, socket, head) => ws.handleUpgrade(req, socket, head),
      });
      return listener.port;
    },
    async shutdown(opts) {
      draining = true;
      for (const sub of noticeSubs) sub.unsubscribe();
      ws.drain();
      const timeoutMs = opts?.timeoutMs ?? 10_000;
      const forced = setTimeout(
        () => shutdownController.abort(new ConnectError("gateway shutting down", Code.Unavailable)),
        Math.max(0, timeoutMs - 1_000),
      );
      try {
        await listener?.close(timeoutMs);
      } finally {
        clearTimeout(forced);
      }
    },
  };
}

function protocolOf(contentType: string | null): string {
  if (contentType?.startsWith("application/grpc-web") === true) return "grpc-web";
  if (contentType?.startsWith("application/grpc") === true) return "grpc";
  return "connect";
}

interface JsonSink {
  writeHead(status: number, headers: Record<string, string>): unknown;
  end(body: string): unknown;
}

function sendJson(res: JsonSink, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** The client address for the upstream; a proxy's X-Forwarded-For is kept only when trusted. */
function forwardedFor(req: NodeRequest, trustProxy: boolean): string {
  const peer = req.socket.remoteAddress ?? "";
  const existing = req.headers["x-forwarded-for"];
  if (trustProxy && typeof existing === "string" && existing !== "") {
    return peer === "" ? existing : `${existing}, ${peer}`;
  }
  return peer;
}
