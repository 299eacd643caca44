// RunService handlers. Runs belong to their user; a tenant admin sees the tenant's; another
// tenant's run is NOT_FOUND. Run and WatchRun stream the stored events from RUN_EVENTS (an
// ordered consumer on the run's subjects, replayed from the start and then live) merged with the
// live deltas from core NATS, and end after the terminal event.
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  currentCall,
  InvalidArgumentError,
  PermissionDeniedError,
  principalOf,
  type JetStreamClient,
  type NatsConnection,
  type Principal,
} from "@ensemble/kit";
import { DeliverPolicy } from "@nats-io/jetstream";
import { RunEventType, RunMode, RunView, type RunEvent, type RunService } from "@ensemble/proto";
import { decodeEvent, runSubjectBase, TERMINAL_EVENTS } from "./events.js";
import { isTerminal, newRunId, type Engine } from "./engine.js";
import type { Scheduler } from "./schedules.js";
import type { Webhooks } from "./webhooks.js";
import type { RunDoc } from "./store.js";

export interface RunServiceDeps {
  engine: Engine;
  nc: NatsConnection;
  js: JetStreamClient;
  eventsStream: string;
  /** Subject root of run events ("ensemble.runs"). */
  eventsRoot: string;
  /** Run schedules; none = the schedule methods are UNIMPLEMENTED. */
  scheduler?: Scheduler | undefined;
  /** The tenants' webhooks; none = the webhook methods are UNIMPLEMENTED. */
  webhooks?: Webhooks | undefined;
}

export function tokenOf(ctx: HandlerContext): string {
  const header = ctx.requestHeader.get("authorization") ?? currentCall()?.authorization ?? "";
  return header.replace(/^Bearer\s+/i, "");
}

function isAdmin(p: Principal): boolean {
  return p.roles.includes("admin");
}

export interface PageCursor {
  t: number;
  id: string;
}

export function encodeCursor(c: PageCursor): string {
  return Buffer.from(JSON.stringify(c)).toString("base64url");
}

export function decodeCursor(token: string): PageCursor {
  try {
    const c = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as PageCursor;
    if (typeof c.t !== "number" || typeof c.id !== "string") throw new Error("bad cursor");
    return c;
  } catch {
    throw new InvalidArgumentError("page.page_token: not a token this service issued", {
      field: "page.page_token",
    });
  }
}

