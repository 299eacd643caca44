// Configuration comes only from the environment, validated once at start-up (STYLE.md).
// A bad or missing variable stops the process with one message that names every problem, so
// an operator fixes them all in one go instead of one restart per variable.
import { z } from "zod";

export class ConfigError extends Error {
  override name = "ConfigError";
  /** One entry per problem, e.g. `NATS_URL: required, not set`. */
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.problems = problems;
  }
}

/** Values of variables with these words in their names are never repeated in an error. */
const SECRET_NAME = /SECRET|KEY|TOKEN|PASSWORD|PASSWD|CREDENTIAL/i;

/** Hides `user:password@` in URLs (MONGODB_URL, NATS_URL can carry credentials). */
function hideUserInfo(value: string): string {
  return value.replace(/\/\/[^/@\s]*@/g, "//***@");
}

function describeValue(name: string, value: unknown): string {
  if (SECRET_NAME.test(name) || typeof value !== "string") return "";
  const shown = hideUserInfo(value);
  return ` (got ${JSON.stringify(shown.length > 80 ? `${shown.slice(0, 77)}...` : shown)})`;
}

/**
 * Parses env with schema (usually `z.object({ ...baseEnv, ...ownVars })`). Empty strings count
 * as unset, so `FOO=` in a .env file falls back to the default like an absent variable.
 * Throws ConfigError listing every bad variable.
 */
export function loadConfig<T extends z.ZodType>(
  schema: T,
  env: NodeJS.ProcessEnv = process.env,
): z.output<T> {
  const input: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && v !== "") input[k] = v;
  }
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const name = issue.path.length > 0 ? issue.path.map(String).join(".") : "(environment)";
    const top = typeof issue.path[0] === "string" ? issue.path[0] : "";
    const value = top === "" ? undefined : input[top];
    if (value === undefined && issue.path.length > 0) {
      return `${name}: required, not set (${expectation(issue)})`;
    }
    // zod messages describe the expected type, not the value; still, for secrets use only
    // the issue code so nothing of the value can leak.
    const message = SECRET_NAME.test(name) ? expectation(issue) : issue.message;
    return `${name}: ${message}${describeValue(top, value)}`;
  });
  throw new ConfigError(problems);
}

function expectation(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case "invalid_type":
      return `expected ${issue.expected}`;
    case "invalid_value":
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "invalid_format":
      return `expected ${issue.format}`;
    case "too_small":
      return `expected at least ${String(issue.minimum)}`;
    case "too_big":
      return `expected at most ${String(issue.maximum)}`;
    default:
      return "invalid value";
  }
}

/** A URL whose scheme is one of `schemes` (checked without echoing the value). */
export function urlWithScheme(schemes: string[], what: string) {
  return z.string().refine(
    (v) => {
      try {
        return schemes.includes(new URL(v).protocol.replace(/:$/, ""));
      } catch {
        return false;
      }
    },
    { message: `expected ${what} (${schemes.map((s) => `${s}://`).join(" or ")} URL)` },
  );
}

/** A TCP port; 0 asks the OS for a free one. */
export const portSchema = z.coerce.number().int().min(0).max(65535);

/** An on/off variable: "true"/"1" or "false"/"0" (unset = off). */
export const flagSchema = z
  .enum(["true", "false", "1", "0"])
  .default("false")
  .transform((v) => v === "true" || v === "1");

/**
 * Variables every service shares; spread into the service's own schema:
 * `loadConfig(z.object({ ...baseEnv, REGISTRY_ADDR: z.string() }))`.
 * A service that does not use one may drop it (`const { MONGODB_URL: _, ...env } = baseEnv`).
 */
export const baseEnv = {
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  /** One URL or a comma-separated list of NATS servers. */
  NATS_URL: z
    .string()
    .refine((v) => v.split(",").every((s) => /^(nats|tls|ws|wss):\/\/\S+$/.test(s.trim())), {
      message: "expected nats:// URL(s), comma-separated",
    })
    .default("nats://127.0.0.1:4222"),
  MONGODB_URL: z
    .string()
    .regex(/^mongodb(\+srv)?:\/\/\S+$/, { message: "expected a mongodb:// or mongodb+srv:// URL" })
    .default("mongodb://127.0.0.1:27017"),
  /** Where the auth service publishes its signing keys: http(s):// or file://. */
  JWKS_URL: urlWithScheme(["http", "https", "file"], "the auth service JWKS"),
  JWT_ISSUER: z.string().default("ensemble-auth"),
  JWT_AUDIENCE: z.string().default("ensemble"),
  /** Side HTTP port for GET /metrics; unset = no metrics server; 0 = any free port. */
  METRICS_PORT: portSchema.optional(),
  METRICS_HOST: z.string().default("127.0.0.1"),
  /** OTLP/http base URL; unset = traces are not exported (context still propagates). */
  OTEL_EXPORTER_OTLP_ENDPOINT: urlWithScheme(["http", "https"], "an OTLP/http endpoint").optional(),
  SHUTDOWN_TIMEOUT_MS: z.coerce.number().int().positive().default(10_000),
};

export type BaseEnv = z.output<z.ZodObject<typeof baseEnv>>;
