// The run engine: creating runs, dispatching ready steps through the JetStream work queue,
// executing them (any replica), completing steps and runs exactly once, cancellation across
// replicas, and recovery of runs in flight. See store.ts for the claim rules and events.ts for
// the per-run event sequence.
//
// Life of a step: ready (dependencies completed, under maxParallel) -> the dispatch claim
// (insert run_steps) -> a message on WORKFLOW_STEPS (msgId "<run>:<step>") -> a replica takes it
// from the shared durable pull consumer -> RUNNING (heartbeats keep the message while the model
// answers) -> the outcome claim (insert step_outcomes) -> its step.completed/failed event -> the
// next ready steps or the run's end -> ack. A replica that dies before the ack leaves the message
// to be redelivered; the redelivered step finds the outcome already claimed and only repeats
// the (idempotent) tail, so nothing is recorded twice, and model-proxy's ledger bills a repeated
// attempt once (attribution run/step/attempt).
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  durationFromMs,
  timestampDate,
  timestampFromDate,
  timestampNow,
} from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  addUsage,
  ensureStream,
  FailedPreconditionError,
  NotFoundError,
  storedBytes,
  unavailableDependency,
  type GrpcClient,
  type JetStreamClient,
  type JetStreamManager,
  type Logger,
  type NatsConnection,
  type Principal,
} from "@ensemble/kit";
import {
  AckPolicy,
  DeliverPolicy,
  type Consumer,
  type ConsumerMessages,
  type JsMsg,
} from "@nats-io/jetstream";
import {
  ArtifactSchema,
  ChatMessageSchema,
  ClassificationSchema,
  JudgePolicy,
  RankingResultSchema,
  RunErrorSchema,
  RunEventType,
  RunMode,
  RunSchema,
  RunSpecSchema,
  RunStatus,
  RunStepSchema,
  StepKind,
  StepStatus,
  UsageSchema,
  type Artifact,
  type CategorizerService,
  type ChatMessage,
  type Classification,
  type Model,
  type RankingResult,
  type RegistryService,
  type Run,
  type RunError,
  type RunSpec,
  type RunStep,
  type Usage,
} from "@ensemble/proto";
import type { Counter, Histogram } from "prom-client";
import type { ArtifactStore } from "./artifacts.js";
import { executeStep, runErrorOf, type StepDeps } from "./executor.js";
import type { FailureExplainer } from "./explainer.js";
import type { PluginInvoker } from "./plugins.js";
import { subjectToken, type EventInit, type RunEventPublisher, type RunRef } from "./events.js";
import {
  catalogCache,
  decodePlan,
  encodePlan,
  lookupModel,
  modelRefusal,
  planFor,
  planModels,
  plannedSteps,
  responseFormatOf,
  type Plan,
  type PlanDeps,
  type Planner,
} from "./plan.js";
import {
  byId,
  claim,
  decode,
  encode,
  IDEMPOTENCY_TTL_MS,
  isKeyed,
  keyKey,
  retryBusy,
  runKey,
  setFields,
  stepKey,
  type Models,
  type RunDoc,
  type RunOutcomeDoc,
  type RunStepDoc,
  type StepOutcomeDoc,
} from "./store.js";
import type { CallerTokens, TokenSource } from "./tokens.js";
import { readySteps } from "@ensemble/workflow";

export interface EngineSettings {
  stepStream: string;
  stepConsumer: string;
  subjectPrefix: string;
  ackWaitMs: number;
  maxDeliver: number;
  workerConcurrency: number;
  tenantMaxParallel: number;
  runMaxParallel: number;
  stepTimeoutMs: number;
  runTimeoutMs: number;
  recoveryIntervalMs: number;
  /** Ended runs older than this are deleted each recovery interval; 0 or unset = never. */
  runRetentionMs?: number;
}

export interface EngineMetrics {
  runsStarted: Counter<"mode">;
  runsEnded: Counter<"status">;
  stepsExecuted: Counter<"kind" | "status">;
  dispatchSeconds: Histogram;
}

export interface EngineDeps {
  models: Models;
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  publisher: RunEventPublisher;
  logger: Logger;
  registry: Pick<GrpcClient<typeof RegistryService>, "getTemplate" | "getAddon" | "getModel">;
  modelProxy: StepDeps["modelProxy"];
  /** Where image steps store their images. */
  artifacts: ArtifactStore;
  /** Plugin steps (registry lookup + Invoke); none = they fail with FAILED_PRECONDITION. */
  plugins?: PluginInvoker | undefined;
  /** Retrieve steps (VECTOR_SEARCH_ADDR); none = they fail with FAILED_PRECONDITION. */
  vectorSearch?: StepDeps["vectorSearch"];
  categorizer?: Pick<GrpcClient<typeof CategorizerService>, "classify"> | undefined;
  tokens: TokenSource;
  /** Set when there is no SERVICE_TOKEN: the starting call's token is remembered for its steps. */
  callerTokens?: CallerTokens | undefined;
  settings: EngineSettings;
  metrics?: EngineMetrics | undefined;
  /** Writes the user-facing explanation of a failed run (EXPLAINER_MODEL); none = no explanation. */
  explainer?: FailureExplainer | undefined;
}

/** Delay before the n-th redelivery of a step whose handling failed (not its model call). */
const STEP_RETRY_DELAYS_MS = [1_000, 5_000, 15_000, 30_000];

const TERMINAL = new Set([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]);
const STEP_ENDED = new Set([
  StepStatus.COMPLETED,
  StepStatus.FAILED,
  StepStatus.SKIPPED,
  StepStatus.CANCELLED,
]);
const EVENT_OUTPUT_LIMIT = 256 * 1024;

export function isTerminal(status: RunStatus): boolean {
  return TERMINAL.has(status);
}

export function newRunId(): string {
  return `run_${randomUUID().replace(/-/g, "")}`;
}

function refOf(doc: Pick<RunDoc, "tenantId" | "id" | "userId" | "sessionId">): RunRef {
  return { tenantId: doc.tenantId, runId: doc.id, userId: doc.userId, sessionId: doc.sessionId };
}

function cut(text: string): { output: string; outputTruncated: boolean } {
  if (Buffer.byteLength(text, "utf8") <= EVENT_OUTPUT_LIMIT)
    return { output: text, outputTruncated: false };
  let s = text.slice(0, EVENT_OUTPUT_LIMIT);
  while (Buffer.byteLength(s, "utf8") > EVENT_OUTPUT_LIMIT) s = s.slice(0, -1024);
  return { output: s, outputTruncated: true };
}

function usageDoc(u: Usage | undefined): RunDoc["usage"] {
  return {
    inputTokens: Number(u?.inputTokens ?? 0n),
    outputTokens: Number(u?.outputTokens ?? 0n),
    totalTokens: Number(u?.totalTokens ?? 0n),
    costUsd: u?.costUsd ?? 0,
    cachedInputTokens: Number(u?.cachedInputTokens ?? 0n),
    cacheWriteInputTokens: Number(u?.cacheWriteInputTokens ?? 0n),
    reasoningTokens: Number(u?.reasoningTokens ?? 0n),
  };
}

function usageOf(d: RunDoc["usage"] | undefined): Usage {
  return create(UsageSchema, {
    inputTokens: BigInt(d?.inputTokens ?? 0),
    outputTokens: BigInt(d?.outputTokens ?? 0),
    totalTokens: BigInt(d?.totalTokens ?? 0),
    costUsd: d?.costUsd ?? 0,
    // Absent from runs stored before these were kept.
    cachedInputTokens: BigInt(d?.cachedInputTokens ?? 0),
    cacheWriteInputTokens: BigInt(d?.cacheWriteInputTokens ?? 0),
    reasoningTokens: BigInt(d?.reasoningTokens ?? 0),
  });
}

/** What the engine keeps in memory per run it works on (the plan never changes once set). */
interface RunState {
  doc: RunDoc;
  plan: Plan;
}

/**
 * What this replica knows for certain about a run's steps: dispatch claims and outcomes are
 * inserted once and never change (but for an outcome's eventPublished flag, which may be stale
 * here: a stale false only makes the end event be published again, and the server drops that
 * copy by its message id). What is not known is read.
 */
interface Known {
  dispatched: Map<string, RunStepDoc>;
  outcomes: Map<string, StepOutcomeDoc>;
}

/** Runs kept in memory per replica (state and known steps); the oldest are dropped. */
const RUN_CACHE_SIZE = 5_000;
/** A step still running after this has its RUNNING state written (GetRun shows it). */
const RUNNING_MARK_MS = 100;

function remember<V>(map: Map<string, V>, key: string, value: V): V {
  map.set(key, value);
  if (map.size > RUN_CACHE_SIZE) {
    const first = map.keys().next();
    if (first.done !== true) map.delete(first.value);
  }
  return value;
}

