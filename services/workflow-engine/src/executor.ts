// Executing one step: llm (one model, retries, then the fallback model), compare (the same prompt
// to several models in parallel), rank (a judge model and/or measurable criteria over a compare
// step's answers), transform (rendering only), retrieve (a vector-search Search of the run's
// tenant's collection), plugin (Invoke on a registered plugin, see plugins.ts) and image
// (GenerateImage, the images stored as artifacts, see artifacts.ts). Model calls
// go to model-proxy's StreamChat with a token acting for the run's user and the attribution
// {run, step, attempt}, so the ledger bills a redelivered attempt once; every piece of text is
// published as a step.delta event.
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { JsonObject } from "@bufbuild/protobuf";
import { addUsage, toConnectError, type GrpcClient } from "@ensemble/kit";
import {
  ChatRole,
  FinishReason,
  ModelAnswerSchema,
  RankCriterion,
  RankingResultSchema,
  ResponseFormat_Type,
  RunErrorSchema,
  RunEventType,
  RunStepSchema,
  StepKind,
  StepStatus,
  UsageSchema,
  type ChatMessage,
  type ContentPart,
  type GeneratedImage,
  type ModelAnswer,
  type ModelProxyService,
  type RankedAnswer,
  type RankingResult,
  type ResponseFormat,
  type RunError,
  type RunStep,
  type SearchHit,
  type Usage,
  type VectorSearchService,
  type WorkflowStep,
} from "@ensemble/proto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ArtifactStore } from "./artifacts.js";
import type { EventInit, RunRef } from "./events.js";
import { isIdempotentFailure, pluginInputs, type PluginInvoker } from "./plugins.js";
import { renderTemplate, type RenderScope } from "@ensemble/workflow";

/** What a step needs from the run beyond its own definition. */
/** ChatRequest.metadata's limits (modelproxy.proto). */
const CALL_METADATA_PAIRS = 16;
const CALL_METADATA_VALUE_CHARS = 256;

/**
 * The labels a run's model call carries to the usage ledger: the run's metadata, so usage can
 * be reported per team or customer across workflows (GetUsage metadata), and `feature` (what
 * makes the call: "workflow", "workflow-explainer") unless the run says otherwise. A run may
 * hold more and longer labels than a call (32 pairs, 1,024 characters): the pairs that fit a
 * call are kept, by key.
 */
export function callMetadata(
  run: Readonly<Record<string, string>> = {},
  feature = "workflow",
): Record<string, string> {
  const fits = Object.entries(run)
    .filter(([, v]) => v.length <= CALL_METADATA_VALUE_CHARS)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const own = fits.find(([k]) => k === "feature")?.[1];
  const others = fits.filter(([k]) => k !== "feature").slice(0, CALL_METADATA_PAIRS - 1);
  return { feature: own ?? feature, ...Object.fromEntries(others) };
}

export interface StepContext {
  ref: RunRef;
  step: WorkflowStep;
  scope: RenderScope;
  /** Extra system prompt of the run (spec.system) and addon texts by id. */
  runSystem: string;
  runAddons: string[];
  /** The run's metadata: its model calls carry it to the usage ledger (callMetadata). */
  runMetadata?: Readonly<Record<string, string>> | undefined;
  addonTexts: Readonly<Record<string, string>>;
  attachments: ContentPart[];
  /** A session's conversation before the input: sent before it, to the steps given {{input}}. */
  history?: ChatMessage[] | undefined;
  responseFormat?: ResponseFormat | undefined;
  /** Rank steps: the compare step's record. */
  compared?: RunStep | undefined;
  /** Rank steps of COMPARE runs: measurable criteria, in priority order. */
  rankBy: RankCriterion[];
  /** Per attempt. */
  timeoutMs: number;
  /** When the run's deadline passes (epoch ms). */
  deadline: number;
  retries: number;
  /** Aborted when the run is cancelled or ends. */
  signal: AbortSignal;
  token: () => Promise<string>;
  /** Stored events (step.started, step.failed with will_retry). */
  emit: (init: EventInit) => Promise<unknown>;
  /** Deltas (core NATS). */
  delta: (init: EventInit) => void;
  /**
   * Told the cause of a failure recorded as INTERNAL: the record says only "internal error"
   * (no stack or driver text reaches users), so the cause goes to the log.
   */
  internalError?: (err: unknown) => void;
}

export interface StepDeps {
  modelProxy: Pick<GrpcClient<typeof ModelProxyService>, "streamChat" | "generateImage">;
  /** Where image steps store their images; none = they fail with FAILED_PRECONDITION. */
  artifacts?: Pick<ArtifactStore, "put"> | undefined;
  /** Plugin steps; none = they fail with FAILED_PRECONDITION. */
  plugins?: PluginInvoker | undefined;
  /** Retrieve steps (VECTOR_SEARCH_ADDR); none = they fail with FAILED_PRECONDITION. */
  vectorSearch?: Pick<GrpcClient<typeof VectorSearchService>, "search"> | undefined;
}

