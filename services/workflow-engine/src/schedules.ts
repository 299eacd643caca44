// Run schedules: a RunSpec started once at a given time or on a cron expression, as the user who
// created the schedule. Every replica runs the scheduler loop; the store rule of store.ts decides
// who fires what:
//   schedule_fires (tenant, schedule, occurrence)  claims one occurrence of one schedule
// The replica whose insert wins creates the run with an id derived from (tenant, schedule,
// occurrence) (scheduledRunId), so the run itself is unique by the runs collection's index too:
// a second creator's insert fails and publishes nothing. Life of an occurrence:
//   due (nextFireMs <= now) -> claim (insert schedule_fires, status "claimed") -> createRun with
//   the derived id and a service token acting for the owner -> the fire becomes "started" (or
//   "failed" when the spec no longer plans: the error is kept on the fire) -> the schedule is
//   advanced (next/last fire time, last run id, fire count).
// A replica that dies between the claim and the run leaves a "claimed" fire; after the grace
// period (SCHEDULE_CLAIM_GRACE_MS) any replica creates its run (the derived id makes a late
// duplicate impossible). While everything was down, occurrences pile up: the first pass fires only
// the latest one that is due, then the schedule continues from now.
//
// Plain updates of a schedule are guarded by lastFireMs <= the occurrence being recorded (a stale
// replica cannot move a schedule back for long), and fireCount / lastRunId are recomputed from the
// fires rather than incremented (FerretDB's $inc is not atomic across replicas).
//
// Paused schedules (PauseSchedule, or the engine after SCHEDULE_PAUSE_AFTER_FAILURES occurrences in
// a row that started no run) have nextFireMs NEVER, so the due scan never sees them; a pass that
// read one before it was paused checks the flag again and does not fire it. ResumeSchedule counts
// the next occurrence from now, and only fires after it count towards the next automatic pause.
//
// Fires do not pile up: once a schedule has fires older than SCHEDULE_FIRE_RETENTION_MS, the
// replica recording an occurrence folds them into a total (schedule_fire_totals, one document per
// boundary, a unique key: racing replicas write the same one once) and deletes them. fireCount is
// the latest total plus the fires since its boundary, so a fire is counted once whether or not
// its deletion has happened yet; an occurrence that old is never fired again (nextFireMs only
// moves forward), so its claim is not needed any more.
import { createHash, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  toConnectError,
  type GrpcClient,
  type Logger,
  type Principal,
} from "@ensemble/kit";
import {
  RunSpecSchema,
  ScheduleSchema,
  type CreateScheduleRequest,
  type ListSchedulesRequest,
  type UpdateScheduleRequest,
  type RegistryService,
  type RunSpec,
  type Schedule,
} from "@ensemble/proto";
import { Cron } from "croner";
import { Schema, type Connection, type Model } from "mongoose";
import { Counter, type Registry } from "prom-client";
import type { Engine } from "./engine.js";
import { catalogCache, planFor, type Planner } from "./plan.js";
import { byId, claim, decode, encode, isDuplicateKey, retryBusy, setFields } from "./store.js";
import { CallerTokens, type TokenSource } from "./tokens.js";

/** nextFireMs of a schedule that will not fire again (sorts last in ListSchedules). */
const NEVER = Number.MAX_SAFE_INTEGER;
/** A claimed fire whose run still cannot be created after this long is given up. */
const GIVE_UP_MS = 3_600_000;
/** Schedules fired at the same time by one replica. */
const FIRE_CONCURRENCY = 8;
/** Fires older than this are folded into a total (SCHEDULE_FIRE_RETENTION_MS). */
const DEFAULT_FIRE_RETENTION_MS = 7 * 24 * 3_600_000;
const BATCH = 200;
/** Occurrences in a row that started no run before a schedule pauses itself. */
const DEFAULT_PAUSE_AFTER_FAILURES = 5;
/** UpdateSchedule's update_mask paths. */
const UPDATE_PATHS = ["name", "spec", "when"];

export interface ScheduleDoc {
  /** scheduleKey(tenantId, id). */
  _id?: string;
  tenantId: string;
  id: string;
  /** The owner; runs start as this user. */
  userId: string;
  /** The API key the schedule was created with (its runs are attributed to it). */
  apiKeyId: string;
  name: string;
  /** RunSpec, validated at creation. */
  spec: Buffer;
  /** One-time schedules: when. */
  at?: Date | undefined;
  /** Cron schedules: the expression and its IANA time zone ("" = UTC). */
  cronExpression: string;
  cronTimeZone: string;
  /** Next occurrence in ms since the epoch; NEVER once a one-time schedule has fired. */
  nextFireMs: number;
  /** Last occurrence fired, ms since the epoch; -1 before the first. */
  lastFireMs: number;
  lastRunId: string;
  fireCount: number;
  /** The latest fire's error when it started no run (Schedule.last_error). */
  lastError: string;
  /** Paused: nextFireMs is NEVER until resumed. */
  paused?: boolean;
  pauseReason?: string;
  pauseTime?: Date | undefined;
  /** When it was last resumed (ms); fires at or before it do not count towards a pause. */
  resumedMs?: number;
  createTime: Date;
  updateTime: Date;
}

