// CategorizerService handlers. Classify: the fast classifier (features.ts), the judge when it is
// unsure and one is configured (judge.ts), a token estimate, the first route in effect that
// matches (routes.ts, route-store.ts), and the context-window check against the catalog
// (catalog.ts) that upgrades to a larger-context model of the same role or refuses. With
// vector-search configured, routes with example utterances take part through the nearest
// examples' vote (semantic.ts): one Search per Classify, only when such routes are in effect.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  FailedPreconditionError,
  TtlCache,
  UnavailableError,
  InvalidArgumentError,
  loggerOf,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
  type GrpcClient,
  type Notices,
} from "@ensemble/kit";
import {
  Capability,
  ClassificationSchema,
  Decider,
  JudgePolicy,
  Modality,
  RouteTargetSchema,
  UsageSchema,
  type CategorizerService,
  type ClassifyRequest,
  type Model,
  type ModelProxyService,
  type Route,
  type RouteTarget,
  type Usage,
} from "@ensemble/proto";
import { ALIAS_ROLE, type ModelCatalog } from "./catalog.js";
import { CATEGORY_OF, classifyFast, type CategoryLetter } from "./features.js";
import { askJudge, combine, judgeFailure, parseVerdict } from "./judge.js";
import { GLOBAL_TENANT, type RouteStore } from "./route-store.js";
import {
  isCategoryOnlyRoute,
  isRuleRoute,
  kindAllowed,
  kindOf,
  routeMatches,
  type RouteKind,
} from "./routes.js";
import { hasSemanticRoutes, type SemanticDecision, type SemanticRouter } from "./semantic.js";

export interface JudgeOptions {
  /** Model id or alias; undefined = no judge. */
  model: string | undefined;
  threshold: number;
  weight: number;
  timeoutMs: number;
}

export interface CategorizerDeps {
  routes: RouteStore;
  catalog: ModelCatalog;
  /** Needed for the judge and for exact counts near a context window. */
  modelProxy?: GrpcClient<typeof ModelProxyService>;
  judge: JudgeOptions;
  /** Ask CountTokens when the estimate is within this fraction of a window (0 = never). */
  exactCountMargin: number;
  /** Semantic routing through vector-search; undefined = off (examples are not used). */
  semantic?: SemanticRouter;
  /** Tells the other replicas a tenant's routes changed (kit change notices, kind "routes"). */
  notices: Notices;
}

/** A vector-search failure while writing examples, as the admin should read it. */
function examplesFailure(err: unknown): Error {
  if (err instanceof ConnectError) {
    if (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded) {
      return new UnavailableError(
        `vector-search is unavailable, so the route's examples could not be stored (${Code[err.code]}); nothing was changed`,
        { cause: err },
      );
    }
    return new FailedPreconditionError(
      `the route's examples could not be stored in vector-search (${Code[err.code]}: ${err.rawMessage}); nothing was changed`,
      { cause: err },
    );
  }
  return err instanceof Error ? err : new Error(String(err));
}

