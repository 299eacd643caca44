// Start-up only: config -> logger -> tracing -> metrics -> verifier -> NATS (rate limit state)
// -> build -> listen -> shutdown wiring.
import {
  connectNats,
  createNotices,
  createJwksVerifier,
  handleShutdown,
  openKvRateLimiter,
  runService,
  type ServiceRuntime,
  startMetricsServer,
} from "@ensemble/kit";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { loadGatewayConfig, type GatewayConfig } from "./config.js";
import { build } from "./server.js";
import { configuredUpstreams } from "./services.js";
import { VERSION } from "./version.js";

const SERVICE_NAME = "gateway";

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<GatewayConfig>): Promise<void> {
  const metricsServer =
    config.METRICS_PORT === undefined
      ? undefined
      : await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
  });
  const nc = await connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger });
  const rateLimiter = await openKvRateLimiter(nc, config.GATEWAY_RATE_LIMIT_BUCKET, {
    rate: config.GATEWAY_RATE_LIMIT_RPS,
    burst: config.GATEWAY_RATE_LIMIT_BURST,
    ...(config.GATEWAY_RATE_LIMIT_LEASE > 0 ? { lease: config.GATEWAY_RATE_LIMIT_LEASE } : {}),
    logger,
  });
  const upstreams = configuredUpstreams(config);
  if (upstreams.length === 0) logger.warn("no upstream address configured: nothing is routed");
  if (config.SERVICE_TOKEN === undefined) {
    logger.warn("SERVICE_TOKEN is not set: API keys are refused (access tokens still work)");
  }

  const consoleDir =
    config.GATEWAY_CONSOLE_DIR ?? fileURLToPath(new URL("../../console/dist", import.meta.url));
  if (!existsSync(consoleDir)) {
    logger.warn({ consoleDir }, "the web console is not built: / serves nothing");
  }
  const gateway = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    upstreams,
    rateLimiter,
    notices: createNotices(nc, logger),
    ...(config.SERVICE_TOKEN !== undefined ? { serviceToken: config.SERVICE_TOKEN } : {}),
    corsOrigins: config.GATEWAY_CORS_ORIGINS,
    development: config.NODE_ENV === "development",
    behindTls: config.GATEWAY_BEHIND_TLS,
    maxMessageBytes: config.GATEWAY_MAX_MESSAGE_BYTES,
    maxTimeoutMs: config.GATEWAY_MAX_TIMEOUT_MS,
    apiKeyCacheMs: config.GATEWAY_API_KEY_CACHE_MS,
    consoleDir,
  });
  const port = await gateway.listen(config.GATEWAY_PORT, config.GATEWAY_HOST);
  logger.info(
    {
      host: config.GATEWAY_HOST,
      port,
      services: upstreams.map((u) => u.name),
      console: existsSync(consoleDir),
    },
    "gateway listening",
  );

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      {
        name: "http server",
        run: () => gateway.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      { name: "nats drain", run: () => nc.drain() },
      { name: "metrics server", run: () => metricsServer?.close() ?? Promise.resolve() },
      { name: "tracing", run: () => tracing.shutdown() },
    ],
  });
}

runService({ name: SERVICE_NAME, version: VERSION, loadConfig: loadGatewayConfig, start: main });