/** A failed attempt, carried to the record as RunError. */
export class StepFailure extends Error {
  override name = "StepFailure";
  constructor(
    readonly error: RunError,
    readonly usage: Usage,
  ) {
    super(error.message);
  }
}

/** A step failure before any model was called (nothing to bill), e.g. a missing dependency. */
function stepFailure(ctx: StepContext, code: string, message: string): StepFailure {
  return new StepFailure(
    create(RunErrorSchema, { code, message, stepId: ctx.step.id }),
    create(UsageSchema),
  );
}

const RETRYABLE = new Set<Code>([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Internal,
  Code.Unknown,
  Code.Aborted,
  Code.ResourceExhausted,
]);

/** The RunError of a failure, sanitised (ConnectError messages of our services are safe). */
export function runErrorOf(err: unknown, stepId: string): RunError {
  if (err instanceof StepFailure) return err.error;
  const ce = toConnectError(err);
  return create(RunErrorSchema, {
    code: codeName(ce.code),
    message: ce.rawMessage,
    stepId,
    retryable: RETRYABLE.has(ce.code),
  });
}

export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Runs the step to its end; the record's status is COMPLETED or FAILED (CANCELLED if aborted). */
export async function executeStep(ctx: StepContext, deps: StepDeps): Promise<RunStep> {
  const started = Date.now();
  const record = create(RunStepSchema, {
    stepId: ctx.step.id,
    name: ctx.step.name,
    kind: ctx.step.kind,
    dependsOn: ctx.step.dependsOn,
    status: StepStatus.RUNNING,
    model: ctx.step.kind === StepKind.RANK ? ctx.step.judgeModel : ctx.step.model,
    models: ctx.step.models,
    startTime: timestampNow(),
  });
  try {
    switch (ctx.step.kind) {
      case StepKind.TRANSFORM:
        record.attempts = 1;
        await ctx.emit({
          type: RunEventType.STEP_STARTED,
          stepId: ctx.step.id,
          attempt: 1,
          payload: started_(ctx),
        });
        record.output = renderTemplate(ctx.step.prompt, ctx.scope);
        break;
      case StepKind.LLM:
        await runLlm(ctx, deps, record);
        break;
      case StepKind.COMPARE:
        await runCompare(ctx, deps, record);
        break;
      case StepKind.RANK:
        await runRank(ctx, deps, record);
        break;
      case StepKind.PLUGIN:
        await runPlugin(ctx, deps, record);
        break;
      case StepKind.RETRIEVE:
        await runRetrieve(ctx, deps, record);
        break;
      case StepKind.IMAGE:
        await runImage(ctx, deps, record);
        break;
      default:
        throw stepFailure(
          ctx,
          "FAILED_PRECONDITION",
          `${StepKind[ctx.step.kind] ?? "this"} steps are not supported by the workflow engine yet`,
        );
    }
    record.status = StepStatus.COMPLETED;
  } catch (err) {
    if (ctx.signal.aborted) {
      record.status = StepStatus.CANCELLED;
    } else {
      record.status = StepStatus.FAILED;
      record.error = runErrorOf(err, ctx.step.id);
      if (record.error.code === "INTERNAL") ctx.internalError?.(err);
      if (err instanceof StepFailure) record.usage = addUsage(record.usage, err.usage);
    }
  }
  record.endTime = timestampNow();
  record.latency = durationFromMs(Date.now() - started);
  return record;
}

function started_(ctx: StepContext, model = "", models: string[] = []) {
  return {
    case: "stepStarted" as const,
    value: { name: ctx.step.name, kind: ctx.step.kind, model, models },
  };
}

/** System prompt: the step's own (rendered), the run's, then the addons' texts. */
function systemPrompt(ctx: StepContext): string {
  const parts = [renderTemplate(ctx.step.system, ctx.scope), ctx.runSystem];
  for (const id of [...ctx.runAddons, ...ctx.step.addons]) {
    const text = ctx.addonTexts[id];
    if (text !== undefined && text !== "") parts.push(text);
  }
  return parts.filter((p) => p.trim() !== "").join("\n\n");
}

function messagesFor(
  ctx: StepContext,
  prompt: string,
): Array<MessageInitShape<typeof import("@ensemble/proto").ChatMessageSchema>> {
  const system = systemPrompt(ctx);
  const user: ContentPart[] = [];
  const content: Array<MessageInitShape<typeof import("@ensemble/proto").ContentPartSchema>> = [
    { part: { case: "text", value: prompt } },
  ];
  // Attachments (and a session's history) go with the run's input: to the steps whose prompt
  // uses {{input}}.
  const withInput = /\{\{\s*input\s*\}\}/.test(ctx.step.prompt);
  if (ctx.attachments.length > 0 && withInput) {
    user.push(...ctx.attachments);
  }
  return [
    ...(system !== ""
      ? [
          {
            role: ChatRole.SYSTEM,
            content: [{ part: { case: "text" as const, value: system }, cacheBreakpoint: true }],
          },
        ]
      : []),
    ...(withInput ? cachedHistory(ctx.history ?? []) : []),
    { role: ChatRole.USER, content: [...content, ...user] },
  ];
}

