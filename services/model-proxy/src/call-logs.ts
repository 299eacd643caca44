// The call log (ModelProxyService ListCallLogs / GetCallLog): what a chat asked and got back, kept
// for the people who debug it. Only chats that ask for it (ChatRequest.log) or belong to a
// tenant in CALL_LOG_TENANTS are logged: prompts are the tenant's data, so nothing is kept by
// default. One document per call in `call_logs`, `_id` = the call id (also its ledger entry's),
// with the request and the answer in binary and the fields a list filters and shows beside them.
// A reader sees their own calls; the tenant's admins see everyone's; another tenant's are never
// found (the tenant is checked on every read).
//
// Writes are one insert per logged call after it answered, off the call's path (the caller does
// not wait); a failed write is logged at warn and the entry is lost: a diagnostic, not a record
// (the ledger is the record, and it is written for every call). Kept for `retentionMs`: older
// entries are missing to every read at once, and sweep() deletes them (FerretDB has no TTL
// indexes; its filter on time scans there, so it runs rarely).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  durationFromMs,
  timestampFromDate,
  timestampMs,
  type Timestamp,
} from "@bufbuild/protobuf/wkt";
import {
  nextPageToken,
  paging,
  PermissionDeniedError,
  storedBytes,
  type Logger,
  type Principal,
} from "@ensemble/kit";
import {
  CallLogSchema,
  CallLogSummarySchema,
  ChatRequestSchema,
  ChatResponseSchema,
  ChatRole,
  ListCallLogsResponseSchema,
  type CallLog,
  type CallLogSummary,
  type ChatRequest,
  type ChatResponse,
  type ListCallLogsRequest,
  type ListCallLogsResponse,
} from "@ensemble/proto";
import { Schema, type Connection, type Model } from "mongoose";

const PREVIEW_CHARS = 200;
/** Larger requests or answers are logged without their content (a document is at most 16 MiB). */
const MAX_CONTENT_BYTES = 4 * 1024 * 1024;

interface CallLogDoc {
  _id: string;
  tenantId: string;
  userId: string;
  apiKeyId: string;
  time: Date;
  requestedModel: string;
  model: string;
  streaming: boolean;
  cacheHit: boolean;
  status: string;
  latencyMs: number;
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  questionPreview: string;
  answerPreview: string;
  request: Buffer | null;
  response: Buffer | null;
  error: string;
}

const schema = new Schema<CallLogDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    apiKeyId: { type: String, default: "" },
    time: { type: Date, required: true },
    requestedModel: { type: String, default: "" },
    model: { type: String, default: "" },
    streaming: { type: Boolean, default: false },
    cacheHit: { type: Boolean, default: false },
    status: { type: String, required: true },
    latencyMs: { type: Number, default: 0 },
    inputTokens: { type: Number, default: 0 },
    outputTokens: { type: Number, default: 0 },
    costUsd: { type: Number, default: 0 },
    questionPreview: { type: String, default: "" },
    answerPreview: { type: String, default: "" },
    request: { type: Buffer, default: null },
    response: { type: Buffer, default: null },
    error: { type: String, default: "" },
  },
  { versionKey: false, strict: "throw" },
);
schema.index({ tenantId: 1, time: -1 });

/** One finished chat, as the service knows it when it ends. */
export interface CallLogEntry {
  id: string;
  tenantId: string;
  userId: string;
  apiKeyId: string;
  requestedModel: string;
  model: string;
  streaming: boolean;
  cacheHit: boolean;
  status: string;
  latencyMs: number;
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  request: ChatRequest;
  response?: ChatResponse;
  error?: string;
}

export interface CallLogsOptions {
  retentionMs: number;
  logger: Logger;
  now?: () => number;
}

function preview(text: string): string {
  return text.length <= PREVIEW_CHARS ? text : `${text.slice(0, PREVIEW_CHARS - 1)}…`;
}

function textOf(message: ChatRequest["messages"][number] | undefined): string {
  return (message?.content ?? [])
    .map((p) => (p.part.case === "text" ? p.part.value : "[image]"))
    .join(" ");
}

function bytesOrNull(bytes: Uint8Array): Buffer | null {
  return bytes.byteLength > MAX_CONTENT_BYTES ? null : Buffer.from(bytes);
}

export class CallLogs {
  readonly #model: Model<CallLogDoc>;
  readonly #o: CallLogsOptions;
  readonly #now: () => number;

  private constructor(model: Model<CallLogDoc>, opts: CallLogsOptions) {
    this.#model = model;
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
  }

  static async open(conn: Connection, opts: CallLogsOptions): Promise<CallLogs> {
    const model =
      (conn.models["CallLog"] as Model<CallLogDoc> | undefined) ??
      conn.model<CallLogDoc>("CallLog", schema, "call_logs");
    await model.init();
    return new CallLogs(model, opts);
  }

