// A service's start-up frame, graceful shutdown and start-up retries.
//
// On SIGTERM/SIGINT a service stops taking work, drains in-flight calls, drains NATS, disconnects
// MongoDB and exits (DESIGN.md). The order is the caller's `steps`; this module only runs them
// in order, logs each, bounds the whole with a timeout and picks the exit code. The core
// (runShutdown) never exits, so tests can drive it.
import { ConfigError } from "./config.js";
import { createRootLogger, type Logger } from "./logger.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { initTracing, type Tracing } from "./tracing.js";

/** What every service's `start` gets from runService. */
export interface ServiceRuntime<C> {
  config: C;
  /** The process's root logger (`service`, `version` in every line). */
  logger: Logger;
  tracing: Tracing;
  metrics: Metrics;
}

/**
 * The frame of every service's main.ts: config -> root logger -> tracing -> metrics -> `start`
 * (which connects, builds, listens and wires its shutdown steps). Start-up ends early in two
 * ways only: a bad configuration is one readable line on stderr (`<name>: <reason>`, no stack,
 * before any logger exists) and exit code 1; a failure inside `start` is logged as fatal
 * (`<name> failed to start`) and exits 1.
 */
export function runService<
  C extends { LOG_LEVEL: string; OTEL_EXPORTER_OTLP_ENDPOINT?: string | undefined },
>(opts: {
  name: string;
  version: string;
  loadConfig: () => C;
  start: (runtime: ServiceRuntime<C>) => Promise<void>;
}): void {
  let config: C;
  try {
    config = opts.loadConfig();
  } catch (err) {
    process.stderr.write(
      `${opts.name}: ${err instanceof ConfigError ? err.message : String(err)}\n`,
    );
    process.exit(1);
  }
  const logger = createRootLogger({
    service: opts.name,
    version: opts.version,
    level: config.LOG_LEVEL,
  });
  const start = async () => {
    const tracing = initTracing({
      service: opts.name,
      version: opts.version,
      ...(config.OTEL_EXPORTER_OTLP_ENDPOINT === undefined
        ? {}
        : { otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT }),
    });
    const metrics = createMetrics({ service: opts.name });
    await opts.start({ config, logger, tracing, metrics });
  };
  start().catch((err: unknown) => {
    logger.fatal({ err }, `${opts.name} failed to start`);
    logger.flush();
    process.exit(1);
  });
}

export interface ShutdownStep {
  name: string;
  run: () => Promise<void>;
}

export interface ShutdownResult {
  ok: boolean;
  /** Names of the steps that threw. */
  failed: string[];
  /** True when the timeout passed before every step finished. */
  timedOut: boolean;
  durationMs: number;
}

/**
 * Runs steps in order. A failed step is logged and the next ones still run (a server that
 * failed to drain must not keep NATS or MongoDB connections open). The timeout bounds the whole
 * sequence; when it passes the result is returned at once, with the pending step left behind.
 */
export async function runShutdown(
  steps: ShutdownStep[],
  opts: { logger: Logger; timeoutMs: number },
): Promise<ShutdownResult> {
  const { logger } = opts;
  const started = Date.now();
  const failed: string[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), opts.timeoutMs);
    timer.unref();
  });
  const sequence = (async () => {
    for (const step of steps) {
      const t0 = Date.now();
      logger.info({ step: step.name }, "shutdown step started");
      try {
        await step.run();
        logger.info({ step: step.name, durationMs: Date.now() - t0 }, "shutdown step done");
      } catch (err) {
        failed.push(step.name);
        logger.error({ step: step.name, err }, "shutdown step failed");
      }
    }
    return "done" as const;
  })();
  const outcome = await Promise.race([sequence, timeout]);
  clearTimeout(timer);
  const durationMs = Date.now() - started;
  if (outcome === "timeout") {
    logger.error({ timeoutMs: opts.timeoutMs, failed }, "shutdown timed out");
    return { ok: false, failed, timedOut: true, durationMs };
  }
  return { ok: failed.length === 0, failed, timedOut: false, durationMs };
}

export interface HandleShutdownOptions {
  logger: Logger;
  timeoutMs: number;
  steps: ShutdownStep[];
  /** Default ["SIGTERM", "SIGINT"]. */
  signals?: NodeJS.Signals[];
  /** Default process.exit; tests inject their own. */
  exit?: (code: number) => void;
}

export interface ShutdownHandle {
  /** Starts the shutdown as if a signal had arrived (e.g. after a fatal error). */
  shutdown(reason: string): Promise<void>;
  /** Removes the signal listeners. */
  dispose(): void;
}

/**
 * Wires SIGTERM/SIGINT to runShutdown, once: the first signal starts the steps and exits 0 on
 * success or 1 on failure/timeout; a second signal while shutting down exits 1 at once.
 */
export function handleShutdown(opts: HandleShutdownOptions): ShutdownHandle {
  const { logger } = opts;
  const signals = opts.signals ?? ["SIGTERM", "SIGINT"];
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  let running: Promise<void> | undefined;

  const finish = (code: number) => {
    // pino writes stdout synchronously by default; flush covers an async destination.
    logger.flush();
    exit(code);
  };

  const shutdown = (reason: string): Promise<void> => {
    if (running !== undefined) {
      logger.warn({ reason }, "second shutdown request while shutting down; exiting now");
      finish(1);
      return running;
    }
    logger.info({ reason, timeoutMs: opts.timeoutMs }, "shutting down");
    running = runShutdown(opts.steps, { logger, timeoutMs: opts.timeoutMs }).then(
      (result) => {
        if (result.ok) logger.info({ durationMs: result.durationMs }, "shutdown complete");
        else logger.error({ ...result }, "shutdown incomplete");
        finish(result.ok ? 0 : 1);
      },
      (err: unknown) => {
        logger.error({ err }, "shutdown crashed");
        finish(1);
      },
    );
    return running;
  };

  const onSignal = (signal: NodeJS.Signals) => void shutdown(signal);
  for (const s of signals) process.on(s, onSignal);
  return {
    shutdown,
    dispose() {
      for (const s of signals) process.off(s, onSignal);
    },
  };
}

export interface RetryOptions {
  /** Total attempts including the first; default 10. */
  attempts?: number;
  /** First delay; doubles each time up to maxDelayMs; default 250 ms. */
  initialDelayMs?: number;
  /** Default 5000 ms. */
  maxDelayMs?: number;
  /** Called after a failed attempt that will be retried. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
}

/** Retries fn with exponential backoff and full jitter; rethrows the last error. */
export async function retryWithBackoff<T>(
  fn: (attempt: number) => Promise<T>,
  opts: RetryOptions = {},
): Promise<T> {
  const attempts = Math.max(1, opts.attempts ?? 10);
  const initial = opts.initialDelayMs ?? 250;
  const max = opts.maxDelayMs ?? 5_000;
  let lastError: unknown;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      lastError = err;
      if (attempt === attempts) break;
      const ceiling = Math.min(max, initial * 2 ** (attempt - 1));
      // Jitter keeps a fleet of replicas from retrying in lock-step.
      const delayMs = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      opts.onRetry?.(err, attempt, delayMs);
      await new Promise<void>((resolve) => setTimeout(resolve, delayMs));
    }
  }
  throw lastError;
}
