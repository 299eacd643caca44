// The usage and cost ledger: one document per model call (streaming included), the source of
// truth for billing and for GetUsage. Documents are only ever inserted, never updated.
import { Schema, type Connection, type Model } from "mongoose";

export interface LedgerDoc {
  /** Completion id ("chatcmpl-..."); unique. */
  id: string;
  tenantId: string;
  userId: string;
  apiKeyId: string;
  /** UsageOperation number. */
  operation: number;
  model: string;
  requestedModel: string;
  provider: string;
  deployment: string;
  inputTokens: number;
  outputTokens: number;
  /** Of inputTokens: read from / written to the provider's prompt cache. */
  cachedInputTokens: number;
  cacheWriteInputTokens: number;
  /** Of outputTokens: reasoning. */
  reasoningTokens: number;
  costUsd: number;
  latencyMs: number;
  ttftMs: number;
  time: Date;
  /** UTC truncations of `time`, computed at write time (FerretDB has no $dateTrunc). */
  day: Date;
  hour: Date;
  streaming: boolean;
  cacheHit: boolean;
  simulated: boolean;
  /** "OK" or the gRPC code name of a failed call. */
  status: string;
  runId: string;
  stepId: string;
  sessionId: string;
  attempt: number;
  idempotencyKey: string;
  /**
   * Caller labels as pairs: keys may hold "." or "$", which MongoDB and FerretDB refuse or
   * treat specially as field names.
   */
  metadata: { k: string; v: string }[];
  /** Uniqueness of (tenant, run, step, attempt) and (tenant, idempotency key): see dedupeKeys. */
  runKey: string;
  idemKey: string;
  /**
   * Random per buffered entry: after a failed insert is retried, a duplicate-key error on an
   * entry whose stored document carries our writeId means our earlier attempt did insert it
   * (so its spend still counts), rather than someone else's duplicate.
   */
  writeId: string;
}

const opts = { versionKey: false, strict: "throw", id: false } as const;

const ledgerSchema = new Schema<LedgerDoc>(
  {
    id: { type: String, required: true, unique: true },
    tenantId: { type: String, required: true },
    userId: { type: String, default: "" },
    apiKeyId: { type: String, default: "" },
    operation: { type: Number, required: true },
    model: { type: String, default: "" },
    requestedModel: { type: String, default: "" },
    provider: { type: String, default: "" },
    deployment: { type: String, default: "" },
    inputTokens: { type: Number, default: 0 },
    outputTokens: { type: Number, default: 0 },
    cachedInputTokens: { type: Number, default: 0 },
    cacheWriteInputTokens: { type: Number, default: 0 },
    reasoningTokens: { type: Number, default: 0 },
    costUsd: { type: Number, default: 0 },
    latencyMs: { type: Number, default: 0 },
    ttftMs: { type: Number, default: 0 },
    time: { type: Date, required: true },
    day: { type: Date, required: true },
    hour: { type: Date, required: true },
    streaming: { type: Boolean, default: false },
    cacheHit: { type: Boolean, default: false },
    simulated: { type: Boolean, default: false },
    status: { type: String, required: true },
    runId: { type: String, default: "" },
    stepId: { type: String, default: "" },
    sessionId: { type: String, default: "" },
    attempt: { type: Number, default: 0 },
    idempotencyKey: { type: String, default: "" },
    metadata: { type: [{ _id: false, k: String, v: String }], default: [] },
    runKey: { type: String, required: true, unique: true },
    idemKey: { type: String, required: true, unique: true },
    writeId: { type: String, required: true },
  },
  { ...opts, minimize: false },
);
// GetUsage: a tenant's period, and one user's period within it.
ledgerSchema.index({ tenantId: 1, time: 1 });
ledgerSchema.index({ tenantId: 1, userId: 1, time: 1 });

export type LedgerModel = Model<LedgerDoc>;

export function ledgerModel(conn: Connection): LedgerModel {
  return (
    (conn.models["LedgerEntry"] as LedgerModel | undefined) ??
    conn.model("LedgerEntry", ledgerSchema, "ledger")
  );
}
