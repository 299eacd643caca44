// ModelProxyService handlers: resolve the model in the caller tenant's catalog, check what the
// model can do and the caller's budget, answer from the tenant's cache when allowed, route the
// call (router.ts: deployments, limits, retries, breakers, fallbacks), and record exact usage
// and cost (accounting: ledger + usage event + spend), streaming included.
import { randomUUID } from "node:crypto";
import { clone, create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, timestampNow, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  InvalidArgumentError,
  loggerOf,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
  ResourceExhaustedError,
  toConnectError,
  UnavailableError,
  type Metrics,
  type Principal,
} from "@ensemble/kit";
import { Counter, Histogram } from "prom-client";
import {
  CacheMode,
  DefaultCache,
  Capability,
  ChatRequestSchema,
  ChatResponseSchema,
  ChatRole,
  EmbedRequestSchema,
  EmbedResponseSchema,
  FinishReason,
  ServedBySchema,
  StreamChatResponseSchema,
  UsageOperation,
  UsageSchema,
  type CallAttribution,
  type ChatRequest,
  type ChatResponse,
  type Model,
  type ModelProxyService,
  type ServedBy,
  type StreamChatResponse,
  type TokenLogprob,
  type Usage,
} from "@ensemble/proto";
import type { Accounting, Caller, KeyRules, LedgerEntry } from "./accounting/index.js";
import { cacheKey, type ResponseCache } from "./cache.js";
import type { SemanticCache, SemanticProbe } from "./semantic-cache.js";
import type { CallLogs } from "./call-logs.js";
import type { TenantDefaults, TenantSettings } from "./tenant-settings.js";
import {
  guardChat,
  guardsInput,
  guardTexts,
  GuardrailStats,
  OutputGuard,
  textOfParts,
  withheldFor,
  withheldNote,
  type CompiledGuardrails,
} from "./guardrails.js";
import type { DeploymentLimiter } from "./limits.js";
import { safeToken } from "./accounting/keys.js";
import type { StoredResponses } from "./stored-responses.js";
import { costOf, requireCapability, type Catalog } from "./catalog.js";
import { coalesceDeltas } from "./providers/coalesce.js";
import {
  ProviderError,
  type ChatChunk,
  type Deployment,
  type ProviderClient,
  type TokenCounts,
} from "./providers/types.js";
import { toDomainError, type Router, type Routed } from "./router.js";
import { countChat, countText, estimateChatTokens, estimateTextTokens } from "./tokens.js";

export interface ModelProxyDeps {
  catalog: Catalog;
  router: Router;
  accounting: Accounting;
  cache: ResponseCache;
  /** Tenants whose calls use the cache unless a call says BYPASS; "*" = every tenant. */
  cacheTenants: ReadonlySet<string>;
  /** Responses API answers kept for previous_response_id. */
  responses: StoredResponses;
  /** Logged chats (ChatRequest.log, or tenants in callLogTenants; "*" = every tenant). */
  callLogs: CallLogs;
  callLogTenants: ReadonlySet<string>;
  /** The tenants' own defaults (call log, cache), from auth. */
  tenantSettings: TenantSettings;
  /** CACHE_MODE_SEMANTIC's lookups; undefined = no vector-search (SEMANTIC acts as USE). */
  semantic?: SemanticCache;
  /** Shared per-minute buckets, for API keys' own rpm/tpm; undefined = not enforced. */
  limiter?: DeploymentLimiter;
  metrics?: Metrics;
}

function cacheMetrics(metrics: Metrics) {
  const registers = [metrics.registry];
  return {
    lookups: new Counter({
      name: "ensemble_model_proxy_cache_lookups_total",
      help: "Response cache lookups by kind (exact, semantic) and result (hit, miss).",
      labelNames: ["kind", "result"] as const,
      registers,
    }),
    similarity: new Histogram({
      name: "ensemble_model_proxy_semantic_cache_similarity",
      help: "Cosine similarity of the nearest cached question to a semantic lookup's (hit or not): where CACHE_SEMANTIC_MIN_SIMILARITY cuts this distribution decides the hit rate.",
      buckets: [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1],
      registers,
    }),
  };
}

/**
 * The catalog's role aliases. The simulator's model for a role answers to "sim-<alias>"
 * (deploy/config/models.yaml), which is what a role alias falls back to when its real model's
 * provider is not configured but the simulator is (a local run without provider keys).
 */
const ROLE_ALIASES = new Set([
  "categorizer",
  "fast",
  "medium",
  "thinking",
  "code",
  "vision",
  "image",
  "video",
  "embedding",
]);

/** Output tokens assumed for the tpm limit when a request sets no max_tokens. */
const DEFAULT_OUTPUT_ESTIMATE = 512;
/** Between the pieces of an answer checked together: a word boundary no term can span. */
const APART = "\u0000";

type Impl = ServiceImpl<typeof ModelProxyService>;

/** One call as the ledger records it (see record() in modelProxyHandlers). */
interface RecordFields {
  id: string;
  requested: string;
  model: Model;
  served?: ServedBy;
  usage?: Usage;
  latencyMs: number;
  ttftMs?: number;
  streaming?: boolean;
  cacheHit?: boolean;
  status?: string;
  attribution: CallAttribution | undefined;
  metadata?: Record<string, string>;
}