/**
 * Prompt-cache breakpoints, for the providers that cache only where told (Anthropic; OpenAI and
 * Gemini cache long prompts by themselves and ignore them): after the system prompt (above),
 * which every call of a step shares, and after a conversation's last message and the one two
 * before it, so that each turn reads what the previous turn wrote (Anthropic's advice for
 * conversations; 3 of its 4 breakpoints). Anthropic ignores marks on prefixes too short to cache.
 */
function cachedHistory(history: readonly ChatMessage[]): ChatMessage[] {
  return history.map((m, i) => {
    const fromEnd = history.length - 1 - i;
    if ((fromEnd !== 0 && fromEnd !== 2) || m.content.length === 0) return m;
    const last = m.content.length - 1;
    return {
      ...m,
      content: m.content.map((p, j) => (j === last ? { ...p, cacheBreakpoint: true } : p)),
    };
  });
}

function attemptTimeout(ctx: StepContext): number {
  const left = ctx.deadline - Date.now();
  if (left <= 0) {
    throw stepFailure(ctx, "DEADLINE_EXCEEDED", "the run's deadline passed");
  }
  return Math.min(ctx.timeoutMs, left);
}

interface CallSpec {
  model: string;
  messages: Array<MessageInitShape<typeof import("@ensemble/proto").ChatMessageSchema>>;
  answerIndex: number;
  /** Attribution step id (compare answers get "<step>[<i>]" so each is its own ledger entry). */
  attributionStep: string;
  attempt: number;
  responseFormat?: ResponseFormat | undefined;
}

/** A model call's failure as the step reports it: cancelled run, attempt timeout, or its own. */
function attemptError(
  ctx: StepContext,
  signal: AbortSignal,
  model: string,
  timeoutMs: number,
  err: unknown,
): unknown {
  if (ctx.signal.aborted) return new ConnectError("the run was cancelled", Code.Canceled);
  if (signal.aborted) {
    return new ConnectError(
      `no answer from ${model} within ${timeoutMs} ms`,
      Code.DeadlineExceeded,
    );
  }
  return err;
}

/** One streamed model call; deltas are published as they come. Throws ConnectError on failure. */
async function callModel(ctx: StepContext, deps: StepDeps, call: CallSpec): Promise<ModelAnswer> {
  const started = Date.now();
  const timeoutMs = attemptTimeout(ctx);
  const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(timeoutMs)]);
  const token = await ctx.token();
  const answer = create(ModelAnswerSchema, { answerIndex: call.answerIndex });
  let text = "";
  let reasoning = "";
  let index = 0n;
  let ttft: number | undefined;
  let ended = false;
  try {
    const stream = deps.modelProxy.streamChat(
      {
        chat: {
          model: call.model,
          messages: call.messages,
          ...(ctx.step.temperature !== undefined ? { temperature: ctx.step.temperature } : {}),
          ...(ctx.step.maxTokens > 0 ? { maxTokens: ctx.step.maxTokens } : {}),
          ...(call.responseFormat !== undefined ? { responseFormat: call.responseFormat } : {}),
          attribution: {
            runId: ctx.ref.runId,
            stepId: call.attributionStep,
            sessionId: ctx.ref.sessionId,
            attempt: call.attempt,
          },
          metadata: callMetadata(ctx.runMetadata),
        },
      },
      { headers: { authorization: `Bearer ${token}` }, signal, timeoutMs },
    );
    for await (const item of stream) {
      switch (item.event.case) {
        case "start":
          answer.servedBy = item.event.value.servedBy;
          break;
        case "delta": {
          const d = item.event.value;
          if (d.content === "" && d.reasoning === "") break;
          ttft ??= Date.now() - started;
          text += d.content;
          reasoning += d.reasoning;
          ctx.delta({
            type: RunEventType.STEP_DELTA,
            stepId: ctx.step.id,
            attempt: call.attempt,
            payload: {
              case: "stepDelta",
              value: {
                text: d.content,
                reasoning: d.reasoning,
                answerIndex: call.answerIndex,
                model: answer.servedBy?.model ?? call.model,
                index: index++,
              },
            },
          });
          break;
        }
        case "end":
          ended = true;
          answer.finishReason = item.event.value.finishReason;
          answer.usage = item.event.value.usage;
          if (item.event.value.servedBy !== undefined) answer.servedBy = item.event.value.servedBy;
          break;
        default:
          break;
      }
    }
  } catch (err) {
    throw attemptError(ctx, signal, call.model, timeoutMs, err);
  }
  if (!ended) throw new ConnectError(`the answer of ${call.model} ended early`, Code.Unavailable);
  answer.text = text;
  answer.reasoning = reasoning;
  answer.latency = durationFromMs(Date.now() - started);
  answer.timeToFirstToken = durationFromMs(ttft ?? Date.now() - started);
  return answer;
}

/**
 * A model with `retries` extra attempts, then (for llm steps) the fallback model once. Each
 * attempt is announced (step.started) and each failure reported (step.failed, will_retry).
 * Attempt numbers continue across the fallback, so every attempt has its own ledger key.
 */
