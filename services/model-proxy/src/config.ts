// model-proxy's environment, parsed once at start-up (fails with every bad variable named), and
// the provider deployments it builds from it.
//
// Deployments come from two places, merged: the simple per-provider variables (OPENAI_API_KEY,
// ANTHROPIC_API_KEY, GEMINI_API_KEY, OPENROUTER_API_KEY, LLM_SIM_URL, ...) each make one
// deployment named after the provider; MODEL_PROXY_DEPLOYMENTS (a YAML/JSON file path, or inline
// JSON) adds any number more (several keys or endpoints per provider, weights, rpm/tpm limits,
// extra headers, any OpenAI-compatible endpoint under its own provider name). An API key in the
// file is written as `apiKeyEnv: NAME` so secrets stay in the environment.
import { readFileSync } from "node:fs";
import { baseEnv, ConfigError, loadConfig, portSchema } from "@ensemble/kit";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import type { Deployment } from "./providers/types.js";

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });
const httpUrl = z.url({ protocol: /^https?$/ });
const optionalSecret = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === "" ? undefined : v.trim()));
const positiveInt = z.coerce.number().int().positive();
const csv = z
  .string()
  .default("")
  .transform((v) =>
    v
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== ""),
  );

export const modelProxyEnv = z.object({
  ...baseEnv,
  /** Where the gRPC server listens. */
  MODEL_PROXY_ADDR: hostPort.default("127.0.0.1:50055"),
  METRICS_PORT: portSchema.default(9155),
  MONGODB_DB: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,63}$/)
    .default("ensemble_modelproxy"),
  /** The registry (model catalog: aliases, prices, fallbacks, context windows). */
  REGISTRY_ADDR: hostPort.default("127.0.0.1:50052"),
  /** auth (budgets: monthly limits of tenants and users). */
  AUTH_ADDR: hostPort.default("127.0.0.1:50051"),
  /** How long a tenant's view of the catalog is reused before the registry is asked again. */
  CATALOG_TTL_MS: z.coerce.number().int().min(0).default(30_000),

  // ---- providers (each set variable adds one deployment named after the provider)
  /** The LLM simulator's base URL (".../v1"): the `simulator` provider. */
  LLM_SIM_URL: httpUrl.optional(),
  OPENAI_API_KEY: optionalSecret,
  OPENAI_BASE_URL: httpUrl.optional(),
  OPENROUTER_API_KEY: optionalSecret,
  OPENROUTER_BASE_URL: httpUrl.default("https://openrouter.ai/api/v1"),
  ANTHROPIC_API_KEY: optionalSecret,
  ANTHROPIC_BASE_URL: httpUrl.optional(),
  /** Google AI Studio (Gemini API) key; GOOGLE_API_KEY is accepted too. */
  GEMINI_API_KEY: optionalSecret,
  GOOGLE_API_KEY: optionalSecret,
  GEMINI_BASE_URL: httpUrl.optional(),
  /** More deployments: a YAML or JSON file, or inline JSON (an array, or `{deployments: [...]}`). */
  MODEL_PROXY_DEPLOYMENTS: z.string().optional(),
  /** Per-attempt timeout of a provider call (a deployment may set its own). */
  PROVIDER_TIMEOUT_MS: positiveInt.default(120_000),

  // ---- resilience
  /** Attempts per model (first try included) on retryable failures, across its deployments. */
  RETRY_MAX_ATTEMPTS: positiveInt.max(10).default(3),
  RETRY_BASE_DELAY_MS: z.coerce.number().int().min(0).default(200),
  RETRY_MAX_DELAY_MS: z.coerce.number().int().min(0).default(10_000),
  /** A Retry-After longer than this is not waited out: the next deployment/model is tried. */
  RETRY_AFTER_MAX_MS: z.coerce.number().int().min(0).default(30_000),
  /** Consecutive failures that open a deployment's breaker. */
  BREAKER_THRESHOLD: positiveInt.default(5),
  /** How long an open breaker stays open before one trial call (half-open). */
  BREAKER_HALF_OPEN_AFTER_MS: positiveInt.default(30_000),

  // ---- response cache
  /** Tenants whose calls use the cache unless a request says BYPASS ("*" = every tenant). */
  CACHE_TENANTS: csv,
  CACHE_TTL_MS: positiveInt.default(3_600_000),
  CACHE_BUCKET: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/)
    .default("ensemble_response_cache"),
  /** vector-search, for CACHE_MODE_SEMANTIC (unset: semantic lookups act as exact ones). */
  VECTOR_SEARCH_ADDR: z.preprocess((v) => (v === "" ? undefined : v), hostPort.optional()),
  /** The model questions are embedded with for semantic lookups (id or alias). */
  CACHE_SEMANTIC_MODEL: z.string().min(1).default("embedding"),
  /** How close (cosine) a cached question must be to answer another with its answer. */
  CACHE_SEMANTIC_MIN_SIMILARITY: z.coerce.number().gt(0).max(1).default(0.95),

  // ---- the call log (ChatRequest.log; ListCallLogs / GetCallLog)
  /** Tenants whose every chat is logged with its prompt and answer ("*" = every tenant). */
  CALL_LOG_TENANTS: csv,
  /** How long a logged call is kept. */
  CALL_LOG_RETENTION_MS: positiveInt.default(7 * 24 * 3_600_000),

  // ---- stored Responses API answers (previous_response_id)
  /** How long a stored response is kept (OpenAI: 30 days). */
  STORED_RESPONSES_TTL_MS: positiveInt.default(30 * 24 * 3_600_000),
  /** How often expired ones (and expired call log entries) are deleted. */
  STORED_RESPONSES_SWEEP_MS: positiveInt.default(3_600_000),

  // ---- limits and accounting
  RATE_LIMIT_BUCKET: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/)
    .default("ensemble_provider_limits"),
  SPEND_BUCKET: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/)
    .default("ensemble_spend"),
  /** How long a budget limit read from auth is reused. */
  BUDGET_CACHE_MS: z.coerce.number().int().min(0).default(30_000),
  /**
   * Shares of a monthly limit (percent, comma-separated) whose reaching raises a budget alert
   * (webhook "budget.threshold"); "off" = none.
   */
  BUDGET_ALERT_PERCENTS: z
    .string()
    .default("80,100")
    .transform((v, ctx) => {
      const out: number[] = [];
      if (v.trim().toLowerCase() === "off") return out;
      for (const part of v
        .split(",")
        .map((p) => p.trim())
        .filter((p) => p !== "")) {
        const n = Number(part);
        if (!Number.isInteger(n) || n < 1 || n > 100) {
          ctx.addIssue({ code: "custom", message: `expected whole percents 1-100, got "${part}"` });
          return z.NEVER;
        }
        out.push(n);
      }
      return [...new Set(out)];
    }),
  /** Ledger entries are written in batches at least this often. */
  LEDGER_FLUSH_MS: positiveInt.default(250),
  LEDGER_BATCH_SIZE: positiveInt.default(500),
});

