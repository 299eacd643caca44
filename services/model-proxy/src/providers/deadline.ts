// The per-attempt time limit of the Anthropic and Google adapters. Their SDKs bound a call only
// until the response headers (Anthropic) or for the whole body (Google), so the adapters keep
// their own clock: a unary call gets `timeoutMs` in all; a stream gets `timeoutMs` to start and
// then `timeoutMs` between events, so a long answer may run on but a stalled one fails.
import type { Deployment } from "./types.js";

export class Deadline {
  /** Aborts when the caller aborts or the time runs out; hand it to the SDK. */
  readonly signal: AbortSignal;
  #timedOut = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #ac = new AbortController();
  readonly #onAbort = (): void => this.#ac.abort(this.caller.reason);

  constructor(
    readonly caller: AbortSignal,
    readonly ms: number,
  ) {
    this.signal = this.#ac.signal;
    if (caller.aborted) this.#ac.abort(caller.reason);
    else caller.addEventListener("abort", this.#onAbort, { once: true });
    this.touch();
  }

  /** True when the clock (not the caller) ended the call. */
  get timedOut(): boolean {
    return this.#timedOut && !this.caller.aborted;
  }

  /** Restarts the clock: the stream made progress. */
  touch(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      this.#ac.abort(new Error(`no answer within ${this.ms} ms`));
    }, this.ms);
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.caller.removeEventListener("abort", this.#onAbort);
  }
}

/** Removes the deployment's key from a provider's text (some echo what they were sent). */
export function redact(d: Deployment, text: string): string {
  const key = d.apiKey;
  return key !== undefined && key.length >= 4 ? text.split(key).join("[redacted]") : text;
}