async function withRetries(
  ctx: StepContext,
  deps: StepDeps,
  opts: {
    models: string[];
    prompt: string;
    answerIndex: number;
    attributionStep: string;
    firstAttempt: number;
    announce: boolean;
    responseFormat?: ResponseFormat | undefined;
    onAttempt: (attempt: number, model: string) => void;
    /** One attempt's call; default: a chat with `prompt` (callModel). */
    call?: (model: string, attempt: number) => Promise<ModelAnswer>;
  },
): Promise<{ answer: ModelAnswer; attempt: number; model: string }> {
  const plan: string[] = [];
  const [primary, ...fallbacks] = opts.models;
  for (let i = 0; i <= ctx.retries; i++) plan.push(primary ?? "");
  plan.push(...fallbacks);
  const messages = messagesFor(ctx, opts.prompt);
  let attempt = opts.firstAttempt;
  let lastErr: unknown;
  for (let i = 0; i < plan.length; i++, attempt++) {
    const model = plan[i] ?? "";
    opts.onAttempt(attempt, model);
    if (opts.announce) {
      await ctx.emit({
        type: RunEventType.STEP_STARTED,
        stepId: ctx.step.id,
        attempt,
        payload: started_(ctx, model),
      });
    }
    try {
      const answer =
        opts.call !== undefined
          ? await opts.call(model, attempt)
          : await callModel(ctx, deps, {
              model,
              messages,
              answerIndex: opts.answerIndex,
              attributionStep: opts.attributionStep,
              attempt,
              responseFormat: opts.responseFormat,
            });
      return { answer, attempt, model };
    } catch (err) {
      lastErr = err;
      if (ctx.signal.aborted) throw err;
      const error = runErrorOf(err, ctx.step.id);
      // Bad requests and refusals do not get better by asking again; another model may help.
      let nextIndex = i + 1;
      if (!error.retryable) while (nextIndex < plan.length && nextIndex <= ctx.retries) nextIndex++;
      const willRetry = nextIndex < plan.length;
      const nextModel = plan[nextIndex];
      if (opts.announce && willRetry) {
        await ctx.emit({
          type: RunEventType.STEP_FAILED,
          stepId: ctx.step.id,
          attempt,
          payload: {
            case: "stepFailed",
            value: {
              error,
              willRetry,
              fallbackModel: nextModel !== undefined && nextModel !== model ? nextModel : "",
            },
          },
        });
      }
      attempt += nextIndex - i - 1;
      i = nextIndex - 1;
    }
  }
  throw lastErr instanceof Error
    ? lastErr
    : new ConnectError("no model to call", Code.FailedPrecondition);
}

/**
 * The attempts of a one-model step (llm, image): `model` with its retries, then `fallbackModel`,
 * each attempt's model and number noted on the record.
 */
function withStepModel(
  ctx: StepContext,
  deps: StepDeps,
  record: RunStep,
  opts: Pick<Parameters<typeof withRetries>[2], "prompt" | "responseFormat" | "call">,
) {
  const models = [ctx.step.model];
  if (ctx.step.fallbackModel !== "" && ctx.step.fallbackModel !== ctx.step.model) {
    models.push(ctx.step.fallbackModel);
  }
  return withRetries(ctx, deps, {
    ...opts,
    models,
    answerIndex: 0,
    attributionStep: ctx.step.id,
    firstAttempt: 1,
    announce: true,
    onAttempt: (attempt, m) => {
      record.attempts = attempt;
      record.model = m;
      record.fallbackUsed = m !== ctx.step.model;
    },
  });
}

async function runLlm(ctx: StepContext, deps: StepDeps, record: RunStep): Promise<void> {
  const prompt = renderTemplate(ctx.step.prompt, ctx.scope);
  const { answer, model } = await withStepModel(ctx, deps, record, {
    prompt,
    responseFormat: ctx.responseFormat,
  });
  record.model = model;
  record.answers = [answer];
  record.output = answer.text;
  record.usage = addUsage(record.usage, answer.usage);
}

/**
 * An image step: GenerateImage on model-proxy with the rendered prompt (retries, then the
 * fallback model, like an llm step), then each image stored as an artifact. The step's output
 * describes the images for later steps ({{steps.<id>.output}}); the bytes are fetched with
 * GetArtifact.
 */
