// Built services as child processes, started like `npm start` starts them but on free ports,
// with their own databases and buckets on the test run's NATS and MongoDB-wire server. Tests of
// one service use the others through these (a service's internals are never imported across
// packages). Each needs its package built (`npm run build`).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { mongoUrl, natsUrl } from "./context.js";
import { uniqueName } from "./names.js";
import { freePort, ServerProcess } from "./process.js";

const execFileAsync = promisify(execFile);

/** The repository root (the nearest ancestor holding tsconfig.base.json). */
export const repoRoot = ((): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "tsconfig.base.json")) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
})();

export interface MeshProcess {
  /** host:port of its gRPC server. */
  address: string;
  /** Its recent output lines (log scans). */
  output(): string;
  stop(): Promise<void>;
  /** SIGKILL: a crash, no drain. */
  kill(): Promise<void>;
}

export interface AuthProcess extends MeshProcess {
  jwksUrl: string;
  /** A bootstrap service credential minted with auth's CLI (as the launcher does). */
  mintServiceToken(service: string): Promise<string>;
}

function handle(proc: ServerProcess, address: string): MeshProcess {
  return {
    address,
    output: () => proc.output(5_000),
    stop: async () => {
      await proc.stop(10_000);
    },
    kill: async () => {
      await proc.kill();
    },
  };
}

/** The built auth service with its own database (fast argon2 parameters for tests). */
export async function startAuthProcess(env: NodeJS.ProcessEnv = {}): Promise<AuthProcess> {
  const [port, jwksPort] = [await freePort(), await freePort()];
  const full: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: "development",
    LOG_LEVEL: "info",
    AUTH_ADDR: `127.0.0.1:${port}`,
    AUTH_JWKS_PORT: String(jwksPort),
    METRICS_PORT: "0",
    NATS_URL: natsUrl(),
    MONGODB_URL: mongoUrl(),
    MONGODB_DB: uniqueName("auth"),
    AUTH_ARGON2_MEMORY_KIB: "8192",
    AUTH_ARGON2_TIME_COST: "1",
    ...env,
  };
  if (env["JWKS_URL"] === undefined) delete full["JWKS_URL"];
  const proc = new ServerProcess(
    "auth",
    process.execPath,
    [join(repoRoot, "services/auth/dist/src/main.js")],
    full,
  );
  await proc.waitForLine(/auth listening/, 90_000);
  return {
    ...handle(proc, `127.0.0.1:${port}`),
    jwksUrl: `http://127.0.0.1:${jwksPort}/.well-known/jwks.json`,
    async mintServiceToken(service) {
      const { stdout } = await execFileAsync(
        process.execPath,
        [join(repoRoot, "services/auth/dist/src/mint-service-token.js"), "--service", service],
        { env: full, timeout: 30_000 },
      );
      return stdout.trim();
    },
  };
}

