// The auth service's environment, parsed once at start-up (fails with every bad variable named).
import { baseEnv, loadConfig, portSchema, urlWithScheme } from "@ensemble/kit";
import { z } from "zod";

/** host:port; port 0 picks a free one. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });

/** Development-only key-encryption secret; refused when NODE_ENV is "production". */
export const DEV_KEY_ENCRYPTION_SECRET = "ensemble-dev-only-key-encryption-secret-do-not-use";

const days = z.coerce.number().positive().max(3650);
const minutes = z.coerce.number().int().positive();

/** What the signing-key store, the minting CLI and the service share. */
export const keyEnv = {
  NODE_ENV: z.string().default("development"),
  MONGODB_URL: baseEnv.MONGODB_URL,
  MONGODB_DB: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,63}$/)
    .default("ensemble_auth"),
  /** Encrypts signing private keys at rest (AES-256-GCM); required in production, ≥ 32 chars. */
  AUTH_KEY_ENCRYPTION_SECRET: z.string().min(32).optional(),
  JWT_ISSUER: baseEnv.JWT_ISSUER,
  JWT_AUDIENCE: baseEnv.JWT_AUDIENCE,
  /** The longest lifetime a bootstrap service credential (mint-service-token --ttl) may get. */
  AUTH_SERVICE_CREDENTIAL_MAX_DAYS: days.default(90),
};

const authShape = z.object({
  ...baseEnv,
  ...keyEnv,
  /** auth verifies tokens against its own JWKS endpoint unless told otherwise. */
  JWKS_URL: urlWithScheme(["http", "https", "file"], "a JWKS").optional(),
  /** Where the gRPC server listens. */
  AUTH_ADDR: hostPort.default("127.0.0.1:50051"),
  /** Metrics side port: 9100 + the last two digits of the gRPC port. */
  METRICS_PORT: portSchema.default(9151),
  /** Plain HTTP GET /.well-known/jwks.json. */
  AUTH_JWKS_PORT: portSchema.default(9051),
  AUTH_JWKS_HOST: z.string().default("127.0.0.1"),
  AUTH_ACCESS_TOKEN_TTL_MINUTES: minutes.max(24 * 60).default(15),
  AUTH_REFRESH_TOKEN_TTL_DAYS: days.default(30),
  /** A new signing key this often (checked every AUTH_KEY_CHECK_INTERVAL_MS). */
  AUTH_KEY_ROTATION_DAYS: days.default(30),
  AUTH_KEY_CHECK_INTERVAL_MS: z.coerce.number().int().min(1000).default(3_600_000),
  /** argon2id cost: memory in KiB and passes (OWASP minimum: 19456 KiB, 2 passes). */
  AUTH_ARGON2_MEMORY_KIB: z.coerce.number().int().min(8192).max(4_194_304).default(19_456),
  AUTH_ARGON2_TIME_COST: z.coerce.number().int().min(1).max(20).default(2),
  /** Failed logins allowed per account / per client address inside the window. */
  AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT: z.coerce.number().int().positive().default(5),
  AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS: z.coerce.number().int().positive().default(50),
  AUTH_LOGIN_THROTTLE_WINDOW_MINUTES: minutes.default(15),
});

export const authEnv = authShape.superRefine((env, ctx) => {
  if (env.NODE_ENV === "production" && env.AUTH_KEY_ENCRYPTION_SECRET === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["AUTH_KEY_ENCRYPTION_SECRET"],
      message: "required when NODE_ENV is production",
    });
  }
});

export type AuthConfig = z.output<typeof authShape>;

export function loadAuthConfig(env: NodeJS.ProcessEnv = process.env): AuthConfig {
  return loadConfig(authEnv, env);
}

/** The key-encryption secret, or the dev default (never in production; the caller warns). */
export function keyEncryptionSecret(config: {
  NODE_ENV: string;
  AUTH_KEY_ENCRYPTION_SECRET?: string | undefined;
}): { secret: string; isDevDefault: boolean } {
  if (config.AUTH_KEY_ENCRYPTION_SECRET !== undefined) {
    return { secret: config.AUTH_KEY_ENCRYPTION_SECRET, isDevDefault: false };
  }
  if (config.NODE_ENV === "production") {
    throw new Error("AUTH_KEY_ENCRYPTION_SECRET is required when NODE_ENV is production");
  }
  return { secret: DEV_KEY_ENCRYPTION_SECRET, isDevDefault: true };
}