const scheduleSchema = new Schema<ScheduleDoc>(
  {
    tenantId: { type: String, required: true },
    id: { type: String, required: true },
    userId: { type: String, required: true },
    apiKeyId: { type: String, default: "" },
    name: { type: String, required: true },
    spec: { type: Buffer, required: true },
    at: { type: Date },
    cronExpression: { type: String, default: "" },
    cronTimeZone: { type: String, default: "" },
    nextFireMs: { type: Number, required: true },
    lastFireMs: { type: Number, default: -1 },
    lastRunId: { type: String, default: "" },
    fireCount: { type: Number, default: 0 },
    lastError: { type: String, default: "" },
    paused: { type: Boolean, default: false },
    pauseReason: { type: String, default: "" },
    pauseTime: { type: Date },
    resumedMs: { type: Number, default: -1 },
    createTime: { type: Date, required: true },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
scheduleSchema.index({ tenantId: 1, id: 1 }, { unique: true });
// The scheduler's scan of due schedules (every tenant).
scheduleSchema.index({ nextFireMs: 1 });
// ListSchedules: by next fire time, the caller's or the tenant's.
scheduleSchema.index({ tenantId: 1, userId: 1, nextFireMs: 1, id: 1 });
scheduleSchema.index({ tenantId: 1, nextFireMs: 1, id: 1 });

export type FireStatus = "claimed" | "started" | "failed" | "cancelled";

/** One occurrence of one schedule, claimed by the replica that fires it. */
export interface ScheduleFireDoc {
  /** fireKey(tenantId, scheduleId, occurrence). */
  _id?: string;
  tenantId: string;
  scheduleId: string;
  occurrence: Date;
  /** scheduledRunId(tenant, schedule, occurrence). */
  runId: string;
  status: FireStatus;
  /** Why the run could not be created (status "failed" / "cancelled"). */
  error: string;
  createTime: Date;
}

const scheduleFireSchema = new Schema<ScheduleFireDoc>(
  {
    tenantId: { type: String, required: true },
    scheduleId: { type: String, required: true },
    occurrence: { type: Date, required: true },
    runId: { type: String, required: true },
    status: { type: String, required: true },
    error: { type: String, default: "" },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
scheduleFireSchema.index({ tenantId: 1, scheduleId: 1, occurrence: 1 }, { unique: true });
// Recovery: claimed fires whose run was never created.
scheduleFireSchema.index({ status: 1, createTime: 1 });

/** The fires of one schedule before `boundaryMs`, folded (their documents are deleted). */
export interface ScheduleFireTotalDoc {
  /** totalKey(tenantId, scheduleId, boundaryMs). */
  _id?: string;
  tenantId: string;
  scheduleId: string;
  boundaryMs: number;
  /** Fires that claimed or started a run, every one before the boundary. */
  count: number;
  /** The latest run started before the boundary ("" if none). */
  lastRunId: string;
  createTime: Date;
}

const scheduleFireTotalSchema = new Schema<ScheduleFireTotalDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true },
    scheduleId: { type: String, required: true },
    boundaryMs: { type: Number, required: true },
    count: { type: Number, required: true },
    lastRunId: { type: String, default: "" },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
scheduleFireTotalSchema.index({ tenantId: 1, scheduleId: 1, boundaryMs: 1 });

export interface ScheduleModels {
  schedules: Model<ScheduleDoc>;
  fires: Model<ScheduleFireDoc>;
  totals: Model<ScheduleFireTotalDoc>;
}

function model<T>(conn: Connection, name: string, schema: Schema<T>, collection: string): Model<T> {
  const existing = conn.models[name] as Model<T> | undefined;
  return existing ?? conn.model<T>(name, schema, collection);
}

/** The schedule collections, with their indexes built (the fires' unique index is the claim). */
export async function openScheduleModels(conn: Connection): Promise<ScheduleModels> {
  const models: ScheduleModels = {
    schedules: model(conn, "Schedule", scheduleSchema, "schedules"),
    fires: model(conn, "ScheduleFire", scheduleFireSchema, "schedule_fires"),
    totals: model(conn, "ScheduleFireTotal", scheduleFireTotalSchema, "schedule_fire_totals"),
  };
  await Promise.all([models.schedules.init(), models.fires.init(), models.totals.init()]);
  return models;
}

// Documents are addressed by a deterministic `_id` made of their unique key, as the engine's are
// (store.ts: FerretDB's SQLite backend uses an index only for an exact {_id} filter), so the
// per-schedule and per-occurrence reads and writes never scan a collection.

export function scheduleKey(tenantId: string, id: string): string {
  return JSON.stringify([tenantId, id]);
}

export function fireKey(tenantId: string, scheduleId: string, occurrence: Date): string {
  return JSON.stringify([tenantId, scheduleId, occurrence.getTime()]);
}

export function totalKey(tenantId: string, scheduleId: string, boundaryMs: number): string {
  return JSON.stringify([tenantId, scheduleId, boundaryMs]);
}

/** The id of the run an occurrence starts: the same on every replica, so it is created once. */
export function scheduledRunId(tenantId: string, scheduleId: string, occurrence: Date): string {
  const hash = createHash("sha256")
    .update(`${tenantId}\u0000${scheduleId}\u0000${occurrence.getTime()}`)
    .digest("hex");
  return `run_${hash.slice(0, 32)}`;
}

type When = CreateScheduleRequest["when"];

/** A schedule's time fields for `when`, its next occurrence counted from `now`. */
function timing(
  when: When,
  now: number,
): Pick<ScheduleDoc, "at" | "cronExpression" | "cronTimeZone" | "nextFireMs"> {
  switch (when.case) {
    case "at": {
      const at = timestampDate(when.value);
      if (at.getTime() <= now) {
        throw new InvalidArgumentError("at: must be in the future", { field: "at" });
      }
      return { at, cronExpression: "", cronTimeZone: "", nextFireMs: at.getTime() };
    }
    case "cron": {
      const { expression, timeZone } = when.value;
      const next = parseCron(expression, timeZone).nextRun(new Date(now))?.getTime();
      if (next === undefined) {
        throw new InvalidArgumentError(`cron.expression: "${expression}" never fires`, {
          field: "cron.expression",
        });
      }
      return {
        cronExpression: expression.trim(),
        cronTimeZone: timeZone,
        nextFireMs: next,
      };
    }
    default:
      throw new InvalidArgumentError("when: `at` or `cron` is required", { field: "when" });
  }
}

/**
 * A cron expression read in a time zone: five fields, six with seconds first, or a nickname
 * (@daily ...). Throws INVALID_ARGUMENT naming the field at fault.
 */
export function parseCron(expression: string, timeZone: string): Cron {
  const zone = timeZone === "" ? "UTC" : timeZone;
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: zone });
  } catch {
    throw new InvalidArgumentError(
      `cron.time_zone: "${timeZone}" is not an IANA time zone (e.g. "Europe/Berlin", "America/New_York")`,
      { field: "cron.time_zone" },
    );
  }
  try {
    return new Cron(expression.trim(), { timezone: zone, mode: "5-or-6-parts" });
  } catch (err) {
    const reason = (err instanceof Error ? err.message : String(err)).replace(
      /^CronPattern:\s*/,
      "",
    );
    throw new InvalidArgumentError(
      `cron.expression: "${expression}" is not a valid cron expression (five fields, six with seconds first, or @yearly/@monthly/@weekly/@daily/@hourly): ${reason}`,
      { field: "cron.expression" },
    );
  }
}

