// Start-up only: config -> logger -> tracing -> NATS + MongoDB -> streams, clients, engine ->
// server -> listen -> metrics -> shutdown wiring. Everything else lives in engine.ts / build(deps).
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createNotices,
  handleShutdown,
  jetstream,
  jetstreamManager,
  type Metrics,
  runService,
  type ServiceRuntime,
  startMetricsServer,
} from "@ensemble/kit";
import {
  AuthService,
  CategorizerService,
  ModelProxyService,
  RegistryService,
  VectorSearchService,
} from "@ensemble/proto";
import { Counter, Histogram } from "prom-client";
import { loadWorkflowConfig, type WorkflowConfig } from "./config.js";
import { ArtifactStore } from "./artifacts.js";
import { Engine, type EngineMetrics } from "./engine.js";
import { FailureExplainer } from "./explainer.js";
import { RegistryPlugins } from "./plugins.js";
import { ensureRunEventsStream, RunEventPublisher } from "./events.js";
import { Scheduler, openScheduleModels } from "./schedules.js";
import { build, SERVICE_NAME } from "./server.js";
import { openSessionModels, SessionStore } from "./sessions.store.js";
import { openModels } from "./store.js";
import { CallerTokens, ServiceTokens } from "./tokens.js";
import { openWebhookModels, Webhooks } from "./webhooks.js";
import { VERSION } from "./version.js";

function engineMetrics(metrics: Metrics): EngineMetrics {
  const registers = [metrics.registry];
  return {
    runsStarted: new Counter({
      name: "ensemble_workflow_runs_started_total",
      help: "Runs created, by mode",
      labelNames: ["mode"],
      registers,
    }),
    runsEnded: new Counter({
      name: "ensemble_workflow_runs_ended_total",
      help: "Runs ended, by status",
      labelNames: ["status"],
      registers,
    }),
    stepsExecuted: new Counter({
      name: "ensemble_workflow_steps_total",
      help: "Steps executed on this replica, by kind and status",
      labelNames: ["kind", "status"],
      registers,
    }),
    dispatchSeconds: new Histogram({
      name: "ensemble_workflow_step_dispatch_seconds",
      help: "Time from a step being queued to a replica taking it",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers,
    }),
  };
}

