// Where a call goes and what happens when it fails: the deployments of the model's provider,
// load-balanced by weight and observed latency and load; per-deployment rate limits (shared by
// every replica); retries with exponential backoff and jitter on 429, 5xx, timeouts and broken
// connections, honouring Retry-After; a circuit breaker per deployment (closed, open, half-open;
// cockatiel); and then the catalog's fallback chain, model by model.
//
// For a stream, "the call" is only its start (up to the first chunk): a failure before it falls
// back, a failure after it belongs to the caller (the stream ends with an error). The breaker
// still sees the whole stream: the caller reports its end through `finish`.
import { setTimeout as sleep } from "node:timers/promises";
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  ExponentialBackoff,
  circuitBreaker,
  handleWhen,
  type CircuitBreakerPolicy,
  type IBackoff,
  type IBackoffFactory,
} from "cockatiel";
import {
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  ResourceExhaustedError,
  UnavailableError,
  type Logger,
  type Metrics,
} from "@ensemble/kit";
import type { Model } from "@ensemble/proto";
import { Gauge, Histogram, Counter } from "prom-client";
import { ProviderError, type Deployment, type ProviderClient } from "./providers/types.js";

export type RateDecision =
  { ok: true } | { ok: false; retryAfterMs: number; reason?: "rate" | "cost-exceeds-burst" };

/** Per-deployment rpm/tpm limits shared across replicas (limits.ts). */
export interface Limiter {
  take(d: Deployment, tokens: number): Promise<RateDecision>;
}

export interface RouterOptions {
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** A Retry-After longer than this moves on instead of waiting. */
  retryAfterMaxMs: number;
  breakerThreshold: number;
  halfOpenAfterMs: number;
  limiter?: Limiter;
  logger: Logger;
  metrics?: Metrics;
}

/** What the router needs from a call: run it on one deployment. */
export type Attempt<T> = (client: ProviderClient, d: Deployment, model: Model) => Promise<T>;

export interface Routed<T> {
  value: T;
  deployment: Deployment;
  model: Model;
  /** Provider calls made, this one included. */
  attempts: number;
  /** Models that failed before `model` answered. */
  fallbacksTried: string[];
  /** Report the end of the call to the deployment's breaker (streams: when the stream ends). */
  finish(err?: unknown): void;
}

/** A deployment and its client. */
interface Endpoint {
  d: Deployment;
  client: ProviderClient;
}

/**
 * The health of one model on one deployment (a provider can lose one model and keep the
 * others, so breakers, latency and 429 cool-downs are per pair, as LiteLLM's deployments are).
 */
interface Slot extends Endpoint {
  model: string;
  breaker: CircuitBreakerPolicy;
  /** Exponentially weighted mean latency to the first answer, ms (0 = none measured yet). */
  ewmaMs: number;
  inflight: number;
  /** Set by a provider's 429 Retry-After. */
  coolUntil: number;
}

const BREAKER_STATE_VALUE: Record<CircuitState, number> = {
  [CircuitState.Closed]: 0,
  [CircuitState.Open]: 1,
  [CircuitState.HalfOpen]: 2,
  [CircuitState.Isolated]: 3,
};

interface RouterMetrics {
  breaker: Gauge<"deployment" | "model">;
  calls: Counter<"deployment" | "outcome">;
  latency: Histogram<"deployment">;
}

export class Router {
  readonly #endpoints: Endpoint[];
  readonly #byProvider = new Map<string, Endpoint[]>();
  /** Per (deployment, provider model id), created on first use. */
  readonly #slots = new Map<string, Slot>();
  readonly #opts: RouterOptions;
  readonly #backoff: IBackoffFactory<unknown>;
  readonly #metrics: RouterMetrics | undefined;