function cronOf(doc: Pick<ScheduleDoc, "cronExpression" | "cronTimeZone">): Cron {
  return parseCron(doc.cronExpression, doc.cronTimeZone);
}

/** The occurrence a due schedule fires now: a one-time schedule's time, or the latest one due. */
export function dueOccurrence(doc: ScheduleDoc, now: number): number {
  if (doc.cronExpression === "") return doc.nextFireMs;
  // previousRuns counts a run earlier in the reference's second; +1 ms makes `now` itself count.
  const latest = cronOf(doc)
    .previousRuns(1, new Date(now + 1))[0]
    ?.getTime();
  return latest !== undefined && latest <= now ? Math.max(latest, doc.nextFireMs) : doc.nextFireMs;
}

/** The first occurrence strictly after `after`; NEVER for one-time schedules or ended crons. */
export function nextOccurrence(doc: ScheduleDoc, after: number): number {
  if (doc.cronExpression === "") return NEVER;
  return cronOf(doc).nextRun(new Date(after))?.getTime() ?? NEVER;
}

interface PageCursor {
  t: number;
  id: string;
}

function encodeCursor(c: PageCursor): string {
  return Buffer.from(JSON.stringify(c)).toString("base64url");
}

function decodeCursor(token: string): PageCursor {
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

const PERMANENT = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.FailedPrecondition,
  Code.PermissionDenied,
  Code.OutOfRange,
  Code.Unimplemented,
]);

export interface SchedulerSettings {
  /** How often each replica looks for due schedules (at most; it wakes earlier for a known one). */
  tickMs: number;
  /** How long a claimed occurrence may stay without its run before another replica creates it. */
  claimGraceMs: number;
  /** Fires older than this are folded into a total and deleted (default 7 days). */
  fireRetentionMs?: number;
  /** Occurrences in a row that start no run before the schedule pauses itself; 0 = never. */
  pauseAfterFailures?: number;
}

export interface SchedulerDeps {
  models: ScheduleModels;
  engine: Pick<Engine, "createRun" | "findRun">;
  /** Plans specs at creation, the way StartRun does (templates, addons, models). */
  registry: Pick<GrpcClient<typeof RegistryService>, "getTemplate" | "getAddon" | "getModel">;
  /** False without a categorizer: AUTO specs are refused like StartRun refuses them. */
  autoAvailable: boolean;
  /** Tokens acting for a schedule's owner when an occurrence fires. */
  tokens: TokenSource;
  logger: Logger;
  settings: SchedulerSettings;
  /** Where the fire counter is registered; none = no metrics. */
  metricsRegistry?: Registry | undefined;
  /** Told when a schedule is paused (webhooks); `eventId` is the same on every replica. */
  onPaused?: ((schedule: Schedule, eventId: string) => Promise<void>) | undefined;
}

export class Scheduler {
  readonly #d: SchedulerDeps;
  readonly #log: Logger;
  readonly #fired: Counter<"result"> | undefined;
  #stopping = true;
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<void> | undefined;
  #lastRecovery = 0;
  readonly #catalog = catalogCache();
  /** Schedule key -> the boundary this replica last folded its fires up to. */
  readonly #folded = new Map<string, number>();

