// The collections of SessionService: sessions and their messages. Both belong to one user of one
// tenant, and every query here filters by tenantId AND userId (the owner), both taken from the
// verified token: another user's session - a tenant admin's included - is simply not found.
//
// A message's place in its session's tree is `parentId`; nothing is ever moved, so the tree is
// append-only and needs no multi-document transaction. The session's `messageCount` is recounted
// (not $inc'ed) after each insert: FerretDB's $inc is not atomic under concurrency (store.ts), a
// recount written last is right.
import { randomUUID } from "node:crypto";
import { NotFoundError } from "@ensemble/kit";
import type { ChatRole, SessionMessageStatus } from "@ensemble/proto";
import { Schema, type Connection, type Model } from "mongoose";

export interface SessionDoc {
  tenantId: string;
  id: string;
  /** The owner. */
  userId: string;
  title: string;
  /** SessionSettings, binary. */
  settings: Buffer;
  messageCount: number;
  lastMessageId: string;
  /** "key\u0000value" per metadata pair (keys may hold characters MongoDB keys may not). */
  metaPairs: string[];
  createTime: Date;
  updateTime: Date;
}

const sessionSchema = new Schema<SessionDoc>(
  {
    tenantId: { type: String, required: true },
    id: { type: String, required: true },
    userId: { type: String, required: true },
    title: { type: String, default: "" },
    settings: { type: Buffer, required: true },
    messageCount: { type: Number, default: 0 },
    lastMessageId: { type: String, default: "" },
    metaPairs: { type: [String], default: [] },
    createTime: { type: Date, required: true },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
sessionSchema.index({ tenantId: 1, id: 1 }, { unique: true });
// ListSessions: the owner's, most recently updated first.
sessionSchema.index({ tenantId: 1, userId: 1, updateTime: -1, id: -1 });

export interface MessageDoc {
  tenantId: string;
  userId: string;
  sessionId: string;
  id: string;
  /** "" for a root message. */
  parentId: string;
  /** USER or ASSISTANT. */
  role: ChatRole;
  /** ContentPart each, binary. */
  content: Buffer[];
  status: SessionMessageStatus;
  runId: string;
  model: string;
  /** Classification, binary (assistant messages of "auto"). */
  classification?: Buffer | undefined;
  /** common Usage, binary. */
  usage?: Buffer | undefined;
  latencyMs: number;
  simulated: boolean;
  /** RunError, binary (FAILED). */
  error?: Buffer | undefined;
  /** The reply run's artifacts (Artifact each, binary). */
  artifacts?: Buffer[] | undefined;
  createTime: Date;
}

const messageSchema = new Schema<MessageDoc>(
  {
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    sessionId: { type: String, required: true },
    id: { type: String, required: true },
    parentId: { type: String, default: "" },
    role: { type: Number, required: true },
    content: { type: [Buffer], default: [] },
    status: { type: Number, required: true },
    runId: { type: String, default: "" },
    model: { type: String, default: "" },
    classification: { type: Buffer },
    usage: { type: Buffer },
    latencyMs: { type: Number, default: 0 },
    simulated: { type: Boolean, default: false },
    error: { type: Buffer },
    artifacts: { type: [Buffer], default: undefined },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
messageSchema.index({ tenantId: 1, sessionId: 1, id: 1 }, { unique: true });
messageSchema.index({ tenantId: 1, userId: 1, sessionId: 1, createTime: 1 });

export interface SessionModels {
  sessions: Model<SessionDoc>;
  messages: Model<MessageDoc>;
}

function model<T>(conn: Connection, name: string, schema: Schema<T>, collection: string): Model<T> {
  const existing = conn.models[name] as Model<T> | undefined;
  return existing ?? conn.model<T>(name, schema, collection);
}

export async function openSessionModels(conn: Connection): Promise<SessionModels> {
  const models: SessionModels = {
    sessions: model(conn, "Session", sessionSchema, "sessions"),
    messages: model(conn, "SessionMessage", messageSchema, "session_messages"),
  };
  await Promise.all([models.sessions.init(), models.messages.init()]);
  return models;
}

export function newSessionId(): string {
  return `ses_${randomUUID().replace(/-/g, "")}`;
}

export function newMessageId(): string {
  return `msg_${randomUUID().replace(/-/g, "")}`;
}

/** The owner's scope: every session and message query starts from it. */
export interface Owner {
  tenantId: string;
  userId: string;
}

export class SessionStore {
  readonly #m: SessionModels;

  constructor(models: SessionModels) {
    this.#m = models;
  }

  async insertSession(doc: SessionDoc): Promise<void> {
    await this.#m.sessions.collection.insertOne({ ...doc });
  }

  async findSession(o: Owner, id: string): Promise<SessionDoc | null> {
    return this.#m.sessions
      .findOne({ tenantId: o.tenantId, userId: o.userId, id })
      .lean<SessionDoc>();
  }

  /** The owner's sessions, most recently updated first, after the cursor (updateTime, id). */
  async listSessions(
    o: Owner,
    after: { t: number; id: string } | undefined,
    limit: number,
  ): Promise<SessionDoc[]> {
    const filter: Record<string, unknown> = { tenantId: o.tenantId, userId: o.userId };
    if (after !== undefined) {
      const t = new Date(after.t);
      filter["$or"] = [{ updateTime: { $lt: t } }, { updateTime: t, id: { $lt: after.id } }];
    }
    return this.#m.sessions
      .find(filter)
      .sort({ updateTime: -1, id: -1 })
      .limit(limit)
      .lean<SessionDoc[]>();
  }

  async updateSession(o: Owner, id: string, set: Partial<SessionDoc>): Promise<SessionDoc | null> {
    await this.#m.sessions.updateOne(
      { tenantId: o.tenantId, userId: o.userId, id },
      { $set: { ...set, updateTime: new Date() } },
    );
    return this.findSession(o, id);
  }

  /** Deletes the session and its messages; false when the owner has no such session. */
  async deleteSession(o: Owner, id: string): Promise<boolean> {
    const res = await this.#m.sessions.deleteOne({ tenantId: o.tenantId, userId: o.userId, id });
    // Messages go even when the session document was already gone (a repeated delete finishes
    // what an interrupted one started).
    await this.#m.messages.deleteMany({ tenantId: o.tenantId, userId: o.userId, sessionId: id });
    return res.deletedCount > 0;
  }

  async messages(o: Owner, sessionId: string): Promise<MessageDoc[]> {
    return this.#m.messages
      .find({ tenantId: o.tenantId, userId: o.userId, sessionId })
      .sort({ createTime: 1, id: 1 })
      .lean<MessageDoc[]>();
  }

  async findMessage(o: Owner, sessionId: string, id: string): Promise<MessageDoc | null> {
    return this.#m.messages
      .findOne({ tenantId: o.tenantId, userId: o.userId, sessionId, id })
      .lean<MessageDoc>();
  }

  /**
   * Adds a message and moves the session on: last message, a fresh count, the update time and,
   * for a session still without a title, the title. When the session was deleted meanwhile (a
   * reply starting while its session is deleted), the message is removed again and NOT_FOUND
   * thrown: nothing of a deleted session stays behind.
   */
  async addMessage(o: Owner, doc: MessageDoc, title?: string): Promise<void> {
    await this.#m.messages.collection.insertOne({ ...doc });
    const count = await this.#m.messages.countDocuments({
      tenantId: o.tenantId,
      userId: o.userId,
      sessionId: doc.sessionId,
    });
    const set: Record<string, unknown> = {
      lastMessageId: doc.id,
      messageCount: count,
      updateTime: new Date(),
    };
    const moved = await this.#m.sessions.updateOne(
      { tenantId: o.tenantId, userId: o.userId, id: doc.sessionId },
      { $set: set },
    );
    if (moved.matchedCount === 0) {
      await this.#m.messages.deleteOne({
        tenantId: o.tenantId,
        userId: o.userId,
        sessionId: doc.sessionId,
        id: doc.id,
      });
      throw new NotFoundError(`session "${doc.sessionId}" not found (deleted)`);
    }
    if (title !== undefined && title !== "") {
      await this.#m.sessions.updateOne(
        { tenantId: o.tenantId, userId: o.userId, id: doc.sessionId, title: "" },
        { $set: { title } },
      );
    }
  }

  async updateMessage(
    o: Owner,
    sessionId: string,
    id: string,
    set: Partial<MessageDoc>,
  ): Promise<MessageDoc | null> {
    await this.#m.messages.updateOne(
      { tenantId: o.tenantId, userId: o.userId, sessionId, id },
      { $set: set },
    );
    return this.findMessage(o, sessionId, id);
  }
}
