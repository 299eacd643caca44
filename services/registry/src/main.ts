// Start-up only: config -> logger -> tracing -> NATS + MongoDB -> seeds -> server -> listen ->
// metrics -> self-registration -> shutdown wiring. Everything else lives in build(deps).
import { hostname } from "node:os";
import {
  closeMongo,
  connectMongo,
  connectNats,
  createJwksVerifier,
  createNotices,
  handleShutdown,
  runService,
  type ServiceRuntime,
  startMetricsServer,
} from "@ensemble/kit";
import { loadRegistryConfig, type RegistryConfig } from "./config.js";
import { ensureIndexes, registryModels } from "./catalog.model.js";
import { createCatalog } from "./catalog-service.js";
import { InstanceStore, keepRegistered } from "./instances.js";
import { startPluginSweeper } from "./plugin-service.js";
import { loadSeeds } from "./seed.js";
import { build, SERVICE_NAME } from "./server.js";
import { VERSION } from "./version.js";

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<RegistryConfig>): Promise<void> {
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
  });

  const [nc, mongo] = await Promise.all([
    connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger }),
    connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger }),
  ]);
  const instances = await InstanceStore.open(nc, {
    bucket: config.INSTANCE_BUCKET,
    ttlMs: config.INSTANCE_TTL_MS,
    logger,
  });

  const models = registryModels(mongo);
  await ensureIndexes(models);
  await loadSeeds(config.REGISTRY_SEED_DIR, createCatalog(models), logger);

  const server = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    mongo,
    instances,
    notices: createNotices(nc, logger),
    pluginTtlMs: config.PLUGIN_TTL_MS,
  });
  const port = await server.listen(config.REGISTRY_ADDR);
  const metricsServer = await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);
  const sweeper = startPluginSweeper(server.plugins, {
    intervalMs: config.PLUGIN_SWEEP_INTERVAL_MS,
    logger,
    health: {
      intervalMs: config.PLUGIN_HEALTH_INTERVAL_MS,
      failures: config.PLUGIN_HEALTH_FAILURES,
      timeoutMs: config.PLUGIN_HEALTH_TIMEOUT_MS,
    },
  });

  const self = keepRegistered(
    instances,
    {
      service: SERVICE_NAME,
      instanceId: `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 128),
      address: config.REGISTRY_ADVERTISE_ADDR ?? advertised(config.REGISTRY_ADDR, port),
      version: VERSION,
      metadata: { metricsPort: String(metricsServer.port) },
    },
    logger,
  );
  await self.register();
  logger.info(
    { address: config.REGISTRY_ADDR, port, metricsPort: metricsServer.port },
    "registry listening",
  );

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      // Leave the instance set first, so nobody is sent here while we drain.
      { name: "deregister instance", run: () => self.stop() },
      {
        name: "grpc server",
        run: () => server.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      { name: "plugin sweeper", run: () => Promise.resolve(sweeper.stop()) },
      { name: "nats drain", run: () => nc.drain() },
      { name: "mongo disconnect", run: () => closeMongo(mongo) },
      { name: "metrics server", run: () => metricsServer.close() },
      { name: "tracing", run: () => tracing.shutdown() },
    ],
  });
}

/** REGISTRY_ADDR with the bound port; a wildcard host becomes this machine's name. */
function advertised(listen: string, port: number): string {
  const host = listen.slice(0, listen.lastIndexOf(":"));
  const reachable = host === "0.0.0.0" || host === "[::]" || host === "::" ? hostname() : host;
  return `${reachable}:${port}`;
}

runService({ name: SERVICE_NAME, version: VERSION, loadConfig: loadRegistryConfig, start: main });
