// The call log (ModelProxyService ListCallLogs / GetCallLog): what a chat asked and got back, kept
// for the people who debug it. Only chats that ask for it (ChatRequest.log) or belong to a
// tenant in CALL_LOG_TENANTS are logged: prompts are the tenant's data, so nothing is kept by
// default. One document per call in `call_logs`, `_id` = the call id (also its ledger entry's),
// with the request and the answer in binary and the fields a list filters and shows beside them.
// A reader sees their own calls; the tenant's admins see everyone's; another tenant's are never
// found (the tenant is checked on every read).
//
// Writes are batched off the call's path (the caller does not wait): entries are buffered and
// written with one insertMany every `flushMs` (a tenant that logs every chat at hundreds of calls
// a second costs a few writes a second), and close() writes what is left before shutdown. A
// failed write is retried at the next flush; past MAX_BUFFERED entries waiting (the database down
// for long) the oldest are dropped and counted in the log: a diagnostic, not a record (the ledger
// is the record, and it is written for every call). Kept for `retentionMs`: older
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
/** Entries waiting for a write beyond which the oldest are dropped (bounded memory). */
const MAX_BUFFERED = 10_000;
const MAX_BATCH = 500;
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
  /** How often buffered entries are written. */
  flushMs: number;
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
  #buffer: CallLogDoc[] = [];
  #writing: Promise<void> | undefined;
  readonly #timer: NodeJS.Timeout;

  private constructor(model: Model<CallLogDoc>, opts: CallLogsOptions) {
    this.#model = model;
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#timer = setInterval(() => void this.flush(), opts.flushMs);
    this.#timer.unref();
  }

  /** Writes what is buffered (one write at a time); never rejects. */
  flush(): Promise<void> {
    if (this.#writing !== undefined) return this.#writing;
    if (this.#buffer.length === 0) return Promise.resolve();
    this.#writing = this.#write().finally(() => {
      this.#writing = undefined;
    });
    return this.#writing;
  }

  async #write(): Promise<void> {
    while (this.#buffer.length > 0) {
      const batch = this.#buffer.slice(0, MAX_BATCH);
      try {
        await this.#model.collection.insertMany(batch as never[], { ordered: false });
      } catch (err) {
        // Entries already written (a retried batch) are duplicates: written is written.
        const written = (err as { code?: number; writeErrors?: { code?: number }[] }).writeErrors;
        if (written === undefined || written.some((e) => e.code !== 11000)) {
          // Not `err` itself: a bulk write error carries the documents, i.e. the prompts.
          const reason = err instanceof Error ? err.message.slice(0, 300) : String(err);
          this.#o.logger.warn(
            { reason, entries: batch.length },
            "call log entries not written yet",
          );
          return; // retried at the next flush
        }
      }
      // By identity: record() may have dropped the oldest entries meanwhile.
      const done = new Set(batch);
      this.#buffer = this.#buffer.filter((d) => !done.has(d));
    }
  }

  /** Stops the timer and writes what is left (the database's answer bounds how long it takes). */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
    if (this.#buffer.length > 0) {
      this.#o.logger.error(
        { entries: this.#buffer.length },
        "call log entries not written before shutdown",
      );
    }
  }

  static async open(conn: Connection, opts: CallLogsOptions): Promise<CallLogs> {
    const model =
      (conn.models["CallLog"] as Model<CallLogDoc> | undefined) ??
      conn.model<CallLogDoc>("CallLog", schema, "call_logs");
    await model.init();
    return new CallLogs(model, opts);
  }

  /** Keeps one finished chat (buffered; see flush); returns at once and never rejects. */
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
    this.#buffer.push(doc);
    if (this.#buffer.length > MAX_BUFFERED) {
      const dropped = this.#buffer.length - MAX_BUFFERED;
      this.#buffer = this.#buffer.slice(dropped);
      this.#o.logger.warn({ dropped }, "call log entries dropped: too many waiting for a write");
    }
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
