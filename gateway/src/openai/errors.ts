// Errors of the OpenAI-compatible API, always in OpenAI's shape
// `{"error":{"message","type","param","code"}}`, so OpenAI client libraries raise their usual
// typed exceptions (BadRequestError, AuthenticationError, RateLimitError, ...).
//
// Upstream failures arrive as gRPC codes. Messages of codes our own services use for client
// mistakes (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...) were already
// made client-safe by the kit at the service's edge and pass through; transport failures,
// INTERNAL, UNKNOWN and deadlines get a fixed message, so no peer address, driver text or stack
// ever reaches the client (the original goes to the log).
import { Code, ConnectError } from "@connectrpc/connect";
import { codeLabel, toConnectError, type Logger } from "@ensemble/kit";

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** A failure with its HTTP status and OpenAI error fields. */
export class OpenAiError extends Error {
  override name = "OpenAiError";
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (retry-after, x-should-retry). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body(): OpenAiErrorBody {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

/** 400 invalid_request_error: the request itself is wrong. */
export function invalidRequest(
  message: string,
  param: string | null = null,
  code: string | null = null,
): OpenAiError {
  return new OpenAiError(400, message, "invalid_request_error", param, code);
}

/** How an upstream error is explained for a route. */
export interface ErrorContext {
  /** The route names a model: NOT_FOUND means the model is unknown. */
  modelRoute: boolean;
  /** Rewrites a contract field path ("chat.messages[0].role") to the OpenAI parameter. */
  param?: (path: string) => string;
  /** Trailers of the upstream call (x-invalid-field, retry-after-ms). */
  trailers?: Headers | undefined;
}

// "messages[0].content: value is required": the kit's validation messages start with the path.
const FIELD_PATH = /^([a-z_][a-z0-9_]*(?:\[\d+\]|\["[^"]*"\]|\.[a-z_][a-z0-9_]*)*): /;

const BUDGET_WORDS = /\b(budget|spend|quota|spending limit)\b/i;
/** model-proxy's refusal of a prompt under the tenant's guardrails. */
const GUARDRAIL_REFUSAL = /^blocked by the tenant's guardrails\b/;
/** model-proxy's own budget refusal (it also carries retry-after-ms: the month's end). */
const BUDGET_REFUSAL = /^monthly budget exceeded\b/;

/** The OpenAI error for anything thrown while serving a route. */
export function toOpenAiError(err: unknown, ctx: ErrorContext, logger: Logger): OpenAiError {
  if (err instanceof OpenAiError) return err;
  const upstream = err instanceof ConnectError ? err : toConnectError(err);
  const message = upstream.rawMessage;
  switch (upstream.code) {
    case Code.InvalidArgument: {
      let param = ctx.trailers?.get("x-invalid-field") ?? null;
      let text = message;
      const match = FIELD_PATH.exec(message);
      if (match?.[1] !== undefined) {
        const rewritten = ctx.param?.(match[1]) ?? match[1];
        param ??= rewritten;
        text = `${rewritten}: ${message.slice(match[0].length)}`;
      } else if (param !== null && ctx.param !== undefined) {
        param = ctx.param(param);
      }
      return invalidRequest(
        text,
        param,
        GUARDRAIL_REFUSAL.test(message) ? "content_policy_violation" : null,
      );
    }
    case Code.Unauthenticated:
      return new OpenAiError(401, message, "authentication_error", null, "invalid_api_key");
    case Code.PermissionDenied:
      return new OpenAiError(403, message, "permission_error", null, "permission_denied");
    case Code.NotFound:
      return ctx.modelRoute
        ? new OpenAiError(404, message, "invalid_request_error", "model", "model_not_found")
        : new OpenAiError(404, message, "invalid_request_error", null, "not_found");
    case Code.ResourceExhausted: {
      // Retrying cannot help until a budget changes: tell OpenAI clients not to (which a
      // Retry-After would undo). model-proxy's budget refusal says when the month ends, so it is
      // recognised before the wait; any other refusal with a wait is a rate limit, whatever
      // words it holds (a key may be called "budget-bot").
      const quota = () =>
        new OpenAiError(429, message, "insufficient_quota", null, "insufficient_quota", {
          "x-should-retry": "false",
        });
      if (BUDGET_REFUSAL.test(message)) return quota();
      const retryAfterMs = Number(
        ctx.trailers?.get("retry-after-ms") ?? upstream.metadata.get("retry-after-ms"),
      );
      if (Number.isFinite(retryAfterMs) && retryAfterMs > 0) {
        return rateLimited(message, retryAfterMs);
      }
      if (BUDGET_WORDS.test(message)) return quota();
      return new OpenAiError(429, message, "requests", null, "rate_limit_exceeded");
    }
    case Code.FailedPrecondition:
    case Code.OutOfRange:
      return invalidRequest(message);
    case Code.AlreadyExists:
    case Code.Aborted:
      return new OpenAiError(409, message, "invalid_request_error", null, "conflict");
    case Code.Unimplemented:
      return new OpenAiError(501, "not implemented", "invalid_request_error", null, null);
    case Code.Unavailable:
      logUpstream(logger, upstream);
      return new OpenAiError(503, "service unavailable", "server_error", null, "unavailable");
    case Code.DeadlineExceeded:
      logUpstream(logger, upstream);
      return new OpenAiError(504, "deadline exceeded", "server_error", null, "timeout");
    case Code.Canceled:
      return new OpenAiError(499, "request cancelled", "invalid_request_error", null, "cancelled");
    default:
      logUpstream(logger, upstream);
      return new OpenAiError(500, "internal error", "server_error", null, null);
  }
}

/** 429 with Retry-After (seconds) and retry-after-ms, both honoured by the openai clients. */
export function rateLimited(message: string, retryAfterMs: number): OpenAiError {
  return new OpenAiError(429, message, "requests", null, "rate_limit_exceeded", {
    "retry-after": String(Math.max(1, Math.ceil(retryAfterMs / 1000))),
    "retry-after-ms": String(Math.ceil(retryAfterMs)),
  });
}

function logUpstream(logger: Logger, err: ConnectError): void {
  logger.warn(
    {
      code: codeLabel(err.code),
      upstreamMessage: err.rawMessage,
      ...(err.cause !== undefined ? { err: err.cause } : {}),
    },
    "openai route failed",
  );
}