  constructor(
    deployments: readonly Deployment[],
    clientFor: (d: Deployment) => ProviderClient,
    opts: RouterOptions,
  ) {
    this.#opts = opts;
    this.#backoff = new ExponentialBackoff({
      initialDelay: Math.max(1, opts.baseDelayMs),
      maxDelay: Math.max(1, opts.maxDelayMs),
    });
    this.#metrics = opts.metrics === undefined ? undefined : routerMetrics(opts.metrics);
    this.#endpoints = deployments.map((d) => ({ d, client: clientFor(d) }));
    for (const e of this.#endpoints) {
      const list = this.#byProvider.get(e.d.provider) ?? [];
      list.push(e);
      this.#byProvider.set(e.d.provider, list);
    }
  }

  /** The configured deployments. */
  get deployments(): Deployment[] {
    return this.#endpoints.map((e) => e.d);
  }

  /** The breaker of a model on a deployment: "closed", "open", "half-open" (tests, operators). */
  breakerState(deployment: string, providerModelId: string): string {
    const state = this.#slots.get(`${deployment}\u0000${providerModelId}`)?.breaker.state;
    if (state === undefined) return "closed";
    return state === CircuitState.HalfOpen ? "half-open" : CircuitState[state].toLowerCase();
  }

  /** True when a deployment of this provider is configured. */
  hasProvider(provider: string): boolean {
    return (this.#byProvider.get(provider)?.length ?? 0) > 0;
  }

  /** True when some deployment can serve the model (provider configured, model allowed). */
  serves(model: Model): boolean {
    return this.#endpointsFor(model).length > 0;
  }

  /**
   * Runs `attempt` on the primary model's deployments, then on each fallback model's, until one
   * succeeds. `fallbacks` resolves the chain lazily (only when the primary fails).
   * `tokens` is the estimate taken from the tpm limits.
   */
  async run<T>(
    primary: Model,
    fallbacks: () => Promise<Model[]>,
    tokens: number,
    signal: AbortSignal,
    attempt: Attempt<T>,
  ): Promise<Routed<T>> {
    const tried: string[] = [];
    let attempts = 0;
    let last: unknown;
    let chain: Model[] | undefined;
    let next: Model | undefined = primary;
    for (let i = 0; next !== undefined; i++) {
      const model: Model = next;
      try {
        const routed = await this.#runModel(model, tokens, signal, attempt, () => (attempts += 1));
        return { ...routed, attempts, fallbacksTried: tried };
      } catch (err) {
        signal.throwIfAborted();
        if (!fallsBack(err)) throw toDomainError(err, model.id);
        last = err;
        tried.push(model.id);
        this.#opts.logger.warn(
          { model: model.id, err: describe(err) },
          "model failed; trying the next in its fallback chain",
        );
      }
      chain ??= await fallbacks();
      next = chain.find((m) => !tried.includes(m.id) && m.id !== primary.id && this.serves(m));
    }
    throw toDomainError(last, primary.id, tried);
  }

  async #runModel<T>(
    model: Model,
    tokens: number,
    signal: AbortSignal,
    attempt: Attempt<T>,
    countAttempt: () => void,
  ): Promise<Omit<Routed<T>, "attempts" | "fallbacksTried">> {
    const candidates = this.#endpointsFor(model).map((e) => this.#slot(e, model.providerModelId));
    if (candidates.length === 0) {
      throw new NoDeploymentError(
        `no deployment serves provider "${model.provider}" (model ${model.id}); configure one (see model-proxy's README)`,
      );
    }
    const excluded = new Set<Slot>();
    const failed = new Set<Slot>();
    let failures = 0;
    let last: unknown;
    let delayMs = 0;
    let backoff: IBackoff<unknown> | undefined;
    while (failures < this.#opts.maxAttempts) {
      if (delayMs > 0) await sleep(delayMs, undefined, { signal });
      delayMs = 0;
      const now = Date.now();
      const slot = this.#pick(candidates, excluded, failed, now);
      if (slot === undefined) {
        // Everything is cooling down (429 / limits) or broken: wait for the soonest, if short.
        const waiting = candidates.filter((s) => !excluded.has(s) && s.coolUntil > now);
        const soonest = Math.min(...waiting.map((s) => s.coolUntil));
        if (waiting.length > 0 && soonest - now <= this.#opts.retryAfterMaxMs) {
          delayMs = soonest - now;
          continue;
        }
        break;
      }
      if (
        this.#opts.limiter !== undefined &&
        (slot.d.rpm !== undefined || slot.d.tpm !== undefined)
      ) {
        const decision = await this.#opts.limiter.take(slot.d, tokens);
        if (!decision.ok) {
          // Our own limit: never waited for (the caller gets RESOURCE_EXHAUSTED with the wait,
          // or the next deployment/model answers); the limiter remembers the refusal itself.
          excluded.add(slot);
          last = new ProviderError("rate_limit", `${slot.d.name}: rate limit (rpm/tpm) reached`, {
            retryAfterMs: decision.retryAfterMs,
          });
          this.#metrics?.calls.inc({ deployment: slot.d.name, outcome: "limited" });
          continue;
        }
      }

      let finish: (err?: unknown) => void;
      try {
        finish = await track(slot.breaker);
      } catch (err) {
        // Open (or half-open with its trial in flight): skip it for this call.
        excluded.add(slot);
        last = new ProviderError("server", `${slot.d.name}: circuit open`, { cause: err });
        this.#metrics?.calls.inc({ deployment: slot.d.name, outcome: "breaker_open" });
        continue;
      }
      countAttempt();
      slot.inflight += 1;
      const started = performance.now();
      try {
        const value = await attempt(slot.client, slot.d, model);
        const ms = performance.now() - started;
        slot.ewmaMs = slot.ewmaMs === 0 ? ms : slot.ewmaMs * 0.8 + ms * 0.2;
        this.#metrics?.latency.observe({ deployment: slot.d.name }, ms / 1000);
        this.#metrics?.calls.inc({ deployment: slot.d.name, outcome: "ok" });
        return { value, deployment: slot.d, model, finish };
      } catch (err) {
        finish(err);
        if (signal.aborted) throw signal.reason ?? err;
        if (!(err instanceof ProviderError)) throw err;
        this.#metrics?.calls.inc({ deployment: slot.d.name, outcome: err.kind });
        last = err;
        if (!err.retryable && err.kind !== "auth") throw err;
        failures += 1;
        failed.add(slot);
        if (err.kind === "auth") {
          excluded.add(slot);
          continue;
        }
        if (err.retryAfterMs !== undefined) {
          if (err.retryAfterMs > this.#opts.retryAfterMaxMs) {
            excluded.add(slot);
            continue;
          }
          slot.coolUntil = Date.now() + err.retryAfterMs;
        }
        // Another deployment right away when one is free, else back off (and wait out
        // Retry-After) before trying this one again.
        const now2 = Date.now();
        const untried = candidates.some(
          (c) => !excluded.has(c) && !failed.has(c) && c.coolUntil <= now2,
        );
        if (!untried) {
          backoff = (backoff ?? this.#backoff).next(undefined);
          delayMs = Math.max(backoff.duration, slot.coolUntil - Date.now());
        }
      } finally {
        slot.inflight -= 1;
      }
    }
    throw last instanceof Error
      ? last
      : new NoDeploymentError(`no deployment of model ${model.id} is available`);
  }

  #endpointsFor(model: Model): Endpoint[] {
    const list = this.#byProvider.get(model.provider) ?? [];
    return list.filter(
      (e) =>
        e.d.models === undefined ||
        e.d.models.length === 0 ||
        e.d.models.includes(model.providerModelId),
    );
  }

  #slot(e: Endpoint, model: string): Slot {
    const key = `${e.d.name}\u0000${model}`;
    let slot = this.#slots.get(key);
    if (slot !== undefined) return slot;
    const breaker = circuitBreaker(
      handleWhen((err) => err instanceof ProviderError && err.deploymentFault),
      {
        halfOpenAfter: this.#opts.halfOpenAfterMs,
        breaker: new ConsecutiveBreaker(this.#opts.breakerThreshold),
      },
    );
    slot = { ...e, model, breaker, ewmaMs: 0, inflight: 0, coolUntil: 0 };
    const labels = { deployment: e.d.name, model };
    this.#metrics?.breaker.set(labels, 0);
    breaker.onStateChange((state) => {
      this.#metrics?.breaker.set(labels, BREAKER_STATE_VALUE[state]);
      this.#opts.logger.warn({ ...labels, state: CircuitState[state] }, "circuit breaker");
    });
    this.#slots.set(key, slot);
    return slot;
  }

  /**
   * Weighted random choice among the usable deployments, each weighted by its configured
   * weight divided by its observed latency and load (so a slow or busy deployment gets less).
   * Deployments that already failed this call, then ones whose breaker is not closed, are
   * used only when nothing else is.
   */
  #pick(candidates: Slot[], excluded: Set<Slot>, failed: Set<Slot>, now: number): Slot | undefined {
    const usable = candidates.filter((s) => !excluded.has(s) && s.coolUntil <= now);
    if (usable.length <= 1) return usable[0];
    const fresh = usable.filter((s) => !failed.has(s));
    const tier = fresh.length > 0 ? fresh : usable;
    const healthy = tier.filter((s) => s.breaker.state === CircuitState.Closed);
    const pool = healthy.length > 0 ? healthy : tier;
    if (pool.length === 1) return pool[0];
    const measured = pool.filter((s) => s.ewmaMs > 0).map((s) => s.ewmaMs);
    const typical = measured.length > 0 ? measured.reduce((a, b) => a + b, 0) / measured.length : 1;
    const scores = pool.map(
      (s) => s.d.weight / ((s.ewmaMs > 0 ? s.ewmaMs : typical) * (1 + s.inflight)),
    );
    const total = scores.reduce((a, b) => a + b, 0);
    let r = Math.random() * total;
    for (let i = 0; i < pool.length; i++) {
      r -= scores[i] ?? 0;
      if (r <= 0) return pool[i];
    }
    return pool[pool.length - 1];
  }
}

