// The registry's environment, parsed once at start-up (fails with every bad variable named).
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { baseEnv, loadConfig, portSchema } from "@ensemble/kit";
import { z } from "zod";

/** The repository root: the nearest ancestor holding deploy/config (works from src and dist). */
function defaultSeedDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, "deploy", "config");
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return resolve("deploy/config");
    dir = parent;
  }
}

/** host:port; port 0 picks a free one. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });

export const registryEnv = z.object({
  ...baseEnv,
  /** Where the gRPC server listens. */
  REGISTRY_ADDR: hostPort.default("127.0.0.1:50052"),
  /** The address other services should dial for this instance (its own instance record); default REGISTRY_ADDR with the bound port. */
  REGISTRY_ADVERTISE_ADDR: hostPort.optional(),
  /** Metrics side port: 9100 + the last two digits of the gRPC port. */
  METRICS_PORT: portSchema.default(9152),
  MONGODB_DB: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,63}$/)
    .default("ensemble_registry"),
  /** Directory with models.yaml, addons.yaml, templates.yaml. */
  REGISTRY_SEED_DIR: z.string().default(defaultSeedDir()),
  /** NATS KV bucket of service instances. */
  INSTANCE_BUCKET: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/)
    .default("ensemble_instances"),
  /** An instance disappears this long after its last heartbeat. */
  INSTANCE_TTL_MS: z.coerce.number().int().min(1000).max(3_600_000).default(15_000),
  /** Lease of a plugin registration that asks for none. */
  PLUGIN_TTL_MS: z.coerce.number().int().min(1000).max(3_600_000).default(30_000),
  /** How often expired plugin registrations are deleted (reads hide them at once anyway). */
  PLUGIN_SWEEP_INTERVAL_MS: z.coerce.number().int().min(100).default(10_000),
  /** How often live plugins get a grpc.health.v1 check; 0 = never. */
  PLUGIN_HEALTH_INTERVAL_MS: z.coerce.number().int().min(0).default(10_000),
  /** Consecutive failed health checks after which a plugin registration is removed. */
  PLUGIN_HEALTH_FAILURES: z.coerce.number().int().min(1).max(100).default(3),
  /** Deadline of one health check. */
  PLUGIN_HEALTH_TIMEOUT_MS: z.coerce.number().int().min(100).max(60_000).default(2_000),
});

export type RegistryConfig = z.output<typeof registryEnv>;

export function loadRegistryConfig(env: NodeJS.ProcessEnv = process.env): RegistryConfig {
  return loadConfig(registryEnv, env);
}
