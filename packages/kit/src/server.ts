// The gRPC server: grpc-js on the wire, protobuf-es descriptors and Connect-style handlers in
// the code. Every call goes through one pipeline (see `serveCall`): request id -> trace context
// -> request logger -> metrics -> access policy -> validation -> handler -> error mapping, and
// ends with exactly one log line.
import { setMaxListeners } from "node:events";
import {
  create,
  fromBinary,
  getOption,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createHandlerContext,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { Access, access as accessOption, Health } from "@ensemble/proto";
import * as grpc from "@grpc/grpc-js";
import { context as otelContext, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { checkAccess, type Principal, type TokenVerifier } from "./auth.js";
import { loggerKey, principalKey, requestIdKey, runInCall, type CallInfo } from "./context.js";
import { DomainError, isUnexpected, toConnectError, UnauthenticatedError } from "./errors.js";
import { createHealthImpl, HealthState, ServingStatus } from "./health.js";
import type { Logger } from "./logger.js";
import {
  bearerToken,
  headersToMetadata,
  MalformedAuthorizationError,
  metadataToHeaders,
  REQUEST_ID_HEADER,
  requestIdFrom,
} from "./metadata.js";
import { codeLabel, type Metrics } from "./metrics.js";
import { addReflection } from "./reflection.js";
import { extractTraceContext } from "./tracing.js";
import { prepareValidation, validateMessage } from "./validation.js";

export interface ServiceRegistration {
  service: DescService;
  // Any service's implementation; `service()` below is the typed way to build one.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  impl: Partial<ServiceImpl<any>>;
}

/** Pairs a service with its implementation, type-checked against the contract. */
export function service<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
): ServiceRegistration {
  return { service, impl };
}

export interface KitServerOptions {
  name: string;
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
  metrics?: Metrics;
  services: ServiceRegistration[];
  /** Largest request or response message, in bytes (default 4 MiB, the gRPC default). */
  maxMessageBytes?: number;
}

export interface KitServer {
  readonly grpc: grpc.Server;
  /** Binds (plaintext h2c) and returns the bound port; "127.0.0.1:0" picks a free one. */
  listen(address: string): Promise<number>;
  /** grpc.health.v1 status of "" and of every service. */
  setServing(serving: boolean): void;
  /** NOT_SERVING first, then refuse new calls and let in-flight ones finish; force after timeoutMs. */
  shutdown(opts?: { timeoutMs?: number }): Promise<void>;
}

const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;
// The reason ctx.signal carries once a call is over: what AbortController.abort() would make,
// made once (a DOMException per call, with its stack trace, was a measurable share of a call).
const CALL_ENDED = new DOMException("This operation was aborted", "AbortError");
const tracer = trace.getTracer("@ensemble/kit");

/** Everything a call needs from its server. */
interface ServerRuntime {
  opts: KitServerOptions;
  /** Aborted by a forced shutdown: every handler's ctx.signal fires. */
  shutdownSignal: AbortSignal;
}

interface MethodBinding {
  service: DescService;
  method: DescMethod;
  access: Access;
  path: string;
}

type UnaryFn = (req: unknown, ctx: HandlerContext) => unknown;
type StreamFn = (req: unknown, ctx: HandlerContext) => AsyncIterable<unknown>;
type AnyMessage = MessageShape<DescMessage>;

export function createServer(opts: KitServerOptions): KitServer {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": opts.maxMessageBytes ?? 4 * 1024 * 1024,
    "grpc.max_send_message_length": opts.maxMessageBytes ?? 4 * 1024 * 1024,
    // Clients balance over the replicas DNS returned when they connected; ageing connections
    // out (in-flight calls finish on the old one) makes them re-resolve and find new replicas.
    "grpc.max_connection_age_ms": 5 * 60_000,
  });
  const shutdownController = new AbortController();
  // Every call in flight links its ctx.signal to this one signal (one abort listener each, removed
  // when the call ends), so dozens of listeners are normal, not a leak.
  setMaxListeners(0, shutdownController.signal);
  const runtime: ServerRuntime = { opts, shutdownSignal: shutdownController.signal };
  const health = new HealthState(opts.services.map((r) => r.service.typeName));

  for (const registration of opts.services) {
    addService(server, runtime, registration, undefined);
  }
  // Health and reflection must answer probes and tools that carry no token.
  addService(server, runtime, { service: Health, impl: createHealthImpl(health) }, Access.PUBLIC);
  addReflection(server, [...opts.services.map((r) => r.service), Health]);

  return {
    grpc: server,
    listen(address) {
      return new Promise<number>((resolve, reject) => {
        server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
          if (err) reject(err);
          else resolve(port);
        });
      });
    },
    setServing(serving) {
      health.setAll(serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
    },
    async shutdown(shutdownOpts) {
      const timeoutMs = shutdownOpts?.timeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
      // Load balancers and probes see NOT_SERVING before anything is refused; Watch streams
      // get that status and then end, so they do not hold the drain open.
      health.setAll(ServingStatus.NOT_SERVING);
      health.close();
      opts.logger.info({ timeoutMs }, "server shutting down");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          opts.logger.warn(
            { timeoutMs },
            "in-flight calls did not finish in time; forcing shutdown",
          );
          shutdownController.abort(new ConnectError("server shutting down", Code.Unavailable));
          server.forceShutdown();
          resolve();
        }, timeoutMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

function addService(
  server: grpc.Server,
  runtime: ServerRuntime,
  registration: ServiceRegistration,
  accessOverride: Access | undefined,
): void {
  const { service: desc, impl } = registration;
  const definition: Record<string, grpc.MethodDefinition<AnyMessage, AnyMessage>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of desc.methods) {
    if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") {
      throw new Error(
        `${desc.typeName}.${method.name}: ${method.methodKind} methods are not supported by the kit (only unary and server streaming)`,
      );
    }
    const fn = (impl as Record<string, unknown>)[method.localName];
    if (fn === undefined) continue; // unimplemented: grpc-js answers UNIMPLEMENTED
    if (typeof fn !== "function")
      throw new Error(`${desc.typeName}.${method.name}: implementation is not a function`);
    prepareValidation(method.input);
    const binding: MethodBinding = {
      service: desc,
      method,
      // UNSPECIFIED means nobody decided: the strictest policy (INTERNAL) applies.
      access: accessOverride ?? getOption(method, accessOption),
      path: `/${desc.typeName}/${method.name}`,
    };
    definition[method.name] = {
      path: binding.path,
      requestStream: false,
      responseStream: method.methodKind === "server_streaming",
      originalName: method.localName,
      requestSerialize: (value: AnyMessage) => Buffer.from(toBinary(method.input, value)),
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      responseSerialize: (value: AnyMessage) => Buffer.from(toBinary(method.output, value)),
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
    };
    handlers[method.name] =
      method.methodKind === "unary"
        ? unaryHandler(runtime, binding, fn.bind(impl) as UnaryFn)
        : streamHandler(runtime, binding, fn.bind(impl) as StreamFn);
  }
  server.addService(definition, handlers);
}

