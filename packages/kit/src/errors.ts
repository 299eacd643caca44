// Domain errors and the one place where any thrown value becomes a status code.
//
// Services throw these typed errors (or a ConnectError when they want an exact code); the
// server pipeline calls toConnectError once, at the edge. Anything we do not recognise becomes
// INTERNAL "internal error": its message and stack can hold driver messages, peer addresses or
// worse, so they go to the log (the caller logs `cause`) and never to the client.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ClosedConnectionError,
  ConnectionError,
  DrainingConnectionError,
  NoRespondersError,
  RequestError,
  TimeoutError,
} from "@nats-io/transport-node";

export interface ErrorOptions {
  cause?: unknown;
}

/** Base of every kit domain error; `code` is the gRPC/Connect code it maps to. */
export abstract class DomainError extends Error {
  abstract readonly code: Code;
  constructor(message: string, options?: ErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
  }
}

export class NotFoundError extends DomainError {
  override name = "NotFoundError";
  readonly code = Code.NotFound;
}

export class InvalidArgumentError extends DomainError {
  override name = "InvalidArgumentError";
  readonly code = Code.InvalidArgument;
  /** Path of the offending field in the request, e.g. "model.id", when one field is to blame. */
  readonly field: string | undefined;
  constructor(message: string, options?: ErrorOptions & { field?: string }) {
    super(message, options);
    this.field = options?.field;
  }
}

export class AlreadyExistsError extends DomainError {
  override name = "AlreadyExistsError";
  readonly code = Code.AlreadyExists;
}

export class PermissionDeniedError extends DomainError {
  override name = "PermissionDeniedError";
  readonly code = Code.PermissionDenied;
}

export class UnauthenticatedError extends DomainError {
  override name = "UnauthenticatedError";
  readonly code = Code.Unauthenticated;
}

export class ResourceExhaustedError extends DomainError {
  override name = "ResourceExhaustedError";
  readonly code = Code.ResourceExhausted;
  /** When the caller may try again; sent to the client as the `retry-after-ms` trailer. */
  readonly retryAfterMs: number | undefined;
  constructor(message: string, options?: ErrorOptions & { retryAfterMs?: number }) {
    super(message, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
}

export class FailedPreconditionError extends DomainError {
  override name = "FailedPreconditionError";
  readonly code = Code.FailedPrecondition;
}

export class UnavailableError extends DomainError {
  override name = "UnavailableError";
  readonly code = Code.Unavailable;
}

export class DeadlineExceededError extends DomainError {
  override name = "DeadlineExceededError";
  readonly code = Code.DeadlineExceeded;
}

export class AbortedError extends DomainError {
  override name = "AbortedError";
  readonly code = Code.Aborted;
}

/** The message sent for every error we do not recognise. */
export const INTERNAL_ERROR_MESSAGE = "internal error";

/**
 * The one mapping from a thrown value to what the client sees.
 * - ConnectError: passed through unchanged (the thrower chose the code and message).
 * - kit domain errors: their code and message (`field` / `retryAfterMs` go into metadata).
 * - MongoDB or NATS unreachable or not answering in time: UNAVAILABLE naming which (a client
 *   retries that), with the driver's error kept as `cause` for the log.
 * - anything else: INTERNAL "internal error", with the original kept as `cause` for the log.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof DomainError) {
    const metadata = new Headers();
    if (err instanceof InvalidArgumentError && err.field !== undefined) {
      metadata.set("x-invalid-field", err.field);
    }
    if (err instanceof ResourceExhaustedError && err.retryAfterMs !== undefined) {
      metadata.set("retry-after-ms", String(Math.max(0, Math.ceil(err.retryAfterMs))));
    }
    return new ConnectError(err.message, err.code, metadata, undefined, err);
  }
  const dependency = unavailableDependency(err);
  if (dependency !== undefined) {
    return new ConnectError(
      `${dependency} is not answering right now; try again shortly`,
      Code.Unavailable,
      undefined,
      undefined,
      err,
    );
  }
  return new ConnectError(INTERNAL_ERROR_MESSAGE, Code.Internal, undefined, undefined, err);
}

// The MongoDB driver's errors for "cannot reach or lost the server" (by name: the driver is
// mongoose's, and a service may hold another copy of it).
const MONGO_UNREACHABLE = new Set([
  "MongoServerSelectionError",
  "MongoNetworkError",
  "MongoNetworkTimeoutError",
  "MongoTopologyClosedError",
  "MongoPoolClearedError",
  "MongoNotConnectedError",
]);

/** Which backing service an error says is unreachable or too slow (its cause chain included). */
export function unavailableDependency(err: unknown): "MongoDB" | "NATS" | undefined {
  let e: unknown = err;
  for (let depth = 0; e instanceof Error && depth < 4; depth++, e = e.cause) {
    if (MONGO_UNREACHABLE.has(e.name)) return "MongoDB";
    // mongoose queues operations while disconnected and gives up after bufferTimeoutMS.
    if (e.name === "MongooseError" && /buffering timed out/.test(e.message)) return "MongoDB";
    if (
      e instanceof TimeoutError ||
      e instanceof ClosedConnectionError ||
      e instanceof ConnectionError ||
      e instanceof DrainingConnectionError ||
      e instanceof NoRespondersError ||
      e instanceof RequestError
    ) {
      return "NATS";
    }
  }
  return undefined;
}

/** True when the error is one we generated for an unknown failure (the caller logs its stack). */
export function isUnexpected(err: ConnectError): boolean {
  return (
    err.code === Code.Internal &&
    err.rawMessage === INTERNAL_ERROR_MESSAGE &&
    err.cause !== undefined &&
    !(err.cause instanceof ConnectError) &&
    !(err.cause instanceof DomainError)
  );
}