function quote(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 77)}...` : text);
}

/** Cheap token estimate: about four characters per token for English prose and code. */
export function estimateTextTokens(text: string): number {
  return Math.ceil(text.length / 4);
}
/** Prompt tokens an attached image costs (a 1024x1024 image at high detail is ~765-1,100). */
export const IMAGE_TOKENS = 1_000;
/** Video is sampled as frames: a short clip's worth. */
export const VIDEO_TOKENS = 8_000;
/** Answer tokens by category when the request names no length (thinking models reason at length). */
const OUTPUT_TOKENS: Record<CategoryLetter, number> = { M: 600, L: 4_000, H: 8_000 };

/** The default target of a category when no route matches. */
function defaultTarget(
  category: CategoryLetter,
  modalities: readonly Modality[],
  allowed: (k: RouteKind) => boolean,
  chatOnly: boolean,
): RouteTarget | undefined {
  const model = (m: string) => create(RouteTargetSchema, { target: { case: "model", value: m } });
  if (category === "H" && allowed("template")) {
    return create(RouteTargetSchema, { target: { case: "templateId", value: "research_report" } });
  }
  if (!allowed("model")) return undefined;
  if (!chatOnly && modalities.includes(Modality.VIDEO)) return model("video");
  if (!chatOnly && modalities.includes(Modality.IMAGE_GENERATION)) return model("image");
  if (category === "L") return model("thinking");
  if (modalities.includes(Modality.IMAGE_INPUT)) return model("vision");
  return model(category === "H" ? "medium" : "fast");
}

function bearer(ctx: HandlerContext): string {
  return (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer\s+/i, "");
}

function targetLabel(t: RouteTarget | undefined): string {
  switch (t?.target.case) {
    case "model":
      return `model ${t.target.value}`;
    case "templateId":
      return `workflow template ${t.target.value}`;
    case "compare":
      return `compare ${t.target.value.models.join(", ")}`;
    default:
      return "nothing";
  }
}

type Impl = ServiceImpl<typeof CategorizerService>;

/** What a caller using an API key may call: model ids and alias names, and the models. */
interface KeyCallable {
  names: Set<string>;
  models: Model[];
}

/** How long what an API key may call is reused (model-proxy caches the key for as long). */
const KEY_CALLABLE_TTL_MS = 10_000;

export function categorizerHandlers(deps: CategorizerDeps): Impl {
  const { routes, catalog } = deps;
  const keyCallables = new TtlCache<KeyCallable>({ ttlMs: KEY_CALLABLE_TTL_MS });

  /**
   * For a caller using an API key, what it may call, as model-proxy answers ListCallableModels
   * with the caller's own token (an API key may be limited to some models), so that routing picks
   * a model the call will be allowed to use. Undefined without a key, without model-proxy, or
   * when model-proxy does not answer (routing then ignores the key; the call decides).
   */
  async function keyCallable(
    tenantId: string,
    apiKeyId: string | undefined,
    token: string,
    ctx: HandlerContext,
  ): Promise<KeyCallable | undefined> {
    const proxy = deps.modelProxy;
    if (apiKeyId === undefined || proxy === undefined) return undefined;
    try {
      return await keyCallables.get(`${tenantId}\u0000${apiKeyId}`, async () => {
        const res = await proxy.listCallableModels(
          {},
          { headers: { authorization: `Bearer ${token}` }, timeoutMs: 3_000 },
        );
        return {
          names: new Set([...res.models.map((m) => m.id), ...Object.keys(res.aliases)]),
          models: res.models,
        };
      });
    } catch (err) {
      if (ctx.signal.aborted) throw err;
      loggerOf(ctx).warn(
        { reason: judgeFailure(err) },
        "what the API key may call is unknown; routing ignores its limits",
      );
      return undefined;
    }
  }

  /**
   * The category's default model when the caller's key may call it; else the first model the key
   * may call that can do the same (chat, read images, draw, film).
   */
  function defaultForKey(
    target: RouteTarget,
    callable: KeyCallable,
    needsVision: boolean,
    reasons: string[],
  ): RouteTarget {
    if (target.target.case !== "model" || callable.names.has(target.target.value)) return target;
    const wanted = target.target.value;
    const need =
      wanted === "image"
        ? Capability.IMAGE_GENERATION
        : wanted === "video"
          ? Capability.VIDEO_GENERATION
          : Capability.CHAT;
    const substitute = callable.models.find(
      (m) =>
        m.capabilities.includes(need) &&
        (!needsVision || need !== Capability.CHAT || m.capabilities.includes(Capability.VISION)),
    );
    if (substitute === undefined) {
      throw new FailedPreconditionError(
        `this API key may call no model that can answer this request (the default would be ${wanted}); it may call ${[...callable.names].join(", ") || "nothing"}`,
      );
    }
    reasons.push(`this API key may not call ${wanted}: ${substitute.id} instead`);
    return create(RouteTargetSchema, { target: { case: "model", value: substitute.id } });
  }

  async function modelOrFail(
    tenantId: string,
    name: string,
    token: string,
    routeId: string,
  ): Promise<Model> {
    const model = await catalog.model(tenantId, name, token);
    if (model === undefined) {
      throw new FailedPreconditionError(
        `route ${routeId || "(category default)"} sends requests to model ${name}, which is not in the catalog`,
      );
    }
    return model;
  }

  /** Exact input tokens from model-proxy, or undefined (the estimate stands). */
  async function exactCount(
    name: string,
    text: string,
    token: string,
    ctx: HandlerContext,
  ): Promise<number | undefined> {
    if (deps.modelProxy === undefined) return undefined;
    try {
      const res = await deps.modelProxy.countTokens(
        { model: name, text },
        { headers: { authorization: `Bearer ${token}` }, timeoutMs: 3_000 },
      );
      return Number(res.tokens);
    } catch (err) {
      loggerOf(ctx).warn(
        { model: name, reason: judgeFailure(err) },
        "exact token count failed, using the estimate",
      );
      return undefined;
    }
  }

  async function classify(req: ClassifyRequest, ctx: HandlerContext) {
    const started = performance.now();
    const principal = principalOf(ctx);
    const tenantId = principal.tenantId;
    const token = bearer(ctx);
    const fast = classifyFast({ text: req.text, attachmentMimeTypes: req.attachmentMimeTypes });

    let category = fast.category;
    let confidence = fast.confidence;
    let decidedBy = Decider.FEATURES;
    let modalities = fast.modalities;
    const domainTags = [...fast.domainTags];
    const reasons = [...fast.reasons];
    let usage: Usage = create(UsageSchema);
    let judgeModel = "";

    // ---- the judge
    const judge = deps.judge;
    if (
      req.judge === JudgePolicy.ALWAYS &&
      (judge.model === undefined || deps.modelProxy === undefined)
    ) {
      throw new FailedPreconditionError("no judge model is configured (CATEGORIZER_JUDGE_MODEL)");
    }
    const askIt =
      judge.model !== undefined &&
      deps.modelProxy !== undefined &&
      req.judge !== JudgePolicy.NEVER &&
      (req.judge === JudgePolicy.ALWAYS || confidence < judge.threshold);
    if (askIt && judge.model !== undefined && deps.modelProxy !== undefined) {
      judgeModel = judge.model;
      try {
        const answer = await askJudge(deps.modelProxy, {
          model: judge.model,
          text: req.text,
          attachmentMimeTypes: req.attachmentMimeTypes,
          token,
          timeoutMs: judge.timeoutMs,
        });
        usage = answer.usage;
        const verdict = parseVerdict(answer.text);
        if (verdict === undefined) {
          reasons.push(
            `judge ${judge.model} gave no usable answer (not the expected JSON); the feature classifier's decision stands`,
          );
        } else {
          const mixed = combine(fast, verdict, judge.weight);
          category = mixed.category;
          confidence = mixed.confidence;
          decidedBy = Decider.JUDGE;
          reasons.unshift(
            `judge ${judge.model}: ${verdict.category} (confidence ${verdict.confidence.toFixed(2)})${verdict.reason ? `: ${verdict.reason}` : ""}; combined with the features: ${category} p=${confidence.toFixed(2)}`,
          );
          // Detected modalities are explicit signals; the judge only fills in plain text.
          if (
            verdict.modality !== undefined &&
            verdict.modality !== Modality.TEXT &&
            modalities.length === 1 &&
            modalities[0] === Modality.TEXT
          ) {
            modalities = [verdict.modality];
          }
          for (const t of verdict.domainTags) if (!domainTags.includes(t)) domainTags.push(t);
        }
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        loggerOf(ctx).warn({ judge: judge.model, reason: judgeFailure(err) }, "judge call failed");
        reasons.push(
          `judge ${judge.model} could not be asked (${judgeFailure(err)}); the feature classifier's decision stands`,
        );
      }
    }

    // ---- tokens
    const images = req.attachmentMimeTypes.filter((m) =>
      m.toLowerCase().startsWith("image/"),
    ).length;
    const videos = req.attachmentMimeTypes.filter((m) =>
      m.toLowerCase().startsWith("video/"),
    ).length;
    const attachmentTokens = images * IMAGE_TOKENS + videos * VIDEO_TOKENS;
    const contextTokens = Number(req.contextTokens);
    let inputTokens = estimateTextTokens(req.text) + attachmentTokens + contextTokens;
    const media =
      !req.chatOnly &&
      (modalities[0] === Modality.IMAGE_GENERATION || modalities[0] === Modality.VIDEO);
    const outputTokens = media
      ? 0
      : fast.requestedWords > 0
        ? Math.ceil(fast.requestedWords * 1.4)
        : OUTPUT_TOKENS[category];

    // ---- the route
    const allowed = (k: RouteKind) => kindAllowed(k, req.allowedKinds);
    const needsVision = modalities.includes(Modality.IMAGE_INPUT);
    const signals = {
      category: CATEGORY_OF[category],
      modalities,
      domainTags,
      text: req.text,
      estimatedTokens: inputTokens + outputTokens,
    };
    const effective = await routes.effective(tenantId);

    // ---- semantic routing: the nearest examples vote (one Search, only when it can matter)
    let semantic: SemanticDecision | undefined;
    if (deps.semantic !== undefined && hasSemanticRoutes(effective)) {
      try {
        semantic = await deps.semantic.decide(tenantId, req.text, effective, token);
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        loggerOf(ctx).warn({ reason: judgeFailure(err) }, "semantic routing search failed");
        reasons.push(
          `semantic routing unavailable (${judgeFailure(err)}); routes were judged without their examples`,
        );
      }
    }
    // A semantic match is explicit evidence, like a rule's keyword: routes that decide on the
    // category alone come after it whatever their priority (else every semantic route would
    // need a priority above the category routes to ever win).
    const ordered =
      semantic?.route === undefined
        ? effective
        : [
            ...effective.filter((r) => !isCategoryOnlyRoute(r)),
            ...effective.filter(isCategoryOnlyRoute),
          ];
    const vote = semantic === undefined ? undefined : { winner: semantic.route?.id };

    const callable = await keyCallable(tenantId, principal.apiKeyId, token, ctx);
    let chosen: Route | undefined;
    for (const route of ordered) {
      if (!routeMatches(route, signals, vote)) continue;
      const kind = kindOf(route.target);
      if (kind === undefined || !allowed(kind)) continue;
      if (
        callable !== undefined &&
        route.target?.target.case === "model" &&
        !callable.names.has(route.target.target.value)
      ) {
        reasons.push(
          `route ${route.id} skipped: this API key may not call ${route.target.target.value}`,
        );
        continue;
      }
      if (needsVision && route.target?.target.case === "model") {
        const model = await catalog.model(tenantId, route.target.target.value, token);
        if (model !== undefined && !model.capabilities.includes(Capability.VISION)) {
          reasons.push(`route ${route.id} skipped: model ${model.id} cannot read images`);
          continue;
        }
      }
      if (req.chatOnly && route.target?.target.case === "model") {
        const model = await catalog.model(tenantId, route.target.target.value, token);
        if (model !== undefined && !model.capabilities.includes(Capability.CHAT)) {
          reasons.push(`route ${route.id} skipped: model ${model.id} cannot chat`);
          continue;
        }
      }
      chosen = route;
      break;
    }
    let target = chosen?.target ?? defaultTarget(category, modalities, allowed, req.chatOnly);
    if (target === undefined) {
      throw new FailedPreconditionError(
        `no route of an allowed kind matches this request (category ${category}); allow model or template routes, or add a compare route`,
      );
    }
    if (chosen === undefined && callable !== undefined) {
      target = defaultForKey(target, callable, needsVision, reasons);
    }
    const bySemantic = chosen !== undefined && chosen === semantic?.route;
    if (bySemantic && semantic !== undefined) {
      decidedBy = Decider.SEMANTIC;
      const top = semantic.matches[0];
      reasons.splice(
        1,
        0,
        `semantic route ${chosen?.id ?? ""}: ${semantic.matches.length} of the nearest examples are its own, the closest ${top === undefined ? "" : `${quote(top.example)} (similarity ${top.similarity.toFixed(2)})`}`,
      );
    } else if (semantic?.nearMiss !== undefined) {
      const n = semantic.nearMiss;
      reasons.push(
        `closest example belongs to route ${n.routeId} (similarity ${n.similarity.toFixed(2)}, below its threshold ${n.threshold.toFixed(2)}): not routed by examples`,
      );
    }
    if (chosen !== undefined) {
      if (isRuleRoute(chosen) && !bySemantic) decidedBy = Decider.RULE;
      reasons.splice(
        1,
        0,
        `route ${chosen.id}${chosen.name ? ` (${chosen.name})` : ""} -> ${targetLabel(target)}`,
      );
    } else {
      reasons.splice(1, 0, `no route matched: the category's default -> ${targetLabel(target)}`);
    }

    // ---- context windows
    let upgraded = false;
    const routeId = chosen?.id ?? "";
    if (target.target.case === "model") {
      const name = target.target.value;
      const model = await modelOrFail(tenantId, name, token, routeId);
      const window = model.contextWindow;
      if (
        window > 0 &&
        deps.exactCountMargin > 0 &&
        inputTokens + outputTokens >= window * (1 - deps.exactCountMargin)
      ) {
        const exact = await exactCount(name, req.text, token, ctx);
        if (exact !== undefined) {
          inputTokens = exact + attachmentTokens + contextTokens;
          reasons.push(`input counted exactly by model-proxy: ${exact} tokens of text`);
        }
      }
      const needed = inputTokens + outputTokens;
      if (window > 0 && needed > window) {
        const role = ALIAS_ROLE[name] ?? model.roles[0];
        const candidates =
          role === undefined
            ? []
            : (await catalog.byRole(tenantId, role, token))
                .filter((m) => m.enabled && m.contextWindow >= needed)
                .filter((m) => !needsVision || m.capabilities.includes(Capability.VISION))
                // A caller's API key may be limited to some models: only those.
                .filter((m) => callable === undefined || callable.names.has(m.id))
                .sort(
                  (a, b) =>
                    a.contextWindow - b.contextWindow || a.inputPricePerMtok - b.inputPricePerMtok,
                );
        const bigger = candidates[0];
        if (bigger === undefined) {
          throw new InvalidArgumentError(
            `the request needs about ${needed} tokens (input ${inputTokens} + answer ${outputTokens}), more than the context window of model ${model.id} (${window}), and no model of the same role${callable === undefined ? "" : " that this API key may call"} has a larger one; shorten the text or the conversation context`,
            { field: "text" },
          );
        }
        target = create(RouteTargetSchema, { target: { case: "model", value: bigger.id } });
        upgraded = true;
        reasons.push(
          `about ${needed} tokens do not fit model ${model.id} (context window ${window}): upgraded to ${bigger.id} (context window ${bigger.contextWindow})`,
        );
      }
    } else if (target.target.case === "compare") {
      const needed = inputTokens + outputTokens;
      for (const name of target.target.value.models) {
        const model = await modelOrFail(tenantId, name, token, routeId);
        if (model.contextWindow > 0 && needed > model.contextWindow) {
          throw new InvalidArgumentError(
            `the request needs about ${needed} tokens, more than the context window of compared model ${model.id} (${model.contextWindow}); shorten the text`,
            { field: "text" },
          );
        }
      }
    }

    const elapsedMs = performance.now() - started;
    const classification: MessageInitShape<typeof ClassificationSchema> = {
      category: CATEGORY_OF[category],
      modality: modalities[0] ?? Modality.TEXT,
      modalities,
      domainTags,
      estimatedInputTokens: BigInt(inputTokens),
      estimatedOutputTokens: BigInt(outputTokens),
      route: target,
      routeId,
      confidence,
      reasons,
      decidedBy,
      judgeModel,
      semanticMatches: bySemantic ? (semantic?.matches ?? []) : [],
      upgradedForContext: upgraded,
      decisionTime: create(DurationSchema, {
        seconds: BigInt(Math.floor(elapsedMs / 1000)),
        nanos: Math.round((elapsedMs % 1000) * 1e6),
      }),
      usage,
    };
    return { classification: create(ClassificationSchema, classification) };
  }

  /** The admin's tenant; global routes change only through the seed file. */
  function adminTenant(ctx: HandlerContext): string {
    const tenantId = principalOf(ctx).tenantId;
    if (tenantId === GLOBAL_TENANT) {
      throw new PermissionDeniedError("global routes change only through the routes seed file");
    }
    return tenantId;
  }

  async function checkTarget(
    tenantId: string,
    target: RouteTarget | undefined,
    token: string,
  ): Promise<void> {
    const missing = async (name: string) =>
      (await catalog.model(tenantId, name, token)) === undefined;
    switch (target?.target.case) {
      case "model":
        if (await missing(target.target.value)) {
          throw new InvalidArgumentError(`model ${target.target.value} is not in the catalog`, {
            field: "route.target.model",
          });
        }
        return;
      case "templateId":
        if (!(await catalog.templateExists(tenantId, target.target.value, token))) {
          throw new InvalidArgumentError(
            `workflow template ${target.target.value} does not exist`,
            {
              field: "route.target.template_id",
            },
          );
        }
        return;
      case "compare":
        for (const name of target.target.value.models) {
          if (await missing(name)) {
            throw new InvalidArgumentError(`model ${name} is not in the catalog`, {
              field: "route.target.compare.models",
            });
          }
        }
        return;
      default:
        return;
    }
  }

  /** Best effort: a global route's examples reach the tenant's collection with an admin's token. */
  async function copyGlobals(tenantId: string, token: string, ctx: HandlerContext) {
    if (deps.semantic === undefined) return;
    const globals = (await routes.effective(tenantId)).filter((r) => r.tenantId === GLOBAL_TENANT);
    try {
      await deps.semantic.copyGlobals(tenantId, globals, token);
    } catch (err) {
      loggerOf(ctx).warn(
        { reason: judgeFailure(err) },
        "copying the global routes' examples failed; they are retried on the next route change",
      );
    }
  }

  return {
    classify,

    async listRoutes(req, ctx) {
      const all = (await routes.effective(principalOf(ctx).tenantId)).filter(
        (r) => req.includeDisabled || r.enabled,
      );
      const size =
        req.page?.pageSize !== undefined && req.page.pageSize > 0 ? req.page.pageSize : 100;
      const token = req.page?.pageToken ?? "";
      const offset = token === "" ? 0 : Number(token);
      if (!Number.isInteger(offset) || offset < 0) {
        throw new InvalidArgumentError("page_token is not one this service issued", {
          field: "page.page_token",
        });
      }
      const page = all.slice(offset, offset + size);
      const next = offset + size < all.length ? String(offset + size) : "";
      return { routes: page, page: { nextPageToken: next } };
    },

    async getRoute(req, ctx) {
      const route = (await routes.effective(principalOf(ctx).tenantId)).find(
        (r) => r.id === req.id,
      );
      if (route === undefined) throw new NotFoundError(`route ${req.id} does not exist`);
      return { route };
    },

    async upsertRoute(req, ctx) {
      const tenantId = adminTenant(ctx);
      const route = req.route;
      if (route === undefined)
        throw new InvalidArgumentError("route is required", { field: "route" });
      const token = bearer(ctx);
      await checkTarget(tenantId, route.target, token);
      const before = (await routes.effective(tenantId)).find(
        (r) => r.id === route.id && r.tenantId === tenantId,
      );
      if (deps.semantic === undefined) {
        if (route.examples.length > 0) {
          loggerOf(ctx).warn(
            { routeId: route.id },
            "route has examples but semantic routing is off (no VECTOR_SEARCH_ADDR): they are stored, not used",
          );
        }
      } else if (route.examples.length > 0 || (before?.examples.length ?? 0) > 0) {
        // Examples first: when vector-search refuses them, the route is not stored either.
        try {
          await deps.semantic.putRoute(tenantId, route, token);
        } catch (err) {
          throw examplesFailure(err);
        }
      }
      const stored = await routes.upsert(tenantId, route);
      await deps.notices.publish("routes", tenantId, route.id);
      await copyGlobals(tenantId, token, ctx);
      loggerOf(ctx).info(
        { routeId: route.id, target: targetLabel(route.target) },
        "route upserted",
      );
      return { route: stored };
    },

    async deleteRoute(req, ctx) {
      const tenantId = adminTenant(ctx);
      const token = bearer(ctx);
      if (!(await routes.delete(tenantId, req.id))) {
        const global = (await routes.effective(GLOBAL_TENANT)).some((r) => r.id === req.id);
        throw new NotFoundError(
          global
            ? `route ${req.id} is a global route; shadow it with a route of the same id, or disable it that way`
            : `route ${req.id} does not exist`,
        );
      }
      if (deps.semantic !== undefined) {
        // Always, not only when this replica's cache saw examples (another replica may have
        // added them). The route is gone, so its examples no longer vote even if this fails.
        try {
          await deps.semantic.removeRoute(req.id, token);
        } catch (err) {
          loggerOf(ctx).warn(
            { routeId: req.id, reason: judgeFailure(err) },
            "deleting the route's examples failed; they no longer vote",
          );
        }
      }
      await deps.notices.publish("routes", tenantId, req.id);
      await copyGlobals(tenantId, token, ctx);
      loggerOf(ctx).info({ routeId: req.id }, "route deleted");
      return {};
    },
  };
}
