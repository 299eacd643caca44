/** An OpenAI-shaped API error; the only kind of error body the simulator ever sends. */
export class SimError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = "SimError";
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

export function invalid(
  message: string,
  param: string | null,
  code: string | null = null,
): SimError {
  return new SimError(400, message, "invalid_request_error", param, code);
}

/** The error body shapes of the three provider APIs the simulator speaks. */
export type Dialect = "openai" | "anthropic" | "google";

const ANTHROPIC_TYPES: Readonly<Record<number, string>> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  500: "api_error",
  503: "overloaded_error",
  529: "overloaded_error",
};

const GOOGLE_STATUSES: Readonly<Record<number, string>> = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  429: "RESOURCE_EXHAUSTED",
  500: "INTERNAL",
  503: "UNAVAILABLE",
  504: "DEADLINE_EXCEEDED",
};

/**
 * The body of `e` as the given API would send it: OpenAI `{error:{message,type,param,code}}`,
 * Anthropic `{type:"error",error:{type,message}}`, Google `{error:{code,message,status}}` (a 429
 * also carries google.rpc.RetryInfo, as Gemini's does).
 */
export function errorBody(e: SimError, dialect: Dialect, retryAfterSec?: number): unknown {
  switch (dialect) {
    case "openai":
      return e.body();
    case "anthropic":
      return {
        type: "error",
        error: { type: ANTHROPIC_TYPES[e.status] ?? "api_error", message: e.message },
      };
    case "google": {
      const error: Record<string, unknown> = {
        code: e.status,
        message: e.message,
        status: GOOGLE_STATUSES[e.status] ?? (e.status >= 500 ? "INTERNAL" : "INVALID_ARGUMENT"),
      };
      if (e.status === 429 && retryAfterSec !== undefined) {
        error["details"] = [
          {
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            retryDelay: `${retryAfterSec}s`,
          },
        ];
      }
      return { error };
    }
  }
}
