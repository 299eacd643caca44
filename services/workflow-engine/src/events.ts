// Run events on NATS: the RUN_EVENTS stream, subjects, and publishing with a per-run sequence that
// is gapless and in stream order even when several replicas publish events of the same run.
//
// How the sequence is allocated: JetStream itself is the arbiter. Each event of run R is published
// with the expectation "the last stored message matching ensemble.runs.<t>.<R>.> has stream
// sequence S" (Nats-Expected-Last-Subject-Sequence + -Subject, nats-server >= 2.11), where S is
// the stream sequence of R's event number N, and the new event carries N+1 and the message id
// "<R>:<N+1>". If another replica published in between, the server refuses it ("wrong last
// sequence") and we re-read R's last stored event, and try again with the next number. So two
// events can never get the same number, numbers have no gaps, and stream order is sequence order.
// The expectation is checked before de-duplication, so a retried publish whose ack was lost is
// recognised by looking at the message right after S: if it is our event (same event_id), it
// landed. A replica keeps (S, N) per run in memory and serialises its own publishes per run, so
// the common case is one round trip per event.
//
// Deltas are not stored: they go out on core NATS (subject ...<run>.step.delta) and carry the
// number of the last stored event. The stream's subjects list the stored event types one by one
// so the delta subject is outside the stream.
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  ensureStream,
  type JetStreamClient,
  type JetStreamManager,
  type Logger,
  type NatsConnection,
} from "@ensemble/kit";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { RunEventSchema, RunEventType, type RunEvent } from "@ensemble/proto";
import { randomUUID } from "node:crypto";

export const RUN_SUBJECT_ROOT = "ensemble.runs";

/** The subject token of each event type (events.proto). */
export const EVENT_TOKENS: Readonly<Record<RunEventType, string>> = {
  [RunEventType.UNSPECIFIED]: "unspecified",
  [RunEventType.CREATED]: "created",
  [RunEventType.CLASSIFIED]: "classified",
  [RunEventType.STEP_STARTED]: "step.started",
  [RunEventType.STEP_DELTA]: "step.delta",
  [RunEventType.STEP_COMPLETED]: "step.completed",
  [RunEventType.STEP_FAILED]: "step.failed",
  [RunEventType.COMPLETED]: "completed",
  [RunEventType.FAILED]: "failed",
  [RunEventType.CANCELLED]: "cancelled",
};

export const TERMINAL_EVENTS: ReadonlySet<RunEventType> = new Set([
  RunEventType.COMPLETED,
  RunEventType.FAILED,
  RunEventType.CANCELLED,
]);

const STORED_TYPES = [
  RunEventType.CREATED,
  RunEventType.CLASSIFIED,
  RunEventType.STEP_STARTED,
  RunEventType.STEP_COMPLETED,
  RunEventType.STEP_FAILED,
  RunEventType.COMPLETED,
  RunEventType.FAILED,
  RunEventType.CANCELLED,
];

/** A tenant or run id as one subject token (ids are [A-Za-z0-9_-]; anything else is encoded). */
export function subjectToken(id: string): string {
  return /^[A-Za-z0-9_-]+$/.test(id) ? id : `~${Buffer.from(id, "utf8").toString("base64url")}`;
}

/** `ensemble.runs.<tenant>.<run>` (the root is configurable so tests can run side by side). */
export function runSubjectBase(root: string, tenantId: string, runId: string): string {
  return `${root}.${subjectToken(tenantId)}.${subjectToken(runId)}`;
}

export function eventSubject(
  root: string,
  tenantId: string,
  runId: string,
  type: RunEventType,
): string {
  return `${runSubjectBase(root, tenantId, runId)}.${EVENT_TOKENS[type]}`;
}

