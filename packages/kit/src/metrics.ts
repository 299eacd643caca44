// Prometheus metrics: one Registry per process (never prom-client's global one, so tests and
// several servers in one process do not collide), served on a side HTTP port.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Code } from "@connectrpc/connect";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

/** Seconds; LLM calls run long, so the buckets reach two minutes. */
export const RPC_DURATION_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
];

const GRPC_CODE_NAMES: Record<number, string> = {
  0: "OK",
  1: "CANCELLED",
  2: "UNKNOWN",
  3: "INVALID_ARGUMENT",
  4: "DEADLINE_EXCEEDED",
  5: "NOT_FOUND",
  6: "ALREADY_EXISTS",
  7: "PERMISSION_DENIED",
  8: "RESOURCE_EXHAUSTED",
  9: "FAILED_PRECONDITION",
  10: "ABORTED",
  11: "OUT_OF_RANGE",
  12: "UNIMPLEMENTED",
  13: "INTERNAL",
  14: "UNAVAILABLE",
  15: "DATA_LOSS",
  16: "UNAUTHENTICATED",
};

/** The `code` label: the gRPC name ("OK", "NOT_FOUND", ...) for a numeric code (Connect Code or gRPC status). */
export function codeLabel(code: Code | number | string): string {
  if (typeof code === "string") return code;
  return GRPC_CODE_NAMES[code] ?? String(code);
}

export interface RpcServerMetrics {
  /** One finished call: counts it and records its duration. `code` 0 / Code.OK... for success. */
  observe(method: string, code: Code | number | string, durationSeconds: number): void;
  /** A server stream started; call the returned function once when it ends. */
  streamStarted(method: string): () => void;
}

export interface RpcClientMetrics {
  observe(
    target: string,
    method: string,
    code: Code | number | string,
    durationSeconds: number,
  ): void;
}

export interface Metrics {
  readonly service: string;
  /** Register service-specific metrics here (`registers: [metrics.registry]`). */
  readonly registry: Registry;
  readonly rpcServer: RpcServerMetrics;
  readonly rpcClient: RpcClientMetrics;
  /** ensemble_rpc_server_requests_total{service,method,code} */
  readonly rpcServerRequests: Counter<"service" | "method" | "code">;
  /** ensemble_rpc_server_duration_seconds{service,method} */
  readonly rpcServerDuration: Histogram<"service" | "method">;
  /** ensemble_rpc_server_active_streams{service,method} */
  readonly rpcServerActiveStreams: Gauge<"service" | "method">;
  /** ensemble_rpc_client_duration_seconds{target,method,code} */
  readonly rpcClientDuration: Histogram<"target" | "method" | "code">;
  /** The exposition text, as GET /metrics serves it. */
  text(): Promise<string>;
}

export function createMetrics(opts: { service: string; defaultMetrics?: boolean }): Metrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const service = opts.service;

  const rpcServerRequests = new Counter({
    name: "ensemble_rpc_server_requests_total",
    help: "RPCs finished by this server, by method and gRPC status code.",
    labelNames: ["service", "method", "code"] as const,
    registers: [registry],
  });
  const rpcServerDuration = new Histogram({
    name: "ensemble_rpc_server_duration_seconds",
    help: "Time from receiving an RPC to its status, in seconds.",
    labelNames: ["service", "method"] as const,
    buckets: RPC_DURATION_BUCKETS,
    registers: [registry],
  });
  const rpcServerActiveStreams = new Gauge({
    name: "ensemble_rpc_server_active_streams",
    help: "Server-streaming RPCs in progress.",
    labelNames: ["service", "method"] as const,
    registers: [registry],
  });
  const rpcClientDuration = new Histogram({
    name: "ensemble_rpc_client_duration_seconds",
    help: "Time of outgoing RPCs from call to status, by target, method and gRPC status code.",
    labelNames: ["target", "method", "code"] as const,
    buckets: RPC_DURATION_BUCKETS,
    registers: [registry],
  });

  return {
    service,
    registry,
    rpcServerRequests,
    rpcServerDuration,
    rpcServerActiveStreams,
    rpcClientDuration,
    rpcServer: {
      observe(method, code, durationSeconds) {
        rpcServerRequests.inc({ service, method, code: codeLabel(code) });
        rpcServerDuration.observe({ service, method }, durationSeconds);
      },
      streamStarted(method) {
        rpcServerActiveStreams.inc({ service, method });
        let ended = false;
        return () => {
          if (ended) return;
          ended = true;
          rpcServerActiveStreams.dec({ service, method });
        };
      },
    },
    rpcClient: {
      observe(target, method, code, durationSeconds) {
        rpcClientDuration.observe({ target, method, code: codeLabel(code) }, durationSeconds);
      },
    },
    text: () => registry.metrics(),
  };
}

export interface MetricsServer {
  /** The bound port (useful with port 0). */
  port: number;
  close(): Promise<void>;
}

/** Serves GET /metrics on host:port (default 127.0.0.1; port 0 picks a free one); 404 elsewhere. */
export async function startMetricsServer(
  metrics: Metrics,
  port: number,
  host = "127.0.0.1",
): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found\n");
      return;
    }
    metrics.registry.metrics().then(
      (body) => {
        res.writeHead(200, { "content-type": metrics.registry.contentType });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      (err: unknown) => {
        res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
        res.end(`metrics collection failed: ${err instanceof Error ? err.message : "error"}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  return {
    port: bound,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        // A scraper's keep-alive connection must not hold shutdown open.
        server.closeAllConnections();
      }),
  };
}