  constructor(deps: SchedulerDeps) {
    this.#d = deps;
    this.#log = deps.logger.child({ component: "scheduler" });
    this.#fired =
      deps.metricsRegistry !== undefined
        ? new Counter({
            name: "ensemble_workflow_schedule_fires_total",
            help: "Schedule occurrences this replica fired, by result (started, failed, retry)",
            labelNames: ["result"],
            registers: [deps.metricsRegistry],
          })
        : undefined;
  }

  // ------------------------------------------------------------------------------ API

  async create(p: Principal, req: CreateScheduleRequest, token: string): Promise<Schedule> {
    const spec = req.spec;
    if (spec === undefined) throw new InvalidArgumentError("spec: required", { field: "spec" });
    const now = Date.now();
    const base = {
      tenantId: p.tenantId,
      id: `sch_${randomUUID().replace(/-/g, "")}`,
      userId: p.subject,
      apiKeyId: p.apiKeyId ?? "",
      name: req.name,
      spec: encode(RunSpecSchema, spec),
      lastFireMs: -1,
      lastRunId: "",
      fireCount: 0,
      lastError: "",
      createTime: new Date(now),
      updateTime: new Date(now),
    };
    const doc: ScheduleDoc = { ...base, ...timing(req.when, now) };
    // A bad spec fails the call and never becomes a schedule.
    await this.#validate(spec, { token, tenantId: p.tenantId });
    if (this.#d.tokens instanceof CallerTokens) {
      this.#d.tokens.remember(p.tenantId, p.subject, p.apiKeyId ?? "", token);
    }
    await retryBusy(() =>
      this.#d.models.schedules.collection.insertOne({
        ...doc,
        _id: scheduleKey(doc.tenantId, doc.id),
      } as Record<string, unknown>),
    );
    this.#log.info(
      { tenantId: doc.tenantId, userId: doc.userId, scheduleId: doc.id },
      "schedule created",
    );
    return toSchedule(doc);
  }

  async get(p: Principal, scheduleId: string): Promise<Schedule> {
    return toSchedule(await this.#find(p, scheduleId));
  }

  async list(
    p: Principal,
    req: ListSchedulesRequest,
  ): Promise<{ schedules: Schedule[]; page: { nextPageToken: string } }> {
    const filter: Record<string, unknown> = { tenantId: p.tenantId };
    if (req.allUsers) {
      if (!p.roles.includes("admin"))
        throw new PermissionDeniedError("all_users needs the admin role");
    } else {
      filter["userId"] = p.subject;
    }
    if (req.page !== undefined && req.page.pageToken !== "") {
      const c = decodeCursor(req.page.pageToken);
      filter["$or"] = [{ nextFireMs: { $gt: c.t } }, { nextFireMs: c.t, id: { $gt: c.id } }];
    }
    const size = req.page !== undefined && req.page.pageSize > 0 ? req.page.pageSize : 50;
    const docs = await this.#d.models.schedules
      .find(filter)
      .sort({ nextFireMs: 1, id: 1 })
      .limit(size + 1)
      .lean<ScheduleDoc[]>();
    const page = docs.slice(0, size);
    const last = page.at(-1);
    return {
      schedules: page.map(toSchedule),
      page: {
        nextPageToken:
          docs.length > size && last !== undefined
            ? encodeCursor({ t: last.nextFireMs, id: last.id })
            : "",
      },
    };
  }

  /** Changes the fields `update_mask` names: name, spec (planned as at creation), when. */
  async update(p: Principal, req: UpdateScheduleRequest, token: string): Promise<Schedule> {
    const paths = new Set(req.updateMask?.paths ?? []);
    if (paths.size === 0) {
      throw new InvalidArgumentError(
        `update_mask: name at least one of ${UPDATE_PATHS.join(", ")}`,
        {
          field: "update_mask",
        },
      );
    }
    for (const path of paths) {
      if (!UPDATE_PATHS.includes(path)) {
        throw new InvalidArgumentError(
          `update_mask: unknown path "${path}"; expected ${UPDATE_PATHS.join(", ")}`,
          { field: "update_mask" },
        );
      }
    }
    const doc = await this.#find(p, req.scheduleId);
    const now = Date.now();
    const fields: Partial<ScheduleDoc> = { updateTime: new Date(now) };
    if (paths.has("name")) {
      if (req.name.trim() === "") {
        throw new InvalidArgumentError("name: must not be empty", { field: "name" });
      }
      fields.name = req.name;
    }
    if (paths.has("when")) {
      const when = timing(req.when, now);
      Object.assign(fields, when, {
        // A paused schedule stays paused; its new time counts once it is resumed.
        nextFireMs: doc.paused === true ? NEVER : when.nextFireMs,
      });
    }
    if (paths.has("spec")) {
      if (req.spec === undefined) {
        throw new InvalidArgumentError("spec: required when update_mask names it", {
          field: "spec",
        });
      }
      await this.#validate(req.spec, { token, tenantId: p.tenantId });
      fields.spec = encode(RunSpecSchema, req.spec);
      if (this.#d.tokens instanceof CallerTokens) {
        this.#d.tokens.remember(p.tenantId, p.subject, p.apiKeyId ?? "", token);
      }
    }
    const key = scheduleKey(doc.tenantId, doc.id);
    const unset = paths.has("when") && fields.at === undefined ? { at: "" } : undefined;
    await retryBusy(() =>
      this.#d.models.schedules.collection.updateOne(
        { _id: key as never },
        { $set: fields, ...(unset !== undefined ? { $unset: unset } : {}) },
      ),
    );
    this.#log.info(
      { tenantId: doc.tenantId, scheduleId: doc.id, changed: [...paths] },
      "schedule updated",
    );
    return toSchedule((await byId(this.#d.models.schedules, key)) ?? { ...doc, ...fields });
  }

  /** Stops the schedule firing until it is resumed (a paused one is returned as it is). */
  async pause(p: Principal, scheduleId: string, reason: string): Promise<Schedule> {
    const doc = await this.#find(p, scheduleId);
    if (doc.paused === true) return toSchedule(doc);
    const paused = await this.#pause(doc, reason.trim() || "paused by a user", Date.now());
    return toSchedule(paused);
  }

  /** Lets a paused schedule fire again from its next occurrence after now. */
  async resume(p: Principal, scheduleId: string): Promise<Schedule> {
    const doc = await this.#find(p, scheduleId);
    if (doc.paused !== true) return toSchedule(doc);
    const now = Date.now();
    let next: number;
    if (doc.cronExpression !== "") {
      next = nextOccurrence(doc, now);
      if (next === NEVER) {
        throw new FailedPreconditionError(
          `cron.expression: "${doc.cronExpression}" never fires again; give the schedule a new time with UpdateSchedule`,
        );
      }
    } else if (doc.lastFireMs >= 0) {
      throw new FailedPreconditionError(
        "this one-time schedule has already fired; give it a new time with UpdateSchedule",
      );
    } else if (doc.at === undefined || doc.at.getTime() <= now) {
      throw new FailedPreconditionError(
        `its time (${doc.at?.toISOString() ?? "none"}) passed while it was paused; give it a new time with UpdateSchedule`,
      );
    } else {
      next = doc.at.getTime();
    }
    const key = scheduleKey(doc.tenantId, doc.id);
    await retryBusy(() =>
      this.#d.models.schedules.collection.updateOne(
        { _id: key as never },
        {
          $set: {
            paused: false,
            pauseReason: "",
            resumedMs: now,
            nextFireMs: next,
            updateTime: new Date(now),
          },
          $unset: { pauseTime: "" },
        },
      ),
    );
    this.#log.info({ tenantId: doc.tenantId, scheduleId: doc.id }, "schedule resumed");
    const resumed = await byId(this.#d.models.schedules, key);
    if (resumed === null) throw new NotFoundError(`schedule "${scheduleId}" not found`);
    return toSchedule(resumed);
  }

  /** Marks the schedule paused and tells the webhooks. */
  async #pause(doc: ScheduleDoc, reason: string, eventMs: number): Promise<ScheduleDoc> {
    const now = new Date();
    const fields = {
      paused: true,
      pauseReason: reason.slice(0, 1024),
      pauseTime: now,
      nextFireMs: NEVER,
      updateTime: now,
    };
    const key = scheduleKey(doc.tenantId, doc.id);
    await setFields(this.#d.models.schedules, { _id: key }, fields);
    const paused = (await byId(this.#d.models.schedules, key)) ?? { ...doc, ...fields };
    this.#log.info(
      { tenantId: doc.tenantId, scheduleId: doc.id, reason: fields.pauseReason },
      "schedule paused",
    );
    await this.#d
      .onPaused?.(toSchedule(paused), `schedule.${doc.id}.paused.${eventMs}`)
      .catch((err: unknown) =>
        this.#log.warn(
          { err, tenantId: doc.tenantId, scheduleId: doc.id },
          "could not tell the webhooks that a schedule was paused",
        ),
      );
    return paused;
  }

  /** Deletes the schedule; runs it already started go on. */
  async delete(p: Principal, scheduleId: string): Promise<void> {
    const doc = await this.#find(p, scheduleId);
    await retryBusy(() =>
      this.#d.models.schedules.collection.deleteOne({
        _id: scheduleKey(doc.tenantId, doc.id) as never,
      }),
    );
    // Its history goes with it. An occurrence claimed just before may still start its run (its
    // fire written after this stays, and is marked cancelled if the run never came).
    const scope = { tenantId: doc.tenantId, scheduleId: doc.id };
    await retryBusy(() => this.#d.models.fires.collection.deleteMany(scope));
    await retryBusy(() => this.#d.models.totals.collection.deleteMany(scope));
    this.#log.info({ tenantId: doc.tenantId, scheduleId: doc.id }, "schedule deleted");
  }

  /** The caller's schedule (owner, or a tenant admin), else NOT_FOUND. */
  async #find(p: Principal, scheduleId: string): Promise<ScheduleDoc> {
    const doc = await byId(this.#d.models.schedules, scheduleKey(p.tenantId, scheduleId));
    if (
      doc === null ||
      doc.tenantId !== p.tenantId ||
      (doc.userId !== p.subject && !p.roles.includes("admin"))
    ) {
      throw new NotFoundError(`schedule "${scheduleId}" not found`);
    }
    return doc;
  }

  /** What StartRun checks before a run exists: AUTO needs the categorizer; other modes plan. */
  async #validate(spec: RunSpec, caller: Planner): Promise<void> {
    if (spec.mode.case === "auto" || spec.mode.case === undefined) {
      if (!this.#d.autoAvailable) {
        throw new FailedPreconditionError(
          "AUTO runs need the categorizer, which is not configured (CATEGORIZER_ADDR); choose a mode: model, workflow or compare",
        );
      }
      return;
    }
    await planFor(spec, caller, { registry: this.#d.registry, catalog: this.#catalog });
  }

  // ------------------------------------------------------------------------------ the loop

  /** Starts the loop: a pass now (occurrences missed while down), then every tick. */
  start(): void {
    if (!this.#stopping) return;
    this.#stopping = false;
    this.#schedule(0);
  }

  /** Stops the loop and waits for the pass in progress (its claims end started or recoverable). */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#pass;
  }

  #schedule(delayMs: number): void {
    if (this.#stopping) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      let wait = this.#d.settings.tickMs;
      this.#pass = this.runPass()
        .then((untilNext) => {
          wait = Math.max(10, Math.min(wait, untilNext));
        })
        .catch((err: unknown) => this.#log.warn({ err }, "schedule pass failed"))
        .finally(() => {
          this.#pass = undefined;
          this.#schedule(wait);
        });
    }, delayMs);
    this.#timer.unref();
  }

  /**
   * One pass: fires every due schedule, then starts claimed occurrences left without a run.
   * Returns the ms until the next occurrence it knows of (to wake for it rather than a tick late).
   */
  async runPass(): Promise<number> {
    const now = Date.now();
    const horizon = now + this.#d.settings.tickMs;
    const docs = await this.#d.models.schedules
      .find({ nextFireMs: { $lte: horizon } })
      .sort({ nextFireMs: 1 })
      .limit(BATCH)
      .lean<ScheduleDoc[]>();
    const due = docs.filter((d) => d.nextFireMs <= now);
    const upcoming = docs.find((d) => d.nextFireMs > now);
    for (let i = 0; i < due.length && !this.#stopping; i += FIRE_CONCURRENCY) {
      await Promise.all(
        due
          .slice(i, i + FIRE_CONCURRENCY)
          .map((doc) =>
            this.#fireDue(doc, now).catch((err: unknown) =>
              this.#log.warn(
                { err, tenantId: doc.tenantId, scheduleId: doc.id },
                "could not fire schedule",
              ),
            ),
          ),
      );
    }
    // Orphaned claims are rare and only due after the grace period: a scan every third of it.
    const recoverEvery = Math.max(this.#d.settings.tickMs, this.#d.settings.claimGraceMs / 3);
    if (!this.#stopping && Date.now() - this.#lastRecovery >= recoverEvery) {
      this.#lastRecovery = Date.now();
      await this.#recoverFires();
    }
    if (due.length === BATCH) return 0;
    return upcoming !== undefined ? upcoming.nextFireMs - Date.now() : this.#d.settings.tickMs;
  }

  async #fireDue(doc: ScheduleDoc, now: number): Promise<void> {
    if (doc.paused === true) {
      // Paused after an #advance read it: put it back out of the due scan.
      await setFields(
        this.#d.models.schedules,
        { _id: scheduleKey(doc.tenantId, doc.id) },
        { nextFireMs: NEVER },
      );
      return;
    }
    const occurrence = dueOccurrence(doc, now);
    const key = { tenantId: doc.tenantId, scheduleId: doc.id, occurrence: new Date(occurrence) };
    const fire: ScheduleFireDoc = {
      _id: fireKey(doc.tenantId, doc.id, key.occurrence),
      ...key,
      runId: scheduledRunId(doc.tenantId, doc.id, key.occurrence),
      status: "claimed",
      error: "",
      createTime: new Date(),
    };
    if (await claim(this.#d.models.fires, fire)) {
      // Missed occurrences between the stored next time and this one are skipped by design.
      if (occurrence > doc.nextFireMs) {
        this.#log.info(
          {
            tenantId: doc.tenantId,
            scheduleId: doc.id,
            missedSince: new Date(doc.nextFireMs).toISOString(),
          },
          "firing the latest missed occurrence once",
        );
      }
      try {
        await this.#start(doc, fire);
      } finally {
        await this.#advance(doc, occurrence);
      }
      return;
    }
    const held =
      (await byId(this.#d.models.fires, fire._id!)) ??
      (await this.#d.models.fires.findOne(key).lean<ScheduleFireDoc>());
    if (held === null) return;
    if (held.status === "claimed") {
      // Its claimer is at work, or died: after the grace period, finish what it started.
      if (Date.now() - held.createTime.getTime() < this.#d.settings.claimGraceMs) return;
      await this.#start(doc, held);
    }
    await this.#advance(doc, occurrence);
  }

  /**
   * Creates the occurrence's run (unless it exists) as the schedule's owner and records the
   * fire's end. Transient failures throw and leave the fire claimed, to be retried.
   */
  async #start(doc: ScheduleDoc, fire: ScheduleFireDoc): Promise<void> {
    const log = this.#log.child({
      tenantId: doc.tenantId,
      scheduleId: doc.id,
      runId: fire.runId,
      occurrence: fire.occurrence.toISOString(),
    });
    const key = { _id: fire._id ?? fireKey(fire.tenantId, fire.scheduleId, fire.occurrence) };
    const owner: Principal = {
      subject: doc.userId,
      tenantId: doc.tenantId,
      roles: ["user"],
      kind: "user",
      ...(doc.apiKeyId !== "" ? { apiKeyId: doc.apiKeyId } : {}),
      expiresAt: new Date(Date.now() + 60_000),
    };
    const exists = await this.#d.engine.findRun(owner, fire.runId).then(
      () => true,
      (err: unknown) => {
        if (err instanceof NotFoundError) return false;
        throw err;
      },
    );
    if (!exists) {
      try {
        const token = await this.#d.tokens.forUser(
          doc.tenantId,
          doc.userId,
          doc.apiKeyId,
          `schedule:${doc.id}`,
        );
        await this.#d.engine.createRun(owner, decode(RunSpecSchema, doc.spec), {
          token,
          idempotencyKey: "",
          runId: fire.runId,
          scheduleId: doc.id,
        });
        log.info("schedule fired");
      } catch (err) {
        if (!isDuplicateKey(err)) {
          const status = toConnectError(err);
          const tooLate = Date.now() - fire.createTime.getTime() > GIVE_UP_MS;
          if (!PERMANENT.has(status.code) && !tooLate) {
            this.#fired?.inc({ result: "retry" });
            throw err;
          }
          // The owner sees the reason as the schedule's lastError; no stack for a refusal.
          log.warn(
            PERMANENT.has(status.code)
              ? { code: Code[status.code], reason: status.rawMessage }
              : { err },
            "the scheduled run could not be started",
          );
          await setFields(this.#d.models.fires, key, {
            status: "failed",
            error: status.rawMessage,
          });
          this.#fired?.inc({ result: "failed" });
          return;
        }
        // Another replica created it first (late recovery racing the original claimer).
      }
    }
    await setFields(this.#d.models.fires, key, { status: "started" });
    this.#fired?.inc({ result: "started" });
  }

  /** Records `occurrence` as fired and moves the schedule to its next occurrence after now. */
  async #advance(doc: ScheduleDoc, occurrence: number): Promise<void> {
    const key = scheduleKey(doc.tenantId, doc.id);
    const current = await byId(this.#d.models.schedules, key);
    // Deleted meanwhile, or already past this occurrence (a slower replica must not move it back).
    if (current === null || current.lastFireMs > occurrence) return;
    // From the stored schedule: it may have been given a new time or paused meanwhile.
    const next =
      current.paused === true ? NEVER : nextOccurrence(current, Math.max(Date.now(), occurrence));
    await setFields(
      this.#d.models.schedules,
      { _id: key },
      { nextFireMs: next, lastFireMs: occurrence, updateTime: new Date() },
    );
    await this.#refresh(current);
  }

  /**
   * fireCount, lastRunId and lastError, recomputed from the latest total and the fires since its
   * boundary (a repeat writes the same values): lastError is the latest fire's error when that
   * fire started no run. Then folds the fires older than the retention, if there are any.
   */
  async #refresh(doc: ScheduleDoc): Promise<void> {
    const scope = { tenantId: doc.tenantId, scheduleId: doc.id };
    const { fires } = this.#d.models;
    const latestTotal = () =>
      this.#d.models.totals.findOne(scope).sort({ boundaryMs: -1 }).lean<ScheduleFireTotalDoc>();
    let total = await latestTotal();
    let counted: [number, ScheduleFireDoc | null, ScheduleFireDoc | null];
    for (;;) {
      const since = { ...scope, occurrence: { $gte: new Date(total?.boundaryMs ?? 0) } };
      counted = await Promise.all([
        fires.countDocuments({ ...since, status: { $in: ["claimed", "started"] } }),
        fires
          .findOne({ ...since, status: "started" })
          .sort({ occurrence: -1 })
          .lean<ScheduleFireDoc>(),
        fires.findOne(scope).sort({ occurrence: -1 }).lean<ScheduleFireDoc>(),
      ]);
      // Another replica folded meanwhile: what it deleted may be missing from the count.
      const again = await latestTotal();
      if ((again?.boundaryMs ?? 0) === (total?.boundaryMs ?? 0)) break;
      total = again;
    }
    const [count, latest, newest] = counted;
    const failed = newest?.status === "failed";
    await setFields(
      this.#d.models.schedules,
      { _id: scheduleKey(doc.tenantId, doc.id) },
      {
        fireCount: (total?.count ?? 0) + count,
        lastRunId: latest?.runId ?? total?.lastRunId ?? "",
        lastError: failed ? newest.error : "",
      },
    );
    if (failed) await this.#pauseIfFailing(doc, newest);
    await this.#fold(doc, total).catch((err: unknown) =>
      this.#log.warn(
        { err, tenantId: doc.tenantId, scheduleId: doc.id },
        "folding the schedule's old fires failed; the next occurrence tries again",
      ),
    );
  }

  /**
   * Pauses the schedule when its latest SCHEDULE_PAUSE_AFTER_FAILURES fires (since it was last
   * resumed, and still kept) all started no run: it cannot start, and firing on only repeats the
   * error. Every replica that sees it pauses it the same way (same reason, same webhook event id).
   */
  async #pauseIfFailing(doc: ScheduleDoc, newest: ScheduleFireDoc): Promise<void> {
    const n = this.#d.settings.pauseAfterFailures ?? DEFAULT_PAUSE_AFTER_FAILURES;
    if (n <= 0 || doc.paused === true) return;
    const recent = await this.#d.models.fires
      .find({
        tenantId: doc.tenantId,
        scheduleId: doc.id,
        occurrence: { $gt: new Date(doc.resumedMs ?? -1) },
      })
      .sort({ occurrence: -1 })
      .limit(n)
      .lean<ScheduleFireDoc[]>();
    if (recent.length < n || recent.some((f) => f.status !== "failed")) return;
    await this.#pause(
      doc,
      `paused after ${n} occurrences in a row started no run: ${newest.error}`,
      newest.occurrence.getTime(),
    );
  }

  /**
   * Folds the schedule's fires before the current boundary (a multiple of the retention at least
   * one retention ago) into a total, then deletes them and the older totals. Racing replicas
   * compute the same total and insert it once (its key is the boundary).
   */
  async #fold(doc: ScheduleDoc, total: ScheduleFireTotalDoc | null): Promise<void> {
    const retention = this.#d.settings.fireRetentionMs ?? DEFAULT_FIRE_RETENTION_MS;
    const boundary = Math.floor((Date.now() - retention) / retention) * retention;
    const from = total?.boundaryMs ?? 0;
    const key = scheduleKey(doc.tenantId, doc.id);
    if (boundary <= from || this.#folded.get(key) === boundary) return;
    const scope = { tenantId: doc.tenantId, scheduleId: doc.id };
    const { fires, totals } = this.#d.models;
    const old = { ...scope, occurrence: { $gte: new Date(from), $lt: new Date(boundary) } };
    if ((await fires.exists(old)) !== null) {
      const [count, latest] = await Promise.all([
        fires.countDocuments({ ...old, status: { $in: ["claimed", "started"] } }),
        fires
          .findOne({ ...old, status: "started" })
          .sort({ occurrence: -1 })
          .lean<ScheduleFireDoc>(),
      ]);
      try {
        await totals.create({
          _id: totalKey(doc.tenantId, doc.id, boundary),
          ...scope,
          boundaryMs: boundary,
          count: (total?.count ?? 0) + count,
          lastRunId: latest?.runId ?? total?.lastRunId ?? "",
          createTime: new Date(),
        });
      } catch (err) {
        if (!isDuplicateKey(err)) throw err; // another replica folded the same fires
      }
      await retryBusy(() =>
        fires.collection.deleteMany({ ...scope, occurrence: { $lt: new Date(boundary) } }),
      );
      await retryBusy(() =>
        totals.collection.deleteMany({ ...scope, boundaryMs: { $lt: boundary } }),
      );
    }
    if (this.#folded.size > 100_000) this.#folded.clear();
    this.#folded.set(key, boundary);
  }

  /** Claimed fires older than the grace period whose run was never created (their claimer died). */
  async #recoverFires(): Promise<void> {
    const stale = new Date(Date.now() - this.#d.settings.claimGraceMs);
    const fires = await this.#d.models.fires
      .find({ status: "claimed", createTime: { $lt: stale } })
      .sort({ createTime: 1 })
      .limit(BATCH)
      .lean<ScheduleFireDoc[]>();
    for (const fire of fires) {
      if (this.#stopping) return;
      const key = { _id: fire._id ?? fireKey(fire.tenantId, fire.scheduleId, fire.occurrence) };
      try {
        const doc = await byId(
          this.#d.models.schedules,
          scheduleKey(fire.tenantId, fire.scheduleId),
        );
        if (doc === null) {
          await setFields(this.#d.models.fires, key, {
            status: "cancelled",
            error: "the schedule was deleted before its run started",
          });
          continue;
        }
        await this.#start(doc, fire);
        // What the claimer would have done next: move the schedule past the occurrence (unless
        // it already is), which also refreshes its counts.
        if (doc.lastFireMs < fire.occurrence.getTime()) {
          await this.#advance(doc, fire.occurrence.getTime());
        } else {
          await this.#refresh(doc);
        }
      } catch (err) {
        this.#log.warn(
          { err, tenantId: fire.tenantId, scheduleId: fire.scheduleId },
          "could not start a claimed occurrence; retrying later",
        );
      }
    }
  }
}