async function runImage(ctx: StepContext, deps: StepDeps, record: RunStep): Promise<void> {
  const store = deps.artifacts;
  if (store === undefined) {
    throw stepFailure(ctx, "FAILED_PRECONDITION", "this workflow engine stores no artifacts");
  }
  const prompt = renderTemplate(ctx.step.prompt, ctx.scope);
  if (prompt.trim() === "") {
    throw stepFailure(ctx, "INVALID_ARGUMENT", "the image step has nothing to draw (empty prompt)");
  }
  let images: GeneratedImage[] = [];
  const { answer, model } = await withStepModel(ctx, deps, record, {
    prompt,
    call: async (m, attempt) => {
      const started = Date.now();
      const timeoutMs = attemptTimeout(ctx);
      const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(timeoutMs)]);
      const token = await ctx.token();
      let res;
      try {
        res = await deps.modelProxy.generateImage(
          {
            model: m,
            prompt,
            n: ctx.step.imageCount,
            size: ctx.step.imageSize,
            attribution: {
              runId: ctx.ref.runId,
              stepId: ctx.step.id,
              sessionId: ctx.ref.sessionId,
              attempt,
            },
            metadata: callMetadata(ctx.runMetadata),
          },
          { headers: { authorization: `Bearer ${token}` }, signal, timeoutMs },
        );
      } catch (err) {
        throw attemptError(ctx, signal, m, timeoutMs, err);
      }
      if (res.images.length === 0) {
        throw new ConnectError(`${m} returned no image`, Code.Unavailable);
      }
      images = res.images;
      return create(ModelAnswerSchema, {
        answerIndex: 0,
        ...(res.servedBy !== undefined ? { servedBy: res.servedBy } : {}),
        ...(res.usage !== undefined ? { usage: res.usage } : {}),
        finishReason: FinishReason.STOP,
        latency: durationFromMs(Date.now() - started),
        timeToFirstToken: durationFromMs(Date.now() - started),
      });
    },
  });
  record.model = model;
  record.usage = addUsage(record.usage, answer.usage);
  record.artifacts = await Promise.all(
    images.map((image, index) =>
      store.put({
        tenantId: ctx.ref.tenantId,
        runId: ctx.ref.runId,
        stepId: ctx.step.id,
        index,
        mimeType: image.mimeType || "image/png",
        data: image.data,
        revisedPrompt: image.revisedPrompt,
      }),
    ),
  );
  const served = modelOf(answer) || model;
  record.output = record.artifacts
    .map(
      (a, i) =>
        `Image ${i + 1} of ${record.artifacts.length} (${a.mimeType}, ${a.sizeBytes} bytes, artifact ${a.id}) generated by ${served} for: ${a.revisedPrompt !== "" ? a.revisedPrompt : prompt}`,
    )
    .join("\n");
  answer.text = record.output;
  record.answers = [answer];
}

async function runCompare(ctx: StepContext, deps: StepDeps, record: RunStep): Promise<void> {
  const prompt = renderTemplate(ctx.step.prompt, ctx.scope);
  record.attempts = 1;
  await ctx.emit({
    type: RunEventType.STEP_STARTED,
    stepId: ctx.step.id,
    attempt: 1,
    payload: started_(ctx, "", ctx.step.models),
  });
  const answers = await Promise.all(
    ctx.step.models.map(async (model, i) => {
      try {
        const { answer, attempt } = await withRetries(ctx, deps, {
          models: [model],
          prompt,
          answerIndex: i,
          attributionStep: `${ctx.step.id}[${i}]`,
          firstAttempt: 1,
          announce: false,
          onAttempt: () => undefined,
        });
        record.attempts = Math.max(record.attempts, attempt);
        return answer;
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        return create(ModelAnswerSchema, {
          answerIndex: i,
          servedBy: { requestedModel: model, model },
          error: runErrorOf(err, ctx.step.id),
        });
      }
    }),
  );
  record.answers = answers;
  for (const a of answers) record.usage = addUsage(record.usage, a.usage);
  const ok = answers.filter((a) => a.error === undefined);
  if (ok.length === 0) {
    const first = answers[0]?.error;
    throw new StepFailure(
      create(RunErrorSchema, {
        code: first?.code ?? "UNAVAILABLE",
        message: `every compared model failed: ${answers
          .map((a) => `${a.servedBy?.requestedModel ?? "?"}: ${a.error?.message ?? "?"}`)
          .join("; ")}`,
        stepId: ctx.step.id,
        retryable: answers.some((a) => a.error?.retryable === true),
      }),
      record.usage ?? create(UsageSchema),
    );
  }
  record.output = ok
    .map((a) => `### Answer ${a.answerIndex + 1} (${modelOf(a)})\n\n${a.text}`)
    .join("\n\n");
}

function modelOf(a: ModelAnswer): string {
  return a.servedBy?.model !== undefined && a.servedBy.model !== ""
    ? a.servedBy.model
    : (a.servedBy?.requestedModel ?? "");
}

function ms(d: { seconds: bigint; nanos: number } | undefined): number {
  return d === undefined ? 0 : Number(d.seconds) * 1000 + d.nanos / 1e6;
}

