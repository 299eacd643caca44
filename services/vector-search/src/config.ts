// vector-search's environment, parsed once at start-up (fails with every bad variable named).
import { baseEnv, loadConfig, portSchema } from "@ensemble/kit";
import { z } from "zod";

/** host:port; port 0 picks a free one. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });

// No NATS: MongoDB is the source of truth and each replica rebuilds its indexes from it.
const { NATS_URL: _nats, ...env } = baseEnv;

export const vectorSearchEnv = z.object({
  ...env,
  /** Where the gRPC server listens. */
  VECTOR_SEARCH_ADDR: hostPort.default("127.0.0.1:50056"),
  /** Metrics side port: 9100 + the last two digits of the gRPC port. */
  METRICS_PORT: portSchema.default(9156),
  MONGODB_DB: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,63}$/)
    .default("ensemble_vectorsearch"),
  /** model-proxy: embeddings of text documents and text queries. */
  MODEL_PROXY_ADDR: hostPort.default("127.0.0.1:50055"),
  /** Texts per Embed call when a document is ingested. */
  EMBED_BATCH_SIZE: z.coerce.number().int().min(1).max(2048).default(256),
  /** Deadline of one Embed call. */
  EMBED_TIMEOUT_MS: z.coerce.number().int().positive().default(60_000),
  /** Threads the index may use to add a batch of vectors (0 = every core). */
  INDEX_ADD_THREADS: z.coerce.number().int().min(0).max(256).default(0),
  /** Largest gRPC message (an Upsert of 1,000 documents with 1,536-d vectors is ~6 MiB). */
  VECTOR_SEARCH_MAX_MESSAGE_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(64 * 1024 * 1024),
});

export type VectorSearchConfig = z.output<typeof vectorSearchEnv>;

export function loadVectorSearchConfig(env: NodeJS.ProcessEnv = process.env): VectorSearchConfig {
  return loadConfig(vectorSearchEnv, env);
}