function unaryHandler(
  runtime: ServerRuntime,
  binding: MethodBinding,
  fn: UnaryFn,
): grpc.handleUnaryCall<AnyMessage, AnyMessage> {
  return (call, callback) => {
    const scope = startCall(runtime, binding, call, false);
    void scope
      .run(async (ctx) =>
        create(binding.method.output, (await fn(call.request, ctx)) as AnyMessage),
      )
      .then(
        (response) => {
          scope.sendHeaders();
          callback(null, response, scope.trailers());
        },
        (err: ConnectError) => {
          scope.sendHeaders();
          callback(toStatus(err, scope.trailers()));
        },
      );
  };
}

function streamHandler(
  runtime: ServerRuntime,
  binding: MethodBinding,
  fn: StreamFn,
): grpc.handleServerStreamingCall<AnyMessage, AnyMessage> {
  return (call) => {
    const scope = startCall(runtime, binding, call, true);
    void scope
      .run(async (ctx) => {
        const iterator = fn(call.request, ctx)[Symbol.asyncIterator]();
        // Racing each step against the signal ends the call promptly on cancel or deadline,
        // even while the generator is still waiting for its next message.
        const aborted = abortPromise(ctx.signal);
        try {
          for (;;) {
            const next = await Promise.race([iterator.next(), aborted]);
            if (next.done === true) return;
            scope.sendHeaders();
            const message = create(binding.method.output, next.value as AnyMessage);
            if (!call.write(message)) await Promise.race([drained(call), aborted]);
          }
        } finally {
          // Stops the generator (runs its finally blocks) if we leave early.
          void iterator.return?.().catch(() => undefined);
        }
      })
      .then(
        () => {
          scope.sendHeaders();
          call.end(scope.trailers());
        },
        (err: ConnectError) => {
          scope.sendHeaders();
          call.emit("error", toStatus(err, scope.trailers()));
        },
      );
  };
}