/** Orders answers by measurable criteria (ties broken by the next criterion, then by position). */
export function rankByCriteria(answers: ModelAnswer[], by: RankCriterion[]): RankedAnswer[] {
  const criteria = by.length > 0 ? by : [RankCriterion.LATENCY];
  const value = (a: ModelAnswer, c: RankCriterion): number => {
    switch (c) {
      case RankCriterion.LATENCY:
        return ms(a.latency);
      case RankCriterion.TIME_TO_FIRST_TOKEN:
        return ms(a.timeToFirstToken);
      case RankCriterion.COST:
        return a.usage?.costUsd ?? 0;
      case RankCriterion.SHORTEST:
        return a.text.length;
      case RankCriterion.LONGEST:
        return -a.text.length;
      default:
        return 0;
    }
  };
  const sorted = [...answers].sort((x, y) => {
    for (const c of criteria) {
      const d = value(x, c) - value(y, c);
      if (d !== 0) return d;
    }
    return x.answerIndex - y.answerIndex;
  });
  const first = criteria[0] ?? RankCriterion.LATENCY;
  const label = (RankCriterion[first] ?? "").toLowerCase().replace(/_/g, " ");
  return sorted.map((a, i) => ({
    $typeName: "ensemble.events.v1.RankedAnswer" as const,
    rank: i + 1,
    answerIndex: a.answerIndex,
    model: modelOf(a),
    score: Math.abs(value(a, first)),
    rationale: `${ordinal(i + 1)} by ${label}`,
  }));
}

function ordinal(n: number): string {
  return n === 1 ? "1st" : n === 2 ? "2nd" : n === 3 ? "3rd" : `${n}th`;
}

/** The judge's verdict in its answer (JSON, possibly wrapped in prose or a code fence). */
export function parseVerdict(
  text: string,
  count: number,
):
  | { ranked: Array<{ index: number; score: number; rationale: string }>; rationale: string }
  | undefined {
  const start = text.indexOf("{");
  const end = text.lastIndexOf("}");
  if (start < 0 || end <= start) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(text.slice(start, end + 1));
  } catch {
    return undefined;
  }
  if (doc === null || typeof doc !== "object") return undefined;
  const list = (doc as { ranking?: unknown }).ranking;
  if (!Array.isArray(list)) return undefined;
  const ranked: Array<{ index: number; score: number; rationale: string }> = [];
  const seen = new Set<number>();
  for (const item of list) {
    if (item === null || typeof item !== "object") return undefined;
    const r = item as { answer?: unknown; index?: unknown; score?: unknown; rationale?: unknown };
    const raw = typeof r.answer === "number" ? r.answer - 1 : r.index;
    if (typeof raw !== "number" || !Number.isInteger(raw) || raw < 0 || raw >= count)
      return undefined;
    if (seen.has(raw)) continue;
    seen.add(raw);
    ranked.push({
      index: raw,
      score: typeof r.score === "number" ? Math.max(0, Math.min(10, r.score)) : 0,
      rationale: typeof r.rationale === "string" ? r.rationale.slice(0, 1000) : "",
    });
  }
  if (ranked.length === 0) return undefined;
  const rationale = (doc as { rationale?: unknown }).rationale;
  return { ranked, rationale: typeof rationale === "string" ? rationale.slice(0, 2000) : "" };
}

const JUDGE_SYSTEM = `You are an impartial judge comparing several answers to the same request.
Score each answer from 0 to 10 against the rubric, then rank them, best first.
Answer with one JSON object only:
{"ranking":[{"answer":<number>,"score":<0-10>,"rationale":"<one sentence>"}],"rationale":"<two sentences on the decision>"}`;

