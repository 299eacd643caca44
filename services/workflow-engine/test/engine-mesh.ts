// The mesh of the in-process engine tests (runs, sessions, plugins): auth, registry (seeded from
// deploy/config) and model-proxy as built processes, optionally the categorizer, the LLM
// simulator as the only provider, NATS JetStream and the MongoDB-wire server from the test kit,
// and the engine in-process through Engine + build(deps) with its own database, streams and
// subjects. Tokens are real: users sign up through auth; steps run with service tokens issued by
// auth for the run's user. (The process and crash tests start the built engine instead.)
import {
  closeMongo,
  connectMongo,
  createClient,
  createJwksVerifier,
  createNotices,
  jetstream,
  jetstreamManager,
  type GrpcClient,
  type Logger,
} from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  CategorizerService,
  ModelProxyService,
  RegistryService,
} from "@ensemble/proto";
import {
  captureLogs,
  mongoUrl,
  natsUrl,
  startAuthProcess,
  startCategorizerProcess,
  startModelProxyProcess,
  startRegistryProcess,
  uniqueName,
  type AuthProcess,
  type MeshProcess,
} from "@ensemble/testkit";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Connection } from "mongoose";
import { ArtifactStore } from "../src/artifacts.js";
import { Engine, type EngineSettings } from "../src/engine.js";
import { ensureRunEventsStream, RunEventPublisher } from "../src/events.js";
import { FailureExplainer } from "../src/explainer.js";
import { RegistryPlugins } from "../src/plugins.js";
import { build, type WorkflowServerDeps } from "../src/server.js";
import { openModels } from "../src/store.js";
import { ServiceTokens } from "../src/tokens.js";
import { openWebhookModels, Webhooks, type WebhookSettings } from "../src/webhooks.js";

export const PASSWORD = "correct-Horse-battery-9";

export interface EngineMeshOptions {
  /** Short label in database, stream, subject, e-mail and tenant names. */
  name: string;
  registryEnv?: Record<string, string>;
  proxyEnv?: Record<string, string>;
  /** model-proxy's MODEL_PROXY_DEPLOYMENTS, from the simulator's base URL (started here). */
  proxyDeployments?: (simUrl: string) => unknown[];
  /** Start a categorizer process and give it to the engine (AUTO runs). */
  categorizer?: boolean;
  /** Plugin steps through the registry. */
  plugins?: boolean;
  /** A model that explains failed runs to their users. */
  explainerModel?: string;
  /** Over the defaults below. */
  settings?: Partial<EngineSettings>;
  /** Run the tenants' webhooks, with these settings over the test defaults. */
  webhooks?: Partial<WebhookSettings>;
}

export interface EngineMesh {
  sim: Simulator;
  auth: AuthProcess;
  registry: MeshProcess;
  proxy: MeshProcess;
  categorizer: MeshProcess | undefined;
  mongo: Connection;
  nc: NatsConnection;
  logger: Logger;
  engine: Engine;
  webhooks: Webhooks | undefined;
  /**
   * Another replica's webhooks API on the same data (not consuming events), to serve with
   * `serve({ webhooks })`; stopped with the mesh.
   */
  webhooksReplica(): Webhooks;
  authClient: GrpcClient<typeof AuthService>;
  registryClient: GrpcClient<typeof RegistryService>;
  modelProxy: GrpcClient<typeof ModelProxyService>;
  /** Serves the engine (its base dependencies plus `extra`) on a free port; returns the address. */
  serve(extra?: Partial<WorkflowServerDeps>): Promise<string>;
  /** Signs up a user in a new tenant. */
  signup(label: string): Promise<{ token: string; tenantId: string }>;
  /** Stops everything it started, last started first (servers before the engine). */
  stop(): Promise<void>;
}

const streamName = (prefix: string) => uniqueName(prefix).replace(/[^A-Za-z0-9_-]/g, "_");
const subjectToken = (prefix: string) => uniqueName(prefix).replace(/[^A-Za-z0-9]/g, "");

export async function startEngineMesh(opts: EngineMeshOptions): Promise<EngineMesh> {
  // What to undo, in start order; undone last first, also when a later start fails.
  const undo: Array<() => Promise<unknown>> = [];
  const unwind = async () => {
    for (const step of undo.splice(0).reverse()) await step().catch(() => undefined);
  };
  try {
    return await start(opts, undo, unwind);
  } catch (err) {
    await unwind();
    throw err;
  }
}

