// The categorizer's environment, parsed once at start-up (fails with every bad variable named).
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { baseEnv, loadConfig, portSchema } from "@ensemble/kit";
import { z } from "zod";

/** deploy/config/routes.yaml of the nearest ancestor holding deploy/config (works from src and dist). */
function defaultRoutesFile(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, "deploy", "config");
    if (existsSync(candidate)) return join(candidate, "routes.yaml");
    const parent = dirname(dir);
    if (parent === dir) return resolve("deploy/config/routes.yaml");
    dir = parent;
  }
}

/** host:port; port 0 picks a free one. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });

// NATS carries change notices only: routes and catalog lookups are cached per replica and dropped
// when a replica (or the registry) announces a change; the TTLs bound a lost notice.
export const categorizerEnv = z.object({
  ...baseEnv,
  /** Where the gRPC server listens. */
  CATEGORIZER_ADDR: hostPort.default("127.0.0.1:50053"),
  /** Metrics side port: 9100 + the last two digits of the gRPC port. */
  METRICS_PORT: portSchema.default(9153),
  MONGODB_DB: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,63}$/)
    .default("ensemble_categorizer"),
  /** The registry: model catalog (context windows, roles, capabilities) and templates. */
  REGISTRY_ADDR: hostPort.default("127.0.0.1:50052"),
  /** model-proxy: the judge (Chat) and exact token counts near a context window (CountTokens). */
  MODEL_PROXY_ADDR: hostPort.default("127.0.0.1:50055"),
  /** The global routes, loaded at start (YAML, `routes:` in the protobuf JSON mapping of Route). */
  CATEGORIZER_ROUTES_FILE: z.string().default(defaultRoutesFile()),
  /** How long a tenant's routes are reused before MongoDB is read again. */
  ROUTE_CACHE_TTL_MS: z.coerce.number().int().min(0).max(600_000).default(5_000),
  /** How long a model looked up in the registry is reused (per tenant). */
  CATALOG_TTL_MS: z.coerce.number().int().min(0).default(30_000),
  /** Model id or alias of the LLM judge; unset = no judge (the feature classifier decides alone). */
  CATEGORIZER_JUDGE_MODEL: z.string().min(1).max(128).optional(),
  /** The judge is asked when the feature classifier's confidence is below this. */
  CATEGORIZER_JUDGE_THRESHOLD: z.coerce.number().min(0).max(1).default(0.6),
  /** Weight of the judge's opinion against the features' (0..1) when both are combined. */
  CATEGORIZER_JUDGE_WEIGHT: z.coerce.number().min(0).max(1).default(0.6),
  /** The judge's deadline; past it the feature classifier's answer stands. */
  CATEGORIZER_JUDGE_TIMEOUT_MS: z.coerce.number().int().positive().default(8_000),
  /**
   * Ask model-proxy's CountTokens (exact for models with a known tokenizer) when the cheap
   * estimate comes within this fraction of a context window; 0 = never.
   */
  CATEGORIZER_EXACT_COUNT_MARGIN: z.coerce.number().min(0).max(1).default(0.25),
  /**
   * vector-search, for semantic routing (routes' example utterances); unset or empty = semantic
   * routing off (examples are stored with their routes but not used).
   */
  VECTOR_SEARCH_ADDR: z.preprocess((v) => (v === "" ? undefined : v), hostPort.optional()),
  /** Model (id or alias) that embeds route examples and requests; fixed per tenant collection. */
  CATEGORIZER_EMBEDDING_MODEL: z.string().min(1).max(128).default("embedding"),
  /** Its vector length (text-embedding-3-small: 1536; the simulator's sim-embed takes any). */
  CATEGORIZER_EMBEDDING_DIMENSIONS: z.coerce.number().int().min(1).max(8192).default(1536),
  /** Nearest examples that vote per request. */
  CATEGORIZER_SEMANTIC_K: z.coerce.number().int().min(1).max(100).default(8),
  /** Cosine similarity the winning route's closest example needs (a route's min_similarity wins). */
  CATEGORIZER_SEMANTIC_THRESHOLD: z.coerce.number().min(0).max(1).default(0.5),
  /** The Search's deadline on the Classify path; past it the routes are judged without examples. */
  CATEGORIZER_SEMANTIC_TIMEOUT_MS: z.coerce.number().int().positive().default(2_000),
});

export type CategorizerConfig = z.output<typeof categorizerEnv>;

export function loadCategorizerConfig(env: NodeJS.ProcessEnv = process.env): CategorizerConfig {
  return loadConfig(categorizerEnv, env);
}
