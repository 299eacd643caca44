// The engine's own MongoDB collections. Every document carries tenantId and every query filters
// by it. Protobuf payloads are stored in binary (lossless) next to the fields queries use.
//
// Concurrency rule (FerretDB 1.24 measured: conditional updates and $inc are not atomic under
// concurrency, unique-index inserts are): every decision that must be taken exactly once across
// replicas is an INSERT into a collection with a unique index, never a conditional update.
//   run_steps     (tenant, run, step)  claims the dispatch of a step to the work queue
//   step_outcomes (tenant, run, step)  claims the end of a step (completed/failed/skipped/...)
//   run_outcomes  (tenant, run)        claims the end of a run (completed/failed/cancelled)
//   run_keys      (tenant, user, key)  claims an idempotency key of StartRun/Run
// Plain updates are only ever written by the one holder of such a claim (or repeat the same
// values), so a lost update cannot change an outcome.
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { storedBytes } from "@ensemble/kit";
import type { RunMode, RunStatus, StepStatus } from "@ensemble/proto";
import { Schema, type Connection, type Model } from "mongoose";

export function decode<D extends DescMessage>(schema: D, value: unknown): MessageShape<D> {
  return fromBinary(schema, storedBytes(value));
}

export function encode<D extends DescMessage>(schema: D, message: MessageShape<D>): Buffer {
  return Buffer.from(toBinary(schema, message));
}

export interface RunDoc {
  /** runKey(tenantId, id); an ObjectId on runs written before keyed ids. */
  _id?: unknown;
  tenantId: string;
  id: string;
  userId: string;
  sessionId: string;
  apiKeyId: string;
  scheduleId: string;
  mode: RunMode;
  status: RunStatus;
  /** RunSpec, as given. */
  spec: Buffer;
  /** A session's reply: the conversation before the input (ChatMessage each, binary). */
  context?: Buffer[] | undefined;
  /** The executed step graph (WorkflowTemplate, binary); absent until planned (AUTO). */
  plan?: Buffer | undefined;
  /** Plan extras as JSON (PlanExtras). */
  planExtras?: string | undefined;
  classification?: Buffer | undefined;
  templateId: string;
  templateVersion: number;
  outputStepId: string;
  /** Model names the plan names and the models that answered (ListRuns `model` filter). */
  models: string[];
  /** "key\u0000value" per metadata pair (ListRuns metadata filter). */
  metaPairs: string[];
  output: string;
  /** The output step's artifacts (Artifact each, binary), once the run completed. */
  artifacts?: Buffer[] | undefined;
  ranking?: Buffer | undefined;
  usage: {
    inputTokens: number;
    outputTokens: number;
    totalTokens: number;
    costUsd: number;
    cachedInputTokens?: number;
    cacheWriteInputTokens?: number;
    reasoningTokens?: number;
  };
  latencyMs: number;
  error?: Buffer | undefined;
  cancelReason: string;
  deadline: Date;
  createTime: Date;
  startTime?: Date | undefined;
  endTime?: Date | undefined;
  updateTime: Date;
}

const usageSchema = {
  inputTokens: { type: Number, default: 0 },
  outputTokens: { type: Number, default: 0 },
  totalTokens: { type: Number, default: 0 },
  costUsd: { type: Number, default: 0 },
  cachedInputTokens: { type: Number, default: 0 },
  cacheWriteInputTokens: { type: Number, default: 0 },
  reasoningTokens: { type: Number, default: 0 },
};