async function start(
  opts: EngineMeshOptions,
  undo: Array<() => Promise<unknown>>,
  unwind: () => Promise<void>,
): Promise<EngineMesh> {
  const sim = await startSimulator({ defaults: { ttftMs: 0 } });
  undo.push(() => sim.close());
  const auth = await startAuthProcess();
  undo.push(() => auth.stop());
  const registry = await startRegistryProcess({
    jwksUrl: auth.jwksUrl,
    ...(opts.registryEnv !== undefined ? { env: opts.registryEnv } : {}),
  });
  undo.push(() => registry.stop());
  const proxy = await startModelProxyProcess({
    jwksUrl: auth.jwksUrl,
    authAddress: auth.address,
    registryAddress: registry.address,
    simulatorUrl: `${sim.url}/v1`,
    env: {
      ...opts.proxyEnv,
      ...(opts.proxyDeployments !== undefined
        ? { MODEL_PROXY_DEPLOYMENTS: JSON.stringify(opts.proxyDeployments(sim.url)) }
        : {}),
    },
  });
  undo.push(() => proxy.stop());
  const categorizer = opts.categorizer
    ? await startCategorizerProcess({
        jwksUrl: auth.jwksUrl,
        registryAddress: registry.address,
        modelProxyAddress: proxy.address,
      })
    : undefined;
  if (categorizer !== undefined) undo.push(() => categorizer.stop());

  const logger = captureLogs({ level: "warn" }).logger;
  const mongo = await connectMongo({ url: mongoUrl(), dbName: uniqueName(opts.name), logger });
  undo.push(() => closeMongo(mongo));
  const nc = await connect({ servers: natsUrl() });
  undo.push(() => nc.close());
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const root = `t${subjectToken(opts.name)}`;
  const stream = streamName("RUN_EVENTS");
  await ensureRunEventsStream(jsm, stream, 3_600_000, root);
  const publisher = new RunEventPublisher({ nc, js, jsm, stream, logger, root });
  const authClient = createClient(AuthService, auth.address);
  const registryClient = createClient(RegistryService, registry.address);
  const modelProxy = createClient(ModelProxyService, proxy.address);
  const tokens = new ServiceTokens(authClient, await auth.mintServiceToken("workflow"));
  const subjectPrefix = `w${subjectToken("wf")}`;
  const engine = new Engine({
    models: await openModels(mongo),
    nc,
    js,
    jsm,
    publisher,
    logger,
    registry: registryClient,
    modelProxy,
    artifacts: await ArtifactStore.open(mongo),
    tokens,
    ...(opts.plugins ? { plugins: new RegistryPlugins({ registry: registryClient }) } : {}),
    ...(categorizer !== undefined
      ? { categorizer: createClient(CategorizerService, categorizer.address) }
      : {}),
    ...(opts.explainerModel !== undefined
      ? {
          explainer: new FailureExplainer({
            modelProxy,
            tokens,
            model: opts.explainerModel,
            timeoutMs: 10_000,
          }),
        }
      : {}),
    settings: {
      stepStream: streamName("STEPS"),
      stepConsumer: "workers",
      subjectPrefix,
      ackWaitMs: 10_000,
      // Several deliveries, as in production: a step slower than a second must still run once.
      maxDeliver: 5,
      workerConcurrency: 16,
      tenantMaxParallel: 16,
      runMaxParallel: 8,
      stepTimeoutMs: 20_000,
      runTimeoutMs: 120_000,
      recoveryIntervalMs: 60_000,
      ...opts.settings,
    },
  });
  await engine.start();
  undo.push(() => engine.stop());
  const webhookModels = await openWebhookModels(mongo);
  const newWebhooks = (): Webhooks =>
    new Webhooks({
      models: webhookModels,
      notices: createNotices(nc, logger),
      js,
      jsm,
      logger,
      settings: {
        stream,
        root,
        consumer: "webhooks",
        // model-proxy processes of every test share the run's NATS and its USAGE stream: each
        // mesh takes budget alerts through its own consumer.
        usageStream: "USAGE",
        budgetConsumer: subjectToken("budget"),
        allowPrivate: true,
        retryBaseMs: 100,
        maxAttempts: 3,
        pollMs: 200,
        retentionMs: 3_600_000,
        ...opts.webhooks,
      },
    });
  let webhooks: Webhooks | undefined;
  if (opts.webhooks !== undefined) {
    webhooks = newWebhooks();
    webhooks.start();
    undo.push(() => webhooks!.stop());
  }

  const base: WorkflowServerDeps = {
    version: "test",
    logger,
    verifier: createJwksVerifier({ jwksUrl: auth.jwksUrl }),
    engine,
    nc,
    js,
    eventsStream: stream,
    eventsRoot: root,
    webhooks,
  };
  const stamp = Date.now();

  return {
    sim,
    auth,
    registry,
    proxy,
    categorizer,
    mongo,
    nc,
    logger,
    engine,
    webhooks,
    webhooksReplica() {
      const replica = newWebhooks();
      undo.push(() => replica.stop());
      return replica;
    },
    authClient,
    registryClient,
    modelProxy,
    async serve(extra = {}) {
      const server = build({ ...base, ...extra });
      undo.push(() => server.shutdown({ timeoutMs: 2_000 }));
      return `127.0.0.1:${await server.listen("127.0.0.1:0")}`;
    },
    async signup(label) {
      const res = await authClient.signup({
        email: `${opts.name}-${label}-${stamp}@example.com`,
        password: PASSWORD,
        tenant: { case: "tenantName", value: `${opts.name} ${label}` },
      });
      return { token: res.tokens?.accessToken ?? "", tenantId: res.tenant?.id ?? "" };
    },
    stop: unwind,
  };
}