/** A small async queue merging pushes from callbacks into one async iterator. */
class Channel<T> {
  readonly #items: T[] = [];
  #wake: (() => void) | undefined;
  #closed = false;
  push(item: T): void {
    this.#items.push(item);
    this.#wake?.();
  }
  close(): void {
    this.#closed = true;
    this.#wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

/**
 * The run's events: stored ones (sequence > afterSeq) replayed then live, plus live deltas when
 * asked; ends after the terminal event or when `signal` fires.
 */
export async function* runEvents(
  deps: RunServiceDeps,
  tenantId: string,
  runId: string,
  opts: {
    afterSeq: bigint;
    deltas: boolean;
    signal: AbortSignal;
    deltaSub?: {
      unsubscribe(): void;
      [Symbol.asyncIterator](): AsyncIterator<{ data: Uint8Array }>;
    };
  },
): AsyncGenerator<RunEvent> {
  const base = runSubjectBase(deps.eventsRoot, tenantId, runId);
  const channel = new Channel<RunEvent>();
  const deltaSub = opts.deltas
    ? (opts.deltaSub ?? deps.nc.subscribe(`${base}.step.delta`))
    : undefined;
  const consumer = await deps.js.consumers.get(deps.eventsStream, {
    filter_subjects: [`${base}.>`],
    deliver_policy: DeliverPolicy.All,
  });
  const messages = await consumer.consume();
  const stop = (): void => {
    channel.close();
    deltaSub?.unsubscribe();
    void messages.close();
  };
  opts.signal.addEventListener("abort", stop, { once: true });
  // Deltas come on core NATS, ahead of the stored events from JetStream; a step's deltas are
  // held until its step.started has been read, so a watcher sees events in the run's order.
  const started = new Set<string>();
  const held = new Map<string, RunEvent[]>();
  void (async () => {
    try {
      for await (const m of messages) {
        const event = decodeEvent(m.data);
        if (event.sequence > opts.afterSeq) channel.push(event);
        if (event.type === RunEventType.STEP_STARTED) {
          started.add(event.stepId);
          for (const delta of held.get(event.stepId) ?? []) channel.push(delta);
          held.delete(event.stepId);
        }
        if (TERMINAL_EVENTS.has(event.type)) break;
      }
    } catch {
      /* closed */
    }
    stop();
  })();
  if (deltaSub !== undefined) {
    void (async () => {
      try {
        for await (const m of deltaSub) {
          const delta = decodeEvent(m.data);
          if (started.has(delta.stepId)) channel.push(delta);
          else held.set(delta.stepId, (held.get(delta.stepId) ?? []).concat(delta));
        }
      } catch {
        /* closed */
      }
    })();
  }
  try {
    yield* channel;
  } finally {
    opts.signal.removeEventListener("abort", stop);
    stop();
  }
}

export function runHandlers(deps: RunServiceDeps): ServiceImpl<typeof RunService> {
  const { engine } = deps;
  const unimplemented = (): never => {
    throw new ConnectError("schedules are not available yet", Code.Unimplemented);
  };
  const webhooks = (): Webhooks => {
    if (deps.webhooks === undefined) {
      throw new ConnectError("webhooks are not available on this engine", Code.Unimplemented);
    }
    return deps.webhooks;
  };
  const full = (view: RunView, dflt: RunView) =>
    (view === RunView.UNSPECIFIED ? dflt : view) === RunView.FULL;

  return {
    async startRun(req, ctx) {
      const p = principalOf(ctx);
      if (req.spec === undefined)
        throw new InvalidArgumentError("spec: required", { field: "spec" });
      const { doc, existing } = await engine.createRun(p, req.spec, {
        token: tokenOf(ctx),
        idempotencyKey: req.idempotencyKey,
      });
      return { run: await engine.toRun(doc, true, !existing) };
    },

    async *run(req, ctx) {
      const p = principalOf(ctx);
      if (req.spec === undefined)
        throw new InvalidArgumentError("spec: required", { field: "spec" });
      const runId = newRunId();
      // Deltas are live only: listen before the run exists so none is missed.
      const deltaSub = req.omitDeltas
        ? undefined
        : deps.nc.subscribe(`${runSubjectBase(deps.eventsRoot, p.tenantId, runId)}.step.delta`);
      let doc: RunDoc;
      let existing: boolean;
      try {
        ({ doc, existing } = await engine.createRun(p, req.spec, {
          token: tokenOf(ctx),
          idempotencyKey: req.idempotencyKey,
          runId,
        }));
      } catch (err) {
        deltaSub?.unsubscribe();
        throw err;
      }
      if (existing) deltaSub?.unsubscribe();
      yield { item: { case: "run", value: await engine.toRun(doc, true, !existing) } };
      for await (const event of runEvents(deps, p.tenantId, doc.id, {
        afterSeq: 0n,
        deltas: !req.omitDeltas,
        signal: ctx.signal,
        ...(deltaSub !== undefined && !existing ? { deltaSub } : {}),
      })) {
        yield { item: { case: "event", value: event } };
      }
      const final = await engine.findRun(p, doc.id);
      yield { item: { case: "run", value: await engine.toRun(final, true) } };
    },

    async getRun(req, ctx) {
      const p = principalOf(ctx);
      const doc = await engine.findRun(p, req.runId);
      return { run: await engine.toRun(doc, full(req.view, RunView.FULL)) };
    },

    async deleteRun(req, ctx) {
      await engine.deleteRun(principalOf(ctx), req.runId);
      return {};
    },

    async getArtifact(req, ctx) {
      return engine.artifact(principalOf(ctx), req.runId, req.artifactId);
    },

    async listRuns(req, ctx) {
      const p = principalOf(ctx);
      const filter: Record<string, unknown> = { tenantId: p.tenantId };
      if (req.allUsers) {
        if (!isAdmin(p)) throw new PermissionDeniedError("all_users needs the admin role");
        if (req.userId !== "") filter["userId"] = req.userId;
      } else if (req.userId !== "" && req.userId !== p.subject) {
        if (!isAdmin(p))
          throw new PermissionDeniedError("listing another user's runs needs the admin role");
        filter["userId"] = req.userId;
      } else {
        filter["userId"] = p.subject;
      }
      if (req.statuses.length > 0) filter["status"] = { $in: req.statuses };
      if (req.mode !== RunMode.UNSPECIFIED) filter["mode"] = req.mode;
      if (req.sessionId !== "") filter["sessionId"] = req.sessionId;
      if (req.templateId !== "") filter["templateId"] = req.templateId;
      if (req.scheduleId !== "") filter["scheduleId"] = req.scheduleId;
      if (req.model !== "") filter["models"] = req.model;
      const pairs = Object.entries(req.metadata).map(([k, v]) => `${k}\u0000${v}`);
      if (pairs.length > 0) filter["metaPairs"] = { $all: pairs };
      const created: Record<string, Date> = {};
      if (req.createdAfter !== undefined) created["$gt"] = timestampDate(req.createdAfter);
      if (req.createdBefore !== undefined) created["$lt"] = timestampDate(req.createdBefore);
      const and: Array<Record<string, unknown>> = [];
      if (Object.keys(created).length > 0) and.push({ createTime: created });
      if (req.page !== undefined && req.page.pageToken !== "") {
        const c = decodeCursor(req.page.pageToken);
        const t = new Date(c.t);
        and.push({ $or: [{ createTime: { $lt: t } }, { createTime: t, id: { $lt: c.id } }] });
      }
      if (and.length > 0) filter["$and"] = and;
      const size = req.page !== undefined && req.page.pageSize > 0 ? req.page.pageSize : 50;
      const docs = await engine.listDocs(filter, size + 1);
      const page = docs.slice(0, size);
      const last = page.at(-1);
      const runs = await Promise.all(
        page.map((d) => engine.toRun(d, full(req.view, RunView.BASIC))),
      );
      return {
        runs,
        page: {
          nextPageToken:
            docs.length > size && last !== undefined
              ? encodeCursor({ t: last.createTime.getTime(), id: last.id })
              : "",
        },
      };
    },

    async cancelRun(req, ctx) {
      const p = principalOf(ctx);
      const doc = await engine.cancelRun(p, req.runId, req.reason);
      return { run: await engine.toRun(doc, true) };
    },

    async *watchRun(req, ctx) {
      const p = principalOf(ctx);
      const doc = await engine.findRun(p, req.runId);
      const snapshot = await engine.toRun(doc, true);
      if (req.includeSnapshot) yield { item: { case: "run", value: snapshot } };
      // Already over and nothing newer than the resume point: nothing left to stream.
      if (isTerminal(doc.status) && snapshot.lastSequence <= req.afterSequence) return;
      for await (const event of runEvents(deps, p.tenantId, doc.id, {
        afterSeq: req.afterSequence,
        deltas: req.includeDeltas,
        signal: ctx.signal,
      })) {
        if (event.type === RunEventType.STEP_DELTA && !req.includeDeltas) continue;
        yield { item: { case: "event", value: event } };
      }
    },

    async createSchedule(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      return { schedule: await scheduler.create(principalOf(ctx), req, tokenOf(ctx)) };
    },

    async getSchedule(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      return { schedule: await scheduler.get(principalOf(ctx), req.scheduleId) };
    },

    async listSchedules(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      return scheduler.list(principalOf(ctx), req);
    },

    async deleteSchedule(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      await scheduler.delete(principalOf(ctx), req.scheduleId);
      return {};
    },

    async updateSchedule(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      return { schedule: await scheduler.update(principalOf(ctx), req, tokenOf(ctx)) };
    },

    async pauseSchedule(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      return { schedule: await scheduler.pause(principalOf(ctx), req.scheduleId, req.reason) };
    },

    async resumeSchedule(req, ctx) {
      const scheduler = deps.scheduler ?? unimplemented();
      return { schedule: await scheduler.resume(principalOf(ctx), req.scheduleId) };
    },

    async createWebhook(req, ctx) {
      return webhooks().create(principalOf(ctx), req);
    },

    async listWebhooks(_req, ctx) {
      return { webhooks: await webhooks().list(principalOf(ctx)) };
    },

    async deleteWebhook(req, ctx) {
      await webhooks().delete(principalOf(ctx), req.webhookId);
      return {};
    },

    async listWebhookDeliveries(req, ctx) {
      return webhooks().deliveries(principalOf(ctx), req);
    },
  };
}