async function runRank(ctx: StepContext, deps: StepDeps, record: RunStep): Promise<void> {
  const compared = ctx.compared;
  const candidates = (compared?.answers ?? []).filter((a) => a.error === undefined);
  if (compared === undefined || candidates.length === 0) {
    throw stepFailure(
      ctx,
      "FAILED_PRECONDITION",
      `step "${ctx.step.rankStep}" has no answers to rank`,
    );
  }
  const ranking: RankingResult = create(RankingResultSchema, {
    comparedStepId: compared.stepId,
    criteria: ctx.step.criteria,
    by: ctx.rankBy,
  });
  let judged = false;
  if (ctx.step.judgeModel !== "") {
    const rubric =
      ctx.step.criteria.length > 0
        ? ctx.step.criteria.map((c, i) => `${i + 1}. ${c}`).join("\n")
        : "1. Correctness\n2. Completeness\n3. Clarity";
    const instructions = ctx.step.prompt !== "" ? renderTemplate(ctx.step.prompt, ctx.scope) : "";
    const prompt = [
      `Request:\n${ctx.scope.input}`,
      instructions !== "" ? `Instructions:\n${instructions}` : "",
      `Rubric:\n${rubric}`,
      ...candidates.map((a) => `Answer ${a.answerIndex + 1}:\n${a.text}`),
    ]
      .filter((s) => s !== "")
      .join("\n\n");
    const judgeCtx: StepContext = {
      ...ctx,
      step: { ...ctx.step, system: JUDGE_SYSTEM, prompt: "", addons: [] },
      runSystem: "",
      runAddons: [],
    };
    const models = [ctx.step.judgeModel];
    if (ctx.step.fallbackModel !== "" && ctx.step.fallbackModel !== ctx.step.judgeModel) {
      models.push(ctx.step.fallbackModel);
    }
    const { answer, model } = await withRetries(judgeCtx, deps, {
      models,
      prompt,
      answerIndex: 0,
      attributionStep: ctx.step.id,
      firstAttempt: 1,
      announce: true,
      responseFormat: {
        $typeName: "ensemble.modelproxy.v1.ResponseFormat",
        type: ResponseFormat_Type.JSON_OBJECT,
        schemaName: "",
        strict: false,
      },
      onAttempt: (attempt, m) => {
        record.attempts = attempt;
        record.model = m;
        record.fallbackUsed = m !== ctx.step.judgeModel;
      },
    });
    record.answers = [answer];
    record.usage = addUsage(record.usage, answer.usage);
    ranking.judgeModel = modelOf(answer) !== "" ? modelOf(answer) : model;
    const verdict = parseVerdict(answer.text, compared.answers.length);
    if (verdict !== undefined) {
      const byIndex = new Map(compared.answers.map((a) => [a.answerIndex, a]));
      const listed = verdict.ranked.filter((r) => byIndex.get(r.index)?.error === undefined);
      const rest = rankByCriteria(
        candidates.filter((a) => !listed.some((r) => r.index === a.answerIndex)),
        ctx.rankBy,
      );
      ranking.ranked = [
        ...listed.map((r, i) => ({
          $typeName: "ensemble.events.v1.RankedAnswer" as const,
          rank: i + 1,
          answerIndex: r.index,
          model: modelOf(byIndex.get(r.index) ?? candidates[0]!),
          score: r.score,
          rationale: r.rationale,
        })),
        ...rest.map((r, i) => ({
          ...r,
          rank: listed.length + i + 1,
          rationale: "not ranked by the judge",
        })),
      ];
      ranking.rationale = verdict.rationale;
      judged = true;
    } else {
      // The judge did not answer in the expected shape: keep its words as the rationale and
      // order by the declared criteria (latency when none).
      ranking.rationale = `The judge's answer was not a ranking; ordered by ${
        ctx.rankBy.length > 0
          ? ctx.rankBy.map((c) => RankCriterion[c]?.toLowerCase()).join(", ")
          : "latency"
      }. Judge: ${answer.text.slice(0, 500)}`;
    }
  } else {
    record.attempts = 1;
    await ctx.emit({
      type: RunEventType.STEP_STARTED,
      stepId: ctx.step.id,
      attempt: 1,
      payload: started_(ctx),
    });
  }
  if (!judged) {
    ranking.ranked = rankByCriteria(candidates, ctx.rankBy);
    if (ranking.rationale === "") {
      ranking.rationale = `Ranked by ${ctx.rankBy.map((c) => RankCriterion[c]?.toLowerCase().replace(/_/g, " ")).join(", ")}.`;
    }
  }
  record.ranking = ranking;
  const winner = compared.answers.find((a) => a.answerIndex === ranking.ranked[0]?.answerIndex);
  record.output = `${winner?.text ?? ""}${ranking.rationale !== "" ? `\n\n---\nJudge's notes: ${ranking.rationale}` : ""}`;
}

/**
 * A plugin step: Invoke `plugin_method` of the registered plugin `plugin` with the inputs rendered
 * from the prompt, `1 + retries` attempts when the failure is retryable and the plugin declares
 * the method idempotent. The output is the plugin's `text`, else the JSON of its `outputs`.
 */
async function runPlugin(ctx: StepContext, deps: StepDeps, record: RunStep): Promise<void> {
  const plugins = deps.plugins;
  if (plugins === undefined) {
    throw stepFailure(
      ctx,
      "FAILED_PRECONDITION",
      "this workflow engine has no plugin registry configured",
    );
  }
  const inputs = pluginInputs(ctx.step.prompt, (text) => renderTemplate(text, ctx.scope));
  await withAttempts(
    ctx,
    record,
    async ({ attempt, token, timeoutMs }) => {
      const { response } = await invokeOnce(plugins, ctx, { inputs, attempt, token, timeoutMs });
      record.output = response.text !== "" ? response.text : JSON.stringify(response.outputs ?? {});
      record.usage = addUsage(record.usage, response.usage);
    },
    // Retried only when asking again is safe: a transient failure of a method the plugin
    // declares idempotent (Describe).
    { mayRetry: isIdempotentFailure },
  );
}

/**
 * The attempts of a step that calls one service (plugin, retrieve): step.started per attempt,
 * the call with a token acting for the run's user and the attempt's deadline (the gRPC deadline
 * bounds the attempt; the run's signal cancels it), then step.failed and another attempt while
 * the failure is retryable, `mayRetry` allows it and `retries` are left. `failure` may restate
 * an error for the run's record first.
 */
async function withAttempts(
  ctx: StepContext,
  record: RunStep,
  call: (a: { attempt: number; token: string; timeoutMs: number }) => Promise<void>,
  opts: { mayRetry: (err: unknown) => boolean; failure?: (err: unknown) => unknown },
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    record.attempts = attempt;
    await ctx.emit({
      type: RunEventType.STEP_STARTED,
      stepId: ctx.step.id,
      attempt,
      payload: started_(ctx),
    });
    try {
      const timeoutMs = attemptTimeout(ctx);
      await call({ attempt, token: await ctx.token(), timeoutMs });
      return;
    } catch (caught) {
      if (ctx.signal.aborted) throw new ConnectError("the run was cancelled", Code.Canceled);
      const err = opts.failure !== undefined ? opts.failure(caught) : caught;
      const error = runErrorOf(err, ctx.step.id);
      const willRetry = error.retryable && opts.mayRetry(err) && attempt <= ctx.retries;
      if (!willRetry) throw err;
      await ctx.emit({
        type: RunEventType.STEP_FAILED,
        stepId: ctx.step.id,
        attempt,
        payload: { case: "stepFailed", value: { error, willRetry, fallbackModel: "" } },
      });
    }
  }
}