/** The built registry with its own database and instance bucket, seeded from deploy/config. */
export async function startRegistryProcess(opts: {
  jwksUrl: string;
  env?: NodeJS.ProcessEnv;
}): Promise<MeshProcess> {
  const port = await freePort();
  const proc = new ServerProcess(
    "registry",
    process.execPath,
    [join(repoRoot, "services/registry/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      REGISTRY_ADDR: `127.0.0.1:${port}`,
      METRICS_PORT: "0",
      JWKS_URL: opts.jwksUrl,
      NATS_URL: natsUrl(),
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: uniqueName("registry"),
      INSTANCE_BUCKET: uniqueName("instances"),
      REGISTRY_SEED_DIR: join(repoRoot, "deploy/config"),
      ...opts.env,
    },
  );
  await proc.waitForLine(/registry listening/, 90_000);
  return handle(proc, `127.0.0.1:${port}`);
}

export interface ModelProxyProcessOptions {
  jwksUrl: string;
  authAddress: string;
  registryAddress: string;
  /** The simulator's base URL (".../v1"); the `simulator` deployment. */
  simulatorUrl?: string;
  /** Shared by replicas that must see each other (default: fresh names per process). */
  buckets?: { rateLimit?: string; spend?: string; cache?: string };
  /** The ledger database (replicas share one; default a fresh name). */
  database?: string;
  env?: NodeJS.ProcessEnv;
}

/** The built model-proxy, talking to the given auth, registry and simulator. */
export async function startModelProxyProcess(opts: ModelProxyProcessOptions): Promise<MeshProcess> {
  const port = await freePort();
  const proc = new ServerProcess(
    "model-proxy",
    process.execPath,
    [join(repoRoot, "services/model-proxy/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      MODEL_PROXY_ADDR: `127.0.0.1:${port}`,
      METRICS_PORT: "0",
      JWKS_URL: opts.jwksUrl,
      AUTH_ADDR: opts.authAddress,
      REGISTRY_ADDR: opts.registryAddress,
      NATS_URL: natsUrl(),
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: opts.database ?? uniqueName("modelproxy"),
      RATE_LIMIT_BUCKET: opts.buckets?.rateLimit ?? uniqueName("limits"),
      SPEND_BUCKET: opts.buckets?.spend ?? uniqueName("spend"),
      CACHE_BUCKET: opts.buckets?.cache ?? uniqueName("cache"),
      ...(opts.simulatorUrl !== undefined ? { LLM_SIM_URL: opts.simulatorUrl } : {}),
      ...opts.env,
    },
  );
  await proc.waitForLine(/model-proxy listening/, 90_000);
  return handle(proc, `127.0.0.1:${port}`);
}

export interface CategorizerProcessOptions {
  jwksUrl: string;
  registryAddress: string;
  /** model-proxy, for the judge and exact token counts (default: an address nothing listens on). */
  modelProxyAddress?: string;
  /** Model id or alias of the LLM judge (default: none). */
  judgeModel?: string;
  env?: NodeJS.ProcessEnv;
}

/** The built categorizer with its own database, global routes from deploy/config/routes.yaml. */
export async function startCategorizerProcess(
  opts: CategorizerProcessOptions,
): Promise<MeshProcess> {
  const port = await freePort();
  const proc = new ServerProcess(
    "categorizer",
    process.execPath,
    [join(repoRoot, "services/categorizer/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      CATEGORIZER_ADDR: `127.0.0.1:${port}`,
      METRICS_PORT: "0",
      JWKS_URL: opts.jwksUrl,
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: uniqueName("categorizer"),
      NATS_URL: natsUrl(),
      REGISTRY_ADDR: opts.registryAddress,
      MODEL_PROXY_ADDR: opts.modelProxyAddress ?? `127.0.0.1:${await freePort()}`,
      CATEGORIZER_ROUTES_FILE: join(repoRoot, "deploy/config/routes.yaml"),
      ...(opts.judgeModel !== undefined ? { CATEGORIZER_JUDGE_MODEL: opts.judgeModel } : {}),
      ...opts.env,
    },
  );
  await proc.waitForLine(/categorizer listening/, 90_000);
  return handle(proc, `127.0.0.1:${port}`);
}

export interface VectorSearchProcessOptions {
  jwksUrl: string;
  /** model-proxy, for text embeddings (default: an address nothing listens on). */
  modelProxyAddress?: string;
  /** Its database; pass the same one to a restarted process to keep the data (default: fresh). */
  database?: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * The built vector-search with its own database (or the given one). Processes on one database
 * share one change stream (named after it), so they run as replicas of one another.
 */
export async function startVectorSearchProcess(
  opts: VectorSearchProcessOptions,
): Promise<MeshProcess> {
  const port = await freePort();
  const database = opts.database ?? uniqueName("vectorsearch");
  const proc = new ServerProcess(
    "vector-search",
    process.execPath,
    [join(repoRoot, "services/vector-search/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      VECTOR_SEARCH_ADDR: `127.0.0.1:${port}`,
      METRICS_PORT: "0",
      JWKS_URL: opts.jwksUrl,
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: database,
      NATS_URL: natsUrl(),
      VECTOR_CHANGES_STREAM: `VECTORS_${database}`,
      VECTOR_CHANGES_SUBJECT_ROOT: `ensemble.vectors.${database}`,
      MODEL_PROXY_ADDR: opts.modelProxyAddress ?? `127.0.0.1:${await freePort()}`,
      ...opts.env,
    },
  );
  await proc.waitForLine(/vector-search listening/, 90_000);
  return handle(proc, `127.0.0.1:${port}`);
}

export interface WorkflowProcessOptions {
  jwksUrl: string;
  authAddress: string;
  registryAddress: string;
  modelProxyAddress: string;
  /** AUTO mode (default: none, AUTO is refused). */
  categorizerAddress?: string;
  /** The bootstrap credential (auth.mintServiceToken("workflow")); default: none. */
  serviceToken?: string;
  /**
   * Replicas that must share work pass the same names (database, streams, consumer, subjects);
   * default: fresh ones per process.
   */
  shared?: {
    database: string;
    eventsStream: string;
    eventsRoot: string;
    stepStream: string;
    subjectPrefix: string;
    /** The consumer of budget alerts on the run's shared USAGE stream (one per set of replicas). */
    budgetConsumer: string;
  };
  env?: NodeJS.ProcessEnv;
}

/** Names for a set of workflow-engine replicas that share one database, queue and event stream. */
export function workflowSharedNames(): NonNullable<WorkflowProcessOptions["shared"]> {
  const token = (prefix: string) => `${prefix}${uniqueName("").replace(/[^A-Za-z0-9]/g, "")}`;
  return {
    database: uniqueName("workflow"),
    eventsStream: token("RUN_EVENTS_"),
    eventsRoot: token("runs"),
    stepStream: token("WORKFLOW_STEPS_"),
    subjectPrefix: token("wf"),
    budgetConsumer: token("webhooks_budget_"),
  };
}

/** The built workflow engine, talking to the given auth, registry, model-proxy (and categorizer). */
export async function startWorkflowProcess(opts: WorkflowProcessOptions): Promise<MeshProcess> {
  const port = await freePort();
  const shared = opts.shared ?? workflowSharedNames();
  const proc = new ServerProcess(
    "workflow",
    process.execPath,
    [join(repoRoot, "services/workflow-engine/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      WORKFLOW_ADDR: `127.0.0.1:${port}`,
      METRICS_PORT: "0",
      JWKS_URL: opts.jwksUrl,
      AUTH_ADDR: opts.authAddress,
      REGISTRY_ADDR: opts.registryAddress,
      MODEL_PROXY_ADDR: opts.modelProxyAddress,
      NATS_URL: natsUrl(),
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: shared.database,
      RUN_EVENTS_STREAM: shared.eventsStream,
      RUN_EVENTS_SUBJECT_ROOT: shared.eventsRoot,
      STEP_STREAM: shared.stepStream,
      WORKFLOW_SUBJECT_PREFIX: shared.subjectPrefix,
      WEBHOOK_BUDGET_CONSUMER: shared.budgetConsumer,
      ...(opts.categorizerAddress !== undefined
        ? { CATEGORIZER_ADDR: opts.categorizerAddress }
        : {}),
      ...(opts.serviceToken !== undefined ? { SERVICE_TOKEN: opts.serviceToken } : {}),
      ...opts.env,
    },
  );
  await proc.waitForLine(/workflow listening/, 90_000);
  return handle(proc, `127.0.0.1:${port}`);
}

export interface ServicesOptions {
  /** The simulator's base URL (".../v1"): model-proxy's `simulator` deployment. */
  simulatorUrl: string;
  modelProxy?: { env?: NodeJS.ProcessEnv };
  /** Start the categorizer (judge and token counts through model-proxy). */
  categorizer?: { env?: NodeJS.ProcessEnv };
  /** Start vector-search (embeddings through model-proxy). */
  vectorSearch?: { env?: NodeJS.ProcessEnv };
  /**
   * Start the workflow engine with a service token minted from auth, talking to the categorizer
   * (AUTO runs) and vector-search when they are started.
   */
  workflow?: {
    /** false: not given the categorizer even when it runs (AUTO refused). Default true. */
    useCategorizer?: boolean;
    env?: NodeJS.ProcessEnv;
  };
}

type OptionalService = "categorizer" | "vectorSearch" | "workflow";

/** What startServices started: auth, registry, model-proxy, and the optional ones in `Started`. */
export type Services<Started extends OptionalService = never> = {
  auth: AuthProcess;
  registry: MeshProcess;
  modelProxy: MeshProcess;
  /** Stops everything it started, last started first (each one, even if another fails). */
  stop(): Promise<void>;
} & { [K in OptionalService]: K extends Started ? MeshProcess : MeshProcess | undefined };

/**
 * The usual mesh as built processes, started in order: auth, registry, model-proxy, then (when
 * asked) categorizer, vector-search and the workflow engine. When a start fails, what was started
 * is stopped and the error rethrown.
 */
export async function startServices<O extends ServicesOptions>(
  opts: O,
): Promise<Services<Extract<keyof O, OptionalService>>> {
  const started: MeshProcess[] = [];
  const stop = async (): Promise<void> => {
    const errors: unknown[] = [];
    for (const proc of started.splice(0).reverse()) await proc.stop().catch((e) => errors.push(e));
    if (errors.length > 0) throw errors[0];
  };
  const add = <P extends MeshProcess>(proc: P): P => {
    started.push(proc);
    return proc;
  };
  try {
    const auth = add(await startAuthProcess());
    const mesh = { jwksUrl: auth.jwksUrl };
    const registry = add(await startRegistryProcess(mesh));
    const modelProxy = add(
      await startModelProxyProcess({
        ...mesh,
        authAddress: auth.address,
        registryAddress: registry.address,
        simulatorUrl: opts.simulatorUrl,
        ...opts.modelProxy,
      }),
    );
    const viaProxy = { ...mesh, modelProxyAddress: modelProxy.address };
    const categorizer =
      opts.categorizer &&
      add(
        await startCategorizerProcess({
          ...viaProxy,
          registryAddress: registry.address,
          ...opts.categorizer,
        }),
      );
    const vectorSearch =
      opts.vectorSearch &&
      add(await startVectorSearchProcess({ ...viaProxy, ...opts.vectorSearch }));
    const wf = opts.workflow;
    const workflow =
      wf &&
      add(
        await startWorkflowProcess({
          ...viaProxy,
          authAddress: auth.address,
          registryAddress: registry.address,
          ...(categorizer !== undefined && wf.useCategorizer !== false
            ? { categorizerAddress: categorizer.address }
            : {}),
          serviceToken: await auth.mintServiceToken("workflow"),
          env: {
            ...(vectorSearch !== undefined ? { VECTOR_SEARCH_ADDR: vectorSearch.address } : {}),
            ...wf.env,
          },
        }),
      );
    return { auth, registry, modelProxy, categorizer, vectorSearch, workflow, stop } as Services<
      Extract<keyof O, OptionalService>
    >;
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
