// gRPC client with the Connect `Client<S>` shape (unary -> Promise, server stream ->
// AsyncIterable), implemented with grpc-js. Inside a call served by the kit it carries the
// request id, the trace context and the caller's remaining deadline to the next hop by itself.
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import * as grpc from "@grpc/grpc-js";
import { currentCall } from "./context.js";
import { headersToMetadata, metadataToHeaders, REQUEST_ID_HEADER } from "./metadata.js";
import type { Metrics } from "./metrics.js";
import { injectTraceContext } from "./tracing.js";

export type GrpcClient<S extends DescService> = Client<S>;

export interface ClientOptions {
  /** A bearer token for every call (e.g. the service's own token, refreshed by the provider). */
  token?: () => string | Promise<string>;
  metrics?: Metrics;
  channelOptions?: grpc.ChannelOptions;
}

type AnyMessage = MessageShape<DescMessage>;

const ROUND_ROBIN = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });

/**
 * One client = one grpc-js channel to `address` ("host:port", or any grpc-js target such as
 * "dns:///registry:50052"). Plaintext (h2c): traffic inside the mesh.
 */
export function createClient<S extends DescService>(
  service: S,
  address: string,
  opts: ClientOptions = {},
): GrpcClient<S> {
  const channel = new grpc.Client(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
    // Client-side load balancing: a "host:port" target resolves through DNS, and behind a
    // Kubernetes headless Service that is every ready replica; round_robin spreads calls over
    // all of them (the default pick_first would pin every call to one replica).
    "grpc.service_config": ROUND_ROBIN,
    ...opts.channelOptions,
  });
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    const path = `/${service.typeName}/${method.name}`;
    switch (method.methodKind) {
      case "unary":
        client[method.localName] = (input: MessageInitShape<DescMessage>, options?: CallOptions) =>
          unaryCall(channel, address, path, method, input, options ?? {}, opts);
        break;
      case "server_streaming":
        client[method.localName] = (input: MessageInitShape<DescMessage>, options?: CallOptions) =>
          serverStreamCall(channel, address, path, method, input, options ?? {}, opts);
        break;
      default:
        client[method.localName] = () => {
          throw new ConnectError(
            `${method.methodKind} calls are not supported by the kit client`,
            Code.Unimplemented,
          );
        };
    }
  }
  return client as GrpcClient<S>;
}

interface PreparedCall {
  metadata: grpc.Metadata;
  options: grpc.CallOptions;
  request: AnyMessage;
}

async function prepare(
  method: DescMethod,
  input: MessageInitShape<DescMessage>,
  callOptions: CallOptions,
  opts: ClientOptions,
): Promise<PreparedCall> {
  // CallOptions.headers is the fetch HeadersInit type, which this lib setup does not name.
  const headers = new Headers(callOptions.headers as ConstructorParameters<typeof Headers>[0]);
  const parent = currentCall();
  if (parent !== undefined && !headers.has(REQUEST_ID_HEADER))
    headers.set(REQUEST_ID_HEADER, parent.requestId);
  if (!headers.has("traceparent")) {
    const carrier: Record<string, string> = {};
    if (parent?.traceContext !== undefined) injectTraceContext(carrier, parent.traceContext);
    else injectTraceContext(carrier);
    for (const [key, value] of Object.entries(carrier)) headers.set(key, value);
  }
  if (opts.token !== undefined && !headers.has("authorization")) {
    headers.set("authorization", `Bearer ${await opts.token()}`);
  }

  // The next hop never gets longer than our caller is willing to wait.
  let deadline: number | undefined =
    callOptions.timeoutMs !== undefined && callOptions.timeoutMs > 0
      ? Date.now() + callOptions.timeoutMs
      : undefined;
  if (parent?.deadline !== undefined) {
    const parentDeadline = parent.deadline.getTime();
    deadline = deadline === undefined ? parentDeadline : Math.min(deadline, parentDeadline);
  }
  const options: grpc.CallOptions = deadline === undefined ? {} : { deadline };
  const request = create(method.input, input);
  return { metadata: headersToMetadata(headers), options, request };
}

function serializer(desc: DescMessage) {
  return (value: AnyMessage): Buffer => Buffer.from(toBinary(desc, value));
}

function deserializer(desc: DescMessage) {
  return (bytes: Buffer): AnyMessage => fromBinary(desc, bytes);
}

async function unaryCall(
  channel: grpc.Client,
  target: string,
  path: string,
  method: DescMethod,
  input: MessageInitShape<DescMessage>,
  callOptions: CallOptions,
  opts: ClientOptions,
): Promise<AnyMessage> {
  const started = performance.now();
  let code: number = Code.Unknown;
  try {
    callOptions.signal?.throwIfAborted();
    const { metadata, options, request } = await prepare(method, input, callOptions, opts);
    const response = await new Promise<AnyMessage>((resolve, reject) => {
      const call = channel.makeUnaryRequest(
        path,
        serializer(method.input),
        deserializer(method.output),
        request,
        metadata,
        options,
        (err, value) => {
          callOptions.signal?.removeEventListener("abort", cancel);
          if (err) reject(err);
          else if (value === undefined) reject(new ConnectError("empty response", Code.Internal));
          else resolve(value);
        },
      );
      const cancel = (): void => call.cancel();
      callOptions.signal?.addEventListener("abort", cancel, { once: true });
      reportHeaders(call, callOptions);
    });
    code = 0;
    return response;
  } catch (err) {
    const error = toClientError(err, callOptions.signal);
    code = error.code;
    throw error;
  } finally {
    opts.metrics?.rpcClient.observe(target, path, code, (performance.now() - started) / 1000);
  }
}

