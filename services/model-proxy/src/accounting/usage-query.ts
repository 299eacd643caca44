// GetUsage: the ledger aggregated by the requested dimensions.
//
// On MongoDB the grouping is one aggregation ($match on tenant + period + filters, $group by the
// dimensions). On FerretDB it is done here in code over a projected cursor of the same $match,
// because FerretDB 1.24 cannot run that $group: `$cond` is not implemented, and (measured) a
// $group with more than one accumulator returns 0 for every accumulator after the first. Both
// ways produce the same rows, which one function turns into the response (sorted here, not in
// the database, so the order is the same on both). Reports that filter or group by the calls'
// metadata (stored as [{k, v}] pairs) are grouped in code on both servers: one way to read the
// pairs, and no reliance on FerretDB's $elemMatch.
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { InvalidArgumentError, PermissionDeniedError, type Principal } from "@ensemble/kit";
import {
  GetUsageResponseSchema,
  UsageDimension,
  UsageOperation,
  type GetUsageRequest,
  type GetUsageResponse,
  type UsageBucketSchema,
} from "@ensemble/proto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Connection } from "mongoose";
import type { LedgerDoc, LedgerModel } from "./ledger.model.js";

/** More groups than this is not a dashboard any more: the caller must narrow the query. */
export const MAX_BUCKETS = 10_000;
const MAX_PERIOD_MS = 400 * 24 * 3_600_000;

type GroupField =
  "day" | "hour" | "model" | "userId" | "apiKeyId" | "provider" | "operation" | "metadata";

const FIELD_OF: Record<number, GroupField> = {
  [UsageDimension.DAY]: "day",
  [UsageDimension.HOUR]: "hour",
  [UsageDimension.MODEL]: "model",
  [UsageDimension.USER]: "userId",
  [UsageDimension.API_KEY]: "apiKeyId",
  [UsageDimension.PROVIDER]: "provider",
  [UsageDimension.OPERATION]: "operation",
  [UsageDimension.METADATA]: "metadata",
};

type GroupValue = Date | string | number;

/** The ledger's fields a report sums as they are. */
const SUMMED = [
  "inputTokens",
  "outputTokens",
  "cachedInputTokens",
  "cacheWriteInputTokens",
  "reasoningTokens",
  "costUsd",
] as const;
type Sums = Record<(typeof SUMMED)[number], number>;

/** One group's sums, however they were computed. */
export interface UsageRow extends Sums {
  values: GroupValue[];
  requests: number;
  errors: number;
  cacheHits: number;
  okLatencyMs: number;
  okCount: number;
}

function emptyRow(values: GroupValue[]): UsageRow {
  const row = { values, requests: 0, errors: 0, cacheHits: 0, okLatencyMs: 0, okCount: 0 };
  return { ...row, ...(Object.fromEntries(SUMMED.map((f) => [f, 0])) as Sums) };
}

export interface UsageQuery {
  tenantId: string;
  fields: GroupField[];
  filter: Record<string, unknown>;
  /** The metadata key the "metadata" field reads ("" when not grouped by it). */
  metadataKey: string;
  /** Metadata pairs every counted call holds (checked in code). */
  metadata: Array<[string, string]>;
}

/** True when the query needs the calls' metadata, which only rowsInCode reads. */
export function readsMetadata(q: UsageQuery): boolean {
  return q.metadata.length > 0 || q.fields.includes("metadata");
}