async function invokeOnce(
  plugins: PluginInvoker,
  ctx: StepContext,
  call: {
    inputs: ReturnType<typeof pluginInputs>;
    attempt: number;
    token: string;
    timeoutMs: number;
  },
) {
  return plugins.invoke({
    plugin: ctx.step.plugin,
    method: ctx.step.pluginMethod,
    inputs: call.inputs,
    context: {
      tenantId: ctx.ref.tenantId,
      userId: ctx.ref.userId,
      runId: ctx.ref.runId,
      stepId: ctx.step.id,
      attempt: call.attempt,
      requestId: ctx.ref.runId,
    },
    token: call.token,
    timeoutMs: call.timeoutMs,
    signal: ctx.signal,
  });
}

/** Passages a retrieve step returns when its `top_k` is 0. */
export const DEFAULT_TOP_K = 5;

/**
 * A retrieve step: Search `collection` (rendered, so a template can take it from an input) for
 * the rendered prompt (empty: the run's input), `top_k` hits, with a token acting for the run's
 * user, so vector-search resolves the collection in the run's tenant only. The structured output
 * is `{"hits": [...]}`; the text output numbers the passages, `[n] (document) text`, so a later
 * prompt can ask for citations as [n]. Search has no side effects, so transient failures are
 * retried up to `retries` times.
 */
async function runRetrieve(ctx: StepContext, deps: StepDeps, record: RunStep): Promise<void> {
  const vectorSearch = deps.vectorSearch;
  if (vectorSearch === undefined) {
    throw stepFailure(
      ctx,
      "FAILED_PRECONDITION",
      "vector-search is not configured for this workflow engine (VECTOR_SEARCH_ADDR), so retrieve steps cannot run",
    );
  }
  const collection = renderTemplate(ctx.step.collection, ctx.scope).trim();
  if (collection === "") {
    throw stepFailure(ctx, "INVALID_ARGUMENT", "the retrieve step's collection is empty");
  }
  const query = (
    ctx.step.prompt !== "" ? renderTemplate(ctx.step.prompt, ctx.scope) : ctx.scope.input
  ).trim();
  if (query === "") {
    throw stepFailure(
      ctx,
      "INVALID_ARGUMENT",
      "the retrieve step has nothing to search for (empty prompt)",
    );
  }
  const k = ctx.step.topK > 0 ? ctx.step.topK : DEFAULT_TOP_K;
  await withAttempts(
    ctx,
    record,
    async ({ token, timeoutMs }) => {
      const res = await vectorSearch.search(
        // Search caps its text at 64 KiB; a longer rendered prompt searches with its beginning.
        { collectionId: collection, text: query.slice(0, 65_536), k },
        { headers: { authorization: `Bearer ${token}` }, signal: ctx.signal, timeoutMs },
      );
      record.usage = addUsage(record.usage, res.usage);
      record.structuredOutput = { hits: res.hits.map((h, i) => hitJson(h, i + 1)) };
      record.output = passagesText(res.hits, collection);
    },
    {
      // Search has no side effects: any transient failure may be retried.
      mayRetry: () => true,
      failure: (err) => {
        // Our services' messages are safe to show; anything else is "internal error" (the
        // cause stays attached for the log).
        const ce = toConnectError(err);
        // Another tenant's collection is NOT_FOUND too: vector-search never reveals it exists.
        return new ConnectError(
          ce.code === Code.NotFound
            ? `collection "${collection}" was not found in this tenant's vector-search`
            : `retrieve from collection "${collection}" failed: ${ce.rawMessage}`,
          ce.code,
          undefined,
          undefined,
          err,
        );
      },
    },
  );
}

/** One hit of a retrieve step's structured output; `n` is its number in the text output. */
function hitJson(hit: SearchHit, n: number): JsonObject {
  return {
    n,
    id: `${hit.documentId}#${hit.chunkIndex}`,
    documentId: hit.documentId,
    chunkIndex: hit.chunkIndex,
    text: hit.text,
    score: hit.score,
    metadata: hit.metadata ?? {},
  };
}

/** The hits as numbered passages, best first: `[1] (document-id) text`. */
export function passagesText(hits: SearchHit[], collection: string): string {
  if (hits.length === 0) return `(no passages found in collection "${collection}")`;
  return hits.map((h, i) => `[${i + 1}] (${h.documentId}) ${h.text}`).join("\n\n");
}

/** Milliseconds of a RunStep's start (for queue-time arithmetic elsewhere). */
export function startMs(step: RunStep): number {
  return step.startTime !== undefined ? timestampDate(step.startTime).getTime() : 0;
}

export type { ChatMessage };