/** The API view of a stored schedule. */
export function toSchedule(doc: ScheduleDoc): Schedule {
  return create(ScheduleSchema, {
    id: doc.id,
    tenantId: doc.tenantId,
    userId: doc.userId,
    name: doc.name,
    spec: decode(RunSpecSchema, doc.spec),
    when:
      doc.cronExpression !== ""
        ? {
            case: "cron",
            value: { expression: doc.cronExpression, timeZone: doc.cronTimeZone },
          }
        : doc.at !== undefined
          ? { case: "at", value: timestampFromDate(doc.at) }
          : { case: undefined },
    ...(doc.nextFireMs < NEVER && doc.paused !== true
      ? { nextFireTime: timestampFromDate(new Date(doc.nextFireMs)) }
      : {}),
    ...(doc.lastFireMs >= 0 ? { lastFireTime: timestampFromDate(new Date(doc.lastFireMs)) } : {}),
    lastRunId: doc.lastRunId,
    fireCount: BigInt(doc.fireCount),
    lastError: doc.lastError ?? "",
    paused: doc.paused === true,
    pauseReason: doc.pauseReason ?? "",
    ...(doc.paused === true && doc.pauseTime !== undefined
      ? { pauseTime: timestampFromDate(doc.pauseTime) }
      : {}),
    createTime: timestampFromDate(doc.createTime),
    updateTime: timestampFromDate(doc.updateTime),
  });
}