/** Checks access and the request, and builds the tenant-scoped filter. */
export function planUsageQuery(principal: Principal, req: GetUsageRequest): UsageQuery {
  const tenantId = principal.tenantId;
  if (tenantId === "")
    throw new PermissionDeniedError("usage belongs to a tenant; this caller has none");
  const isAdmin = principal.roles.includes("admin");
  if (req.allUsers && !isAdmin) {
    throw new PermissionDeniedError("the whole tenant's usage (all_users) needs the admin role");
  }
  if (req.userId !== "" && req.userId !== principal.subject && !isAdmin) {
    throw new PermissionDeniedError("another user's usage needs the admin role");
  }
  if (req.startTime === undefined) {
    throw new InvalidArgumentError("start_time is required", { field: "start_time" });
  }
  if (req.endTime === undefined) {
    throw new InvalidArgumentError("end_time is required", { field: "end_time" });
  }
  const start = timestampDate(req.startTime);
  const end = timestampDate(req.endTime);
  if (!(end.getTime() > start.getTime()) || end.getTime() - start.getTime() > MAX_PERIOD_MS) {
    throw new InvalidArgumentError("end_time must be after start_time and at most 400 days later", {
      field: "end_time",
    });
  }
  const fields: GroupField[] = [];
  for (const d of req.groupBy) {
    const field = FIELD_OF[d];
    if (field === undefined) {
      throw new InvalidArgumentError("group_by holds an unknown dimension", { field: "group_by" });
    }
    if (fields.includes(field)) {
      throw new InvalidArgumentError("group_by repeats a dimension", { field: "group_by" });
    }
    fields.push(field);
  }
  if (fields.includes("day") && fields.includes("hour")) {
    throw new InvalidArgumentError("group_by: DAY and HOUR exclude each other", {
      field: "group_by",
    });
  }
  if (fields.includes("metadata") !== (req.metadataKey !== "")) {
    throw new InvalidArgumentError(
      "metadata_key: names the metadata key to group by, with group_by USAGE_DIMENSION_METADATA (both or neither)",
      { field: "metadata_key" },
    );
  }

  const filter: Record<string, unknown> = { tenantId, time: { $gte: start, $lt: end } };
  const userId = req.userId !== "" ? req.userId : req.allUsers ? undefined : principal.subject;
  if (userId !== undefined) filter["userId"] = userId;
  if (req.model !== "") filter["model"] = req.model;
  if (req.apiKeyId !== "") filter["apiKeyId"] = req.apiKeyId;
  if (req.operation !== UsageOperation.UNSPECIFIED) filter["operation"] = req.operation;
  const metadata = Object.entries(req.metadata).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { tenantId, fields, filter, metadataKey: req.metadataKey, metadata };
}

/** True when the server is FerretDB (its buildInfo says so). */
export async function isFerretDb(conn: Connection): Promise<boolean> {
  try {
    const info = (await conn.db?.admin().command({ buildInfo: 1 })) as
      Record<string, unknown> | undefined;
    return info === undefined || "ferretdbVersion" in info;
  } catch {
    return true; // unknown server: the code path works everywhere
  }
}

/** Rows by a MongoDB aggregation. */
export async function rowsByPipeline(model: LedgerModel, q: UsageQuery): Promise<UsageRow[]> {
  const ok = { $eq: ["$status", "OK"] };
  const id =
    q.fields.length === 0 ? null : Object.fromEntries(q.fields.map((f, i) => [`g${i}`, `$${f}`]));
  const out = await model
    .aggregate<Omit<UsageRow, "values"> & { _id: Record<string, GroupValue> | null }>([
      { $match: q.filter },
      {
        $group: {
          _id: id,
          requests: { $sum: 1 },
          errors: { $sum: { $cond: [ok, 0, 1] } },
          cacheHits: { $sum: { $cond: ["$cacheHit", 1, 0] } },
          ...Object.fromEntries(SUMMED.map((f) => [f, { $sum: `$${f}` }])),
          okLatencyMs: { $sum: { $cond: [ok, "$latencyMs", 0] } },
          okCount: { $sum: { $cond: [ok, 1, 0] } },
        },
      },
      { $limit: MAX_BUCKETS + 1 },
    ])
    .exec();
  return out.map(({ _id, ...sums }) => ({
    ...sums,
    values: q.fields.map((_, i) => _id?.[`g${i}`] ?? ""),
  }));
}

/** Rows grouped in code over the matching entries (FerretDB). */
export async function rowsInCode(model: LedgerModel, q: UsageQuery): Promise<UsageRow[]> {
  const projection: Record<string, 0 | 1> = {
    _id: 0,
    status: 1,
    cacheHit: 1,
    latencyMs: 1,
    ...Object.fromEntries(SUMMED.map((f) => [f, 1 as const])),
  };
  for (const f of q.fields) projection[f] = 1;
  if (readsMetadata(q)) projection["metadata"] = 1;
  const rows = new Map<string, UsageRow>();
  const cursor = model.find(q.filter, projection).lean<LedgerDoc>().cursor({ batchSize: 1_000 });
  for await (const doc of cursor) {
    if (!q.metadata.every(([k, v]) => metadataValue(doc, k) === v)) continue;
    addToRows(rows, q.fields, doc, q.metadataKey);
    if (rows.size > MAX_BUCKETS) {
      await cursor.close();
      break;
    }
  }
  return [...rows.values()];
}

