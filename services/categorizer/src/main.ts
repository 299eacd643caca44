// Start-up only: config -> logger -> tracing -> MongoDB -> global routes -> clients -> server ->
// listen -> metrics -> shutdown wiring. Everything else lives in build(deps).
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createNotices,
  handleShutdown,
  runService,
  type ServiceRuntime,
  startMetricsServer,
} from "@ensemble/kit";
import { ModelProxyService, RegistryService, VectorSearchService } from "@ensemble/proto";
import { ModelCatalog } from "./catalog.js";
import { loadCategorizerConfig, type CategorizerConfig } from "./config.js";
import { RouteStore } from "./route-store.js";
import { loadRouteSeeds } from "./seed.js";
import { SemanticRouter } from "./semantic.js";
import { build, SERVICE_NAME } from "./server.js";
import { VERSION } from "./version.js";

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<CategorizerConfig>): Promise<void> {
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
  });

  const [mongo, nc] = await Promise.all([
    connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger }),
    connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger }),
  ]);
  const routes = await RouteStore.open(mongo, { cacheTtlMs: config.ROUTE_CACHE_TTL_MS });
  await loadRouteSeeds(config.CATEGORIZER_ROUTES_FILE, routes, logger);

  const registry = createClient(RegistryService, config.REGISTRY_ADDR, { metrics });
  const modelProxy = createClient(ModelProxyService, config.MODEL_PROXY_ADDR, { metrics });
  const semantic =
    config.VECTOR_SEARCH_ADDR === undefined
      ? undefined
      : new SemanticRouter(
          createClient(VectorSearchService, config.VECTOR_SEARCH_ADDR, { metrics }),
          {
            embeddingModel: config.CATEGORIZER_EMBEDDING_MODEL,
            dimensions: config.CATEGORIZER_EMBEDDING_DIMENSIONS,
            k: config.CATEGORIZER_SEMANTIC_K,
            minSimilarity: config.CATEGORIZER_SEMANTIC_THRESHOLD,
            searchTimeoutMs: config.CATEGORIZER_SEMANTIC_TIMEOUT_MS,
            missingTtlMs: config.ROUTE_CACHE_TTL_MS,
          },
          logger,
        );
  if (semantic === undefined) {
    logger.warn(
      "semantic routing is off (VECTOR_SEARCH_ADDR is not set): routes' example utterances are not used",
    );
  }
  const server = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    routes,
    catalog: new ModelCatalog(registry, { ttlMs: config.CATALOG_TTL_MS }),
    notices: createNotices(nc, logger),
    modelProxy,
    judge: {
      model: config.CATEGORIZER_JUDGE_MODEL,
      threshold: config.CATEGORIZER_JUDGE_THRESHOLD,
      weight: config.CATEGORIZER_JUDGE_WEIGHT,
      timeoutMs: config.CATEGORIZER_JUDGE_TIMEOUT_MS,
    },
    exactCountMargin: config.CATEGORIZER_EXACT_COUNT_MARGIN,
    ...(semantic !== undefined ? { semantic } : {}),
  });
  const port = await server.listen(config.CATEGORIZER_ADDR);
  const metricsServer = await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);
  logger.info(
    {
      address: config.CATEGORIZER_ADDR,
      port,
      metricsPort: metricsServer.port,
      judge: config.CATEGORIZER_JUDGE_MODEL ?? null,
      semanticRouting:
        config.VECTOR_SEARCH_ADDR === undefined
          ? null
          : { vectorSearch: config.VECTOR_SEARCH_ADDR, model: config.CATEGORIZER_EMBEDDING_MODEL },
    },
    "categorizer listening",
  );

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      {
        name: "grpc server",
        run: () => server.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      { name: "nats drain", run: () => nc.drain() },
      { name: "mongo disconnect", run: () => closeMongo(mongo) },
      { name: "metrics server", run: () => metricsServer.close() },
      { name: "tracing", run: () => tracing.shutdown() },
    ],
  });
}

runService({
  name: SERVICE_NAME,
  version: VERSION,
  loadConfig: loadCategorizerConfig,
  start: main,
});
