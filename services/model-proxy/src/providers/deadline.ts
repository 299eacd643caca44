// The per-attempt time limit of the Anthropic and Google adapters. Their SDKs bound a call only
// until the response headers (Anthropic) or for the whole body (Google), so the adapters keep
// their own clock: a unary call gets `timeoutMs` in all; a stream gets `timeoutMs` to start and
// then `timeoutMs` between events, so a long answer may run on but a stalled one fails.
import type { Deployment } from "./types.js";

/**
 * A signal that aborts when `caller` does, until dispose(). Hand this, not the caller's signal,
 * to an SDK: the SDKs add an abort listener to the signal they are given and never remove it,
 * so every attempt would leave one on the call's signal, and the kit's abort at the end of each
 * call would then run them all (each making an AbortError with a stack: ~2 % of model-proxy's
 * CPU at 500 req/s, measured).
 */
export class LinkedSignal {
  readonly #ac = new AbortController();
  readonly #onAbort = (): void => this.#ac.abort(this.caller.reason);

  constructor(readonly caller: AbortSignal) {
    if (caller.aborted) this.#ac.abort(caller.reason);
    else caller.addEventListener("abort", this.#onAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.#ac.signal;
  }

  /** Aborts the linked signal only (e.g. the time ran out). */
  abort(reason: unknown): void {
    this.#ac.abort(reason);
  }

  dispose(): void {
    this.caller.removeEventListener("abort", this.#onAbort);
  }
}

export class Deadline {
  /** Aborts when the caller aborts or the time runs out; hand it to the SDK. */
  readonly signal: AbortSignal;
  #timedOut = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #link: LinkedSignal;

  constructor(
    readonly caller: AbortSignal,
    readonly ms: number,
  ) {
    this.#link = new LinkedSignal(caller);
    this.signal = this.#link.signal;
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
      this.#link.abort(new Error(`no answer within ${this.ms} ms`));
    }, this.ms);
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#link.dispose();
  }
}

/** Removes the deployment's key from a provider's text (some echo what they were sent). */
export function redact(d: Deployment, text: string): string {
  const key = d.apiKey;
  return key !== undefined && key.length >= 4 ? text.split(key).join("[redacted]") : text;
}