const runSchema = new Schema<RunDoc>(
  {
    tenantId: { type: String, required: true },
    id: { type: String, required: true },
    userId: { type: String, default: "" },
    sessionId: { type: String, default: "" },
    apiKeyId: { type: String, default: "" },
    scheduleId: { type: String, default: "" },
    mode: { type: Number, required: true },
    status: { type: Number, required: true },
    spec: { type: Buffer, required: true },
    context: { type: [Buffer], default: undefined },
    plan: { type: Buffer },
    planExtras: { type: String },
    classification: { type: Buffer },
    templateId: { type: String, default: "" },
    templateVersion: { type: Number, default: 0 },
    outputStepId: { type: String, default: "" },
    models: { type: [String], default: [] },
    metaPairs: { type: [String], default: [] },
    output: { type: String, default: "" },
    artifacts: { type: [Buffer], default: undefined },
    ranking: { type: Buffer },
    usage: usageSchema,
    latencyMs: { type: Number, default: 0 },
    error: { type: Buffer },
    cancelReason: { type: String, default: "" },
    deadline: { type: Date, required: true },
    createTime: { type: Date, required: true },
    startTime: { type: Date },
    endTime: { type: Date },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
runSchema.index({ tenantId: 1, id: 1 }, { unique: true });
runSchema.index({ tenantId: 1, userId: 1, createTime: -1, id: -1 });
runSchema.index({ tenantId: 1, createTime: -1, id: -1 });
// Recovery scans runs in flight.
runSchema.index({ status: 1, createTime: 1 });

/** A step handed to the work queue (the dispatch claim) and its progress while it runs. */
export interface RunStepDoc {
  tenantId: string;
  runId: string;
  stepId: string;
  /** QUEUED or RUNNING (the outcome document holds the end). */
  status: StepStatus;
  attempts: number;
  model: string;
  fallbackUsed: boolean;
  queuedAt: Date;
  startTime?: Date | undefined;
}

const runStepSchema = new Schema<RunStepDoc>(
  {
    tenantId: { type: String, required: true },
    runId: { type: String, required: true },
    stepId: { type: String, required: true },
    status: { type: Number, required: true },
    attempts: { type: Number, default: 0 },
    model: { type: String, default: "" },
    fallbackUsed: { type: Boolean, default: false },
    queuedAt: { type: Date, required: true },
    startTime: { type: Date },
  },
  { versionKey: false, strict: "throw" },
);
runStepSchema.index({ tenantId: 1, runId: 1, stepId: 1 }, { unique: true });

/** How a step ended: the full RunStep record (answers, output, usage, error ...). */
export interface StepOutcomeDoc {
  tenantId: string;
  runId: string;
  stepId: string;
  status: StepStatus;
  /** The attempt that produced it. */
  attempt: number;
  record: Buffer;
  /** Set once its step.completed / step.failed event is published. */
  eventPublished: boolean;
  createTime: Date;
}

const stepOutcomeSchema = new Schema<StepOutcomeDoc>(
  {
    tenantId: { type: String, required: true },
    runId: { type: String, required: true },
    stepId: { type: String, required: true },
    status: { type: Number, required: true },
    attempt: { type: Number, default: 0 },
    record: { type: Buffer, required: true },
    eventPublished: { type: Boolean, default: false },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
stepOutcomeSchema.index({ tenantId: 1, runId: 1, stepId: 1 }, { unique: true });

/** How a run ended; the first insert wins (completion, failure and cancellation race here). */
export interface RunOutcomeDoc {
  tenantId: string;
  runId: string;
  status: RunStatus;
  /** RunError (failed), binary. */
  error?: Buffer | undefined;
  reason: string;
  by: string;
  /** Set once the run record and the terminal event are written. */
  finalized: boolean;
  createTime: Date;
}

const runOutcomeSchema = new Schema<RunOutcomeDoc>(
  {
    tenantId: { type: String, required: true },
    runId: { type: String, required: true },
    status: { type: Number, required: true },
    error: { type: Buffer },
    reason: { type: String, default: "" },
    by: { type: String, default: "" },
    finalized: { type: Boolean, default: false },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
runOutcomeSchema.index({ tenantId: 1, runId: 1 }, { unique: true });

/** StartRun idempotency keys (kept 24 h). */
export interface RunKeyDoc {
  tenantId: string;
  userId: string;
  key: string;
  runId: string;
  createTime: Date;
}

export const IDEMPOTENCY_TTL_MS = 24 * 3_600_000;

const runKeySchema = new Schema<RunKeyDoc>(
  {
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    key: { type: String, required: true },
    runId: { type: String, required: true },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
runKeySchema.index({ tenantId: 1, userId: 1, key: 1 }, { unique: true });
// No TTL index: FerretDB 1.24 does not implement expireAfterSeconds. A key older than 24 h is
// ignored (and replaced) when it is next used.

export interface Models {
  runs: Model<RunDoc>;
  runSteps: Model<RunStepDoc>;
  stepOutcomes: Model<StepOutcomeDoc>;
  runOutcomes: Model<RunOutcomeDoc>;
  runKeys: Model<RunKeyDoc>;
}

/** The connection's model `name` (made once per connection). */
export function model<T>(
  conn: Connection,
  name: string,
  schema: Schema<T>,
  collection: string,
): Model<T> {
  const existing = conn.models[name] as Model<T> | undefined;
  return existing ?? conn.model<T>(name, schema, collection);
}

/** The models, with their indexes built (unique indexes are what makes claims safe). */
export async function openModels(conn: Connection): Promise<Models> {
  const models: Models = {
    runs: model(conn, "Run", runSchema, "runs"),
    runSteps: model(conn, "RunStep", runStepSchema, "run_steps"),
    stepOutcomes: model(conn, "StepOutcome", stepOutcomeSchema, "step_outcomes"),
    runOutcomes: model(conn, "RunOutcome", runOutcomeSchema, "run_outcomes"),
    runKeys: model(conn, "RunKey", runKeySchema, "run_keys"),
  };
  await Promise.all(Object.values(models).map((m: Model<unknown>) => m.init()));
  return models;
}

// Addressing: FerretDB's SQLite backend uses an index only for a filter that is exactly
// {_id: <value>} (and only as built by scripts/ferretdb, whose patch makes that filter match the
// _id index at all); any other filter reads and decodes the whole collection (v1.24
// backends/sqlite/collection.go), so a lookup by (tenant, run, step) costs O(collection) and
// an update holds the write lock while it scans. The engine's documents of a run are therefore
// keyed by a deterministic `_id` built from their unique key, and the hot path reads and writes
// them by `_id` only. The (tenantId, runId, ...) fields and unique indexes stay: queries over
// many runs use them, and documents written before this scheme (ObjectId `_id`) are still found
// through them (see `isKeyed`).

/** `_id` of a run document and of its run outcome. */
export function runKey(tenantId: string, runId: string): string {
  return JSON.stringify([tenantId, runId]);
}

/** `_id` of a step's dispatch claim and of its outcome. */
export function stepKey(tenantId: string, runId: string, stepId: string): string {
  return JSON.stringify([tenantId, runId, stepId]);
}

/** `_id` of an idempotency key document. */
export function keyKey(tenantId: string, userId: string, key: string): string {
  return JSON.stringify([tenantId, userId, key]);
}

/** True for a run written with a deterministic `_id` (its step documents are keyed too). */
export function isKeyed(doc: { _id?: unknown }): boolean {
  return typeof doc._id === "string";
}

/** The document with this `_id` (the driver's own read: no casting of `_id` to an ObjectId). */
export async function byId<T>(m: Model<T>, id: string): Promise<T | null> {
  return (await m.collection.findOne({ _id: id as never })) as T | null;
}

/** True for MongoDB's duplicate-key error (a lost claim). */
export function isDuplicateKey(err: unknown): boolean {
  return err !== null && typeof err === "object" && "code" in err && err.code === 11000;
}

/**
 * FerretDB on SQLite refuses a write with "database is locked" (SQLITE_BUSY) when writers
 * collide: an update reads before it writes (a deferred transaction), and SQLite answers the
 * upgrade conflict at once instead of waiting. The write did not happen, so it is simply tried
 * again a moment later (jittered, growing). MongoDB never says this.
 */
export function isBusy(err: unknown): boolean {
  return err instanceof Error && /SQLITE_BUSY|database is locked/.test(err.message);
}

const BUSY_ATTEMPTS = 12;

/** Runs a single-document write, again while the server answers SQLITE_BUSY. */
export async function retryBusy<T>(write: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (err) {
      if (!isBusy(err) || attempt >= BUSY_ATTEMPTS) throw err;
      const ms = Math.min(200, 2 ** attempt) * (0.5 + Math.random());
      await new Promise((r) => setTimeout(r, ms));
    }
  }
}

/** `$set` on the one document matching `filter` (retried while SQLITE_BUSY). */
export async function setFields<T>(
  m: Model<T>,
  filter: Record<string, unknown>,
  fields: Record<string, unknown>,
): Promise<void> {
  await retryBusy(() => m.collection.updateOne(filter, { $set: fields }));
}

/** Inserts `doc`; false when the unique key is already taken. */
export async function claim<T>(m: Model<T>, doc: T & { _id?: string }): Promise<boolean> {
  try {
    await retryBusy(() => m.collection.insertOne({ ...(doc as Record<string, unknown>) }));
    return true;
  } catch (err) {
    if (isDuplicateKey(err)) return false;
    throw err;
  }
}
