// vector-search's environment, parsed once at start-up (fails with every bad variable named).
import { baseEnv, loadConfig, portSchema } from "@ensemble/kit";
import { z } from "zod";

/** host:port; port 0 picks a free one. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });

const name = z.string().regex(/^[A-Za-z0-9_-]+$/);
const positiveInt = z.coerce.number().int().positive();

export const vectorSearchEnv = z.object({
  ...baseEnv,
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
  /** JetStream stream through which replicas tell each other about writes (changes.ts). */
  VECTOR_CHANGES_STREAM: name.default("VECTOR_CHANGES"),
  /** Subject root of changes: <root>.<tenant>.<collection id, base64url>. */
  VECTOR_CHANGES_SUBJECT_ROOT: z
    .string()
    .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/)
    .default("ensemble.vectors"),
  /** How long changes are kept (a replica further behind compares with MongoDB instead). */
  VECTOR_CHANGES_MAX_AGE_MS: positiveInt.default(24 * 3_600_000),
  /** Reads (Search, Stats) that do not say: eventual (what the replica holds) or strong. */
  VECTOR_READ_CONSISTENCY: z.enum(["eventual", "strong"]).default("eventual"),
  /** Longest a call waits for this replica to apply other replicas' writes before UNAVAILABLE. */
  VECTOR_CATCH_UP_TIMEOUT_MS: positiveInt.default(5_000),
  /** Period of each replica's comparison of its loaded collections with MongoDB (0 = never). */
  VECTOR_RECONCILE_MS: z.coerce.number().int().min(0).default(60_000),
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