export function modelProxyHandlers(deps: ModelProxyDeps): Impl {
  const { catalog, router, accounting, cache } = deps;
  const cacheStats = deps.metrics === undefined ? undefined : cacheMetrics(deps.metrics);
  const guardStats = new GuardrailStats(deps.metrics);

  function callerOf(ctx: HandlerContext): { principal: Principal; caller: Caller } {
    const principal = principalOf(ctx);
    const header = ctx.requestHeader.get("authorization") ?? "";
    const token = header.replace(/^Bearer\s+/i, "");
    return {
      principal,
      caller: {
        tenantId: principal.tenantId,
        userId: principal.subject,
        apiKeyId: principal.apiKeyId ?? "",
        token,
      },
    };
  }

  /** The simulator's model answering role alias `name` when `model` (its catalog model) cannot. */
  function standIn(name: string, model: Model): string | undefined {
    if (router.serves(model) || !ROLE_ALIASES.has(name) || !router.hasProvider("simulator")) {
      return undefined;
    }
    return `sim-${name}`;
  }

  /** The catalog model for `name`, with role aliases on the simulator when only it is configured. */
  async function resolveModel(caller: Caller, name: string): Promise<Model> {
    const model = await catalog.resolve(caller.tenantId, name, caller.token);
    const sim = standIn(name, model);
    if (sim === undefined) return model;
    try {
      return await catalog.resolve(caller.tenantId, sim, caller.token);
    } catch {
      return model; // no simulator stand-in: the call fails with the real model's reason
    }
  }

  /** The catalog models the call's API key may call; undefined: every model. */
  async function keyModels(
    caller: Caller,
  ): Promise<{ key: KeyRules; ids: Set<string> } | undefined> {
    const key = await accounting.apiKey(caller);
    if (key === undefined || key.models.length === 0) return undefined;
    const models = await Promise.all(
      key.models.map((name) => resolveModel(caller, name).catch(() => undefined)),
    );
    return { key, ids: new Set(models.flatMap((m) => (m === undefined ? [] : [m.id]))) };
  }

  /**
   * `name` resolved to the model that answers it, refused (PERMISSION_DENIED) when the call's API
   * key may not call it; `fallbacks` (the request's own, not the catalog's chain) likewise.
   */
  async function callableModel(
    caller: Caller,
    name: string,
    fallbacks: readonly string[] = [],
  ): Promise<Model> {
    const model = await resolveModel(caller, name);
    const allowed = await keyModels(caller);
    if (allowed === undefined) return model;
    const refuse = (field: string, asked: string, m: Model) =>
      new PermissionDeniedError(
        `${field}: API key "${allowed.key.name}" may not call ${asked === m.id ? m.id : `${asked} (${m.id})`}; ` +
          `it may call ${allowed.key.models.join(", ")}`,
      );
    if (!allowed.ids.has(model.id)) throw refuse("model", name, model);
    for (const [i, fallback] of fallbacks.entries()) {
      const m = await resolveModel(caller, fallback).catch(() => undefined);
      if (m !== undefined && !allowed.ids.has(m.id))
        throw refuse(`fallback_models[${i}]`, fallback, m);
    }
    return model;
  }

  /**
   * The embedding of a chat's last user message for the semantic cache, made with `name` and
   * billed to the caller as an embedding call (metadata purpose=semantic-cache).
   */
  async function embedForCache(
    caller: Caller,
    name: string,
    text: string,
    signal: AbortSignal,
  ): Promise<number[]> {
    const started = performance.now();
    const id = `emb-${randomUUID().replaceAll("-", "")}`;
    const model = await resolveModel(caller, name);
    requireCapability(model, Capability.EMBEDDINGS, "embeddings");
    const call = { id, requested: name, model, attribution: undefined };
    try {
      const routed = await router.run(
        model,
        () => Promise.resolve([]),
        estimateTextTokens(text),
        signal,
        (client, _d, m) => client.embed({ model: m.providerModelId, inputs: [text], signal }),
      );
      routed.finish();
      const served = servedBy(name, routed.model, routed.deployment, routed, false);
      record(caller, UsageOperation.EMBED, {
        ...call,
        model: routed.model,
        served,
        usage: usageOf(routed.model, { inputTokens: routed.value.inputTokens, outputTokens: 0 }),
        latencyMs: performance.now() - started,
        metadata: { purpose: "semantic-cache" },
      });
      const vector = routed.value.vectors[0];
      if (vector === undefined)
        throw new UnavailableError(`${routed.model.id} returned no embedding`);
      return vector;
    } catch (err) {
      throw failed(caller, UsageOperation.EMBED, call, started, err);
    }
  }

  /**
   * The call's API key's own per-minute limits (shared by every replica): RESOURCE_EXHAUSTED
   * with retry-after-ms over them. `tokens` is the call's estimate, as the deployments' tpm.
   */
  async function admitKey(caller: Caller, tokens: number): Promise<void> {
    const limiter = deps.limiter;
    if (limiter === undefined || caller.apiKeyId === "") return;
    const key = await accounting.apiKey(caller);
    const rpm = key?.requestsPerMinute;
    const tpm = key?.tokensPerMinute;
    if (key === undefined || (rpm === undefined && tpm === undefined)) return;
    const bucket = `apikey:${safeToken(caller.tenantId)}:${safeToken(key.id)}`;
    const decision = await limiter.takeFor(bucket, { rpm, tpm }, tokens);
    if (decision.ok) return;
    const allows =
      decision.limit === "rpm" ? `${rpm} requests per minute` : `${tpm} tokens per minute`;
    if (decision.reason === "cost-exceeds-burst") {
      throw new ResourceExhaustedError(
        `API key "${key.name}" allows ${allows} and this call alone needs about ${tokens} tokens`,
      );
    }
    throw new ResourceExhaustedError(
      `rate limit exceeded: API key "${key.name}" allows ${allows}`,
      {
        retryAfterMs: decision.retryAfterMs,
      },
    );
  }

  /**
   * The cache a call uses: its own choice, else its tenant's default (TenantSettings), else the
   * deployment's (CACHE_TENANTS: exact). "semantic" only for chats (`semanticOk`).
   */
  function cacheFor(
    caller: Caller,
    mode: CacheMode,
    semanticOk: boolean,
    tenantDefaults: TenantDefaults,
  ): "off" | "exact" | "semantic" {
    let chosen: "off" | "exact" | "semantic";
    if (mode === CacheMode.BYPASS) chosen = "off";
    else if (mode === CacheMode.USE) chosen = "exact";
    else if (mode === CacheMode.SEMANTIC) chosen = "semantic";
    else {
      const tenant = tenantDefaults.cache;
      if (tenant === DefaultCache.OFF) chosen = "off";
      else if (tenant === DefaultCache.EXACT) chosen = "exact";
      else if (tenant === DefaultCache.SEMANTIC) chosen = "semantic";
      else {
        const listed = deps.cacheTenants.has("*") || deps.cacheTenants.has(caller.tenantId);
        chosen = listed ? "exact" : "off";
      }
    }
    return chosen === "semantic" && !semanticOk ? "exact" : chosen;
  }

  /** The request's own fallback list, else the catalog's chain; unknown names are skipped. */
  function fallbacksOf(model: Model, requested: readonly string[], caller: Caller) {
    return async (): Promise<Model[]> => {
      const names = requested.length > 0 ? requested : model.fallbacks;
      const out: Model[] = [];
      for (const name of names) {
        try {
          out.push(await catalog.resolve(caller.tenantId, name, caller.token));
        } catch {
          // A stale or disabled chain entry must not hide the primary model's real failure.
        }
      }
      return out;
    };
  }

  function checkChat(model: Model, req: ChatRequest): number {
    requireCapability(model, Capability.CHAT, "chat");
    if (req.topLogprobs > 0 && !req.logprobs) {
      throw new InvalidArgumentError("top_logprobs needs logprobs", { field: "top_logprobs" });
    }
    const images = req.messages.some((m) => m.content.some((p) => p.part.case === "image"));
    if (images) requireCapability(model, Capability.VISION, "image inputs");
    if (req.tools.length > 0 && !model.capabilities.includes(Capability.TOOLS)) {
      throw new InvalidArgumentError(`model ${model.id} does not support tools`, {
        field: "tools",
      });
    }
    const input = estimateChatTokens(req.messages);
    const wanted = input + (req.maxTokens ?? 0);
    if (model.contextWindow > 0 && wanted > model.contextWindow) {
      throw new InvalidArgumentError(
        `the request needs about ${wanted} tokens (input${req.maxTokens !== undefined ? " + max_tokens" : ""}) but model ${model.id} has a context window of ${model.contextWindow}`,
        { field: "messages" },
      );
    }
    return input;
  }

  function usageOf(model: Model, t: TokenCounts): Usage {
    return create(UsageSchema, {
      inputTokens: BigInt(t.inputTokens),
      outputTokens: BigInt(t.outputTokens),
      totalTokens: BigInt(t.inputTokens + t.outputTokens),
      costUsd: costOf(model, t),
      cachedInputTokens: BigInt(t.cachedInputTokens ?? 0),
      cacheWriteInputTokens: BigInt(t.cacheWriteInputTokens ?? 0),
      reasoningTokens: BigInt(t.reasoningTokens ?? 0),
    });
  }

  function servedBy(
    requested: string,
    model: Model,
    d: Deployment | undefined,
    routed: Pick<Routed<unknown>, "attempts" | "fallbacksTried"> | undefined,
    cacheHit: boolean,
  ): ServedBy {
    return create(ServedBySchema, {
      model: model.id,
      requestedModel: requested,
      provider: model.provider,
      deployment: d?.name ?? "",
      providerModelId: model.providerModelId,
      simulated: d?.simulated ?? model.provider === "simulator",
      cacheHit,
      attempts: routed?.attempts ?? 0,
      fallbacksTried: routed?.fallbacksTried ?? [],
    });
  }

  function record(caller: Caller, op: UsageOperation, fields: RecordFields): void {
    const a = fields.attribution;
    const ok = fields.status === undefined || fields.status === "OK";
    const entry: LedgerEntry = {
      id: fields.id,
      tenantId: caller.tenantId,
      userId: caller.userId,
      apiKeyId: caller.apiKeyId,
      operation: op,
      model: fields.served?.model ?? fields.model.id,
      requestedModel: fields.requested,
      provider: fields.served?.provider ?? fields.model.provider,
      deployment: fields.served?.deployment ?? "",
      inputTokens: Number(fields.usage?.inputTokens ?? 0n),
      outputTokens: Number(fields.usage?.outputTokens ?? 0n),
      cachedInputTokens: Number(fields.usage?.cachedInputTokens ?? 0n),
      cacheWriteInputTokens: Number(fields.usage?.cacheWriteInputTokens ?? 0n),
      reasoningTokens: Number(fields.usage?.reasoningTokens ?? 0n),
      costUsd: fields.usage?.costUsd ?? 0,
      latencyMs: fields.latencyMs,
      ttftMs: fields.ttftMs ?? fields.latencyMs,
      time: new Date(),
      streaming: fields.streaming ?? false,
      cacheHit: fields.cacheHit ?? false,
      simulated: fields.served?.simulated ?? false,
      status: fields.status ?? "OK",
      runId: a?.runId ?? "",
      // A failed call never takes the step's idempotency slot: the retry that succeeds must bill.
      stepId: ok ? (a?.stepId ?? "") : "",
      sessionId: a?.sessionId ?? "",
      attempt: a?.attempt ?? 0,
      idempotencyKey: ok ? (a?.idempotencyKey ?? "") : "",
      metadata: fields.metadata ?? {},
    };
    accounting.record(entry);
  }

  /** Records a call that failed before it answered (with its gRPC status); returns the error. */
  function failed(
    caller: Caller,
    op: UsageOperation,
    call: Pick<
      RecordFields,
      "id" | "requested" | "model" | "attribution" | "streaming" | "metadata"
    >,
    started: number,
    err: unknown,
  ): ConnectError {
    const error = toConnectError(err);
    record(caller, op, {
      ...call,
      latencyMs: performance.now() - started,
      status: Code[error.code],
    });
    return error;
  }

  /** A cached ChatResponse, re-issued under a new id at zero cost. */
  async function fromCache(tenantId: string, key: string): Promise<ChatResponse | undefined> {
    const bytes = await cache.get(tenantId, key);
    if (bytes === undefined) return undefined;
    try {
      return fromBinary(ChatResponseSchema, bytes);
    } catch {
      return undefined; // an entry from an incompatible version: a miss
    }
  }

  /**
   * What a chat call does before any provider is asked, streaming or not: the caller, the model,
   * the input checked against its context window, the budget, an id, and (when the cache is on
   * for this call) a cached answer, re-issued at zero cost.
   */
  async function beginChat(asked: ChatRequest, ctx: HandlerContext) {
    const started = performance.now();
    const { caller } = callerOf(ctx);
    const model = await callableModel(caller, asked.model, asked.fallbackModels);
    // One (cached) read of the tenant's settings for the guardrails, the cache and the call log.
    const tenant = await deps.tenantSettings.get(caller.tenantId, caller.token);
    // From here on, the request is the guarded one: the provider, the cache and the log see it.
    const req = guardChat(tenant.guardrails, asked, guardStats);
    const guardrails = tenant.guardrails;
    const input = checkChat(model, req);
    await accounting.checkBudget(caller, costOf(model, { inputTokens: input, outputTokens: 0 }));
    await admitKey(caller, input + (req.maxTokens ?? DEFAULT_OUTPUT_ESTIMATE));
    const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
    const cacheMode = cacheFor(caller, req.cache, true, tenant);
    const useCache = cacheMode !== "off";
    const key = useCache ? cacheKey(ChatRequestSchema, req) : "";
    let cached = useCache ? await fromCache(caller.tenantId, key) : undefined;
    if (useCache) {
      cacheStats?.lookups.inc({ kind: "exact", result: cached === undefined ? "miss" : "hit" });
    }
    let similarity = 1;
    let probe: SemanticProbe | undefined;
    const semantic = deps.semantic;
    if (cached === undefined && cacheMode === "semantic" && semantic !== undefined) {
      probe = await semantic.lookup(
        caller.tenantId,
        caller.userId,
        req,
        caller.token,
        ctx.signal,
        (text) => embedForCache(caller, semantic.model, text, ctx.signal),
        tenant.semanticMinSimilarity,
      );
      if (probe?.hit !== undefined) {
        cached = await fromCache(caller.tenantId, probe.hit.key);
        similarity = probe.hit.similarity;
      }
      if (probe !== undefined) {
        if (probe.nearest !== undefined) cacheStats?.similarity.observe(probe.nearest);
        const result = cached === undefined ? "miss" : "hit";
        cacheStats?.lookups.inc({ kind: "semantic", result });
      }
    }
    const hit =
      cached === undefined
        ? undefined
        : {
            response: cached,
            served: cachedServedBy(cached.servedBy, req.model, similarity),
            usage: cachedUsage(cached.usage),
          };
    /** Caches an answer: by its exact key, and (semantic lookups) by its question's meaning. */
    const store = (response: ChatResponse) => {
      void cache
        .set(caller.tenantId, key, toBinary(ChatResponseSchema, response))
        .then(() =>
          probe !== undefined && semantic !== undefined
            ? semantic.remember(caller.tenantId, probe, key, caller.token)
            : undefined,
        );
    };
    const logIt =
      req.log ||
      deps.callLogTenants.has("*") ||
      deps.callLogTenants.has(caller.tenantId) ||
      tenant.logCalls;
    type ChatFields = Omit<RecordFields, "id" | "requested" | "attribution" | "metadata">;
    /**
     * Puts this call in the ledger (its id, requested model, attribution and metadata) and, when
     * it is logged, in the call log with its answer or error.
     */
    const recordChat = (
      fields: ChatFields,
      outcome: { response?: ChatResponse; error?: string } = {},
    ) => {
      record(caller, UsageOperation.CHAT, {
        ...fields,
        id,
        requested: req.model,
        attribution: req.attribution,
        metadata: req.metadata,
      });
      if (!logIt) return;
      deps.callLogs.record({
        id,
        tenantId: caller.tenantId,
        userId: caller.userId,
        apiKeyId: caller.apiKeyId,
        requestedModel: req.model,
        model: fields.served?.model ?? fields.model.id,
        streaming: fields.streaming ?? false,
        cacheHit: fields.cacheHit ?? false,
        status: fields.status ?? "OK",
        latencyMs: fields.latencyMs,
        inputTokens: Number(fields.usage?.inputTokens ?? 0n),
        outputTokens: Number(fields.usage?.outputTokens ?? 0n),
        costUsd: fields.usage?.costUsd ?? 0,
        request: req,
        ...outcome,
      });
    };
    /** The error for a call that failed before it answered, recorded as failed. */
    const fail = (err: unknown, streaming: boolean) => {
      const error = toConnectError(err);
      recordChat(
        { model, latencyMs: performance.now() - started, streaming, status: Code[error.code] },
        { error: error.rawMessage },
      );
      return error;
    };
    return {
      req,
      guardrails,
      started,
      caller,
      model,
      input,
      id,
      useCache,
      hit,
      store,
      recordChat,
      fail,
    };
  }

  /**
   * The answer as the caller may see it: withheld (no text, reasoning or tool calls; finish
   * reason CONTENT_FILTER) when its text, its reasoning or a tool call's name or arguments hold
   * one of the tenant's blocked output terms, and a note for the call log.
   */
  function screened(
    g: CompiledGuardrails,
    response: ChatResponse,
  ): { response: ChatResponse; withheld?: string } {
    if (g.blockedOutputTerms === undefined) return { response };
    const said = [
      textOfParts(response.message?.content ?? []),
      response.reasoning,
      ...(response.message?.toolCalls ?? []).map((c) => `${c.name}${APART}${c.arguments}`),
    ];
    const term = withheldFor(g, said.join(APART), guardStats);
    if (term === undefined) return { response };
    const out = clone(ChatResponseSchema, response);
    if (out.message !== undefined) {
      out.message.content = [];
      out.message.toolCalls = [];
    }
    out.reasoning = "";
    out.logprobs = [];
    out.finishReason = FinishReason.CONTENT_FILTER;
    return { response: out, withheld: withheldNote(term) };
  }

  return {
    async chat(asked, ctx) {
      const begun = await beginChat(asked, ctx);
      const { req, guardrails, started, caller, model, input, id } = begun;
      const { useCache, hit, store, recordChat, fail } = begun;
      if (hit !== undefined) {
        const latency = performance.now() - started;
        const { response, withheld } = screened(
          guardrails,
          create(ChatResponseSchema, {
            ...hit.response,
            id,
            servedBy: hit.served,
            usage: hit.usage,
            latency: duration(latency),
            timeToFirstToken: duration(latency),
            createTime: timestampNow(),
          }),
        );
        recordChat(
          { model, served: hit.served, usage: hit.usage, latencyMs: latency, cacheHit: true },
          { response, ...(withheld !== undefined ? { error: withheld } : {}) },
        );
        return response;
      }

      try {
        const routed = await router.run(
          model,
          fallbacksOf(model, req.fallbackModels, caller),
          input + (req.maxTokens ?? DEFAULT_OUTPUT_ESTIMATE),
          ctx.signal,
          (client, d, m) => {
            requireLogprobs(client, d, req);
            return client.chat({ model: m.providerModelId, request: req, signal: ctx.signal });
          },
        );
        routed.finish();
        const r = routed.value;
        const latency = performance.now() - started;
        const served = servedBy(req.model, routed.model, routed.deployment, routed, false);
        const usage = usageOf(routed.model, r);
        const { response, withheld } = screened(
          guardrails,
          create(ChatResponseSchema, {
            id,
            servedBy: served,
            message: r.message,
            reasoning: r.reasoning,
            finishReason: r.finishReason,
            logprobs: r.logprobs ?? [],
            usage,
            latency: duration(latency),
            timeToFirstToken: duration(latency),
            createTime: timestampNow(),
          }),
        );
        recordChat(
          { model: routed.model, served, usage, latencyMs: latency },
          { response, ...(withheld !== undefined ? { error: withheld } : {}) },
        );
        if (useCache && withheld === undefined && r.finishReason !== FinishReason.LENGTH) {
          store(response);
        }
        return response;
      } catch (err) {
        throw fail(err, false);
      }
    },

    async *streamChat(sreq, ctx) {
      const asked = sreq.chat;
      if (asked === undefined) {
        throw new InvalidArgumentError("chat is required", { field: "chat" });
      }
      const log = loggerOf(ctx);
      const begun = await beginChat(asked, ctx);
      const { req, guardrails, started, caller, model, input, id } = begun;
      const { useCache, hit, store, recordChat, fail } = begun;
      if (hit !== undefined) {
        yield event({
          case: "start",
          value: { id, servedBy: hit.served, createTime: timestampNow() },
        });
        const { response, withheld } = screened(
          guardrails,
          create(ChatResponseSchema, {
            ...hit.response,
            id,
            servedBy: hit.served,
            usage: hit.usage,
          }),
        );
        const toolCalls = (response.message?.toolCalls ?? []).map((c, index) => ({
          index,
          id: c.id,
          name: c.name,
          arguments: c.arguments,
        }));
        yield event({
          case: "delta",
          value: {
            content: textOfParts(response.message?.content ?? []),
            reasoning: response.reasoning,
            toolCalls,
          },
        });
        const latency = performance.now() - started;
        response.latency = duration(latency);
        yield event({
          case: "end",
          value: {
            finishReason: response.finishReason,
            usage: hit.usage,
            latency: duration(latency),
            timeToFirstToken: duration(latency),
            servedBy: hit.served,
          },
        });
        recordChat(
          {
            model,
            served: hit.served,
            usage: hit.usage,
            latencyMs: latency,
            cacheHit: true,
            streaming: true,
          },
          { response, ...(withheld !== undefined ? { error: withheld } : {}) },
        );
        return;
      }

      let routed: Routed<{ it: AsyncIterator<ChatChunk>; first: ChatChunk }>;
      try {
        routed = await router.run(
          model,
          fallbacksOf(model, req.fallbackModels, caller),
          input + (req.maxTokens ?? DEFAULT_OUTPUT_ESTIMATE),
          ctx.signal,
          async (client, _d, m) => {
            requireLogprobs(client, _d, req);
            const stream = client.streamChat({
              model: m.providerModelId,
              request: req,
              signal: ctx.signal,
            });
            const it = stream[Symbol.asyncIterator]();
            const first = await it.next();
            if (first.done === true) {
              throw new ProviderError(
                "stream_cut",
                `${_d.name}: the stream ended before its first chunk`,
              );
            }
            return { it, first: first.value };
          },
        );
      } catch (err) {
        throw fail(err, true);
      }

      const ttft = performance.now() - started;
      const served = servedBy(req.model, routed.model, routed.deployment, routed, false);
      const it = coalesceDeltas(routed.value.it);
      let chunk: ChatChunk | undefined = routed.value.first;
      // What the provider produced (for the usage of a cut stream) and what the caller was sent
      // (the same, unless the tenant's output rules hold text back or withhold the answer).
      let content = "";
      let shown = "";
      let reasoning = "";
      // The tenant's blocked output terms: the text and the reasoning each go through their own
      // hold-back guard; tool calls are held whole until the answer ends, then checked.
      const terms = guardrails.blockedOutputTerms;
      const guard = terms === undefined ? undefined : new OutputGuard(terms);
      const thoughtGuard = terms === undefined ? undefined : new OutputGuard(terms);
      // Log probabilities of text the guard holds back, and how much text they cover so far.
      const heldLogprobs: TokenLogprob[] = [];
      let coveredChars = 0;
      /** The held log probabilities whose tokens lie within the first `sentChars` sent. */
      const releasedLogprobs = (sentChars: number): TokenLogprob[] => {
        let n = 0;
        while (
          n < heldLogprobs.length &&
          coveredChars + heldLogprobs[n]!.token.length <= sentChars
        ) {
          coveredChars += heldLogprobs[n]!.token.length;
          n += 1;
        }
        return heldLogprobs.splice(0, n);
      };
      // Tool calls arrive in fragments (by index); the assembled answer carries them whole.
      const calls = new Map<number, { id: string; name: string; arguments: string }>();
      /** What was streamed so far, as one assistant message. */
      const streamedMessage = () => ({
        role: ChatRole.ASSISTANT,
        content: shown === "" ? [] : [{ part: { case: "text" as const, value: shown } }],
        toolCalls: [...calls.entries()].sort(([a], [b]) => a - b).map(([, call]) => call),
      });
      let finished = false;
      let outcome: unknown;
      /** Records the streamed answer as it ended; the stream's end event. */
      const ended = (finishReason: FinishReason, usage: Usage, note?: string) => {
        finished = true;
        const latency = performance.now() - started;
        const response = create(ChatResponseSchema, {
          id,
          servedBy: served,
          message: streamedMessage(),
          reasoning,
          finishReason,
          usage,
          latency: duration(latency),
          timeToFirstToken: duration(ttft),
        });
        recordChat(
          {
            model: routed.model,
            served,
            usage,
            latencyMs: latency,
            ttftMs: ttft,
            streaming: true,
          },
          { response, ...(note !== undefined ? { error: note } : {}) },
        );
        const end = {
          finishReason,
          usage,
          latency: duration(latency),
          timeToFirstToken: duration(ttft),
          servedBy: served,
        };
        return { response, end };
      };
      try {
        yield event({ case: "start", value: { id, servedBy: served, createTime: timestampNow() } });
        /** A blocked output term the answer held: the rest is withheld. */
        let withheld: string | undefined;
        /** The provider's own usage, once its stream ended. */
        let endUsage: Usage | undefined;
        while (chunk !== undefined) {
          if (chunk.type === "delta") {
            content += chunk.content;
            reasoning += chunk.reasoning;
            for (const d of chunk.toolCalls) {
              const call = calls.get(d.index) ?? { id: "", name: "", arguments: "" };
              if (d.id !== "") call.id = d.id;
              if (d.name !== "") call.name = d.name;
              call.arguments += d.arguments;
              calls.set(d.index, call);
            }
            let text = chunk.content;
            let thought = chunk.reasoning;
            let toolCalls = chunk.toolCalls;
            let logprobs = chunk.logprobs ?? [];
            if (guard !== undefined && thoughtGuard !== undefined) {
              const checked = guard.push(chunk.content);
              const thinking = thoughtGuard.push(chunk.reasoning);
              // A blocked term: what came before it still goes out, then the answer stops.
              withheld = checked.blocked ?? thinking.blocked;
              text = checked.send;
              thought = thinking.send;
              toolCalls = [];
              // A token's log probability goes out with the token's text, as the guard lets
              // the text out.
              heldLogprobs.push(...logprobs);
              logprobs = releasedLogprobs(shown.length + text.length);
            }
            shown += text;
            if (text !== "" || thought !== "" || toolCalls.length > 0 || logprobs.length > 0) {
              yield event({
                case: "delta",
                value: { content: text, reasoning: thought, toolCalls, logprobs },
              });
            }
            if (withheld !== undefined) break;
          } else {
            const usage = usageOf(routed.model, chunk);
            if (guard !== undefined && thoughtGuard !== undefined && terms !== undefined) {
              const checked = guard.end();
              const thinking = thoughtGuard.end();
              const held = [...calls.entries()].sort(([a], [b]) => a - b);
              const inCall = held
                .map(([, c]) => terms.find(`${c.name}${APART}${c.arguments}`)?.term)
                .find((t) => t !== undefined);
              const blocked = checked.blocked ?? thinking.blocked ?? inCall;
              // With a blocked term, the text before it still goes out; tool calls never do.
              const rest = checked.send;
              const restThought = thinking.send;
              const restCalls = blocked === undefined ? held : [];
              const restLogprobs =
                blocked === undefined
                  ? heldLogprobs.splice(0)
                  : releasedLogprobs(shown.length + rest.length);
              if (
                rest !== "" ||
                restThought !== "" ||
                restCalls.length > 0 ||
                restLogprobs.length > 0
              ) {
                shown += rest;
                yield event({
                  case: "delta",
                  value: {
                    content: rest,
                    reasoning: restThought,
                    toolCalls: restCalls.map(([index, c]) => ({ index, ...c })),
                    logprobs: restLogprobs,
                  },
                });
              }
              if (blocked !== undefined) {
                withheld = blocked;
                endUsage = usage;
                break;
              }
            }
            const { response, end } = ended(chunk.finishReason, usage);
            if (useCache && chunk.finishReason !== FinishReason.LENGTH) store(response);
            yield event({ case: "end", value: end });
            break;
          }
          const next = await it.next();
          chunk = next.done === true ? undefined : next.value;
        }
        if (withheld !== undefined) {
          // The rest of the answer is not read: the provider's stream is closed, and what it
          // produced so far is billed (its own usage when it had already ended).
          guardStats.count("withhold", "output_term");
          if (endUsage === undefined) await it.return?.();
          const usage =
            endUsage ??
            usageOf(routed.model, {
              inputTokens: input,
              outputTokens: estimateTextTokens(content + reasoning),
            });
          const { end } = ended(FinishReason.CONTENT_FILTER, usage, withheldNote(withheld));
          yield event({ case: "end", value: end });
        }
        if (!finished) {
          throw new ProviderError(
            "stream_cut",
            `${routed.deployment.name}: the stream ended before its finish`,
          );
        }
      } catch (err) {
        outcome = err;
        if (ctx.signal.aborted) throw err;
        log.warn({ err, deployment: routed.deployment.name }, "stream failed after it started");
        const error =
          err instanceof ProviderError
            ? toDomainError(err, routed.model.id)
            : new UnavailableError(`the stream from ${routed.model.id} failed`);
        throw error;
      } finally {
        routed.finish(outcome instanceof ProviderError ? outcome : undefined);
        if (!finished) {
          // Cut, failed or abandoned by the client: the provider still produced what we saw.
          await it.return?.();
          const output = estimateTextTokens(content + reasoning);
          const canceled = ctx.signal.aborted;
          recordChat(
            {
              model: routed.model,
              served,
              usage: usageOf(routed.model, { inputTokens: input, outputTokens: output }),
              latencyMs: performance.now() - started,
              ttftMs: ttft,
              streaming: true,
              status: canceled ? "Canceled" : "Unavailable",
            },
            {
              // What was streamed before the end, and why it ended.
              response: create(ChatResponseSchema, {
                id,
                servedBy: served,
                message: streamedMessage(),
                reasoning,
              }),
              error: canceled
                ? "canceled by the client during the stream"
                : `the stream from ${routed.model.id} failed after it started`,
            },
          );
        }
      }
    },

    async embed(asked, ctx) {
      const started = performance.now();
      const { caller } = callerOf(ctx);
      const model = await callableModel(caller, asked.model);
      requireCapability(model, Capability.EMBEDDINGS, "embeddings");
      const tenant = await deps.tenantSettings.get(caller.tenantId, caller.token);
      const req = guardsInput(tenant.guardrails) ? clone(EmbedRequestSchema, asked) : asked;
      if (req !== asked)
        req.inputs = guardTexts(tenant.guardrails, req.inputs, "inputs", guardStats);
      const input = req.inputs.reduce((n, text) => n + estimateTextTokens(text), 0);
      await accounting.checkBudget(caller, costOf(model, { inputTokens: input, outputTokens: 0 }));
      await admitKey(caller, input);
      const id = `emb-${randomUUID().replaceAll("-", "")}`;
      const useCache = cacheFor(caller, req.cache, false, tenant) !== "off";
      const key = useCache ? cacheKey(EmbedRequestSchema, req) : "";
      if (useCache) {
        const bytes = await cache.get(caller.tenantId, key);
        if (bytes !== undefined) {
          const hit = fromBinary(EmbedResponseSchema, bytes);
          const served = cachedServedBy(hit.servedBy, req.model);
          const usage = cachedUsage(hit.usage);
          const latency = performance.now() - started;
          record(caller, UsageOperation.EMBED, {
            id,
            requested: req.model,
            model,
            served,
            usage,
            latencyMs: latency,
            cacheHit: true,
            attribution: req.attribution,
            metadata: req.metadata,
          });
          return create(EmbedResponseSchema, {
            ...hit,
            id,
            servedBy: served,
            usage,
            latency: duration(latency),
          });
        }
      }
      try {
        const routed = await router.run(
          model,
          fallbacksOf(model, [], caller),
          input,
          ctx.signal,
          (client, _d, m) =>
            client.embed({
              model: m.providerModelId,
              inputs: req.inputs,
              ...(req.dimensions !== undefined ? { dimensions: req.dimensions } : {}),
              signal: ctx.signal,
            }),
        );
        routed.finish();
        const latency = performance.now() - started;
        const served = servedBy(req.model, routed.model, routed.deployment, routed, false);
        const usage = usageOf(routed.model, {
          inputTokens: routed.value.inputTokens,
          outputTokens: 0,
        });
        const vectors = routed.value.vectors;
        const response = create(EmbedResponseSchema, {
          id,
          servedBy: served,
          embeddings: vectors.map((values, index) => ({ index, values })),
          dimensions: vectors[0]?.length ?? 0,
          usage,
          latency: duration(latency),
        });
        record(caller, UsageOperation.EMBED, {
          id,
          requested: req.model,
          model: routed.model,
          served,
          usage,
          latencyMs: latency,
          attribution: req.attribution,
          metadata: req.metadata,
        });
        if (useCache) void cache.set(caller.tenantId, key, toBinary(EmbedResponseSchema, response));
        return response;
      } catch (err) {
        throw failed(
          caller,
          UsageOperation.EMBED,
          {
            id,
            requested: req.model,
            model,
            attribution: req.attribution,
            metadata: req.metadata,
          },
          started,
          err,
        );
      }
    },

    async generateImage(req, ctx) {
      const started = performance.now();
      const { caller } = callerOf(ctx);
      const model = await callableModel(caller, req.model);
      requireCapability(model, Capability.IMAGE_GENERATION, "image generation");
      const tenant = await deps.tenantSettings.get(caller.tenantId, caller.token);
      const [prompt = ""] = guardTexts(tenant.guardrails, [req.prompt], "prompt", guardStats);
      const input = estimateTextTokens(prompt);
      await accounting.checkBudget(caller, costOf(model, { inputTokens: input, outputTokens: 0 }));
      await admitKey(caller, input);
      const id = `img-${randomUUID().replaceAll("-", "")}`;
      try {
        const routed = await router.run(
          model,
          fallbacksOf(model, [], caller),
          input,
          ctx.signal,
          (client, _d, m) =>
            client.generateImage({
              model: m.providerModelId,
              prompt,
              n: req.n === 0 ? 1 : req.n,
              size: req.size,
              quality: req.quality,
              format: req.format,
              signal: ctx.signal,
            }),
        );
        routed.finish();
        const latency = performance.now() - started;
        const served = servedBy(req.model, routed.model, routed.deployment, routed, false);
        const r = routed.value;
        const usage = usageOf(routed.model, r);
        record(caller, UsageOperation.IMAGE, {
          id,
          requested: req.model,
          model: routed.model,
          served,
          usage,
          latencyMs: latency,
          attribution: req.attribution,
          metadata: req.metadata,
        });
        return {
          id,
          servedBy: served,
          images: r.images.map((img) => ({
            data: img.data,
            mimeType: img.mimeType,
            revisedPrompt: img.revisedPrompt,
          })),
          usage,
          latency: duration(latency),
        };
      } catch (err) {
        throw failed(
          caller,
          UsageOperation.IMAGE,
          {
            id,
            requested: req.model,
            model,
            attribution: req.attribution,
            metadata: req.metadata,
          },
          started,
          err,
        );
      }
    },

    async countTokens(req, ctx) {
      const { caller } = callerOf(ctx);
      const model = await resolveModel(caller, req.model);
      const count =
        req.messages.length > 0
          ? await countChat(model, req.messages)
          : await countText(model, req.text);
      return {
        tokens: BigInt(count.tokens),
        exact: count.exact,
        tokenizer: count.tokenizer,
        contextWindow: model.contextWindow,
      };
    },

    async listCallableModels(req, ctx) {
      const { caller } = callerOf(ctx);
      const all = await catalog.list(caller.tenantId, caller.token);
      const allowed = await keyModels(caller);
      const wanted = (m: Model) =>
        router.serves(m) &&
        (allowed === undefined || allowed.ids.has(m.id)) &&
        (req.capability === Capability.UNSPECIFIED || m.capabilities.includes(req.capability));
      // Each alias as a call resolves it (the registry's rule, then the simulator's stand-in).
      const names = [...new Set(all.flatMap((m) => m.aliases))];
      const answering = await Promise.all(
        names.map((name) => resolveModel(caller, name).catch(() => undefined)),
      );
      const aliases: Record<string, string> = {};
      names.forEach((name, i) => {
        const m = answering[i];
        if (m !== undefined && wanted(m)) aliases[name] = m.id;
      });
      return { models: all.filter(wanted), aliases };
    },

    async storeResponse(req, ctx) {
      const p = principalOf(ctx);
      // protovalidate has checked that `response` is set.
      await deps.responses.put({ tenantId: p.tenantId, userId: p.subject }, req.response!);
      return {};
    },

    async getStoredResponse(req, ctx) {
      const p = principalOf(ctx);
      const response = await deps.responses.get(
        { tenantId: p.tenantId, userId: p.subject },
        req.id,
      );
      if (response === undefined) throw new NotFoundError(`response ${req.id} not found`);
      return { response };
    },

    async deleteStoredResponse(req, ctx) {
      const p = principalOf(ctx);
      if (!(await deps.responses.delete({ tenantId: p.tenantId, userId: p.subject }, req.id))) {
        throw new NotFoundError(`response ${req.id} not found`);
      }
      return {};
    },

    async getUsage(req, ctx) {
      return accounting.getUsage(principalOf(ctx), req);
    },

    async listCallLogs(req, ctx) {
      return deps.callLogs.list(principalOf(ctx), req);
    },

    async getCallLog(req, ctx) {
      const call = await deps.callLogs.get(principalOf(ctx), req.id);
      if (call === undefined) throw new NotFoundError(`call ${req.id} not found in the call log`);
      return { call };
    },
  };
}

