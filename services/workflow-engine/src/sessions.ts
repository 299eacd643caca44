// SessionService handlers: conversations whose messages form a tree. Each reply is a run of the
// engine (MODEL, or AUTO when the model is "auto" and the categorizer is configured) carrying
// the session id and the branch before the question as its context, so replies are recorded,
// billed and observable like any other run. SendMessage and Regenerate stream the run's events
// with service.ts's runEvents, then store the reply.
//
// Sessions belong to their user alone: every read and write is scoped to (tenant, owner) from
// the verified token, so another user - a tenant admin included - gets NOT_FOUND.
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  InvalidArgumentError,
  NotFoundError,
  principalOf,
  type Logger,
  type Principal,
} from "@ensemble/kit";
import {
  ChatMessageSchema,
  ChatRole,
  ArtifactSchema,
  ClassificationSchema,
  ContentPartSchema,
  RunErrorSchema,
  RunSpecSchema,
  RunStatus,
  SessionMessageSchema,
  SessionMessageStatus,
  SessionSchema,
  SessionSettingsSchema,
  UsageSchema,
  type ChatMessage,
  type ContentPart,
  type Run,
  type RunEvent,
  type RunSpec,
  type SessionMessage,
  type SessionService,
  type SessionSettings,
} from "@ensemble/proto";
import { isTerminal, newRunId } from "./engine.js";
import { runSubjectBase } from "./events.js";
import { decodeCursor, encodeCursor, runEvents, tokenOf, type RunServiceDeps } from "./service.js";
import {
  newMessageId,
  newSessionId,
  type MessageDoc,
  type Owner,
  type SessionDoc,
  type SessionStore,
} from "./sessions.store.js";
import { decode, encode } from "./store.js";

export interface SessionServiceDeps extends RunServiceDeps {
  sessions: SessionStore;
  /** The categorizer is configured, so "auto" replies are AUTO runs. */
  autoAvailable: boolean;
  /** The model of "auto" replies when there is no categorizer (default "fast"). */
  fallbackModel?: string | undefined;
  logger?: Logger | undefined;
}

/** max_context_messages 0. */
export const DEFAULT_CONTEXT_MESSAGES = 50;
/** Token budget of the context when the model's window is unknown ("auto", no catalog entry). */
export const DEFAULT_CONTEXT_TOKENS = 32_000;
/** What is kept free for the answer when neither the settings nor the catalog say. */
const DEFAULT_ANSWER_TOKENS = 4_096;
const TITLE_LENGTH = 60;

// ------------------------------------------------------------------------------ pure helpers

/** A cheap token estimate (about 4 characters a token, framing per message, 85 per image). */
export function estimateTokens(content: readonly ContentPart[]): number {
  let n = 4;
  for (const c of content) {
    if (c.part.case === "text") n += Math.ceil(c.part.value.length / 4);
    else if (c.part.case === "image") n += 85;
  }
  return n;
}

/**
 * The context of a reply: the path from the root to `parentId` (oldest first), only messages
 * that have content (a failed or unfinished reply is left out), then at most `maxMessages` of
 * the newest, then the oldest dropped until they fit `maxTokens`.
 */
export function contextPath(
  byId: ReadonlyMap<string, MessageDoc>,
  parentId: string,
  maxMessages: number,
  maxTokens: number,
): MessageDoc[] {
  const path: MessageDoc[] = [];
  const seen = new Set<string>();
  for (let id = parentId; id !== "";) {
    const m = byId.get(id);
    if (m === undefined || seen.has(id)) break;
    seen.add(id);
    path.push(m);
    id = m.parentId;
  }
  path.reverse();
  const usable = path.filter(
    (m) => m.status === SessionMessageStatus.COMPLETE && m.content.length > 0,
  );
  const kept = usable.slice(Math.max(0, usable.length - maxMessages));
  let total = 0;
  let first = kept.length;
  for (let i = kept.length - 1; i >= 0; i--) {
    const t = estimateTokens(contentOf(kept[i]!));
    if (total + t > maxTokens) break;
    total += t;
    first = i;
  }
  return kept.slice(first);
}

/** The title a session gets from its first message: its first line, shortened. */
export function titleOf(text: string, attachments: number): string {
  const line = text.trim().split(/\r?\n/)[0]?.replace(/\s+/g, " ").trim() ?? "";
  if (line === "") return attachments > 0 ? "Image" : "New conversation";
  return line.length > TITLE_LENGTH ? `${line.slice(0, TITLE_LENGTH - 1).trimEnd()}…` : line;
}