/** Rejects when the signal aborts; never an unhandled rejection when nobody is racing it. */
function abortPromise(signal: AbortSignal): Promise<never> {
  const promise = new Promise<never>((_, reject) => {
    const fail = (): void =>
      reject(
        signal.reason instanceof Error ? signal.reason : new ConnectError("aborted", Code.Canceled),
      );
    if (signal.aborted) fail();
    else signal.addEventListener("abort", fail, { once: true });
  });
  promise.catch(() => undefined);
  return promise;
}

function drained(call: grpc.ServerWritableStream<AnyMessage, AnyMessage>): Promise<void> {
  return new Promise((resolve) => call.once("drain", () => resolve()));
}

type AnyServerCall =
  grpc.ServerUnaryCall<AnyMessage, AnyMessage> | grpc.ServerWritableStream<AnyMessage, AnyMessage>;

interface CallScope {
  /** Runs the pipeline and the body; rejects only with the mapped ConnectError. */
  run<T>(body: (ctx: HandlerContext) => Promise<T>): Promise<T>;
  /** Sends response headers (x-request-id and the handler's) once, before the first message or status. */
  sendHeaders(): void;
  trailers(): grpc.Metadata;
}

function startCall(
  runtime: ServerRuntime,
  binding: MethodBinding,
  call: AnyServerCall,
  streaming: boolean,
): CallScope {
  const { opts } = runtime;
  const started = performance.now();
  const requestHeader = metadataToHeaders(call.metadata);
  const requestId = requestIdFrom(requestHeader);
  const traceContext = extractTraceContext(traceCarrier(requestHeader));
  let logger = opts.logger.child({ requestId, method: binding.path });

  const deadlineValue = call.getDeadline();
  const deadlineMs = deadlineValue instanceof Date ? deadlineValue.getTime() : deadlineValue;
  const deadline = Number.isFinite(deadlineMs) ? new Date(deadlineMs) : undefined;

  // The client going away (cancel, or grpc-js giving up at the deadline) aborts ctx.signal;
  // the reason tells the handler which one it was.
  // grpc-js emits "cancelled" whenever the stream closes, also after every completed call, so
  // the listener goes once the call's outcome is settled (see run's finally).
  const requestAbort = new AbortController();
  const onCancelled = (): void => {
    const expired = deadline !== undefined && Date.now() >= deadline.getTime() - 5;
    requestAbort.abort(
      expired
        ? new ConnectError("deadline exceeded", Code.DeadlineExceeded)
        : new ConnectError("cancelled by the client", Code.Canceled),
    );
  };
  call.on("cancelled", onCancelled);

  const values = createContextValues().set(requestIdKey, requestId).set(loggerKey, logger);
  const ctx = createHandlerContext({
    service: binding.service,
    method: binding.method,
    protocolName: "grpc",
    requestMethod: "POST",
    url: binding.path,
    ...(deadline !== undefined ? { timeoutMs: Math.max(0, deadline.getTime() - Date.now()) } : {}),
    shutdownSignal: runtime.shutdownSignal,
    requestSignal: requestAbort.signal,
    requestHeader,
    contextValues: values,
  });
  const authorization = requestHeader.get("authorization") ?? undefined;
  const info: CallInfo = {
    requestId,
    method: binding.path,
    logger,
    traceContext,
    ...(deadline !== undefined ? { deadline } : {}),
    ...(authorization !== undefined ? { authorization } : {}),
  };

  const metrics = opts.metrics;
  const streamEnded = streaming ? metrics?.rpcServer.streamStarted(binding.path) : undefined;

  let headersSent = false;
  const scope: CallScope = {
    sendHeaders() {
      if (headersSent) return;
      headersSent = true;
      const metadata = headersToMetadata(ctx.responseHeader);
      metadata.set(REQUEST_ID_HEADER, requestId);
      call.sendMetadata(metadata);
    },
    trailers() {
      return headersToMetadata(ctx.responseTrailer);
    },
    async run(body) {
      const span = tracer.startSpan(
        binding.path.slice(1),
        {
          kind: SpanKind.SERVER,
          attributes: { "rpc.system": "grpc", "rpc.method": binding.method.name },
        },
        traceContext,
      );
      const spanContext = trace.setSpan(traceContext, span);
      info.traceContext = spanContext;
      let failure: ConnectError | undefined;
      try {
        return await otelContext.with(spanContext, () =>
          runInCall(info, async () => {
            const principal = await authorize(opts.verifier, binding, requestHeader);
            if (principal !== undefined) {
              values.set(principalKey, principal);
              info.principal = principal;
              logger = logger.child(principalFields(principal));
            }
            const requestFields = requestScopeFields(call.request);
            if (requestFields !== undefined) logger = logger.child(requestFields);
            values.set(loggerKey, logger);
            info.logger = logger;

            const invalid = validateMessage(binding.method.input, call.request);
            if (invalid !== undefined) throw invalid;
            // Token verification may have taken the rest of the caller's time.
            if (ctx.signal.aborted) throw toConnectError(ctx.signal.reason);
            return await body(ctx);
          }),
        );
      } catch (err) {
        failure = toConnectError(err);
        throw failure;
      } finally {
        // What the client saw: if it cancelled or its deadline passed, that is the outcome,
        // whatever the handler did afterwards.
        call.off("cancelled", onCancelled);
        const reason: unknown = requestAbort.signal.aborted
          ? requestAbort.signal.reason
          : undefined;
        const outcome = reason instanceof ConnectError ? reason : failure;
        const code = outcome?.code ?? 0;
        const codeText = codeLabel(code);
        const durationMs = performance.now() - started;
        ctx.abort(CALL_ENDED); // completes the call for the handler: clears the deadline timer
        span.setAttribute("rpc.grpc.status_code", code);
        if (outcome !== undefined)
          span.setStatus({ code: SpanStatusCode.ERROR, message: codeText });
        span.end();
        metrics?.rpcServer.observe(binding.path, code, durationMs / 1000);
        streamEnded?.();
        const fields = { code: codeText, durationMs: Math.round(durationMs * 10) / 10 };
        if (outcome !== undefined && isUnexpected(outcome)) {
          logger.error({ ...fields, err: outcome.cause }, "call failed with an unexpected error");
        } else if (outcome !== undefined && isServerFault(outcome.code)) {
          // A dependency's own error (the driver's) stays in the log, not in the answer.
          const foreign =
            outcome.cause instanceof Error &&
            !(outcome.cause instanceof ConnectError) &&
            !(outcome.cause instanceof DomainError);
          const cause = foreign ? { err: outcome.cause } : {};
          logger.warn({ ...fields, error: outcome.rawMessage, ...cause }, "call failed");
        } else if (outcome !== undefined) {
          logger.info({ ...fields, error: outcome.rawMessage }, "call finished");
        } else {
          logger.info(fields, "call finished");
        }
      }
    },
  };
  return scope;
}

