// NATS (nats.js v3): one connection per process, JetStream helpers, and event publishing with
// trace context and a message id so that a retried publish is not a duplicate.
import {
  jetstream as jetstreamClient,
  jetstreamManager as jetstreamManagerClient,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  type PubAck,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { currentCall } from "./context.js";
import { retryWithBackoff } from "./lifecycle.js";
import type { Logger } from "./logger.js";
import { injectTraceContext } from "./tracing.js";

export type { JetStreamClient, JetStreamManager, NatsConnection };

/** Hides `user:password@` / `token@` in a server URL before it is logged or thrown. */
export function redactServerUrl(url: string): string {
  return url.replace(/\/\/[^/@\s]*@/g, "//***@");
}

export interface ConnectNatsOptions {
  /** One URL or a comma-separated list (NATS_URL). Credentials in the URL are supported. */
  url: string;
  /** Connection name shown by the server (`nats server report connections`): the service name. */
  name: string;
  logger: Logger;
  /** Attempts for the first connection before giving up; default 10. Reconnects are unlimited. */
  connectAttempts?: number;
}

/**
 * Connects, retrying the first connection with backoff (a service may start before NATS is
 * up), then reconnects forever and logs every state change (never credentials).
 */
export async function connectNats(opts: ConnectNatsOptions): Promise<NatsConnection> {
  const servers = opts.url
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  const shown = servers.map(redactServerUrl);
  const log = opts.logger.child({ component: "nats" });
  let nc: NatsConnection;
  try {
    nc = await retryWithBackoff(
      () =>
        connect({
          servers,
          name: opts.name,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 1_000,
          pingInterval: 20_000,
          // nats.js otherwise builds two Error objects (stack traces) for every request, a
          // JetStream publish included, to point a later timeout at its caller: ~2 % of the
          // workflow engine's CPU in bench/workflow. Timeouts still say which subject failed.
          noAsyncTraces: true,
        }),
      {
        attempts: opts.connectAttempts ?? 10,
        onRetry: (err, attempt, delayMs) =>
          log.warn(
            { servers: shown, attempt, delayMs, reason: errorMessage(err) },
            "NATS not reachable yet; retrying",
          ),
      },
    );
  } catch (err) {
    throw new Error(
      `could not connect to NATS at ${shown.join(",")}: ${redactServerUrl(errorMessage(err))}`,
      { cause: err },
    );
  }
  log.info({ server: redactServerUrl(nc.getServer()) }, "NATS connected");
  void watchStatus(nc, log);
  nc.closed().then(
    (err) => {
      if (err) log.error({ reason: redactServerUrl(err.message) }, "NATS connection closed");
      else log.info("NATS connection closed");
    },
    () => undefined,
  );
  return nc;
}

async function watchStatus(nc: NatsConnection, log: Logger): Promise<void> {
  try {
    for await (const s of nc.status()) {
      switch (s.type) {
        case "disconnect":
          log.warn({ server: redactServerUrl(s.server) }, "NATS disconnected");
          break;
        case "reconnecting":
          log.debug("NATS reconnecting");
          break;
        case "reconnect":
          log.info({ server: redactServerUrl(s.server) }, "NATS reconnected");
          break;
        case "ldm":
          log.warn({ server: redactServerUrl(s.server) }, "NATS server entering lame duck mode");
          break;
        case "error":
          log.error({ reason: redactServerUrl(s.error.message) }, "NATS error");
          break;
        case "staleConnection":
          log.warn("NATS connection stale");
          break;
        case "slowConsumer":
          log.warn({ subject: s.sub.getSubject(), pending: s.pending }, "NATS slow consumer");
          break;
        case "update":
          log.debug({ added: s.added, deleted: s.deleted }, "NATS cluster update");
          break;
        default:
          break;
      }
    }
  } catch (err) {
    log.debug({ reason: errorMessage(err) }, "NATS status watch ended");
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function jetstream(nc: NatsConnection): JetStreamClient {
  return jetstreamClient(nc);
}

/** `timeoutMs`: how long one API request may take (default: the connection's, 5 s). */
export function jetstreamManager(
  nc: NatsConnection,
  opts: { timeoutMs?: number } = {},
): Promise<JetStreamManager> {
  return jetstreamManagerClient(
    nc,
    opts.timeoutMs === undefined ? undefined : { timeout: opts.timeoutMs },
  );
}

/**
 * Creates the stream, or updates it to `config` when it exists; safe to call at every start by
 * every replica. Changes JetStream cannot apply in place (e.g. storage type) throw.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  config: Partial<StreamConfig> & { name: string },
): Promise<StreamInfo> {
  try {
    await jsm.streams.info(config.name);
  } catch (err) {
    if (isStreamNotFound(err)) {
      try {
        return await jsm.streams.add(config);
      } catch (addErr) {
        // Another replica created it between our info and add: fall through to update.
        if (!(addErr instanceof JetStreamApiError)) throw addErr;
      }
    } else {
      throw err;
    }
  }
  const { name, ...update } = config;
  return jsm.streams.update(name, update);
}

function isStreamNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
}

export interface PublishEventOptions {
  /** Dedupe key: a second publish with the same id inside the stream's duplicate window is dropped. */
  msgId: string;
  /** Extra headers (e.g. event type). */
  headers?: Record<string, string>;
  /** PubAck wait, ms. */
  timeoutMs?: number;
}

/**
 * Publishes to JetStream with W3C trace headers, the current request id (x-request-id) and
 * `Nats-Msg-Id`. Resolves with the PubAck (`duplicate` is true when the server dropped it).
 */
export async function publishEvent(
  js: JetStreamClient,
  subject: string,
  payload: Uint8Array,
  opts: PublishEventOptions,
): Promise<PubAck> {
  const h = headers();
  const carrier: Record<string, string> = { ...opts.headers };
  injectTraceContext(carrier);
  const requestId = currentCall()?.requestId;
  if (requestId !== undefined && requestId !== "") carrier["x-request-id"] ??= requestId;
  for (const [k, v] of Object.entries(carrier)) h.set(k, v);
  return js.publish(subject, payload, {
    msgID: opts.msgId,
    headers: h,
    ...(opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs }),
  });
}

/** Reads the headers of a received message into a plain object (for extractTraceContext). */
export function headersToRecord(
  h: { keys(): string[]; get(k: string): string } | undefined,
): Record<string, string> {
  const out: Record<string, string> = {};
  if (h === undefined) return out;
  for (const k of h.keys()) out[k.toLowerCase()] = h.get(k);
  return out;
}