function contentOf(m: MessageDoc): ContentPart[] {
  return m.content.map((b) => decode(ContentPartSchema, b));
}

function textOf(content: readonly ContentPart[]): string {
  return content
    .flatMap((c) => (c.part.case === "text" ? [c.part.value] : []))
    .join("\n")
    .trim();
}

function statusOf(run: RunStatus): SessionMessageStatus {
  switch (run) {
    case RunStatus.COMPLETED:
      return SessionMessageStatus.COMPLETE;
    case RunStatus.FAILED:
      return SessionMessageStatus.FAILED;
    case RunStatus.CANCELLED:
      return SessionMessageStatus.CANCELLED;
    default:
      return SessionMessageStatus.STREAMING;
  }
}

/** The session's metadata (stored as "key\0value" pairs for filtering). */
function metadataOf(doc: SessionDoc): Record<string, string> {
  const metadata: Record<string, string> = {};
  for (const pair of doc.metaPairs) {
    const at = pair.indexOf("\u0000");
    if (at > 0) metadata[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return metadata;
}

function toSession(doc: SessionDoc) {
  const metadata = metadataOf(doc);
  return create(SessionSchema, {
    id: doc.id,
    tenantId: doc.tenantId,
    userId: doc.userId,
    title: doc.title,
    settings: decode(SessionSettingsSchema, doc.settings),
    messageCount: doc.messageCount,
    lastMessageId: doc.lastMessageId,
    metadata,
    createTime: timestampFromDate(doc.createTime),
    updateTime: timestampFromDate(doc.updateTime),
  });
}

function toMessage(doc: MessageDoc): SessionMessage {
  const msg = create(SessionMessageSchema, {
    id: doc.id,
    sessionId: doc.sessionId,
    parentMessageId: doc.parentId,
    role: doc.role,
    content: contentOf(doc),
    status: doc.status,
    runId: doc.runId,
    model: doc.model,
    simulated: doc.simulated,
    createTime: timestampFromDate(doc.createTime),
  });
  if (doc.role === ChatRole.ASSISTANT && doc.status !== SessionMessageStatus.STREAMING) {
    msg.latency = durationFromMs(doc.latencyMs);
  }
  if (doc.classification !== undefined)
    msg.classification = decode(ClassificationSchema, doc.classification);
  if (doc.usage !== undefined) msg.usage = decode(UsageSchema, doc.usage);
  if (doc.error !== undefined) msg.error = decode(RunErrorSchema, doc.error);
  msg.artifacts = (doc.artifacts ?? []).map((a) => decode(ArtifactSchema, a));
  return msg;
}

/** The reply's fields from its ended run: status, answer, model, usage, latency, error. */
function replyOf(run: Run): Partial<MessageDoc> {
  const out = run.steps.find((s) => s.stepId === run.outputStepId);
  const winner = run.ranking?.ranked[0];
  const answers = run.steps.flatMap((s) => s.answers);
  const model =
    winner?.model ||
    out?.answers[0]?.servedBy?.model ||
    out?.model ||
    answers.at(-1)?.servedBy?.model ||
    "";
  return {
    status: statusOf(run.status),
    content:
      run.status === RunStatus.COMPLETED
        ? [encode(ContentPartSchema, create(ContentPartSchema, textPart(run.output)))]
        : [],
    model,
    simulated: answers.some((a) => a.servedBy?.simulated === true),
    ...(run.classification !== undefined
      ? { classification: encode(ClassificationSchema, run.classification) }
      : {}),
    usage: encode(UsageSchema, run.usage ?? create(UsageSchema)),
    latencyMs: run.latency !== undefined ? durationMs(run.latency) : 0,
    ...(run.error !== undefined ? { error: encode(RunErrorSchema, run.error) } : {}),
    ...(run.artifacts.length > 0
      ? { artifacts: run.artifacts.map((a) => encode(ArtifactSchema, a)) }
      : {}),
  };
}

function durationMs(d: { seconds: bigint; nanos: number }): number {
  return Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6);
}

function textPart(text: string) {
  return { part: { case: "text" as const, value: text } };
}

function owner(p: Principal): Owner {
  return { tenantId: p.tenantId, userId: p.subject };
}

// ------------------------------------------------------------------------------ handlers

export function sessionHandlers(deps: SessionServiceDeps): ServiceImpl<typeof SessionService> {
  const { engine, sessions: store } = deps;
  const fallbackModel = deps.fallbackModel ?? "fast";

  async function sessionOf(o: Owner, id: string): Promise<SessionDoc> {
    const doc = await store.findSession(o, id);
    if (doc === null) throw new NotFoundError(`session "${id}" not found`);
    return doc;
  }

  /** A reply still STREAMING whose run has ended (its stream was left early): store the end. */
  async function settle(p: Principal, m: MessageDoc): Promise<MessageDoc> {
    if (m.status !== SessionMessageStatus.STREAMING || m.runId === "") return m;
    let run: Run;
    try {
      run = await engine.toRun(await engine.findRun(p, m.runId), true);
    } catch {
      return m;
    }
    if (!isTerminal(run.status)) return m;
    return (await store.updateMessage(owner(p), m.sessionId, m.id, replyOf(run))) ?? m;
  }

  /** The token budget of the context: the settings', or the model's window less the answer's. */
  async function tokenBudget(
    ctx: HandlerContext,
    settings: SessionSettings,
    model: string,
  ): Promise<number> {
    if (settings.maxContextTokens > 0) return settings.maxContextTokens;
    let window = DEFAULT_CONTEXT_TOKENS;
    let answer = settings.maxTokens ?? DEFAULT_ANSWER_TOKENS;
    if (model !== "auto") {
      try {
        const entry = await engine.findModel(callerOf(ctx), model);
        if (entry !== undefined && entry.contextWindow > 0) {
          window = entry.contextWindow;
          if (settings.maxTokens === undefined && entry.maxOutputTokens > 0)
            answer = Math.min(entry.maxOutputTokens, Math.floor(window / 4));
        }
      } catch (err) {
        // The registry did not answer: the default budget holds (the run is checked anyway).
        deps.logger?.debug({ err, model }, "no catalog entry for the session's model");
      }
    }
    return Math.max(0, window - answer);
  }

  /** A session's model must be one the catalog can run ("auto" and empty: the categorizer's). */
  async function checkSettings(
    ctx: HandlerContext,
    settings: SessionSettings | undefined,
  ): Promise<void> {
    const model = settings?.model ?? "";
    if (model === "" || model === "auto") return;
    await engine.checkModel(callerOf(ctx), model, "settings.model");
  }

  interface ReplyArgs {
    p: Principal;
    ctx: HandlerContext;
    session: SessionDoc;
    /** The user message answered (stored already, or stored by `before`). */
    question: { id: string; content: ContentPart[] };
    /** The messages of the session, by id (the question included or not). */
    byId: ReadonlyMap<string, MessageDoc>;
    /** The question's parent: the context ends there. */
    contextEnd: string;
    modelOverride: string;
  }

  /**
   * Starts the reply run (a status error when it cannot start: nothing is stored then), then
   * returns a stream of its events ending with the stored assistant message. `before` runs once
   * the run exists and before anything is streamed (SendMessage stores its user message there).
   */
  async function startReply(
    a: ReplyArgs,
    before: () => Promise<SessionMessage | undefined>,
  ): Promise<
    AsyncGenerator<{ case: "user" | "event" | "assistant"; value: SessionMessage | RunEvent }>
  > {
    const settings = decode(SessionSettingsSchema, a.session.settings);
    const asked = a.modelOverride !== "" ? a.modelOverride : settings.model;
    const auto = asked === "" || asked === "auto";
    const model = auto && !deps.autoAvailable ? fallbackModel : auto ? "auto" : asked;
    const budget = await tokenBudget(a.ctx, settings, model);
    const question = a.question.content;
    const history = contextPath(
      a.byId,
      a.contextEnd,
      settings.maxContextMessages > 0 ? settings.maxContextMessages : DEFAULT_CONTEXT_MESSAGES,
      Math.max(0, budget - estimateTokens(question)),
    ).map((m): ChatMessage =>
      create(ChatMessageSchema, {
        role: m.role === ChatRole.ASSISTANT ? ChatRole.ASSISTANT : ChatRole.USER,
        content: contentOf(m),
      }),
    );
    const spec: RunSpec = create(RunSpecSchema, {
      input: textOf(question),
      // The session's labels go on its replies' runs, and so on their calls in the ledger.
      metadata: metadataOf(a.session),
      attachments: question.filter((c) => c.part.case !== "text"),
      addons: settings.addons,
      system: settings.system,
      mode:
        model === "auto"
          ? { case: "auto", value: {} }
          : {
              case: "model",
              value: {
                model,
                ...(settings.temperature !== undefined
                  ? { temperature: settings.temperature }
                  : {}),
                ...(settings.maxTokens !== undefined ? { maxTokens: settings.maxTokens } : {}),
              },
            },
    });
    // Named as the caller knows it: the request's override, or the setting saved earlier.
    if (model !== "auto") {
      const override = a.modelOverride !== "";
      await engine.checkModel(
        callerOf(a.ctx),
        model,
        override ? "model" : "settings.model",
        !override,
      );
    }
    const runId = newRunId();
    // Deltas are live only: listen before the run exists so none is missed (as RunService.Run).
    const deltaSub = deps.nc.subscribe(
      `${runSubjectBase(deps.eventsRoot, a.p.tenantId, runId)}.step.delta`,
    );
    try {
      await engine.createRun(a.p, spec, {
        token: tokenOf(a.ctx),
        idempotencyKey: "",
        runId,
        sessionId: a.session.id,
        context: history,
      });
    } catch (err) {
      deltaSub.unsubscribe();
      throw err;
    }
    const o = owner(a.p);
    // The session deleted while the reply starts (addMessage: NOT_FOUND): nobody is left to
    // answer, so the run is cancelled rather than left to run and bill.
    const dropRun = async (err: unknown): Promise<never> => {
      deltaSub.unsubscribe();
      await engine.cancelRun(a.p, runId, "its session was deleted").catch(() => undefined);
      throw err;
    };
    const userMessage = await before().catch(dropRun);
    const now = new Date();
    const questionTime =
      userMessage?.createTime !== undefined
        ? timestampDate(userMessage.createTime)
        : (a.byId.get(a.question.id)?.createTime ?? now);
    const reply: MessageDoc = {
      tenantId: o.tenantId,
      userId: o.userId,
      sessionId: a.session.id,
      id: newMessageId(),
      parentId: a.question.id,
      role: ChatRole.ASSISTANT,
      content: [],
      status: SessionMessageStatus.STREAMING,
      runId,
      model: model === "auto" ? "" : model,
      latencyMs: 0,
      simulated: false,
      // After the question, even within the same millisecond (GetSession lists oldest first).
      createTime: new Date(Math.max(now.getTime(), questionTime.getTime() + 1)),
    };
    await store.addMessage(o, reply).catch(dropRun);

    const signal = a.ctx.signal;
    return (async function* () {
      if (userMessage !== undefined) yield { case: "user" as const, value: userMessage };
      for await (const event of runEvents(deps, a.p.tenantId, runId, {
        afterSeq: 0n,
        deltas: true,
        signal,
        deltaSub,
      })) {
        yield { case: "event" as const, value: event };
      }
      const settled = await settle(a.p, reply);
      yield { case: "assistant" as const, value: toMessage(settled) };
    })();
  }

  return {
    async createSession(req, ctx) {
      const p = principalOf(ctx);
      const now = new Date();
      await checkSettings(ctx, req.settings);
      const doc: SessionDoc = {
        tenantId: p.tenantId,
        id: newSessionId(),
        userId: p.subject,
        title: req.title.trim(),
        settings: encode(SessionSettingsSchema, req.settings ?? create(SessionSettingsSchema)),
        messageCount: 0,
        lastMessageId: "",
        metaPairs: Object.entries(req.metadata).map(([k, v]) => `${k}\u0000${v}`),
        createTime: now,
        updateTime: now,
      };
      await store.insertSession(doc);
      return { session: toSession(doc) };
    },

    async listSessions(req, ctx) {
      const p = principalOf(ctx);
      const size = req.page !== undefined && req.page.pageSize > 0 ? req.page.pageSize : 50;
      const after =
        req.page !== undefined && req.page.pageToken !== ""
          ? decodeCursor(req.page.pageToken)
          : undefined;
      const docs = await store.listSessions(owner(p), after, size + 1);
      const page = docs.slice(0, size);
      const last = page.at(-1);
      return {
        sessions: page.map(toSession),
        page: {
          nextPageToken:
            docs.length > size && last !== undefined
              ? encodeCursor({ t: last.updateTime.getTime(), id: last.id })
              : "",
        },
      };
    },

    async getSession(req, ctx) {
      const p = principalOf(ctx);
      const o = owner(p);
      const session = await sessionOf(o, req.sessionId);
      const docs = await store.messages(o, session.id);
      const messages = await Promise.all(docs.map((m) => settle(p, m)));
      return { session: toSession(session), messages: messages.map(toMessage) };
    },

    async updateSession(req, ctx) {
      const p = principalOf(ctx);
      const o = owner(p);
      await sessionOf(o, req.sessionId);
      await checkSettings(ctx, req.settings);
      const set: Partial<SessionDoc> = {};
      if (req.title !== undefined) set.title = req.title.trim();
      if (req.settings !== undefined) set.settings = encode(SessionSettingsSchema, req.settings);
      const doc = await store.updateSession(o, req.sessionId, set);
      if (doc === null) throw new NotFoundError(`session "${req.sessionId}" not found`);
      return { session: toSession(doc) };
    },

    async deleteSession(req, ctx) {
      const p = principalOf(ctx);
      if (!(await store.deleteSession(owner(p), req.sessionId))) {
        throw new NotFoundError(`session "${req.sessionId}" not found`);
      }
      return {};
    },

    async *sendMessage(req, ctx) {
      const p = principalOf(ctx);
      const o = owner(p);
      const session = await sessionOf(o, req.sessionId);
      const docs = await store.messages(o, session.id);
      const byId = new Map(docs.map((m) => [m.id, m]));
      let parentId = "";
      if (req.parentMessageId !== "") {
        if (!byId.has(req.parentMessageId)) {
          throw new NotFoundError(
            `message "${req.parentMessageId}" not found in session "${session.id}"`,
          );
        }
        parentId = req.parentMessageId;
      } else if (!req.newRoot) {
        parentId = byId.has(session.lastMessageId) ? session.lastMessageId : "";
      }
      const content = [
        ...(req.text !== "" ? [create(ContentPartSchema, textPart(req.text))] : []),
        ...req.attachments,
      ];
      const question: MessageDoc = {
        tenantId: o.tenantId,
        userId: o.userId,
        sessionId: session.id,
        id: newMessageId(),
        parentId,
        role: ChatRole.USER,
        content: content.map((c) => encode(ContentPartSchema, c)),
        status: SessionMessageStatus.COMPLETE,
        runId: "",
        model: "",
        latencyMs: 0,
        simulated: false,
        createTime: new Date(),
      };
      const stream = await startReply(
        {
          p,
          ctx,
          session,
          question: { id: question.id, content },
          byId,
          contextEnd: parentId,
          modelOverride: req.model,
        },
        async () => {
          question.createTime = new Date();
          await store.addMessage(
            o,
            question,
            session.title === "" ? titleOf(req.text, req.attachments.length) : undefined,
          );
          return toMessage(question);
        },
      );
      for await (const item of stream) {
        if (item.case === "user")
          yield { item: { case: "userMessage", value: item.value as SessionMessage } };
        else if (item.case === "event")
          yield { item: { case: "event", value: item.value as RunEvent } };
        else yield { item: { case: "assistantMessage", value: item.value as SessionMessage } };
      }
    },

    async *regenerate(req, ctx) {
      const p = principalOf(ctx);
      const o = owner(p);
      const session = await sessionOf(o, req.sessionId);
      const docs = await store.messages(o, session.id);
      const byId = new Map(docs.map((m) => [m.id, m]));
      const target = byId.get(req.messageId);
      if (target === undefined) {
        throw new NotFoundError(`message "${req.messageId}" not found in session "${session.id}"`);
      }
      if (target.role !== ChatRole.ASSISTANT) {
        throw new InvalidArgumentError("message_id: not an assistant message", {
          field: "message_id",
        });
      }
      const question = byId.get(target.parentId);
      if (question === undefined || question.role !== ChatRole.USER) {
        throw new ConnectError(
          `message "${req.messageId}" answers no user message`,
          Code.FailedPrecondition,
        );
      }
      const stream = await startReply(
        {
          p,
          ctx,
          session,
          question: { id: question.id, content: contentOf(question) },
          byId,
          contextEnd: question.parentId,
          modelOverride: req.model,
        },
        () => Promise.resolve(undefined),
      );
      for await (const item of stream) {
        if (item.case === "event") yield { item: { case: "event", value: item.value as RunEvent } };
        else if (item.case === "assistant")
          yield { item: { case: "assistantMessage", value: item.value as SessionMessage } };
      }
    },
  };
}

/** Who asks the catalog: the caller's token, kept per tenant. */
function callerOf(ctx: HandlerContext): { token: string; tenantId: string } {
  return { token: tokenOf(ctx), tenantId: principalOf(ctx).tenantId };
}