async function authorize(
  verifier: TokenVerifier,
  binding: MethodBinding,
  headers: Headers,
): Promise<Principal | undefined> {
  if (binding.access === Access.PUBLIC) return undefined;
  let token: string | undefined;
  try {
    token = bearerToken(headers);
  } catch (err) {
    if (err instanceof MalformedAuthorizationError) throw new UnauthenticatedError(err.message);
    throw err;
  }
  const principal = token === undefined ? undefined : await verifier.verify(token);
  checkAccess(binding.access, principal);
  return principal;
}

function principalFields(principal: Principal): Record<string, string> {
  const fields: Record<string, string> = {
    tenantId: principal.tenantId,
    userId: principal.subject,
  };
  if (principal.sessionId !== undefined) fields["sessionId"] = principal.sessionId;
  if (principal.service !== undefined) fields["callerService"] = principal.service;
  return fields;
}

// Requests that name a run or a session get those ids in every log line of the call.
function requestScopeFields(request: unknown): Record<string, string> | undefined {
  if (typeof request !== "object" || request === null) return undefined;
  const fields: Record<string, string> = {};
  const { runId, sessionId } = request as { runId?: unknown; sessionId?: unknown };
  if (typeof runId === "string" && runId !== "") fields["runId"] = runId;
  if (typeof sessionId === "string" && sessionId !== "") fields["sessionId"] = sessionId;
  return Object.keys(fields).length > 0 ? fields : undefined;
}

function traceCarrier(headers: Headers): Record<string, string | undefined> {
  return {
    traceparent: headers.get("traceparent") ?? undefined,
    tracestate: headers.get("tracestate") ?? undefined,
  };
}

/** A ConnectError as the grpc-js status object (details travel in grpc-status-details-bin). */
function toStatus(err: ConnectError, trailers: grpc.Metadata): Partial<grpc.StatusObject> {
  headersToMetadata(err.metadata, trailers);
  if (err.details.length > 0) {
    const encoded = setTrailerStatus(new Headers(), err).get("grpc-status-details-bin");
    if (encoded !== null) trailers.set("grpc-status-details-bin", Buffer.from(encoded, "base64"));
  }
  const code: number = err.code; // Connect codes and gRPC statuses share their numbers
  return { code, details: err.rawMessage, metadata: trailers };
}

function isServerFault(code: Code): boolean {
  return (
    code === Code.Internal ||
    code === Code.Unknown ||
    code === Code.DataLoss ||
    code === Code.Unavailable
  );
}