/** Creates or updates the RUN_EVENTS stream (every replica at start). */
export async function ensureRunEventsStream(
  jsm: JetStreamManager,
  name: string,
  maxAgeMs: number,
  root = RUN_SUBJECT_ROOT,
): Promise<void> {
  await ensureStream(jsm, {
    name,
    subjects: STORED_TYPES.map((t) => `${root}.*.*.${EVENT_TOKENS[t]}`),
    max_age: maxAgeMs * 1_000_000,
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
}

/** Who a run's events belong to. */
export interface RunRef {
  tenantId: string;
  runId: string;
  userId: string;
  sessionId: string;
}

type RunEventInit = Exclude<MessageInitShape<typeof RunEventSchema>, RunEvent>;

/** What a caller says about an event; run, sequence, id and time are filled in here. */
export type EventInit = Pick<RunEventInit, "stepId" | "attempt" | "payload"> & {
  type: RunEventType;
  eventId?: string;
};

interface Cursor {
  /** Stream sequence of the run's last stored event (0 = none). */
  streamSeq: number;
  /** That event's run sequence. */
  runSeq: number;
}

const MAX_CONFLICTS = 50;

export class RunEventPublisher {
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #stream: string;
  readonly #logger: Logger;
  /** Subject root of run events ("ensemble.runs"). */
  readonly root: string;
  /** runId -> cursor; bounded (oldest dropped), a miss costs one read. */
  readonly #cursors = new Map<string, Cursor>();
  /** runId -> tail of this replica's publish chain for the run. */
  readonly #chains = new Map<string, Promise<unknown>>();

  constructor(opts: {
    nc: NatsConnection;
    js: JetStreamClient;
    jsm: JetStreamManager;
    stream: string;
    logger: Logger;
    root?: string;
  }) {
    this.root = opts.root ?? RUN_SUBJECT_ROOT;
    this.#nc = opts.nc;
    this.#js = opts.js;
    this.#jsm = opts.jsm;
    this.#stream = opts.stream;
    this.#logger = opts.logger;
  }

  /** Publishes a stored event; resolves with it as stored (sequence set). */
  publish(ref: RunRef, init: EventInit): Promise<RunEvent> {
    const prev = this.#chains.get(ref.runId) ?? Promise.resolve();
    const next = prev.then(
      () => this.#publishNow(ref, init),
      () => this.#publishNow(ref, init),
    );
    this.#chains.set(ref.runId, next);
    // then(f, f), not finally(f): a failed publish rejects `next` for the caller, and a
    // finally() chain nobody awaits would reject too (an unhandled rejection ends the process).
    const release = () => {
      if (this.#chains.get(ref.runId) === next) this.#chains.delete(ref.runId);
    };
    next.then(release, release);
    return next;
  }

  /** A delta on core NATS (not stored), numbered after the last stored event this replica knows. */
  publishDelta(ref: RunRef, init: EventInit): void {
    const event = this.#build(ref, init, this.#cursors.get(ref.runId)?.runSeq ?? 0);
    this.#nc.publish(
      eventSubject(this.root, ref.tenantId, ref.runId, init.type),
      toBinary(RunEventSchema, event),
    );
  }

  /** The run's last stored event number (0 = none), read from the stream. */
  async lastSequence(tenantId: string, runId: string): Promise<number> {
    return (await this.#readLast(tenantId, runId)).runSeq;
  }

  /** The run's last event number as this replica published or read it, if it knows. */
  knownSequence(runId: string): number | undefined {
    return this.#cursors.get(runId)?.runSeq;
  }

  /** Removes a run's stored events from the stream (a deleted run). */
  async purge(ref: RunRef): Promise<void> {
    await this.#jsm.streams.purge(this.#stream, {
      filter: `${runSubjectBase(this.root, ref.tenantId, ref.runId)}.>`,
    });
  }

  /** Forget a finished run's cursor. */
  forget(runId: string): void {
    this.#cursors.delete(runId);
  }

  #build(ref: RunRef, init: EventInit, sequence: number): RunEvent {
    return create(RunEventSchema, {
      ...init,
      eventId: init.eventId ?? randomUUID(),
      runId: ref.runId,
      tenantId: ref.tenantId,
      userId: ref.userId,
      sessionId: ref.sessionId,
      sequence: BigInt(sequence),
      time: timestampNow(),
    });
  }

  async #publishNow(ref: RunRef, init: EventInit): Promise<RunEvent> {
    const filter = `${runSubjectBase(this.root, ref.tenantId, ref.runId)}.>`;
    const subject = eventSubject(this.root, ref.tenantId, ref.runId, init.type);
    const eventId = init.eventId ?? randomUUID();
    let cursor = this.#cursors.get(ref.runId) ?? (await this.#readLast(ref.tenantId, ref.runId));
    for (let conflict = 0; conflict < MAX_CONFLICTS; conflict++) {
      const event = this.#build(ref, { ...init, eventId }, cursor.runSeq + 1);
      const h = headers();
      h.set("x-event-type", EVENT_TOKENS[init.type]);
      try {
        const ack = await this.#js.publish(subject, toBinary(RunEventSchema, event), {
          // An event with a deterministic id (a step's or the run's end) is de-duplicated by
          // that id: a replica that dies after publishing it but before recording so makes the
          // next one publish it again, under a later sequence, and the server drops that copy
          // (within the duplicate window).
          msgID: init.eventId !== undefined ? `e:${eventId}` : `${ref.runId}:${cursor.runSeq + 1}`,
          headers: h,
          expect: { lastSubjectSequence: cursor.streamSeq, lastSubjectSequenceSubject: filter },
          timeout: 5_000,
        });
        if (ack.duplicate) return event; // stored before; the run's last event is unchanged
        this.#remember(ref.runId, { streamSeq: ack.seq, runSeq: cursor.runSeq + 1 });
        return event;
      } catch (err) {
        if (!isWrongLastSequence(err) && !isTimeout(err)) throw err;
        // Did an earlier try of this very event land right after the expected message?
        const after = await this.#next(filter, cursor.streamSeq);
        if (after !== undefined && after.event.eventId === eventId) {
          this.#remember(ref.runId, {
            streamSeq: after.streamSeq,
            runSeq: Number(after.event.sequence),
          });
          return after.event;
        }
        if (isTimeout(err) && after === undefined) continue; // not stored: try again as is
        cursor = await this.#readLast(ref.tenantId, ref.runId);
        this.#logger.debug(
          { runId: ref.runId, runSeq: cursor.runSeq },
          "run event sequence moved; retrying",
        );
      }
    }
    throw new Error(
      `could not publish an event of run ${ref.runId}: too many concurrent publishers`,
    );
  }

  #remember(runId: string, cursor: Cursor): void {
    this.#cursors.delete(runId);
    this.#cursors.set(runId, cursor);
    if (this.#cursors.size > 10_000) {
      const oldest = this.#cursors.keys().next();
      if (oldest.done !== true) this.#cursors.delete(oldest.value);
    }
  }

  async #readLast(tenantId: string, runId: string): Promise<Cursor> {
    const msg = await this.#jsm.streams.getMessage(this.#stream, {
      last_by_subj: `${runSubjectBase(this.root, tenantId, runId)}.>`,
    });
    if (msg === null) return { streamSeq: 0, runSeq: 0 };
    const event = fromBinary(RunEventSchema, msg.data);
    const cursor = { streamSeq: msg.seq, runSeq: Number(event.sequence) };
    this.#remember(runId, cursor);
    return cursor;
  }

  async #next(
    filter: string,
    afterStreamSeq: number,
  ): Promise<{ streamSeq: number; event: RunEvent } | undefined> {
    // The server takes {seq, next_by_subj}: the first message at or after seq on the subject.
    const query = { seq: afterStreamSeq + 1, next_by_subj: filter } as unknown as { seq: number };
    const msg = await this.#jsm.streams.getMessage(this.#stream, query);
    if (msg === null) return undefined;
    return { streamSeq: msg.seq, event: fromBinary(RunEventSchema, msg.data) };
  }
}

function isWrongLastSequence(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === 10164)
  );
}

function isTimeout(err: unknown): boolean {
  return err instanceof Error && /timeout/i.test(err.name + err.message);
}

/** Decodes a RunEvent from a NATS message body (and its trace headers, unused here). */
export function decodeEvent(data: Uint8Array): RunEvent {
  return fromBinary(RunEventSchema, data);
}