async function* serverStreamCall(
  channel: grpc.Client,
  target: string,
  path: string,
  method: DescMethod,
  input: MessageInitShape<DescMessage>,
  callOptions: CallOptions,
  opts: ClientOptions,
): AsyncGenerator<AnyMessage> {
  const started = performance.now();
  // Stays CANCELLED when the consumer stops iterating early.
  let code: number = Code.Canceled;
  let call: grpc.ClientReadableStream<AnyMessage> | undefined;
  const cancel = (): void => call?.cancel();
  try {
    callOptions.signal?.throwIfAborted();
    const { metadata, options, request } = await prepare(method, input, callOptions, opts);
    call = channel.makeServerStreamRequest(
      path,
      serializer(method.input),
      deserializer(method.output),
      request,
      metadata,
      options,
    );
    callOptions.signal?.addEventListener("abort", cancel, { once: true });
    reportHeaders(call, callOptions);
    yield* readUntilStatus(call);
    code = 0;
  } catch (err) {
    const error = toClientError(err, callOptions.signal);
    code = error.code;
    throw error;
  } finally {
    callOptions.signal?.removeEventListener("abort", cancel);
    // Leaving the loop early (break / return) must stop the server's work too.
    if (code !== 0) call?.cancel();
    opts.metrics?.rpcClient.observe(target, path, code, (performance.now() - started) / 1000);
  }
}

/**
 * Messages of a server stream until its status. Only an OK status ends the iteration; any
 * other status (a server failing midway, a dropped connection) throws, so a broken stream is
 * never mistaken for a complete one. Reading pauses while the consumer lags behind.
 */
async function* readUntilStatus(
  call: grpc.ClientReadableStream<AnyMessage>,
): AsyncGenerator<AnyMessage> {
  const queue: AnyMessage[] = [];
  let status: grpc.StatusObject | undefined;
  let failure: unknown;
  let ended = false;
  let wake: (() => void) | undefined;
  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  call.on("data", (message: AnyMessage) => {
    queue.push(message);
    if (queue.length >= 16) call.pause();
    notify();
  });
  call.on("error", (err: unknown) => {
    failure = err;
    notify();
  });
  call.on("end", () => {
    ended = true;
    notify();
  });
  call.on("status", (s: grpc.StatusObject) => {
    status = s;
    notify();
  });
  for (;;) {
    const next = queue.shift();
    if (next !== undefined) {
      if (queue.length < 4 && call.isPaused()) call.resume();
      yield next;
      continue;
    }
    if (failure !== undefined) {
      throw failure instanceof Error ? failure : new ConnectError("stream failed", Code.Unknown);
    }
    if (status !== undefined && status.code !== grpc.status.OK) {
      throw new ConnectError(status.details, codeOf(status.code));
    }
    // 'end' comes after every buffered message was delivered; the OK status alone may not.
    if (ended && status?.code === grpc.status.OK) return;
    await new Promise<void>((resolve) => (wake = resolve));
  }
}

/** CallOptions.onHeader / onTrailer, with the peer's metadata as Headers. */
function reportHeaders(call: grpc.Call, callOptions: CallOptions): void {
  if (callOptions.onHeader !== undefined) {
    call.on("metadata", (md: grpc.Metadata) => callOptions.onHeader?.(metadataToHeaders(md)));
  }
  if (callOptions.onTrailer !== undefined) {
    call.on("status", (status: grpc.StatusObject) =>
      callOptions.onTrailer?.(metadataToHeaders(status.metadata)),
    );
  }
}

/** gRPC status numbers and Connect codes are the same numbers. */
function codeOf(status: grpc.status): Code {
  const code: number = status;
  return code;
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return (
    err instanceof Error &&
    typeof (err as Partial<grpc.ServiceError>).code === "number" &&
    "details" in err
  );
}

/**
 * A fresh ConnectError with the status code and message of the reply (and its typed error
 * details, e.g. validation violations); the peer's other metadata is deliberately not copied.
 */
function toClientError(err: unknown, signal: AbortSignal | undefined): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isServiceError(err)) {
    const error = new ConnectError(err.details, codeOf(err.code));
    const detailsBin = err.metadata?.get("grpc-status-details-bin")[0];
    if (detailsBin !== undefined) {
      const headers = new Headers({
        "grpc-status": String(err.code),
        "grpc-message": encodeURIComponent(err.details),
        "grpc-status-details-bin": Buffer.from(detailsBin).toString("base64"),
      });
      const parsed = findTrailerError(headers);
      if (parsed !== undefined) error.details = parsed.details;
    }
    return error;
  }
  if (signal?.aborted === true)
    return new ConnectError("call cancelled by the caller", Code.Canceled);
  return ConnectError.from(err, Code.Internal);
}
