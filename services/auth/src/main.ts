// Start-up only: config -> logger -> tracing -> MongoDB + NATS (change notices) -> signing key ->
// JWKS endpoint -> server -> listen -> metrics -> key rotation schedule -> shutdown wiring.
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
import { authModels, ensureIndexes } from "./auth.model.js";
import { loadAuthConfig, type AuthConfig } from "./config.js";
import { startJwksServer } from "./jwks-http.js";
import { createPasswordHasher } from "./secrets.js";
import { build, SERVICE_NAME } from "./server.js";
import { keyStoreFrom, settingsFrom } from "./setup.js";
import { VERSION } from "./version.js";

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<AuthConfig>): Promise<void> {
  const [mongo, nc] = await Promise.all([
    connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger }),
    connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger }),
  ]);
  const models = authModels(mongo);
  await ensureIndexes(models);

  const settings = settingsFrom(config);
  const keys = keyStoreFrom(config, models, settings, logger);
  await keys.ensureKey();
  const jwks = await startJwksServer(keys, {
    port: config.AUTH_JWKS_PORT,
    host: config.AUTH_JWKS_HOST,
    logger,
  });
  // auth verifies its callers like every service does, from a JWKS URL (by default its own
  // endpoint), with a short refetch cooldown: the keys are auth's own, so a rotation by this or
  // another replica must be honoured at once, and a refetch is one cheap local request.
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL ?? jwks.url,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    refetchCooldownMs: 1_000,
  });

  const hasher = await createPasswordHasher({
    memoryCost: config.AUTH_ARGON2_MEMORY_KIB,
    timeCost: config.AUTH_ARGON2_TIME_COST,
  });
  // Operators tune the cost from this figure (aim: tens of milliseconds per login).
  const started = performance.now();
  await hasher.verifyDummy("timing probe");
  logger.info(
    {
      memoryKiB: config.AUTH_ARGON2_MEMORY_KIB,
      timeCost: config.AUTH_ARGON2_TIME_COST,
      verifyMs: Math.round(performance.now() - started),
    },
    "argon2id password hashing cost",
  );
  const server = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    models,
    keys,
    hasher,
    settings,
    notices: createNotices(nc, logger),
    throttle: {
      maxFailuresPerAccount: config.AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT,
      maxFailuresPerAddress: config.AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS,
      windowMs: config.AUTH_LOGIN_THROTTLE_WINDOW_MINUTES * 60_000,
    },
  });
  const port = await server.listen(config.AUTH_ADDR);
  const metricsServer = await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);

  const rotationAgeMs = config.AUTH_KEY_ROTATION_DAYS * 24 * 3600_000;
  const rotation = setInterval(() => {
    keys.rotateIfDue(rotationAgeMs).catch((err: unknown) => {
      logger.error({ err }, "scheduled signing key rotation failed");
    });
  }, config.AUTH_KEY_CHECK_INTERVAL_MS);
  rotation.unref();
  await keys.rotateIfDue(rotationAgeMs);

  logger.info(
    { address: config.AUTH_ADDR, port, jwksUrl: jwks.url, metricsPort: metricsServer.port },
    "auth listening",
  );

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      {
        name: "grpc server",
        run: () => server.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      { name: "key rotation", run: () => Promise.resolve(clearInterval(rotation)) },
      { name: "jwks server", run: () => jwks.close() },
      { name: "nats drain", run: () => nc.drain() },
      { name: "mongo disconnect", run: () => closeMongo(mongo) },
      { name: "metrics server", run: () => metricsServer.close() },
      { name: "tracing", run: () => tracing.shutdown() },
    ],
  });
}

runService({ name: SERVICE_NAME, version: VERSION, loadConfig: loadAuthConfig, start: main });
