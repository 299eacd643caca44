// The gateway's environment, parsed once at start-up (fails with every bad variable named).
import { baseEnv, ConfigError, flagSchema, loadConfig, portSchema } from "@ensemble/kit";
import { z } from "zod";

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });

/** Comma-separated list; empty entries dropped. */
const csv = z.string().transform((v) =>
  v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== ""),
);

const { MONGODB_URL: _noMongo, ...env } = baseEnv;

export const gatewayEnv = z.object({
  ...env,
  NODE_ENV: z.string().default("production"),
  GATEWAY_HOST: z.string().default("127.0.0.1"),
  GATEWAY_PORT: portSchema.default(8080),
  /** Metrics are served on the main port (/metrics); a side port is optional. */
  METRICS_PORT: portSchema.optional(),
  /** Peers: a service is routed when its address is set (one per row of UPSTREAMS). */
  AUTH_ADDR: hostPort.optional(),
  REGISTRY_ADDR: hostPort.optional(),
  MODEL_PROXY_ADDR: hostPort.optional(),
  CATEGORIZER_ADDR: hostPort.optional(),
  WORKFLOW_ADDR: hostPort.optional(),
  VECTOR_SEARCH_ADDR: hostPort.optional(),
  /** Long-lived bootstrap service token (minted by auth's CLI); needed for API keys. */
  SERVICE_TOKEN: z.string().min(1).optional(),
  /** Browser origins allowed by CORS (exact match). "*" only when NODE_ENV=development. */
  GATEWAY_CORS_ORIGINS: csv.default([]),
  /** Set when a TLS-terminating proxy sits in front: adds HSTS, trusts X-Forwarded-For. */
  GATEWAY_BEHIND_TLS: flagSchema,
  GATEWAY_MAX_MESSAGE_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(64 * 1024 * 1024)
    .default(4 * 1024 * 1024),
  /** Longest deadline a client may ask for; also the default when it asks none. */
  GATEWAY_MAX_TIMEOUT_MS: z.coerce.number().int().positive().default(300_000),
  /** Token bucket per user / API key: tokens per second and bucket size. */
  GATEWAY_RATE_LIMIT_RPS: z.coerce.number().positive().default(20),
  GATEWAY_RATE_LIMIT_BURST: z.coerce.number().int().positive().default(40),
  /** Tokens a replica takes from the shared bucket at once (0 = burst/5, at least 1). */
  GATEWAY_RATE_LIMIT_LEASE: z.coerce.number().int().min(0).default(0),
  GATEWAY_RATE_LIMIT_BUCKET: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/)
    .default("ensemble_gateway_ratelimit"),
  /** How long an API key's exchanged token is reused (bounded by the token's own expiry). */
  GATEWAY_API_KEY_CACHE_MS: z.coerce.number().int().min(0).max(300_000).default(30_000),
  /** The built web console served at `/` (default: gateway/console/dist beside this package). */
  GATEWAY_CONSOLE_DIR: z.string().min(1).optional(),
});

export type GatewayConfig = z.output<typeof gatewayEnv>;

export function loadGatewayConfig(e: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const config = loadConfig(gatewayEnv, e);
  if (config.GATEWAY_CORS_ORIGINS.includes("*") && config.NODE_ENV !== "development") {
    throw new ConfigError(['GATEWAY_CORS_ORIGINS: "*" is allowed only when NODE_ENV=development']);
  }
  return config;
}