  /** Keeps one finished chat; returns at once and never rejects. */
  record(e: CallLogEntry): void {
    const question = [...e.request.messages].reverse().find((m) => m.role === ChatRole.USER);
    const doc: CallLogDoc = {
      _id: e.id,
      tenantId: e.tenantId,
      userId: e.userId,
      apiKeyId: e.apiKeyId,
      time: new Date(this.#now()),
      requestedModel: e.requestedModel,
      model: e.model,
      streaming: e.streaming,
      cacheHit: e.cacheHit,
      status: e.status,
      latencyMs: e.latencyMs,
      inputTokens: e.inputTokens,
      outputTokens: e.outputTokens,
      costUsd: e.costUsd,
      questionPreview: preview(textOf(question)),
      answerPreview: preview(textOf(e.response?.message)),
      request: bytesOrNull(toBinary(ChatRequestSchema, e.request)),
      response:
        e.response === undefined ? null : bytesOrNull(toBinary(ChatResponseSchema, e.response)),
      error: e.error ?? "",
    };
    this.#model.collection.insertOne(doc as never).catch((err: unknown) => {
      this.#o.logger.warn({ err, callId: e.id }, "call log entry not written");
    });
  }

  /** ListCallLogs for `principal` (tenant from the token; others' calls need the admin role). */
  async list(principal: Principal, req: ListCallLogsRequest): Promise<ListCallLogsResponse> {
    const isAdmin = principal.roles.includes("admin");
    if (req.allUsers && !isAdmin) {
      throw new PermissionDeniedError("the whole tenant's calls (all_users) need the admin role");
    }
    if (req.userId !== "" && req.userId !== principal.subject && !isAdmin) {
      throw new PermissionDeniedError("another user's calls need the admin role");
    }
    const filter: Record<string, unknown> = {
      tenantId: principal.tenantId,
      time: {
        $gte: new Date(Math.max(this.#now() - this.#o.retentionMs, ms(req.startTime) ?? -Infinity)),
        ...(req.endTime !== undefined ? { $lt: new Date(timestampMs(req.endTime)) } : {}),
      },
    };
    if (req.userId !== "") filter["userId"] = req.userId;
    else if (!req.allUsers) filter["userId"] = principal.subject;
    if (req.apiKeyId !== "") filter["apiKeyId"] = req.apiKeyId;
    if (req.model !== "") filter["$or"] = [{ requestedModel: req.model }, { model: req.model }];
    if (req.errorsOnly) filter["status"] = { $ne: "OK" };
    const { skip, limit } = paging(req.page);
    const docs = (await this.#model.collection
      .find(filter, { projection: { request: 0, response: 0 } })
      .sort({ time: -1, _id: 1 })
      .skip(skip)
      .limit(limit + 1)
      .toArray()) as unknown as CallLogDoc[];
    return create(ListCallLogsResponseSchema, {
      calls: docs.slice(0, limit).map(summaryOf),
      page: { nextPageToken: nextPageToken(skip, limit, docs.length) },
    });
  }

  /** GetCallLog: the call, or undefined (none, expired, another tenant's, or another user's). */
  async get(principal: Principal, id: string): Promise<CallLog | undefined> {
    const doc = (await this.#model.collection.findOne({
      _id: id as never,
    })) as CallLogDoc | null;
    if (doc === null || doc.tenantId !== principal.tenantId) return undefined;
    if (doc.userId !== principal.subject && !principal.roles.includes("admin")) return undefined;
    if (doc.time.getTime() < this.#now() - this.#o.retentionMs) return undefined;
    return create(CallLogSchema, {
      summary: summaryOf(doc),
      ...(doc.request !== null
        ? { request: fromBinary(ChatRequestSchema, storedBytes(doc.request)) }
        : {}),
      ...(doc.response !== null
        ? { response: fromBinary(ChatResponseSchema, storedBytes(doc.response)) }
        : {}),
      error: doc.error,
    });
  }

  /** Deletes every entry older than the retention; returns how many. */
  async sweep(): Promise<number> {
    const res = await this.#model.collection.deleteMany({
      time: { $lt: new Date(this.#now() - this.#o.retentionMs) },
    });
    return res.deletedCount;
  }
}

function ms(t: Timestamp | undefined): number | undefined {
  return t === undefined ? undefined : timestampMs(t);
}

function summaryOf(doc: CallLogDoc): CallLogSummary {
  return create(CallLogSummarySchema, {
    id: doc._id,
    time: timestampFromDate(doc.time),
    userId: doc.userId,
    apiKeyId: doc.apiKeyId,
    requestedModel: doc.requestedModel,
    model: doc.model,
    streaming: doc.streaming,
    cacheHit: doc.cacheHit,
    status: doc.status,
    latency: durationFromMs(Math.round(doc.latencyMs)),
    inputTokens: BigInt(doc.inputTokens),
    outputTokens: BigInt(doc.outputTokens),
    costUsd: doc.costUsd,
    questionPreview: doc.questionPreview,
    answerPreview: doc.answerPreview,
  });
}