function event(
  value: NonNullable<MessageInitShape<typeof StreamChatResponseSchema>["event"]>,
): StreamChatResponse {
  return create(StreamChatResponseSchema, { event: value });
}

/** A cached answer's ServedBy, marked as a cache hit for this caller. */
function cachedServedBy(from: ServedBy | undefined, requested: string, similarity = 1): ServedBy {
  const served = from === undefined ? create(ServedBySchema) : clone(ServedBySchema, from);
  served.requestedModel = requested;
  served.cacheHit = true;
  served.cacheSimilarity = similarity;
  served.attempts = 0;
  served.fallbacksTried = [];
  return served;
}

/** A cache hit's usage: the same tokens, no cost. */
function cachedUsage(from: Usage | undefined): Usage {
  const usage = from === undefined ? create(UsageSchema) : clone(UsageSchema, from);
  usage.costUsd = 0;
  return usage;
}

/** A Duration from fractional milliseconds (durationFromMs wants whole ones: nanos must be integral). */
function duration(ms: number): Duration {
  const nanos = Math.max(0, Math.round(ms * 1e6));
  return create(DurationSchema, { seconds: BigInt(Math.floor(nanos / 1e9)), nanos: nanos % 1e9 });
}

/** ChatRequest.logprobs on a deployment whose API gives none: the request is wrong for it. */
function requireLogprobs(client: ProviderClient, d: Deployment, req: ChatRequest): void {
  if (req.logprobs && !client.logprobs) {
    throw new ProviderError(
      "invalid_request",
      `${d.name} (the ${d.api} API) gives no token log probabilities: ask without logprobs, or a model served by an OpenAI-compatible endpoint`,
    );
  }
}
