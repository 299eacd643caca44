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