export type ModelProxyConfig = z.output<typeof modelProxyEnv>;

export function loadModelProxyConfig(env: NodeJS.ProcessEnv = process.env): ModelProxyConfig {
  return loadConfig(modelProxyEnv, env);
}

const deploymentSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/),
    provider: z.string().regex(/^[a-z0-9][a-z0-9_-]*$/),
    api: z.enum(["openai", "anthropic", "google"]).default("openai"),
    baseUrl: httpUrl.optional(),
    apiKey: z.string().min(1).optional(),
    /** Name of the environment variable holding the key (preferred over `apiKey`). */
    apiKeyEnv: z
      .string()
      .regex(/^[A-Z_][A-Z0-9_]*$/)
      .optional(),
    headers: z.record(z.string(), z.string()).optional(),
    weight: z.number().positive().default(1),
    rpm: z.number().int().positive().optional(),
    tpm: z.number().int().positive().optional(),
    timeoutMs: z.number().int().positive().optional(),
    models: z.array(z.string().min(1)).optional(),
    simulated: z.boolean().optional(),
  })
  .strict();

/** Every deployment the environment describes (names are unique; a later one replaces an earlier). */
export function deploymentsFrom(
  config: ModelProxyConfig,
  env: NodeJS.ProcessEnv = process.env,
): Deployment[] {
  const timeoutMs = config.PROVIDER_TIMEOUT_MS;
  const out = new Map<string, Deployment>();
  const add = (d: Pick<Deployment, "name" | "provider" | "api"> & Record<string, unknown>) =>
    out.set(d.name, withoutUndefined({ weight: 1, timeoutMs, simulated: false, ...d }));

  if (config.LLM_SIM_URL !== undefined) {
    add({
      name: "simulator",
      provider: "simulator",
      api: "openai",
      baseUrl: config.LLM_SIM_URL,
      apiKey: "sim",
      simulated: true,
    });
  }
  if (config.OPENAI_API_KEY !== undefined) {
    add({
      name: "openai",
      provider: "openai",
      api: "openai",
      apiKey: config.OPENAI_API_KEY,
      ...(config.OPENAI_BASE_URL !== undefined ? { baseUrl: config.OPENAI_BASE_URL } : {}),
    });
  }
  if (config.OPENROUTER_API_KEY !== undefined) {
    add({
      name: "openrouter",
      provider: "openrouter",
      api: "openai",
      apiKey: config.OPENROUTER_API_KEY,
      baseUrl: config.OPENROUTER_BASE_URL,
      headers: { "HTTP-Referer": "https://github.com/ensemble", "X-Title": "Ensemble" },
    });
  }
  if (config.ANTHROPIC_API_KEY !== undefined) {
    add({
      name: "anthropic",
      provider: "anthropic",
      api: "anthropic",
      apiKey: config.ANTHROPIC_API_KEY,
      ...(config.ANTHROPIC_BASE_URL !== undefined ? { baseUrl: config.ANTHROPIC_BASE_URL } : {}),
    });
  }
  const googleKey = config.GEMINI_API_KEY ?? config.GOOGLE_API_KEY;
  if (googleKey !== undefined) {
    add({
      name: "google",
      provider: "google",
      api: "google",
      apiKey: googleKey,
      ...(config.GEMINI_BASE_URL !== undefined ? { baseUrl: config.GEMINI_BASE_URL } : {}),
    });
  }

  if (
    config.MODEL_PROXY_DEPLOYMENTS !== undefined &&
    config.MODEL_PROXY_DEPLOYMENTS.trim() !== ""
  ) {
    for (const raw of readDeploymentList(config.MODEL_PROXY_DEPLOYMENTS)) {
      const parsed = deploymentSchema.safeParse(raw);
      if (!parsed.success) {
        throw new ConfigError([
          `MODEL_PROXY_DEPLOYMENTS: ${parsed.error.issues
            .map((i) => `${i.path.join(".") || "(entry)"}: ${i.message}`)
            .join("; ")}`,
        ]);
      }
      const { apiKeyEnv, apiKey, timeoutMs: own, simulated, ...rest } = parsed.data;
      const key = apiKeyEnv !== undefined ? env[apiKeyEnv] : apiKey;
      if (apiKeyEnv !== undefined && (key === undefined || key === "")) {
        throw new ConfigError([
          `MODEL_PROXY_DEPLOYMENTS: deployment ${rest.name} reads its key from ${apiKeyEnv}, which is not set`,
        ]);
      }
      add({
        ...rest,
        ...(key !== undefined ? { apiKey: key } : {}),
        timeoutMs: own ?? timeoutMs,
        simulated: simulated ?? rest.provider === "simulator",
      });
    }
  }
  return [...out.values()];
}

function readDeploymentList(value: string): unknown[] {
  const text =
    value.trim().startsWith("[") || value.trim().startsWith("{") ? value : readFile(value);
  let doc: unknown;
  try {
    doc = parseYaml(text); // YAML is a superset of JSON
  } catch (err) {
    throw new ConfigError([
      `MODEL_PROXY_DEPLOYMENTS: not valid YAML/JSON (${err instanceof Error ? err.message : String(err)})`,
    ]);
  }
  const list = Array.isArray(doc)
    ? doc
    : typeof doc === "object" &&
        doc !== null &&
        Array.isArray((doc as { deployments?: unknown }).deployments)
      ? (doc as { deployments: unknown[] }).deployments
      : undefined;
  if (list === undefined) {
    throw new ConfigError([
      "MODEL_PROXY_DEPLOYMENTS: expected a list of deployments (or {deployments: [...]})",
    ]);
  }
  return list;
}

function readFile(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    throw new ConfigError([`MODEL_PROXY_DEPLOYMENTS: cannot read the file ${path}`]);
  }
}

function withoutUndefined<T extends Record<string, unknown>>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
