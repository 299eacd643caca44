// Forwarding: a generic Connect implementation for every routed method, which calls the owning
// service through the kit's grpc-js client and re-creates its errors for the client.
import { getOption, type DescMethod, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  type CallOptions,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import {
  createAsyncIterable,
  type UniversalHandler,
  type UniversalServerRequest,
  type UniversalServerResponse,
} from "@connectrpc/connect/protocol";
import { codeLabel, type GrpcClient, type Logger } from "@ensemble/kit";
import { Access, access as accessOption } from "@ensemble/proto";
import type { Caller } from "./authn.js";

export const callerKey = createContextKey<Caller | undefined>(undefined, {
  description: "authenticated caller",
});
export const clientAddressKey = createContextKey<string>("", {
  description: "x-forwarded-for value for the upstream",
});

/** The method's access level; UNSPECIFIED (nobody decided) counts as INTERNAL. */
export function accessOf(method: DescMethod): Access {
  const access = getOption(method, accessOption);
  return access === Access.UNSPECIFIED ? Access.INTERNAL : access;
}

/** Methods the gateway exposes: everything not INTERNAL, unary or server streaming. */
export function routedMethods(service: DescService): DescMethod[] {
  return service.methods.filter(
    (m) =>
      accessOf(m) !== Access.INTERNAL &&
      (m.methodKind === "unary" || m.methodKind === "server_streaming"),
  );
}

/**
 * What the upstream call carries: the caller's token (never the client's raw header), request id,
 * client address, trace context, the remaining deadline and the client's abort signal.
 */
function upstreamOptions(ctx: HandlerContext): CallOptions {
  const headers = new Headers();
  const caller = ctx.values.get(callerKey);
  if (caller !== undefined) headers.set("authorization", `Bearer ${caller.token}`);
  const requestId = ctx.requestHeader.get("x-request-id");
  if (requestId !== null) headers.set("x-request-id", requestId);
  // A client's W3C trace context continues upstream (the kit client starts one otherwise).
  for (const name of ["traceparent", "tracestate"]) {
    const value = ctx.requestHeader.get(name);
    if (value !== null && value.length <= 512) headers.set(name, value);
  }
  const forwardedFor = ctx.values.get(clientAddressKey);
  if (forwardedFor !== "") headers.set("x-forwarded-for", forwardedFor);
  const timeoutMs = ctx.timeoutMs();
  return {
    headers,
    signal: ctx.signal,
    ...(timeoutMs !== undefined ? { timeoutMs: Math.max(1, timeoutMs) } : {}),
  };
}

/** Trailers of the upstream call that carry information the client needs. */
const PASSED_TRAILERS = ["retry-after-ms", "x-invalid-field"];

/**
 * A fresh error for the client from an upstream failure: code, message and typed details;
 * never the upstream error object itself. Messages that can carry peer addresses or driver
 * text (transport failures, INTERNAL, UNKNOWN) are replaced; the original goes to the log.
 * When our own caller's deadline passed or it went away, that is the answer, so a deadline is
 * never reported as a cancellation.
 */
export function upstreamError(
  err: unknown,
  ctx: HandlerContext,
  trailers: Headers | undefined,
  logger: Logger,
): ConnectError {
  if (ctx.signal.aborted) {
    const reason: unknown = ctx.signal.reason;
    if (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) {
      return new ConnectError("deadline exceeded", Code.DeadlineExceeded);
    }
    return new ConnectError("cancelled", Code.Canceled);
  }
  const upstream = ConnectError.from(err);
  let message: string;
  let keepDetails = true;
  switch (upstream.code) {
    case Code.Unavailable:
      message = "service unavailable";
      keepDetails = false;
      break;
    case Code.Internal:
    case Code.Unknown:
    case Code.DataLoss:
      message = "internal error";
      keepDetails = false;
      break;
    case Code.DeadlineExceeded:
      message = "deadline exceeded";
      keepDetails = false;
      break;
    case Code.Canceled:
      message = "cancelled";
      keepDetails = false;
      break;
    default:
      message = upstream.rawMessage;
  }
  if (!keepDetails || upstream.code === Code.Unknown) {
    logger.warn(
      { code: codeLabel(upstream.code), upstreamMessage: upstream.rawMessage },
      "upstream call failed",
    );
  }
  const metadata = new Headers();
  for (const name of PASSED_TRAILERS) {
    const value = trailers?.get(name);
    if (value !== null && value !== undefined) metadata.set(name, value);
  }
  const retryAfterMs = Number(metadata.get("retry-after-ms"));
  if (
    upstream.code === Code.ResourceExhausted &&
    Number.isFinite(retryAfterMs) &&
    retryAfterMs > 0
  ) {
    metadata.set("retry-after", String(Math.max(1, Math.ceil(retryAfterMs / 1000))));
  }
  const fresh = new ConnectError(message, upstream.code, metadata);
  if (keepDetails) fresh.details = [...upstream.details];
  return fresh;
}

type UnaryFn = (req: unknown, opts: CallOptions) => Promise<unknown>;
type StreamFn = (req: unknown, opts: CallOptions) => AsyncIterable<unknown>;

export interface ForwardHooks {
  logger: Logger;
  /**
   * Completes a request before it goes upstream (e.g. `model: "auto"` becomes the categorizer's
   * model), with the upstream call's options; its errors reach the client as the call's would.
   */
  prepare?: (
    method: DescMethod,
    req: unknown,
    ctx: HandlerContext,
    opts: CallOptions,
  ) => Promise<void>;
  /** Called after a successful unary call (e.g. RevokeApiKey invalidates the key cache). */
  afterUnary?: (method: DescMethod, req: unknown, res: unknown) => void;
  /**
   * Tracks a server stream while it runs (live.ts); `end` stops it with UNAUTHENTICATED when
   * its credential is revoked meanwhile. Returns the function that stops tracking it.
   */
  track?: (ctx: HandlerContext, end: (message: string) => void) => () => void;
}

/** The Connect implementation of `service` that forwards every routed method to `client`. */
export function forwardingImpl(
  service: DescService,
  client: GrpcClient<DescService>,
  hooks: ForwardHooks,
): Partial<ServiceImpl<DescService>> {
  const impl: Record<string, unknown> = {};
  const calls = client as unknown as Record<string, UnaryFn | StreamFn>;
  for (const method of routedMethods(service)) {
    const call = calls[method.localName];
    if (call === undefined) continue;
    if (method.methodKind === "unary") {
      const unary = call as UnaryFn;
      impl[method.localName] = async (req: unknown, ctx: HandlerContext) => {
        let trailers: Headers | undefined;
        try {
          const options = upstreamOptions(ctx);
          await hooks.prepare?.(method, req, ctx, options);
          const res = await unary(req, { ...options, onTrailer: (t) => (trailers = t) });
          hooks.afterUnary?.(method, req, res);
          return res;
        } catch (err) {
          throw upstreamError(err, ctx, trailers, hooks.logger);
        }
      };
    } else {
      const stream = call as StreamFn;
      impl[method.localName] = async function* (req: unknown, ctx: HandlerContext) {
        let trailers: Headers | undefined;
        const revoked = new AbortController();
        const untrack = hooks.track?.(ctx, (message) =>
          revoked.abort(new ConnectError(message, Code.Unauthenticated)),
        );
        try {
          const options = upstreamOptions(ctx);
          options.signal = AbortSignal.any([ctx.signal, revoked.signal]);
          await hooks.prepare?.(method, req, ctx, options);
          yield* stream(req, { ...options, onTrailer: (t) => (trailers = t) });
        } catch (err) {
          if (revoked.signal.aborted && !ctx.signal.aborted) throw revoked.signal.reason;
          throw upstreamError(err, ctx, trailers, hooks.logger);
        } finally {
          untrack?.();
        }
      };
    }
  }
  return impl as Partial<ServiceImpl<DescService>>;
}

/**
 * connect-es answers a request body that is not valid protobuf binary with INTERNAL ("parse
 * binary: ..."), which the Connect protocol sends as HTTP 500, although the client sent the bad
 * bytes (a malformed JSON body is already INVALID_ARGUMENT). This wrapper turns exactly that
 * answer into INVALID_ARGUMENT / HTTP 400, as connect-go does. gRPC and gRPC-web clients keep
 * INTERNAL in the trailers (HTTP 200), which is what grpc-go and grpc-js servers answer too.
 */
export function malformedAsInvalidArgument(handler: UniversalHandler): UniversalHandler {
  const wrapped = async (req: UniversalServerRequest): Promise<UniversalServerResponse> => {
    const res = await handler(req);
    if (res.status !== 500 || res.body === undefined) return res;
    const chunks: Uint8Array[] = [];
    for await (const chunk of res.body) chunks.push(chunk);
    const bytes = Buffer.concat(chunks);
    let error: { code?: unknown; message?: unknown } | undefined;
    try {
      error = JSON.parse(bytes.toString("utf8")) as typeof error;
    } catch {
      // Not a JSON error body (compressed, or not Connect's): left as it is.
    }
    const message = typeof error?.message === "string" ? error.message : "";
    if (error?.code !== "internal" || !message.startsWith("parse binary:")) {
      return { ...res, body: createAsyncIterable([bytes]) };
    }
    const body = Buffer.from(
      JSON.stringify({
        code: "invalid_argument",
        message: `the request body is not a valid ${handler.method.input.typeName} message (${message.slice("parse binary:".length).trim()})`,
      }),
    );
    const header = new Headers(res.header);
    header.set("content-length", String(body.byteLength));
    return { ...res, status: 400, header, body: createAsyncIterable([body]) };
  };
  return Object.assign(wrapped, {
    requestPath: handler.requestPath,
    method: handler.method,
    service: handler.service,
    protocolNames: handler.protocolNames,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}
