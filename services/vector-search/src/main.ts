// Start-up only: config -> logger -> tracing -> NATS + MongoDB -> change feed -> clients -> server
// -> listen -> index warm-up (in the background: a call for a collection not loaded yet loads it,
// or waits for it) -> metrics -> shutdown wiring. Everything else lives in build(deps).
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  handleShutdown,
  runService,
  type ServiceRuntime,
  startMetricsServer,
} from "@ensemble/kit";
import { ModelProxyService } from "@ensemble/proto";
import { ChangeFeed } from "./changes.js";
import { Collections } from "./collections.js";
import { loadVectorSearchConfig, type VectorSearchConfig } from "./config.js";
import { build, SERVICE_NAME } from "./server.js";
import { Store } from "./store.js";
import { VERSION } from "./version.js";

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<VectorSearchConfig>): Promise<void> {
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
  });

  const [nc, mongo] = await Promise.all([
    connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger }),
    connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger }),
  ]);
  const store = await Store.open(mongo);
  const collections = new Collections({ store, logger, addThreads: config.INDEX_ADD_THREADS });
  // Followed before the indexes load, so no write of another replica falls between the two.
  const changes = await ChangeFeed.open({
    nc,
    collections,
    logger,
    metrics,
    stream: config.VECTOR_CHANGES_STREAM,
    root: config.VECTOR_CHANGES_SUBJECT_ROOT,
    maxAgeMs: config.VECTOR_CHANGES_MAX_AGE_MS,
    catchUpTimeoutMs: config.VECTOR_CATCH_UP_TIMEOUT_MS,
    reconcileMs: config.VECTOR_RECONCILE_MS,
  });
  const modelProxy = createClient(ModelProxyService, config.MODEL_PROXY_ADDR, { metrics });
  const server = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    store,
    collections,
    changes,
    strongReads: config.VECTOR_READ_CONSISTENCY === "strong",
    modelProxy,
    embedBatchSize: config.EMBED_BATCH_SIZE,
    embedTimeoutMs: config.EMBED_TIMEOUT_MS,
    maxMessageBytes: config.VECTOR_SEARCH_MAX_MESSAGE_BYTES,
  });
  const port = await server.listen(config.VECTOR_SEARCH_ADDR);
  const metricsServer = await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);
  logger.info(
    { address: config.VECTOR_SEARCH_ADDR, port, metricsPort: metricsServer.port },
    "vector-search listening",
  );
  collections.warmAll().catch((err: unknown) => {
    logger.error({ err }, "loading the vector indexes failed; collections load on first use");
  });

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      {
        name: "grpc server",
        run: () => server.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      { name: "change feed", run: () => changes.stop() },
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
  loadConfig: loadVectorSearchConfig,
  start: main,
});