async function main({
  config,
  logger,
  tracing,
  metrics,
}: ServiceRuntime<WorkflowConfig>): Promise<void> {
  const verifier = createJwksVerifier({
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
  });
  const [nc, mongo] = await Promise.all([
    connectNats({ url: config.NATS_URL, name: SERVICE_NAME, logger }),
    connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger }),
  ]);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await ensureRunEventsStream(
    jsm,
    config.RUN_EVENTS_STREAM,
    config.RUN_EVENTS_MAX_AGE_MS,
    config.RUN_EVENTS_SUBJECT_ROOT,
  );
  const models = await openModels(mongo);

  const auth = createClient(AuthService, config.AUTH_ADDR, { metrics });
  let callerTokens: CallerTokens | undefined;
  let tokens;
  if (config.SERVICE_TOKEN !== undefined) {
    tokens = new ServiceTokens(auth, config.SERVICE_TOKEN);
  } else {
    logger.warn(
      "SERVICE_TOKEN is not set: steps use the starting call's token, so runs fail once it expires or when another replica takes them over",
    );
    callerTokens = new CallerTokens();
    tokens = callerTokens;
  }
  if (config.CATEGORIZER_ADDR === undefined) {
    logger.warn("CATEGORIZER_ADDR is not set: AUTO runs are refused (FAILED_PRECONDITION)");
  }
  if (config.VECTOR_SEARCH_ADDR === undefined) {
    logger.warn("VECTOR_SEARCH_ADDR is not set: retrieve steps fail (FAILED_PRECONDITION)");
  }
  const modelProxy = createClient(ModelProxyService, config.MODEL_PROXY_ADDR, { metrics });
  const publisher = new RunEventPublisher({
    nc,
    js,
    jsm,
    stream: config.RUN_EVENTS_STREAM,
    logger,
    root: config.RUN_EVENTS_SUBJECT_ROOT,
  });
  const registry = createClient(RegistryService, config.REGISTRY_ADDR, { metrics });
  const engine = new Engine({
    models,
    nc,
    js,
    jsm,
    publisher,
    logger,
    registry,
    modelProxy,
    artifacts: await ArtifactStore.open(mongo),
    plugins: new RegistryPlugins({ registry, metrics }),
    vectorSearch:
      config.VECTOR_SEARCH_ADDR !== undefined
        ? createClient(VectorSearchService, config.VECTOR_SEARCH_ADDR, { metrics })
        : undefined,
    categorizer:
      config.CATEGORIZER_ADDR !== undefined
        ? createClient(CategorizerService, config.CATEGORIZER_ADDR, { metrics })
        : undefined,
    tokens,
    callerTokens,
    metrics: engineMetrics(metrics),
    explainer:
      config.EXPLAINER_MODEL !== undefined
        ? new FailureExplainer({
            modelProxy,
            tokens,
            model: config.EXPLAINER_MODEL,
            timeoutMs: config.EXPLAINER_TIMEOUT_MS,
          })
        : undefined,
    settings: {
      stepStream: config.STEP_STREAM,
      stepConsumer: config.STEP_CONSUMER,
      subjectPrefix: config.WORKFLOW_SUBJECT_PREFIX,
      ackWaitMs: config.STEP_ACK_WAIT_MS,
      maxDeliver: config.STEP_MAX_DELIVER,
      workerConcurrency: config.WORKER_CONCURRENCY,
      tenantMaxParallel: config.TENANT_MAX_PARALLEL,
      runMaxParallel: config.RUN_MAX_PARALLEL,
      stepTimeoutMs: config.STEP_TIMEOUT_MS,
      runTimeoutMs: config.RUN_TIMEOUT_MS,
      recoveryIntervalMs: config.RECOVERY_INTERVAL_MS,
      runRetentionMs: config.RUN_RETENTION_MS,
    },
  });
  await engine.start();
  const webhooks = new Webhooks({
    models: await openWebhookModels(mongo),
    notices: createNotices(nc, logger),
    js,
    jsm,
    logger,
    metricsRegistry: metrics.registry,
    settings: {
      stream: config.RUN_EVENTS_STREAM,
      root: config.RUN_EVENTS_SUBJECT_ROOT,
      consumer: config.WEBHOOK_CONSUMER,
      usageStream: config.USAGE_STREAM,
      budgetConsumer: config.WEBHOOK_BUDGET_CONSUMER,
      allowPrivate: config.WEBHOOK_ALLOW_PRIVATE,
      retryBaseMs: config.WEBHOOK_RETRY_BASE_MS,
      maxAttempts: config.WEBHOOK_MAX_ATTEMPTS,
      pollMs: config.WEBHOOK_POLL_MS,
      retentionMs: config.WEBHOOK_DELIVERY_RETENTION_MS,
    },
  });
  webhooks.start();
  // Every replica runs the scheduler loop; claims decide which one fires an occurrence.
  const scheduler = new Scheduler({
    models: await openScheduleModels(mongo),
    engine,
    registry,
    autoAvailable: config.CATEGORIZER_ADDR !== undefined,
    tokens,
    logger,
    settings: {
      tickMs: config.SCHEDULE_TICK_MS,
      claimGraceMs: config.SCHEDULE_CLAIM_GRACE_MS,
      fireRetentionMs: config.SCHEDULE_FIRE_RETENTION_MS,
      pauseAfterFailures: config.SCHEDULE_PAUSE_AFTER_FAILURES,
    },
    metricsRegistry: metrics.registry,
    onPaused: (schedule, eventId) => webhooks.schedulePaused(schedule, eventId),
  });
  scheduler.start();

  const server = build({
    version: VERSION,
    logger,
    verifier,
    metrics,
    engine,
    nc,
    js,
    eventsStream: config.RUN_EVENTS_STREAM,
    eventsRoot: config.RUN_EVENTS_SUBJECT_ROOT,
    scheduler,
    webhooks,
    sessions: new SessionStore(await openSessionModels(mongo)),
    autoAvailable: config.CATEGORIZER_ADDR !== undefined,
  });
  const port = await server.listen(config.WORKFLOW_ADDR);
  const metricsServer = await startMetricsServer(metrics, config.METRICS_PORT, config.METRICS_HOST);
  logger.info(
    { address: config.WORKFLOW_ADDR, port, metricsPort: metricsServer.port },
    "workflow listening",
  );

  handleShutdown({
    logger,
    timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
    steps: [
      {
        name: "grpc server",
        run: () => server.shutdown({ timeoutMs: Math.floor(config.SHUTDOWN_TIMEOUT_MS / 2) }),
      },
      // No new occurrences; one being fired finishes (or is left claimed for another replica).
      { name: "scheduler", run: () => scheduler.stop() },
      // Attempts in flight finish; unsent deliveries wait in MongoDB for any replica.
      { name: "webhooks", run: () => webhooks.stop() },
      // Steps in flight finish and ack (or are redelivered to another replica).
      { name: "engine", run: () => engine.stop() },
      { name: "nats drain", run: () => nc.drain() },
      { name: "mongo disconnect", run: () => closeMongo(mongo) },
      { name: "metrics server", run: () => metricsServer.close() },
      { name: "tracing", run: () => tracing.shutdown() },
    ],
  });
}

runService({ name: SERVICE_NAME, version: VERSION, loadConfig: loadWorkflowConfig, start: main });