/** Filters addressing a run's documents: by `_id` (see store.ts), or by fields for old runs. */
function runWhere(doc: RunDoc): Record<string, unknown> {
  return isKeyed(doc) ? { _id: doc._id } : { tenantId: doc.tenantId, id: doc.id };
}
function outcomeWhere(doc: RunDoc): Record<string, unknown> {
  return isKeyed(doc)
    ? { _id: runKey(doc.tenantId, doc.id) }
    : { tenantId: doc.tenantId, runId: doc.id };
}
function stepWhere(doc: RunDoc, stepId: string): Record<string, unknown> {
  return isKeyed(doc)
    ? { _id: stepKey(doc.tenantId, doc.id, stepId) }
    : { tenantId: doc.tenantId, runId: doc.id, stepId };
}

/** The steps `stepId` depends on, directly or transitively. */
function upstreamOf(plan: Plan, stepId: string): string[] {
  const byId = new Map(plan.template.steps.map((s) => [s.id, s]));
  const seen = new Set<string>();
  const todo = [...(byId.get(stepId)?.dependsOn ?? [])];
  for (let id = todo.pop(); id !== undefined; id = todo.pop()) {
    if (seen.has(id)) continue;
    seen.add(id);
    todo.push(...(byId.get(id)?.dependsOn ?? []));
  }
  return [...seen];
}

export class Engine {
  readonly #d: EngineDeps;
  readonly #log: Logger;
  /** runId -> step calls in flight on this replica (their controllers, and which step). */
  readonly #inflight = new Map<string, Map<AbortController, string>>();
  readonly #tenantBusy = new Map<string, number>();
  readonly #tenantWaiters = new Map<string, Array<() => void>>();
  readonly #plans = new Map<string, Plan>();
  readonly #planDeps: PlanDeps;
  readonly #states = new Map<string, RunState>();
  readonly #known = new Map<string, Known>();
  #stopping = false;
  /** Failed pulls since the last one that worked (0 = pulling fine). */
  #pullFailures = 0;
  #consumer: Consumer | undefined;
  /** The pull loop (one fetch at a time for the free workers), and its current fetch. */
  #puller: Promise<void> | undefined;
  #batch: ConsumerMessages | undefined;
  /** Wakes a pull loop that waits for a worker to finish. */
  #slotFreed: (() => void) | undefined;
  #recoveryTimer: NodeJS.Timeout | undefined;
  #cancelSub: { unsubscribe(): void } | undefined;
  readonly #active = new Set<Promise<void>>();

  constructor(deps: EngineDeps) {
    this.#d = deps;
    this.#log = deps.logger.child({ component: "engine" });
    this.#planDeps = { registry: deps.registry, catalog: catalogCache() };
  }