/** The call's metadata value under `key`, undefined when it has none. */
function metadataValue(doc: Partial<LedgerDoc>, key: string): string | undefined {
  return doc.metadata?.find((p) => p.k === key)?.v;
}

/** Adds one ledger document to its group (exported for unit tests). */
export function addToRows(
  rows: Map<string, UsageRow>,
  fields: GroupField[],
  doc: Partial<LedgerDoc>,
  metadataKey = "",
): void {
  const values: GroupValue[] = fields.map((f) =>
    f === "metadata" ? (metadataValue(doc, metadataKey) ?? "") : (doc[f] ?? ""),
  );
  const key = JSON.stringify(values);
  let row = rows.get(key);
  if (row === undefined) {
    row = emptyRow(values);
    rows.set(key, row);
  }
  const ok = doc.status === "OK";
  row.requests += 1;
  if (!ok) row.errors += 1;
  if (doc.cacheHit === true) row.cacheHits += 1;
  for (const f of SUMMED) row[f] += doc[f] ?? 0;
  if (ok) {
    row.okLatencyMs += doc.latencyMs ?? 0;
    row.okCount += 1;
  }
}

function compareValues(a: GroupValue, b: GroupValue): number {
  const x = a instanceof Date ? a.getTime() : a;
  const y = b instanceof Date ? b.getTime() : b;
  if (x === y) return 0;
  return x < y ? -1 : 1;
}

/** The response from rows: buckets sorted by the dimensions in order, totals over all. */
export function toResponse(fields: GroupField[], rows: UsageRow[]): GetUsageResponse {
  if (rows.length > MAX_BUCKETS) {
    throw new InvalidArgumentError(
      `the report would have more than ${MAX_BUCKETS} groups; narrow the period, the filters or group_by`,
      { field: "group_by" },
    );
  }
  const sorted = [...rows].sort((a, b) => {
    for (let i = 0; i < fields.length; i++) {
      const c = compareValues(a.values[i] ?? "", b.values[i] ?? "");
      if (c !== 0) return c;
    }
    return 0;
  });
  // No grouping asks for one total bucket, also when nothing was used.
  if (fields.length === 0 && sorted.length === 0) sorted.push(emptyRow([]));
  const total = emptyRow([]);
  const buckets = sorted.map((row) => {
    for (const f of SUMMED) total[f] += row[f];
    total.requests += row.requests;
    const bucket: MessageInitShape<typeof UsageBucketSchema> & {
      [K in "model" | "userId" | "apiKeyId" | "provider" | "metadataValue"]?: string;
    } = {
      requests: BigInt(row.requests),
      errors: BigInt(row.errors),
      cacheHits: BigInt(row.cacheHits),
      usage: usage(row),
      ...(row.okCount > 0
        ? { meanLatency: durationFromMs(Math.round(row.okLatencyMs / row.okCount)) }
        : {}),
    };
    fields.forEach((f, i) => {
      const v = row.values[i];
      if (f === "day" || f === "hour") {
        if (v instanceof Date) bucket.periodStart = timestampFromDate(v);
      } else if (f === "operation") {
        bucket.operation = typeof v === "number" ? v : 0;
      } else if (f === "metadata") {
        bucket.metadataValue = typeof v === "string" ? v : "";
      } else {
        bucket[f] = typeof v === "string" ? v : "";
      }
    });
    return bucket;
  });
  return create(GetUsageResponseSchema, {
    buckets,
    total: usage(total),
    totalRequests: BigInt(total.requests),
  });
}

function usage(sums: Sums) {
  const count = (n: number) => Math.max(0, Math.round(n));
  const [i, o] = [count(sums.inputTokens), count(sums.outputTokens)];
  return {
    inputTokens: BigInt(i),
    outputTokens: BigInt(o),
    totalTokens: BigInt(i + o),
    costUsd: sums.costUsd,
    cachedInputTokens: BigInt(count(sums.cachedInputTokens)),
    cacheWriteInputTokens: BigInt(count(sums.cacheWriteInputTokens)),
    reasoningTokens: BigInt(count(sums.reasoningTokens)),
  };
}
