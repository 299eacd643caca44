// Start-up only: config -> logger -> tracing -> NATS + MongoDB -> deployments, limits, cache,
// accounting -> server -> listen -> metrics -> shutdown wiring. Everything else lives in build(deps).
import {
  closeMongo,
  connectMongo,
  connectNats,
  createNotices,
  createClient,
  createJwksVerifier,
  handleShutdown,
  runService,
  type ServiceRuntime,
  startMetricsServer,
} from "@ensemble/kit";
import { AuthService, RegistryService, VectorSearchService } from "@ensemble/proto";
import { openAccounting } from "./accounting/index.js";
import { openResponseCache } from "./cache.js";
import { SemanticCache } from "./semantic-cache.js";
import { CallLogs } from "./call-logs.js";
import { TenantSettings } from "./tenant-settings.js";
import { Catalog } from "./catalog.js";
import { deploymentsFrom, loadModelProxyConfig, type ModelProxyConfig } from "./config.js";
import { openDeploymentLimiter } from "./limits.js";
import { providerClients } from "./providers/index.js";
import { StoredResponses } from "./stored-responses.js";
import { Router } from "./router.js";
import { build, SERVICE_NAME } from "./server.js";
import { VERSION } from "./version.js";

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<ModelProxyConfig>): Promise<void> {
  const deployments = deploymentsFrom(config);
  if (deployments.length === 0) {
    logger.warn(
      "no provider is configured (LLM_SIM_URL, OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, OPENROUTER_API_KEY or MODEL_PROXY_DEPLOYMENTS): every model call fails until one is",
    );
  }
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
  });

  const [nc, mongo] = await Promise.all([
    connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger }),
    connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger }),
  ]);
  const registry = createClient(RegistryService, config.REGISTRY_ADDR, { metrics });
  const auth = createClient(AuthService, config.AUTH_ADDR, { metrics });
  const [limiter, cache, accounting] = await Promise.all([
    openDeploymentLimiter(nc, config.RATE_LIMIT_BUCKET, logger),
    openResponseCache(nc, { bucket: config.CACHE_BUCKET, ttlMs: config.CACHE_TTL_MS, logger }),
    openAccounting({
      mongo,
      nc,
      auth,
      logger,
      metrics,
      spendBucket: config.SPEND_BUCKET,
      budgetCacheMs: config.BUDGET_CACHE_MS,
      alertPercents: config.BUDGET_ALERT_PERCENTS,
      flushMs: config.LEDGER_FLUSH_MS,
      batchSize: config.LEDGER_BATCH_SIZE,
    }),
  ]);
  const responses = await StoredResponses.open(mongo, { ttlMs: config.STORED_RESPONSES_TTL_MS });
  const callLogs = await CallLogs.open(mongo, {
    retentionMs: config.CALL_LOG_RETENTION_MS,
    flushMs: config.LEDGER_FLUSH_MS,
    logger,
  });
  const sweep = setInterval(() => {
    for (const [what, expired] of [
      ["stored responses", () => responses.sweep()],
      ["call log entries", () => callLogs.sweep()],
    ] as const) {
      expired().then(
        (n) => n > 0 && logger.info({ deleted: n }, `expired ${what} deleted`),
        (err: unknown) => logger.warn({ err }, `could not delete expired ${what}`),
      );
    }
  }, config.STORED_RESPONSES_SWEEP_MS);
  sweep.unref();
  const router = new Router(deployments, await providerClients(deployments), {
    maxAttempts: config.RETRY_MAX_ATTEMPTS,
    baseDelayMs: config.RETRY_BASE_DELAY_MS,
    maxDelayMs: config.RETRY_MAX_DELAY_MS,
    retryAfterMaxMs: config.RETRY_AFTER_MAX_MS,
    breakerThreshold: config.BREAKER_THRESHOLD,
    halfOpenAfterMs: config.BREAKER_HALF_OPEN_AFTER_MS,
    limiter,
    logger,
    metrics,
  });

  const server = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    notices: createNotices(nc, logger),
    catalog: new Catalog(registry, { ttlMs: config.CATALOG_TTL_MS }),
    router,
    accounting,
    cache,
    cacheTenants: new Set(config.CACHE_TENANTS),
    responses,
    callLogs,
    callLogTenants: new Set(config.CALL_LOG_TENANTS),
    tenantSettings: new TenantSettings(auth, { ttlMs: config.BUDGET_CACHE_MS, logger }),
    limiter,
    ...(config.VECTOR_SEARCH_ADDR !== undefined
      ? {
          semantic: new SemanticCache({
            vectorSearch: createClient(VectorSearchService, config.VECTOR_SEARCH_ADDR, { metrics }),
            model: config.CACHE_SEMANTIC_MODEL,
            minSimilarity: config.CACHE_SEMANTIC_MIN_SIMILARITY,
            ttlMs: config.CACHE_TTL_MS,
            logger,
          }),
        }
      : {}),
  });
  const port = await server.listen(config.MODEL_PROXY_ADDR);
  const metricsServer = await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);
  logger.info(
    {
      address: config.MODEL_PROXY_ADDR,
      port,
      metricsPort: metricsServer.port,
      // Names and endpoints only: keys are never logged.
      deployments: deployments.map((d) => ({
        name: d.name,
        provider: d.provider,
        api: d.api,
        baseUrl: d.baseUrl,
      })),
      semanticCache:
        config.VECTOR_SEARCH_ADDR === undefined
          ? null
          : {
              vectorSearch: config.VECTOR_SEARCH_ADDR,
              model: config.CACHE_SEMANTIC_MODEL,
              minSimilarity: config.CACHE_SEMANTIC_MIN_SIMILARITY,
            },
    },
    "model-proxy listening",
  );

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      {
        name: "grpc server",
        run: () => server.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      {
        name: "stored responses sweep",
        run: () => {
          clearInterval(sweep);
          return Promise.resolve();
        },
      },
      // Every accepted call's usage reaches the ledger before the connections close.
      { name: "ledger flush", run: () => accounting.close() },
      { name: "call log flush", run: () => callLogs.close() },
      { name: "nats drain", run: () => nc.drain() },
      { name: "mongo disconnect", run: () => closeMongo(mongo) },
      { name: "metrics server", run: () => metricsServer.close() },
      { name: "tracing", run: () => tracing.shutdown() },
    ],
  });
}

runService({ name: SERVICE_NAME, version: VERSION, loadConfig: loadModelProxyConfig, start: main });