  get #s(): EngineSettings {
    return this.#d.settings;
  }

  /**
   * The tenant's catalog entry for a model name (id or alias), from the same per-tenant cache as
   * the plans' model check; undefined when the catalog has none. Rejects when the registry does
   * not answer.
   */
  findModel(caller: Planner, name: string): Promise<Model | undefined> {
    return lookupModel(this.#planDeps, caller, name);
  }

  /**
   * Refuses a model named at `where` (a session's `settings.model`, stored when it was saved
   * earlier) the way StartRun refuses one in its spec, with the same catalog answers; advisory
   * like that check (when the registry does not answer, nothing is refused).
   */
  async checkModel(caller: Planner, name: string, where: string, stored = false): Promise<void> {
    let model: Model | undefined;
    try {
      model = await this.findModel(caller, name);
    } catch {
      return;
    }
    const refusal = modelRefusal(name, model, where, stored);
    if (refusal !== undefined) throw refusal;
  }

  stepSubject(tenantId: string, runId: string, stepId: string): string {
    return `${this.#s.subjectPrefix}.steps.${subjectToken(tenantId)}.${subjectToken(runId)}.${stepId}`;
  }

  cancelSubject(tenantId: string, runId: string): string {
    return `${this.#s.subjectPrefix}.cancel.${subjectToken(tenantId)}.${subjectToken(runId)}`;
  }

  // ------------------------------------------------------------------------------ lifecycle

  /** Streams, the shared consumer, the cancellation listener, workers and the recovery timer. */
  async start(): Promise<void> {
    await ensureStream(this.#d.jsm, {
      name: this.#s.stepStream,
      subjects: [`${this.#s.subjectPrefix}.steps.>`],
      retention: "workqueue",
      duplicate_window: 2 * 60 * 1_000_000_000,
    });
    // No consumer-level backoff: JetStream then uses backoff[n] instead of ack_wait for the n-th
    // redelivery, so a step running longer than the first entry was delivered twice. The delay
    // after a failed handling is given on the nak itself (STEP_RETRY_DELAYS_MS).
    const consumerConfig = {
      durable_name: this.#s.stepConsumer,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: this.#s.ackWaitMs * 1_000_000,
      max_deliver: this.#s.maxDeliver,
      max_ack_pending: 100_000,
      filter_subject: `${this.#s.subjectPrefix}.steps.>`,
    };
    try {
      await this.#d.jsm.consumers.add(this.#s.stepStream, consumerConfig);
    } catch {
      await this.#d.jsm.consumers.update(this.#s.stepStream, this.#s.stepConsumer, consumerConfig);
    }
    this.#consumer = await this.#d.js.consumers.get(this.#s.stepStream, this.#s.stepConsumer);

    const sub = this.#d.nc.subscribe(`${this.#s.subjectPrefix}.cancel.>`, {
      callback: (err, msg) => {
        if (err !== null) return;
        const runId = msg.string();
        this.#abortLocal(runId);
      },
    });
    this.#cancelSub = sub;

    this.#puller = this.#pullLoop();
    this.#recoveryTimer = setInterval(() => {
      void this.recover().catch((err: unknown) => this.#log.warn({ err }, "recovery pass failed"));
      void this.deleteExpired().catch((err: unknown) =>
        this.#log.warn({ err }, "could not delete expired runs"),
      );
    }, this.#s.recoveryIntervalMs);
    this.#recoveryTimer.unref();
    void this.recover().catch((err: unknown) => this.#log.warn({ err }, "recovery pass failed"));
  }

  /** Stops taking steps and waits for the ones in flight (their messages are acked or redelivered). */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#recoveryTimer !== undefined) clearInterval(this.#recoveryTimer);
    this.#cancelSub?.unsubscribe();
    await this.#batch?.close().catch(() => undefined);
    this.#slotFreed?.();
    await this.#puller;
    await Promise.allSettled([...this.#active]);
  }

  /**
   * Takes steps for the replica's free workers (WORKER_CONCURRENCY): one pull at a time for as
   * many messages as there are free workers, each handed to a worker as it arrives, so no step
   * waits in this process for a worker while its ack clock runs. An idle replica keeps one pull
   * open (renewed every 2 s) rather than one per worker: 64 workers each renewing their own
   * pull cost ~4 % of a core and ~1.5 % of nats-server's doing nothing.
   */
  async #pullLoop(): Promise<void> {
    while (!this.#stopping) {
      const free = this.#s.workerConcurrency - this.#active.size;
      if (free <= 0) {
        await new Promise<void>((resolve) => (this.#slotFreed = resolve));
        this.#slotFreed = undefined;
        continue;
      }
      try {
        this.#batch = await this.#consumer!.fetch({ max_messages: free, expires: 2_000 });
        for await (const msg of this.#batch) this.#take(msg);
      } catch (err) {
        if (this.#stopping) return;
        // An outage is logged once, not every half second.
        if (this.#pullFailures++ === 0) {
          this.#log.warn({ err }, "step consumer pull failed; retrying every 0.5 s");
        }
        await new Promise((r) => setTimeout(r, 500));
        continue;
      } finally {
        this.#batch = undefined;
      }
      if (this.#pullFailures > 0) {
        this.#log.info({ failedPulls: this.#pullFailures }, "step consumer pulls again");
        this.#pullFailures = 0;
      }
    }
  }

  /** Hands a step to a worker (a slot of WORKER_CONCURRENCY until it is acked or given back). */
  #take(msg: JsMsg): void {
    const work: Promise<void> = this.#handle(msg)
      .catch((err: unknown) => this.#log.error({ err }, "step handling failed unexpectedly"))
      .finally(() => {
        this.#active.delete(work);
        this.#slotFreed?.();
      });
    this.#active.add(work);
  }

  #abortLocal(runId: string): void {
    const calls = this.#inflight.get(runId);
    if (calls === undefined) return;
    for (const c of calls.keys()) c.abort();
  }

  /** Whether this replica is executing the step (between taking its message and its tail). */
  #runningHere(runId: string, stepId: string): boolean {
    for (const id of this.#inflight.get(runId)?.values() ?? []) if (id === stepId) return true;
    return false;
  }

  // ------------------------------------------------------------------------------ runs

  /** The run document by its `_id`, else (written before keyed ids) by its fields. */
  async #runDoc(tenantId: string, runId: string): Promise<RunDoc | null> {
    return (
      (await byId(this.#d.models.runs, runKey(tenantId, runId))) ??
      (await this.#d.models.runs.findOne({ tenantId, id: runId }).lean<RunDoc>())
    );
  }

  /** The run's immutable part (who, spec, deadline, plan), cached once planned. */
  async #runState(tenantId: string, runId: string): Promise<RunState | undefined> {
    const cached = this.#states.get(runId);
    if (cached !== undefined && cached.doc.tenantId === tenantId) return cached;
    const doc = await this.#runDoc(tenantId, runId);
    if (doc === null) return undefined;
    let plan = this.#plans.get(runId);
    if (plan === undefined && doc.plan !== undefined && doc.planExtras !== undefined) {
      plan = decodePlan(storedBytes(doc.plan), doc.planExtras);
      this.#plans.set(runId, plan);
      if (this.#plans.size > 5_000) {
        const first = this.#plans.keys().next();
        if (first.done !== true) this.#plans.delete(first.value);
      }
    }
    if (plan === undefined) return undefined;
    return remember(this.#states, runId, { doc, plan });
  }

  #knownOf(runId: string): Known {
    return (
      this.#known.get(runId) ??
      remember(this.#known, runId, { dispatched: new Map(), outcomes: new Map() })
    );
  }

  #forgetRun(runId: string): void {
    this.#states.delete(runId);
    this.#known.delete(runId);
    this.#plans.delete(runId);
  }

  /** The caller's run (owner, or a tenant admin), else NOT_FOUND. */
  async findRun(p: Principal, runId: string): Promise<RunDoc> {
    const doc = await this.#runDoc(p.tenantId, runId);
    if (doc === null || (doc.userId !== p.subject && !p.roles.includes("admin"))) {
      throw new NotFoundError(`run "${runId}" not found`);
    }
    return doc;
  }

  /** A file of a run the caller may see (GetArtifact); NOT_FOUND otherwise. */
  async artifact(p: Principal, runId: string, artifactId: string) {
    await this.findRun(p, runId);
    const found = await this.#d.artifacts.get(p.tenantId, runId, artifactId);
    if (found === undefined) {
      throw new NotFoundError(`artifact "${artifactId}" of run "${runId}" not found`);
    }
    return found;
  }

  /**
   * Deletes an ended run the caller may see: its stored events first (a WatchRun then finds
   * nothing to replay), its artifacts, its steps' claims and outcomes, its outcome, then the
   * record itself, so an interrupted delete can simply be asked again. The ledger keeps the
   * run's usage: spend is not undone.
   */
  async deleteRun(p: Principal, runId: string): Promise<void> {
    const doc = await this.findRun(p, runId);
    if (!isTerminal(doc.status)) {
      throw new FailedPreconditionError(
        `run "${runId}" is ${RunStatus[doc.status]?.toLowerCase() ?? "not finished"}; cancel it before deleting it`,
      );
    }
    await this.#delete(doc);
  }

  /**
   * Deletes ended runs that ended longer than RUN_RETENTION_MS ago, up to `limit` per pass (every
   * replica sweeps; deleting is idempotent, so two replicas on one run do no harm). The filter is
   * not by `_id`: FerretDB scans the collection for it, which is why it runs per recovery
   * interval and not more often.
   */
  async deleteExpired(limit = 100): Promise<number> {
    const retention = this.#s.runRetentionMs ?? 0;
    if (retention <= 0) return 0;
    const expired = await this.#d.models.runs
      .find({
        status: { $in: [...TERMINAL] },
        endTime: { $lt: new Date(Date.now() - retention) },
      })
      .limit(limit)
      .lean<RunDoc[]>();
    for (const doc of expired) await this.#delete(doc);
    if (expired.length > 0) this.#log.info({ deleted: expired.length }, "expired runs deleted");
    return expired.length;
  }

  async #delete(doc: RunDoc): Promise<void> {
    const runId = doc.id;
    const run = await this.toRun(doc, true);
    await this.#d.publisher.purge(refOf(doc));
    await this.#d.artifacts.delete(run.steps.flatMap((s) => s.artifacts.map((a) => a.id)));
    const m = this.#d.models;
    for (const s of run.steps) {
      await retryBusy(() => m.runSteps.collection.deleteOne(stepWhere(doc, s.stepId)));
      await retryBusy(() => m.stepOutcomes.collection.deleteOne(stepWhere(doc, s.stepId)));
    }
    await retryBusy(() => m.runOutcomes.collection.deleteOne(outcomeWhere(doc)));
    await retryBusy(() => m.runs.collection.deleteOne(runWhere(doc)));
    this.#forgetRun(runId);
    this.#d.publisher.forget(runId);
  }

  /**
   * Creates a run (or returns the caller's run with the same idempotency key), plans it,
   * publishes `created` (and `classified`) and dispatches its first steps.
   */
  async createRun(
    p: Principal,
    spec: RunSpec,
    opts: {
      token: string;
      idempotencyKey: string;
      runId?: string;
      scheduleId?: string;
      /** A session's reply: its session and the conversation before `spec.input` (sessions.ts). */
      sessionId?: string;
      context?: ChatMessage[];
    },
  ): Promise<{ doc: RunDoc; existing: boolean }> {
    const keyDoc = { tenantId: p.tenantId, userId: p.subject, key: opts.idempotencyKey };
    if (opts.idempotencyKey !== "") {
      const prior = await this.#priorRun(p, opts.idempotencyKey);
      if (prior !== undefined) return { doc: prior, existing: true };
    }
    const mode = modeOf(spec);
    if (mode === RunMode.AUTO && this.#d.categorizer === undefined) {
      throw new FailedPreconditionError(
        "AUTO runs need the categorizer, which is not configured (CATEGORIZER_ADDR); choose a mode: model, workflow or compare",
      );
    }
    // Plan first: a bad spec fails the call and never becomes a run.
    const plan =
      mode === RunMode.AUTO
        ? undefined
        : await planFor(spec, { token: opts.token, tenantId: p.tenantId }, this.#planDeps);
    const runId = opts.runId ?? newRunId();
    if (opts.idempotencyKey !== "") {
      const won = await claim(this.#d.models.runKeys, {
        _id: keyKey(p.tenantId, p.subject, opts.idempotencyKey),
        ...keyDoc,
        runId,
        createTime: new Date(),
      });
      if (!won) {
        const prior = await this.#priorRun(p, opts.idempotencyKey);
        if (prior !== undefined) return { doc: prior, existing: true };
      }
    }
    this.#d.callerTokens?.remember(p.tenantId, p.subject, p.apiKeyId ?? "", opts.token);
    const now = new Date();
    const timeoutMs =
      spec.timeout !== undefined
        ? Number(spec.timeout.seconds) * 1000 + spec.timeout.nanos / 1e6
        : this.#s.runTimeoutMs;
    const doc: RunDoc = {
      _id: runKey(p.tenantId, runId),
      tenantId: p.tenantId,
      id: runId,
      userId: p.subject,
      sessionId: opts.sessionId ?? "",
      apiKeyId: p.apiKeyId ?? "",
      scheduleId: opts.scheduleId ?? "",
      mode,
      status: plan === undefined ? RunStatus.PENDING : RunStatus.RUNNING,
      spec: encode(RunSpecSchema, spec),
      ...(opts.context !== undefined && opts.context.length > 0
        ? { context: opts.context.map((m) => encode(ChatMessageSchema, m)) }
        : {}),
      ...(plan !== undefined ? encodePlan(plan) : {}),
      templateId:
        plan?.template.id !== undefined && spec.mode.case === "workflow" ? plan.template.id : "",
      templateVersion: spec.mode.case === "workflow" ? (plan?.template.version ?? 0) : 0,
      outputStepId: plan?.template.outputStep ?? "",
      models: plan !== undefined ? planModels(plan.template) : [],
      metaPairs: Object.entries(spec.metadata).map(([k, v]) => `${k}\u0000${v}`),
      output: "",
      usage: usageDoc(undefined),
      latencyMs: 0,
      cancelReason: "",
      deadline: new Date(now.getTime() + timeoutMs),
      createTime: now,
      ...(plan !== undefined ? { startTime: now } : {}),
      updateTime: now,
    };
    await retryBusy(() =>
      this.#d.models.runs.collection.insertOne({ ...doc } as Record<string, unknown>),
    );
    if (plan !== undefined) this.#plans.set(runId, plan);
    this.#d.metrics?.runsStarted.inc({ mode: RunMode[mode] ?? "UNKNOWN" });
    const ref = refOf(doc);
    try {
      await this.#emit(ref, {
        type: RunEventType.CREATED,
        payload: {
          case: "created",
          value: {
            inputPreview: spec.input.slice(0, 1000),
            templateId: doc.templateId,
            plan: plan !== undefined ? plannedSteps(plan.template) : [],
            scheduleId: doc.scheduleId,
            metadata: spec.metadata,
          },
        },
      });
    } catch (err) {
      // Not announced, so not accepted: the caller is told it failed (UNAVAILABLE when NATS
      // does not answer) and may retry, so recovery must not run this one behind its back.
      await this.#abandon(doc, opts.idempotencyKey).catch((again: unknown) =>
        this.#log.warn(
          { err: again, runId },
          "could not remove a run whose start failed; recovery will run it",
        ),
      );
      throw err;
    }
    if (plan === undefined) {
      await this.#classifyAndPlan(doc, spec, opts.token);
      return { doc: (await this.#runDoc(p.tenantId, runId)) ?? doc, existing: false };
    }
    // A run just inserted has no step documents anywhere yet: nothing to read.
    const state = remember(this.#states, runId, { doc, plan });
    this.#knownOf(runId);
    try {
      await this.#dispatchReady(state);
    } catch (err) {
      if (unavailableDependency(err) === undefined) throw err;
      // Stored and announced: the run is accepted. Recovery queues its ready steps (a claim
      // without its message included) once NATS or MongoDB answer again.
      this.#log.warn({ err, runId }, "could not queue a new run's first steps; recovery will");
    }
    return { doc, existing: false };
  }

  /** Removes a run that was stored but never announced (and its idempotency key's claim). */
  async #abandon(doc: RunDoc, idempotencyKey: string): Promise<void> {
    this.#forgetRun(doc.id);
    this.#d.publisher.forget(doc.id);
    await retryBusy(() => this.#d.models.runs.collection.deleteOne({ _id: doc._id as never }));
    if (idempotencyKey !== "") {
      const _id = keyKey(doc.tenantId, doc.userId, idempotencyKey);
      await retryBusy(() => this.#d.models.runKeys.collection.deleteOne({ _id: _id as never }));
    }
  }

  async #priorRun(p: Principal, key: string): Promise<RunDoc | undefined> {
    const k =
      (await byId(this.#d.models.runKeys, keyKey(p.tenantId, p.subject, key))) ??
      (await this.#d.models.runKeys
        .findOne({ tenantId: p.tenantId, userId: p.subject, key })
        .lean());
    if (k === null) return undefined;
    if (k.createTime.getTime() < Date.now() - IDEMPOTENCY_TTL_MS) {
      await this.#d.models.runKeys.deleteOne({ tenantId: p.tenantId, userId: p.subject, key });
      return undefined;
    }
    return (await this.#runDoc(p.tenantId, k.runId)) ?? undefined;
  }

  /** AUTO: ask the categorizer, publish `classified`, store the plan, start. Failures end the run. */
  async #classifyAndPlan(doc: RunDoc, spec: RunSpec, token: string): Promise<void> {
    const ref = refOf(doc);
    let classification: Classification | undefined;
    let plan: Plan;
    try {
      const auto = spec.mode.case === "auto" ? spec.mode.value : undefined;
      const res = await this.#d.categorizer!.classify(
        {
          text: spec.input,
          attachmentMimeTypes: spec.attachments.flatMap((a) =>
            a.part.case === "image" ? [a.part.value.mimeType || "image/png"] : [],
          ),
          judge: auto?.judge ?? JudgePolicy.UNSPECIFIED,
          ...(auto?.allowedKinds !== undefined ? { allowedKinds: auto.allowedKinds } : {}),
        },
        { headers: { authorization: `Bearer ${token}` }, timeoutMs: 15_000 },
      );
      if (res.classification === undefined)
        throw new ConnectError("no classification", Code.Internal);
      classification = res.classification;
      plan = await planFor(spec, { token, tenantId: doc.tenantId }, this.#planDeps, classification);
    } catch (err) {
      // A route that cannot run (a video model) is explained by where the request was sent.
      if (classification !== undefined) {
        await setFields(this.#d.models.runs, runWhere(doc), {
          classification: encode(ClassificationSchema, classification),
        }).catch((again: unknown) =>
          this.#log.warn({ err: again, runId: doc.id }, "could not store the classification"),
        );
      }
      const error = runErrorOf(err, "");
      if (error.code === "INTERNAL") {
        this.#log.error({ err, runId: doc.id }, "an AUTO run could not be planned");
      }
      await this.#finishRun(ref, RunStatus.FAILED, { error });
      return;
    }
    const planned = encodePlan(plan);
    const target = classification.route?.target;
    const now = new Date();
    await setFields(this.#d.models.runs, runWhere(doc), {
      ...planned,
      classification: encode(ClassificationSchema, classification),
      templateId: target?.case === "templateId" ? target.value : "",
      templateVersion: target?.case === "templateId" ? plan.template.version : 0,
      outputStepId: plan.template.outputStep,
      models: planModels(plan.template),
      status: RunStatus.RUNNING,
      startTime: now,
      updateTime: now,
    });
    this.#plans.set(doc.id, plan);
    this.#states.delete(doc.id);
    await this.#emit(ref, {
      type: RunEventType.CLASSIFIED,
      payload: { case: "classified", value: { classification, plan: plannedSteps(plan.template) } },
    });
    const fresh = await this.#runState(doc.tenantId, doc.id);
    if (fresh !== undefined) await this.#dispatchReady(fresh);
  }

  #emit(ref: RunRef, init: EventInit): Promise<unknown> {
    return this.#d.publisher.publish(ref, init);
  }

  // ------------------------------------------------------------------------------ dispatch

  /**
   * The run's dispatch claims and step outcomes, as far as `read` asks:
   * - "all" (GetRun, recovery, a run's end other than completed): everything is read.
   * - "known": what this replica does not know yet, and of that only outcomes that can exist:
   *   a step whose dependencies are not all completed was never dispatched, so rounds of reads
   *   follow the graph from what is known.
   * - "dispatch" (#dispatchReady): as "known", but only outcomes that no one else will act on.
   *   Not read: a step running here (its outcome is claimed here first, and its tail then takes
   *   the next steps with this replica's knowledge), and, when the run's cap on parallel steps
   *   cannot bind, a step this replica has not seen dispatched (#dispatchReady claims it, and
   *   only a lost claim says it may have an outcome, read then). Whoever stores a step's outcome
   *   reads the others' afterwards, so of two steps ending at once on two replicas at least one
   *   sees both.
   */
  async #progress(
    state: RunState,
    read: "all" | "known" | "dispatch",
  ): Promise<{
    dispatched: RunStepDoc[];
    outcomes: StepOutcomeDoc[];
  }> {
    const { doc, plan } = state;
    const known = this.#knownOf(doc.id);
    const steps = plan.template.steps;
    if (!isKeyed(doc)) {
      const [dispatched, outcomes] = await Promise.all([
        this.#d.models.runSteps
          .find({ tenantId: doc.tenantId, runId: doc.id })
          .lean<RunStepDoc[]>(),
        this.#d.models.stepOutcomes
          .find({ tenantId: doc.tenantId, runId: doc.id })
          .lean<StepOutcomeDoc[]>(),
      ]);
      for (const d of dispatched) known.dispatched.set(d.stepId, d);
      for (const o of outcomes) known.outcomes.set(o.stepId, o);
      return { dispatched, outcomes };
    }
    const key = (id: string) => stepKey(doc.tenantId, doc.id, id);
    if (read === "all") {
      const [dispatched, outcomes] = await Promise.all([
        Promise.all(steps.map((s) => byId(this.#d.models.runSteps, key(s.id)))),
        Promise.all(steps.map((s) => byId(this.#d.models.stepOutcomes, key(s.id)))),
      ]);
      for (const d of dispatched) if (d !== null) known.dispatched.set(d.stepId, d);
      for (const o of outcomes) if (o !== null) known.outcomes.set(o.stepId, o);
      return {
        dispatched: dispatched.filter((d) => d !== null),
        outcomes: outcomes.filter((o) => o !== null),
      };
    }
    // Dispatch claims matter only when the run's cap on parallel steps can bind (to count the
    // steps in flight); otherwise claiming a step someone else claimed just loses the claim.
    const maxParallel =
      plan.template.maxParallel > 0 ? plan.template.maxParallel : this.#s.runMaxParallel;
    const capBinds = steps.length > maxParallel;
    const completed = (id: string) => known.outcomes.get(id)?.status === StepStatus.COMPLETED;
    const asked = new Set<string>();
    for (;;) {
      const ask = steps.filter(
        (s) =>
          !known.outcomes.has(s.id) &&
          !asked.has(s.id) &&
          s.dependsOn.every(completed) &&
          (read === "known" ||
            ((capBinds || known.dispatched.has(s.id)) && !this.#runningHere(doc.id, s.id))),
      );
      if (ask.length === 0) break;
      const found = await Promise.all(
        ask.map((s) => {
          asked.add(s.id);
          return byId(this.#d.models.stepOutcomes, key(s.id));
        }),
      );
      for (const o of found) if (o !== null) known.outcomes.set(o.stepId, o);
    }
    if (capBinds) {
      const ask = steps.filter(
        (s) =>
          !known.dispatched.has(s.id) && !known.outcomes.has(s.id) && s.dependsOn.every(completed),
      );
      const found = await Promise.all(ask.map((s) => byId(this.#d.models.runSteps, key(s.id))));
      for (const d of found) if (d !== null) known.dispatched.set(d.stepId, d);
    }
    return { dispatched: [...known.dispatched.values()], outcomes: [...known.outcomes.values()] };
  }

  /**
   * Dispatches every ready step (claims first, so each is queued once), or ends the run.
   * Returns true when the run ended.
   */
  async #dispatchReady(state: RunState, fresh = false): Promise<boolean> {
    const { doc, plan } = state;
    const { dispatched, outcomes } = await this.#progress(state, fresh ? "all" : "dispatch");
    const completed = new Set(
      outcomes.filter((o) => o.status === StepStatus.COMPLETED).map((o) => o.stepId),
    );
    const ended = new Set(
      outcomes.filter((o) => o.status !== StepStatus.COMPLETED).map((o) => o.stepId),
    );
    const failed = outcomes.find((o) => o.status === StepStatus.FAILED);
    if (failed !== undefined) {
      const record = decode(RunStepSchema, failed.record);
      await this.#finishRun(refOf(doc), RunStatus.FAILED, {
        ...(record.error !== undefined ? { error: record.error } : {}),
      });
      return true;
    }
    if (plan.template.steps.every((s) => completed.has(s.id))) {
      await this.#finishRun(refOf(doc), RunStatus.COMPLETED, {});
      return true;
    }
    const maxParallel =
      plan.template.maxParallel > 0 ? plan.template.maxParallel : this.#s.runMaxParallel;
    const ready = readySteps(
      plan.template,
      { dispatched: new Set(dispatched.map((d) => d.stepId)), completed, ended },
      maxParallel,
    );
    const known = this.#knownOf(doc.id);
    const lost: string[] = [];
    await Promise.all(
      ready.map(async (stepId) => {
        // Two steps ending here at once both find their common next step ready: one claims it.
        if (known.dispatched.has(stepId)) return;
        const queuedAt = new Date();
        const claimDoc: RunStepDoc = {
          tenantId: doc.tenantId,
          runId: doc.id,
          stepId,
          status: StepStatus.QUEUED,
          attempts: 0,
          model: "",
          fallbackUsed: false,
          queuedAt,
        };
        // Dispatched from here on, whoever wins the claim (a lost claim's entry is ours, not the
        // winner's; only its step id is used). Unknown again if the claim could not be written.
        known.dispatched.set(stepId, claimDoc);
        let won: boolean;
        try {
          won = await claim(this.#d.models.runSteps, {
            _id: stepKey(doc.tenantId, doc.id, stepId),
            ...claimDoc,
          });
        } catch (err) {
          known.dispatched.delete(stepId);
          throw err;
        }
        if (won) await this.#enqueue(doc.tenantId, doc.id, stepId, queuedAt);
        else lost.push(stepId);
      }),
    );
    // Dispatched before (elsewhere, or here before a restart): it may have ended, and what
    // follows it is then for whoever learns that first.
    const found = await Promise.all(lost.map((stepId) => this.#outcomeOf(doc, stepId)));
    if (found.some((o) => o !== null)) return this.#dispatchReady(state);
    return false;
  }

  async #enqueue(tenantId: string, runId: string, stepId: string, queuedAt: Date): Promise<void> {
    await this.#d.js.publish(
      this.stepSubject(tenantId, runId, stepId),
      JSON.stringify({ tenantId, runId, stepId, queuedAt: queuedAt.getTime() }),
      { msgID: `${runId}:${stepId}` },
    );
  }

  // ------------------------------------------------------------------------------ steps

  async #handle(msg: JsMsg): Promise<void> {
    let body: { tenantId: string; runId: string; stepId: string; queuedAt: number };
    try {
      body = JSON.parse(msg.string()) as typeof body;
    } catch {
      msg.term("not a step message");
      return;
    }
    const log = this.#log.child({
      tenantId: body.tenantId,
      runId: body.runId,
      stepId: body.stepId,
    });
    const lastDelivery = msg.info.deliveryCount >= this.#s.maxDeliver;
    try {
      const done = await this.#runStep(msg, body, log);
      if (done) msg.ack();
    } catch (err) {
      if (lastDelivery) {
        log.error({ err }, "step failed on its last delivery; failing it");
        try {
          await this.#failStepHard(body, err);
          msg.ack();
        } catch (again) {
          log.error({ err: again }, "could not record the step failure");
          msg.term();
        }
      } else {
        log.warn(
          { err, delivery: msg.info.deliveryCount },
          "step handling failed; it will be redelivered",
        );
        msg.nak(
          STEP_RETRY_DELAYS_MS[Math.min(msg.info.deliveryCount, STEP_RETRY_DELAYS_MS.length) - 1],
        );
      }
    }
  }

  async #failStepHard(
    body: { tenantId: string; runId: string; stepId: string },
    err: unknown,
  ): Promise<void> {
    const state = await this.#runState(body.tenantId, body.runId);
    if (state === undefined) return;
    const error = create(RunErrorSchema, {
      code: "INTERNAL",
      message: `the step could not be executed after ${this.#s.maxDeliver} deliveries`,
      stepId: body.stepId,
      retryable: true,
    });
    this.#log.debug({ err }, "hard step failure cause");
    const record = create(RunStepSchema, { stepId: body.stepId, status: StepStatus.FAILED, error });
    await this.#claimOutcome(body.tenantId, body.runId, record, 0);
    await this.#afterStep(state, body.stepId);
  }

  /** Returns true when the message may be acked; false when it was nak'ed for later. */
  async #runStep(
    msg: JsMsg,
    body: { tenantId: string; runId: string; stepId: string; queuedAt: number },
    log: Logger,
  ): Promise<boolean> {
    const takenAt = Date.now();
    const state = await this.#runState(body.tenantId, body.runId);
    if (state === undefined) {
      log.warn("step of an unknown or unplanned run; dropped");
      return true;
    }
    const step = state.plan.template.steps.find((s) => s.id === body.stepId);
    if (step === undefined) {
      log.warn("unknown step; dropped");
      return true;
    }
    // On its first delivery a step has no outcome (it is dispatched once; a republished copy
    // that races a completion only repeats the work, and its outcome claim then loses), so only
    // a redelivered step looks for one.
    const known = this.#knownOf(body.runId);
    const [runOutcome, outcome] = await Promise.all([
      this.#runOutcomeOf(state.doc),
      known.outcomes.has(step.id) || msg.info.deliveryCount > 1
        ? this.#outcomeOf(state.doc, step.id)
        : null,
    ]);
    if (outcome !== null) {
      // Redelivered after the outcome was claimed: only the tail (events, next steps) is repeated.
      await this.#afterStep(state, body.stepId);
      return true;
    }
    if (runOutcome !== null) {
      if (!runOutcome.finalized) await this.#finalize(refOf(state.doc), runOutcome);
      return true;
    }
    if (state.doc.deadline.getTime() <= Date.now()) {
      await this.#finishRun(refOf(state.doc), RunStatus.FAILED, {
        error: create(RunErrorSchema, {
          code: "DEADLINE_EXCEEDED",
          message: "the run's deadline passed before this step could start",
          stepId: step.id,
        }),
      });
      return true;
    }
    if (!(await this.#acquireTenant(body.tenantId, msg))) return false;
    const controller = new AbortController();
    let set = this.#inflight.get(body.runId);
    if (set === undefined) {
      set = new Map();
      this.#inflight.set(body.runId, set);
    }
    set.set(controller, step.id);
    const heartbeat = setInterval(() => msg.working(), Math.max(1_000, this.#s.ackWaitMs / 3));
    this.#d.metrics?.dispatchSeconds.observe(Math.max(0, takenAt - body.queuedAt) / 1000);
    // The RUNNING state is written only for a step that takes a while: a fast step goes from
    // QUEUED to its outcome without a write nobody would have seen.
    const startTime = new Date(takenAt);
    const runningMark = setTimeout(() => {
      void setFields(this.#d.models.runSteps, stepWhere(state.doc, step.id), {
        status: StepStatus.RUNNING,
        startTime,
      }).catch((err: unknown) => log.warn({ err }, "could not mark the step running"));
    }, RUNNING_MARK_MS);
    try {
      const upstream = upstreamOf(state.plan, step.id);
      if (step.kind === StepKind.RANK && !upstream.includes(step.rankStep))
        upstream.push(step.rankStep);
      const records = await this.#completedRecords(state, upstream);
      const outputs: Record<string, string> = {};
      const vars: Record<string, string> = { ...state.plan.extras.vars };
      for (const s of state.plan.template.steps) {
        const r = records.get(s.id);
        if (r === undefined) continue;
        outputs[s.id] = r.output;
        if (s.outputVar !== "") vars[s.outputVar] = r.output;
      }
      const spec = decode(RunSpecSchema, state.doc.spec);
      const ref = refOf(state.doc);
      const record = await executeStep(
        {
          ref,
          step,
          scope: { input: spec.input, vars, outputs },
          runSystem: spec.system,
          runAddons: spec.addons,
          runMetadata: spec.metadata,
          addonTexts: state.plan.extras.addonTexts,
          attachments: spec.attachments,
          history: (state.doc.context ?? []).map((m) => decode(ChatMessageSchema, m)),
          responseFormat: responseFormatOf(state.plan.extras),
          compared: step.kind === StepKind.RANK ? records.get(step.rankStep) : undefined,
          rankBy: state.plan.extras.rankBy,
          timeoutMs: step.timeoutMs > 0 ? step.timeoutMs : this.#s.stepTimeoutMs,
          deadline: state.doc.deadline.getTime(),
          retries: step.retries,
          signal: controller.signal,
          token: () =>
            this.#d.tokens.forUser(
              state.doc.tenantId,
              state.doc.userId,
              state.doc.apiKeyId,
              `run:${state.doc.id}`,
            ),
          emit: (init) => this.#emit(ref, init),
          delta: (init) => this.#d.publisher.publishDelta(ref, init),
          internalError: (err) => log.error({ err }, "step failed with an internal error"),
        },
        {
          modelProxy: this.#d.modelProxy,
          artifacts: this.#d.artifacts,
          plugins: this.#d.plugins,
          vectorSearch: this.#d.vectorSearch,
        },
      );
      const queuedAt = body.queuedAt;
      record.queueTime = durationFromMs(Math.max(0, takenAt - queuedAt));
      this.#d.metrics?.stepsExecuted.inc({
        kind: StepKind[step.kind] ?? "UNKNOWN",
        status: StepStatus[record.status] ?? "UNKNOWN",
      });
      clearTimeout(runningMark);
      await this.#claimOutcome(body.tenantId, body.runId, record, record.attempts);
      await this.#afterStep(state, body.stepId);
      return true;
    } finally {
      clearTimeout(runningMark);
      clearInterval(heartbeat);
      set.delete(controller);
      if (set.size === 0) this.#inflight.delete(body.runId);
      this.#releaseTenant(body.tenantId);
    }
  }

  /**
   * A slot under the tenant's cap on this replica. Over it, the step waits here for a slot (its
   * message kept alive) while fewer than the cap of the tenant's steps wait; beyond that it is
   * nak'ed for another replica or a moment later. Every nak costs a delivery (STEP_MAX_DELIVER),
   * and a message out of deliveries would never come back, so one near its last waits instead.
   */
  async #acquireTenant(tenantId: string, msg: JsMsg): Promise<boolean> {
    const busy = this.#tenantBusy.get(tenantId) ?? 0;
    if (busy < this.#s.tenantMaxParallel) {
      this.#tenantBusy.set(tenantId, busy + 1);
      return true;
    }
    let waiters = this.#tenantWaiters.get(tenantId);
    if (
      (waiters?.length ?? 0) >= this.#s.tenantMaxParallel &&
      msg.info.deliveryCount < this.#s.maxDeliver - 1
    ) {
      msg.nak(250);
      return false;
    }
    if (waiters === undefined) {
      waiters = [];
      this.#tenantWaiters.set(tenantId, waiters);
    }
    const queue = waiters;
    const heartbeat = setInterval(() => msg.working(), Math.max(1_000, this.#s.ackWaitMs / 3));
    try {
      await new Promise<void>((resolve) => queue.push(resolve));
    } finally {
      clearInterval(heartbeat);
    }
    return true; // the releasing step handed its slot over
  }

  #releaseTenant(tenantId: string): void {
    const waiters = this.#tenantWaiters.get(tenantId);
    const next = waiters?.shift();
    if (waiters !== undefined && waiters.length === 0) this.#tenantWaiters.delete(tenantId);
    if (next !== undefined) {
      next();
      return;
    }
    const n = (this.#tenantBusy.get(tenantId) ?? 1) - 1;
    if (n <= 0) this.#tenantBusy.delete(tenantId);
    else this.#tenantBusy.set(tenantId, n);
  }

  async #claimOutcome(
    tenantId: string,
    runId: string,
    record: RunStep,
    attempt: number,
  ): Promise<boolean> {
    const outcome: StepOutcomeDoc = {
      tenantId,
      runId,
      stepId: record.stepId,
      status: record.status,
      attempt,
      record: encode(RunStepSchema, record),
      eventPublished: false,
      createTime: new Date(),
    };
    const won = await claim(this.#d.models.stepOutcomes, {
      _id: stepKey(tenantId, runId, record.stepId),
      ...outcome,
    });
    if (won) this.#knownOf(runId).outcomes.set(record.stepId, outcome);
    return won;
  }

  /** A step's outcome: known here, else read. */
  async #outcomeOf(doc: RunDoc, stepId: string): Promise<StepOutcomeDoc | null> {
    const known = this.#knownOf(doc.id);
    const have = known.outcomes.get(stepId);
    if (have !== undefined) return have;
    const where = stepWhere(doc, stepId);
    const found = isKeyed(doc)
      ? await byId(this.#d.models.stepOutcomes, where["_id"] as string)
      : await this.#d.models.stepOutcomes.findOne(where).lean<StepOutcomeDoc>();
    if (found !== null) known.outcomes.set(stepId, found);
    return found;
  }

  /** The completed records of these steps (known here, else read). */
  async #completedRecords(state: RunState, stepIds: string[]): Promise<Map<string, RunStep>> {
    const outcomes = await Promise.all(stepIds.map((id) => this.#outcomeOf(state.doc, id)));
    const out = new Map<string, RunStep>();
    for (const o of outcomes) {
      if (o?.status === StepStatus.COMPLETED) out.set(o.stepId, decode(RunStepSchema, o.record));
    }
    return out;
  }

  /** The run's outcome, if claimed. */
  async #runOutcomeOf(doc: RunDoc): Promise<RunOutcomeDoc | null> {
    const where = outcomeWhere(doc);
    return isKeyed(doc)
      ? await byId(this.#d.models.runOutcomes, where["_id"] as string)
      : await this.#d.models.runOutcomes.findOne(where).lean<RunOutcomeDoc>();
  }

  /**
   * The idempotent tail of a step: its end event (once), then the next steps or the run's end.
   * Safe to repeat after a crash at any point.
   */
  async #afterStep(state: RunState, stepId: string): Promise<void> {
    const { doc } = state;
    const outcome = await this.#outcomeOf(doc, stepId);
    if (outcome === null) return;
    const publish = !outcome.eventPublished;
    const record = decode(RunStepSchema, outcome.record);
    if (publish) {
      await this.#publishStepEnd(refOf(doc), stepId, record);
      outcome.eventPublished = true; // known here at once; stored below
    }
    if (record.status !== StepStatus.CANCELLED && record.status !== StepStatus.SKIPPED) {
      await this.#dispatchReady(state);
    }
    // Stored also when the run has ended with this step, so nothing that looks at the step later
    // (a redelivery, recovery repeating the run's end) publishes its event again after the run's.
    if (publish) {
      await setFields(this.#d.models.stepOutcomes, stepWhere(doc, stepId), {
        eventPublished: true,
      });
    }
  }

  /** A step's end event (completed or failed; none for cancelled or skipped); repeatable. */
  async #publishStepEnd(ref: RunRef, stepId: string, record: RunStep): Promise<void> {
    if (record.status === StepStatus.COMPLETED) {
      await this.#emit(ref, {
        type: RunEventType.STEP_COMPLETED,
        stepId,
        attempt: record.attempts,
        eventId: `${ref.runId}:${stepId}:completed`,
        payload: {
          case: "stepCompleted",
          value: {
            ...cut(record.output),
            answers: record.answers,
            artifacts: record.artifacts,
            ...(record.ranking !== undefined ? { ranking: record.ranking } : {}),
            ...(record.usage !== undefined ? { usage: record.usage } : {}),
            ...(record.latency !== undefined ? { latency: record.latency } : {}),
          },
        },
      });
    } else if (record.status === StepStatus.FAILED) {
      await this.#emit(ref, {
        type: RunEventType.STEP_FAILED,
        stepId,
        attempt: record.attempts,
        eventId: `${ref.runId}:${stepId}:failed`,
        payload: {
          case: "stepFailed",
          value: {
            ...(record.error !== undefined ? { error: record.error } : {}),
            willRetry: false,
            ...(record.usage !== undefined ? { usage: record.usage } : {}),
          },
        },
      });
    }
  }

  // ------------------------------------------------------------------------------ run end

  /** Claims the run's end (first claim wins), then writes the record and the terminal event. */
  async #finishRun(
    ref: RunRef,
    status: RunStatus,
    opts: { error?: RunError; reason?: string; by?: string },
  ): Promise<RunOutcomeDoc> {
    const candidate: RunOutcomeDoc & { _id: string } = {
      _id: runKey(ref.tenantId, ref.runId),
      tenantId: ref.tenantId,
      runId: ref.runId,
      status,
      ...(opts.error !== undefined ? { error: encode(RunErrorSchema, opts.error) } : {}),
      reason: opts.reason ?? "",
      by: opts.by ?? "",
      finalized: false,
      createTime: new Date(),
    };
    const won = await claim(this.#d.models.runOutcomes, candidate);
    if (won && opts.error !== undefined && status === RunStatus.FAILED) {
      await this.#explain(ref, candidate, opts.error);
    }
    const outcome = won
      ? candidate
      : ((await byId(this.#d.models.runOutcomes, candidate._id)) ??
        (await this.#d.models.runOutcomes
          .findOne({ tenantId: ref.tenantId, runId: ref.runId })
          .lean<RunOutcomeDoc>()));
    if (outcome === null) throw new Error("run outcome vanished");
    if (!outcome.finalized) await this.#finalize(ref, outcome);
    return outcome;
  }

  /**
   * The claim holder asks the explainer (when configured) and stores the explanation with the
   * outcome's error before the run record is written. A crash in between leaves the run failed
   * without an explanation, never with a different outcome.
   */
  async #explain(ref: RunRef, outcome: RunOutcomeDoc, error: RunError): Promise<void> {
    const explainer = this.#d.explainer;
    if (explainer === undefined || error.code === "CANCELED") return;
    const doc =
      (await this.#runState(ref.tenantId, ref.runId))?.doc ??
      (await this.#runDoc(ref.tenantId, ref.runId));
    if (doc === null) return;
    const spec = decode(RunSpecSchema, doc.spec);
    const explanation = await explainer.explain({
      tenantId: ref.tenantId,
      userId: doc.userId,
      apiKeyId: doc.apiKeyId,
      runId: ref.runId,
      sessionId: doc.sessionId,
      input: spec.input,
      error,
      metadata: spec.metadata,
    });
    if (explanation === "") return;
    const explained: RunError = { ...error, explanation };
    outcome.error = encode(RunErrorSchema, explained);
    // The outcome was just claimed here, with its keyed `_id`.
    await setFields(
      this.#d.models.runOutcomes,
      { _id: runKey(ref.tenantId, ref.runId) },
      { error: outcome.error },
    );
  }

  /** Writes the run record's end and publishes the terminal event; repeatable. */
  async #finalize(ref: RunRef, outcome: RunOutcomeDoc): Promise<void> {
    const state = await this.#runState(ref.tenantId, ref.runId);
    const doc = state?.doc ?? (await this.#runDoc(ref.tenantId, ref.runId));
    if (doc === null) return;
    // Every replica aborts the run's calls in flight (cancellation, or a sibling step's failure).
    this.#d.nc.publish(this.cancelSubject(ref.tenantId, ref.runId), ref.runId);
    this.#abortLocal(ref.runId);

    // A completed run's steps are all completed, which is what this replica learns following
    // the graph; a failed or cancelled one may have outcomes anywhere, so all are read.
    const outcomes =
      state !== undefined
        ? (await this.#progress(state, outcome.status !== RunStatus.COMPLETED ? "all" : "known"))
            .outcomes
        : await this.#d.models.stepOutcomes
            .find({ tenantId: ref.tenantId, runId: ref.runId })
            .lean<StepOutcomeDoc[]>();
    const records = new Map(outcomes.map((o) => [o.stepId, decode(RunStepSchema, o.record)]));
    // Every step's end event goes out before the run's: a replica that died between storing a
    // step's outcome and publishing its event leaves that to whoever ends the run (a copy that
    // the step's redelivery publishes too is dropped by JetStream as a duplicate).
    for (const o of outcomes) {
      const record = records.get(o.stepId);
      if (o.eventPublished || record === undefined) continue;
      if (record.status !== StepStatus.COMPLETED && record.status !== StepStatus.FAILED) continue;
      await this.#publishStepEnd(ref, o.stepId, record);
      o.eventPublished = true;
      await setFields(this.#d.models.stepOutcomes, stepWhere(doc, o.stepId), {
        eventPublished: true,
      });
    }
    let usage = create(UsageSchema);
    const models = new Set(doc.models);
    for (const r of records.values()) {
      usage = addUsage(usage, r.usage);
      for (const a of r.answers) if (a.servedBy?.model) models.add(a.servedBy.model);
    }
    const plan = state?.plan;
    const outputStep = plan?.template.outputStep ?? doc.outputStepId;
    const outRecord = records.get(outputStep);
    let ranking: RankingResult | undefined;
    if (plan !== undefined) {
      const rankSteps = plan.template.steps.filter((s) => s.kind === StepKind.RANK);
      const chosen = rankSteps.find((s) => s.id === outputStep) ?? rankSteps.at(-1);
      if (chosen !== undefined) ranking = records.get(chosen.id)?.ranking;
    }
    let output = "";
    let artifacts: Artifact[] = [];
    if (outcome.status === RunStatus.COMPLETED && outRecord !== undefined) {
      output = outRecord.output;
      artifacts = outRecord.artifacts;
      if (plan?.extras.winnerIsOutput === true && outRecord.ranking !== undefined) {
        const compared = records.get(outRecord.ranking.comparedStepId);
        const win = compared?.answers.find(
          (a) => a.answerIndex === outRecord.ranking?.ranked[0]?.answerIndex,
        );
        if (win !== undefined) output = win.text;
      }
    }
    const endTime = new Date();
    const start = doc.startTime ?? doc.createTime;
    const latencyMs = endTime.getTime() - start.getTime();
    const error = outcome.error !== undefined ? decode(RunErrorSchema, outcome.error) : undefined;
    await setFields(this.#d.models.runs, runWhere(doc), {
      status: outcome.status,
      output,
      artifacts: artifacts.map((a) => encode(ArtifactSchema, a)),
      ...(ranking !== undefined ? { ranking: encode(RankingResultSchema, ranking) } : {}),
      usage: usageDoc(usage),
      latencyMs,
      ...(outcome.error !== undefined ? { error: outcome.error } : {}),
      cancelReason: outcome.status === RunStatus.CANCELLED ? outcome.reason : "",
      models: [...models],
      endTime,
      updateTime: endTime,
    });
    const latency = durationFromMs(latencyMs);
    const eventId = `${ref.runId}:end`;
    if (outcome.status === RunStatus.COMPLETED) {
      await this.#emit(ref, {
        type: RunEventType.COMPLETED,
        eventId,
        payload: {
          case: "completed",
          value: {
            ...cut(output),
            outputStepId: outputStep,
            artifacts,
            usage,
            latency,
            ...(ranking !== undefined ? { ranking } : {}),
          },
        },
      });
    } else if (outcome.status === RunStatus.FAILED) {
      await this.#emit(ref, {
        type: RunEventType.FAILED,
        eventId,
        payload: {
          case: "failed",
          value: { ...(error !== undefined ? { error } : {}), usage, latency },
        },
      });
    } else {
      await this.#emit(ref, {
        type: RunEventType.CANCELLED,
        eventId,
        payload: {
          case: "cancelled",
          value: { reason: outcome.reason, cancelledBy: outcome.by, usage, latency },
        },
      });
    }
    await setFields(this.#d.models.runOutcomes, outcomeWhere(doc), { finalized: true });
    this.#d.metrics?.runsEnded.inc({ status: RunStatus[outcome.status] ?? "UNKNOWN" });
    this.#d.publisher.forget(ref.runId);
    this.#forgetRun(ref.runId);
  }

  /** CancelRun: the first end claimed wins; in-flight calls on every replica are aborted. */
  async cancelRun(p: Principal, runId: string, reason: string): Promise<RunDoc> {
    const doc = await this.findRun(p, runId);
    if (doc.status === RunStatus.CANCELLED) return doc;
    if (doc.status === RunStatus.COMPLETED || doc.status === RunStatus.FAILED) {
      throw new FailedPreconditionError(
        `run "${runId}" has already ${doc.status === RunStatus.COMPLETED ? "completed" : "failed"}`,
      );
    }
    const outcome = await this.#finishRun(refOf(doc), RunStatus.CANCELLED, {
      reason: reason === "" ? "cancelled by the user" : reason,
      by: p.subject,
    });
    if (outcome.status !== RunStatus.CANCELLED) {
      throw new FailedPreconditionError(
        `run "${runId}" has already ended (${RunStatus[outcome.status]?.toLowerCase()})`,
      );
    }
    return (await this.#runDoc(p.tenantId, runId)) ?? doc;
  }

  // ------------------------------------------------------------------------------ recovery

  /**
   * Runs in flight whose progress stalled because a replica died between two writes: a run end
   * claimed but not written, a step dispatched (claimed) but its message lost, a ready step not
   * dispatched, a run past its deadline. Every action here is one of the idempotent steps above.
   */
  async recover(): Promise<number> {
    if (this.#stopping) return 0;
    const stale = new Date(Date.now() - 5_000);
    const docs = await this.#d.models.runs
      .find({ status: { $in: [RunStatus.PENDING, RunStatus.RUNNING] }, createTime: { $lt: stale } })
      .sort({ createTime: 1 })
      .limit(500)
      .lean<RunDoc[]>();
    let touched = 0;
    for (const doc of docs) {
      if (this.#stopping) break;
      try {
        if (await this.#recoverRun(doc)) touched++;
      } catch (err) {
        this.#log.warn({ err, runId: doc.id, tenantId: doc.tenantId }, "could not recover run");
      }
    }
    if (touched > 0) this.#log.info({ runs: touched }, "recovered runs in flight");
    return touched;
  }

  async #recoverRun(doc: RunDoc): Promise<boolean> {
    const ref = refOf(doc);
    const outcome = await this.#runOutcomeOf(doc);
    if (outcome !== null) {
      if (!outcome.finalized) await this.#finalize(ref, outcome);
      return true;
    }
    if (doc.deadline.getTime() <= Date.now()) {
      await this.#finishRun(ref, RunStatus.FAILED, {
        error: create(RunErrorSchema, {
          code: "DEADLINE_EXCEEDED",
          message: "the run's deadline passed",
        }),
      });
      return true;
    }
    const state = await this.#runState(doc.tenantId, doc.id);
    if (state === undefined) {
      // An AUTO run whose replica died while classifying: classify again as its user.
      if (doc.createTime.getTime() < Date.now() - 30_000) {
        const token = await this.#d.tokens.forUser(
          doc.tenantId,
          doc.userId,
          doc.apiKeyId,
          `run:${doc.id}`,
        );
        await this.#classifyAndPlan(doc, decode(RunSpecSchema, doc.spec), token);
        return true;
      }
      return false;
    }
    const { dispatched, outcomes } = await this.#progress(state, "all");
    const ended = new Set(outcomes.map((o) => o.stepId));
    let touched = false;
    for (const d of dispatched) {
      if (ended.has(d.stepId)) continue;
      const queued = await this.#d.jsm.streams.getMessage(this.#s.stepStream, {
        last_by_subj: this.stepSubject(doc.tenantId, doc.id, d.stepId),
      });
      if (queued === null) {
        await this.#enqueue(doc.tenantId, doc.id, d.stepId, d.queuedAt);
        touched = true;
      }
    }
    for (const o of outcomes) {
      if (!o.eventPublished) {
        await this.#afterStep(state, o.stepId);
        touched = true;
      }
    }
    await this.#dispatchReady(state, true);
    return touched;
  }

  // ------------------------------------------------------------------------------ reading

  /** Run documents matching a (tenant-scoped) filter, newest first. */
  async listDocs(filter: Record<string, unknown>, limit: number): Promise<RunDoc[]> {
    if (typeof filter["tenantId"] !== "string") throw new Error("listDocs needs a tenant filter");
    return this.#d.models.runs
      .find(filter)
      .sort({ createTime: -1, id: -1 })
      .limit(limit)
      .lean<RunDoc[]>();
  }

  /**
   * The run record (FULL or BASIC view). `justCreated`: this replica created the run in this
   * call, so what it knows of the run's steps and events is the snapshot to return (StartRun's
   * answer costs no reads); else, or once the run ended and was forgotten here, everything is read.
   */
  async toRun(doc: RunDoc, full: boolean, justCreated = false): Promise<Run> {
    const spec = decode(RunSpecSchema, doc.spec);
    const run = create(RunSchema, {
      id: doc.id,
      tenantId: doc.tenantId,
      userId: doc.userId,
      sessionId: doc.sessionId,
      apiKeyId: doc.apiKeyId,
      scheduleId: doc.scheduleId,
      mode: doc.mode,
      spec,
      status: doc.status,
      templateId: doc.templateId,
      templateVersion: doc.templateVersion,
      outputStepId: doc.outputStepId,
      output: doc.output,
      usage: usageOf(doc.usage),
      cancelReason: doc.cancelReason,
      createTime: timestampFromDate(doc.createTime),
      updateTime: timestampFromDate(doc.updateTime),
      ...(doc.startTime !== undefined ? { startTime: timestampFromDate(doc.startTime) } : {}),
      ...(doc.endTime !== undefined
        ? { endTime: timestampFromDate(doc.endTime), latency: durationFromMs(doc.latencyMs) }
        : {}),
    });
    if (doc.classification !== undefined)
      run.classification = decode(ClassificationSchema, doc.classification);
    if (doc.ranking !== undefined) run.ranking = decode(RankingResultSchema, doc.ranking);
    run.artifacts = (doc.artifacts ?? []).map((a) => decode(ArtifactSchema, a));
    if (doc.error !== undefined) run.error = decode(RunErrorSchema, doc.error);
    const plan =
      this.#plans.get(doc.id) ??
      (doc.plan !== undefined && doc.planExtras !== undefined
        ? decodePlan(storedBytes(doc.plan), doc.planExtras)
        : undefined);
    if (plan === undefined) return run;
    const known = justCreated ? this.#known.get(doc.id) : undefined;
    const { dispatched, outcomes } =
      known !== undefined
        ? { dispatched: [...known.dispatched.values()], outcomes: [...known.outcomes.values()] }
        : await this.#progress({ doc, plan }, "all");
    const byStep = new Map(dispatched.map((d) => [d.stepId, d]));
    const ended = new Map(outcomes.map((o) => [o.stepId, o]));
    const terminal = isTerminal(doc.status);
    let live = create(UsageSchema);
    for (const s of plan.template.steps) {
      const o = ended.get(s.id);
      let step: RunStep;
      if (o !== undefined) {
        step = decode(RunStepSchema, o.record);
        step.name = s.name;
        step.kind = s.kind;
        step.dependsOn = s.dependsOn;
        if (step.models.length === 0) step.models = s.models;
      } else {
        const d = byStep.get(s.id);
        step = create(RunStepSchema, {
          stepId: s.id,
          name: s.name,
          kind: s.kind,
          dependsOn: s.dependsOn,
          model: s.kind === StepKind.RANK ? s.judgeModel : s.model,
          models: s.models,
          status: terminal
            ? doc.status === RunStatus.CANCELLED
              ? StepStatus.CANCELLED
              : StepStatus.SKIPPED
            : d === undefined
              ? StepStatus.PENDING
              : d.status,
          attempts: d?.attempts ?? 0,
          ...(d?.startTime !== undefined ? { startTime: timestampFromDate(d.startTime) } : {}),
        });
      }
      live = addUsage(live, step.usage);
      if (!full) {
        step.answers = [];
        step.output = "";
        step.structuredOutput = undefined;
      }
      run.steps.push(step);
    }
    if (!terminal) run.usage = live;
    run.lastSequence = BigInt(
      (justCreated ? this.#d.publisher.knownSequence(doc.id) : undefined) ??
        (await this.#d.publisher.lastSequence(doc.tenantId, doc.id)),
    );
    return run;
  }
}

function modeOf(spec: RunSpec): RunMode {
  switch (spec.mode.case) {
    case "model":
      return RunMode.MODEL;
    case "workflow":
      return RunMode.WORKFLOW;
    case "compare":
      return RunMode.COMPARE;
    default:
      return RunMode.AUTO;
  }
}

export { STEP_ENDED, timestampDate, timestampNow };