/** No deployment could even be tried (not configured, or all excluded). */
class NoDeploymentError extends Error {
  override readonly name = "NoDeploymentError";
}

/**
 * Starts a breaker-tracked call: resolves with the function that reports its end, or rejects
 * (BrokenCircuitError) when the breaker does not let a call through.
 */
function track(breaker: CircuitBreakerPolicy): Promise<(err?: unknown) => void> {
  return new Promise((resolveStart, rejectStart) => {
    breaker
      .execute(
        () =>
          new Promise<void>((ok, fail) => {
            resolveStart((err?: unknown) => (err === undefined ? ok() : fail(asError(err))));
          }),
      )
      .catch((err: unknown) => {
        // Before the start: the breaker refused. After it: the call's own failure, already handled.
        rejectStart(asError(err));
      });
  });
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Failures that move on to the next model of the chain. */
function fallsBack(err: unknown): boolean {
  if (err instanceof NoDeploymentError) return true;
  if (err instanceof BrokenCircuitError) return true;
  return err instanceof ProviderError && (err.retryable || err.kind === "auth");
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The status a failed call reaches the caller with. Messages never carry keys. */
export function toDomainError(err: unknown, model: string, tried: string[] = []): Error {
  const chain = tried.length > 1 ? ` (tried ${tried.join(", ")})` : "";
  if (err instanceof NoDeploymentError) return new FailedPreconditionError(err.message + chain);
  if (!(err instanceof ProviderError)) return err instanceof Error ? err : new Error(String(err));
  const msg = `model ${model}: ${err.message}${chain}`;
  switch (err.kind) {
    case "invalid_request":
      return new InvalidArgumentError(`the provider refused the request: ${err.message}`);
    case "content_filter":
      return new InvalidArgumentError(
        `the provider's content filter refused the request: ${err.message}`,
      );
    case "rate_limit":
      return new ResourceExhaustedError(`provider rate limit: ${msg}`, {
        ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
      });
    case "timeout":
      return new DeadlineExceededError(`provider timeout: ${msg}`);
    case "auth":
      return new UnavailableError(`the provider refused the deployment's credentials: ${msg}`);
    default:
      return new UnavailableError(`provider unavailable: ${msg}`);
  }
}

function routerMetrics(metrics: Metrics): RouterMetrics {
  const registers = [metrics.registry];
  return {
    breaker: new Gauge({
      name: "ensemble_model_proxy_breaker_state",
      help: "Circuit breaker state per deployment and provider model: 0 closed, 1 open, 2 half-open, 3 isolated.",
      labelNames: ["deployment", "model"] as const,
      registers,
    }),
    calls: new Counter({
      name: "ensemble_model_proxy_provider_calls_total",
      help: "Provider calls by deployment and outcome (ok, or the failure kind).",
      labelNames: ["deployment", "outcome"] as const,
      registers,
    }),
    latency: new Histogram({
      name: "ensemble_model_proxy_provider_latency_seconds",
      help: "Time from a provider call to its answer (streams: to the first chunk), successful calls.",
      labelNames: ["deployment"] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
  };
}
