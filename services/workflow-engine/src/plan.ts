// Turning a RunSpec into the step graph the engine executes. Every mode becomes a
// WorkflowTemplate: MODEL is one llm step "answer"; COMPARE is a compare step "compare" and a rank
// step "rank"; WORKFLOW is the registry template (or the inline one) with its inputs resolved;
// AUTO becomes one of those once the categorizer has chosen the route.
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import {
  InvalidArgumentError,
  FailedPreconditionError,
  NotFoundError,
  TtlCache,
  type GrpcClient,
} from "@ensemble/kit";
import {
  Capability,
  RankCriterion,
  ResponseFormatSchema,
  StepKind,
  WorkflowTemplateSchema,
  type Classification,
  type Model,
  type PlannedStep,
  type RankingPolicy,
  type RegistryService,
  type ResponseFormat,
  type RunSpec,
  type WorkflowTemplate,
} from "@ensemble/proto";
import { Code, ConnectError } from "@connectrpc/connect";
import { create as createMsg } from "@bufbuild/protobuf";
import { PlannedStepSchema } from "@ensemble/proto";
import { resolveInputs, validateRunnable } from "@ensemble/workflow";

/** What the engine stores besides the graph. */
export interface PlanExtras {
  /** {{vars.<name>}} values. */
  vars: Record<string, string>;
  /** Addon id -> text (resolved once, at planning, with the caller's token). */
  addonTexts: Record<string, string>;
  /** COMPARE: measurable ranking criteria. */
  rankBy: RankCriterion[];
  /** The run's result is the winning answer itself (COMPARE runs). */
  winnerIsOutput: boolean;
  /** MODEL runs: response format (binary, base64). */
  responseFormat?: string;
}

export interface Plan {
  template: WorkflowTemplate;
  extras: PlanExtras;
}

export function encodePlan(plan: Plan): { plan: Buffer; planExtras: string } {
  return {
    plan: Buffer.from(toBinary(WorkflowTemplateSchema, plan.template)),
    planExtras: JSON.stringify(plan.extras),
  };
}

export function decodePlan(bytes: Uint8Array, extras: string): Plan {
  return {
    template: fromBinary(WorkflowTemplateSchema, bytes),
    extras: JSON.parse(extras) as PlanExtras,
  };
}

export function responseFormatOf(extras: PlanExtras): ResponseFormat | undefined {
  if (extras.responseFormat === undefined) return undefined;
  return fromBinary(ResponseFormatSchema, Buffer.from(extras.responseFormat, "base64"));
}

export function plannedSteps(template: WorkflowTemplate): PlannedStep[] {
  return template.steps.map((s) =>
    createMsg(PlannedStepSchema, {
      stepId: s.id,
      name: s.name,
      kind: s.kind,
      model: s.kind === StepKind.RANK ? s.judgeModel : s.model,
      models: s.models,
      dependsOn: s.dependsOn,
    }),
  );
}

/** Every model the plan names (ListRuns filters by model). */
export function planModels(template: WorkflowTemplate): string[] {
  const out = new Set<string>();
  for (const s of template.steps) {
    for (const m of [s.model, s.fallbackModel, s.judgeModel, ...s.models]) if (m !== "") out.add(m);
  }
  return [...out];
}

export function modelTemplate(
  model: string,
  opts: { temperature?: number | undefined; maxTokens?: number | undefined },
): WorkflowTemplate {
  return create(WorkflowTemplateSchema, {
    id: "model",
    name: "Model",
    outputStep: "answer",
    steps: [
      {
        id: "answer",
        name: "Answer",
        kind: StepKind.LLM,
        model,
        prompt: "{{input}}",
        ...(opts.temperature !== undefined ? { temperature: opts.temperature } : {}),
        ...(opts.maxTokens !== undefined ? { maxTokens: opts.maxTokens } : {}),
      },
    ],
  });
}

/** An image run: one image step with the input as its prompt. */
export function imageTemplate(model: string): WorkflowTemplate {
  return create(WorkflowTemplateSchema, {
    id: "image",
    name: "Image",
    outputStep: "image",
    steps: [{ id: "image", name: "Image", kind: StepKind.IMAGE, model, prompt: "{{input}}" }],
  });
}

/**
 * The template of a run answered by one model: an llm step, or an image step when the model
 * generates images and cannot chat. A model that only generates video cannot run (there is no
 * video step): FAILED_PRECONDITION, before anything is called. When the registry does not
 * answer, the llm step stands and model-proxy decides at the step.
 */
async function oneModelTemplate(
  name: string,
  opts: { temperature?: number | undefined; maxTokens?: number | undefined },
  caller: Planner,
  deps: PlanDeps,
): Promise<WorkflowTemplate> {
  const model = await lookupModel(deps, caller, name).catch(() => undefined);
  const caps = model?.capabilities ?? [];
  if (model !== undefined && !caps.includes(Capability.CHAT)) {
    if (caps.includes(Capability.IMAGE_GENERATION)) return imageTemplate(name);
    if (caps.includes(Capability.VIDEO_GENERATION)) {
      throw new FailedPreconditionError(
        `model "${name}" (${model.id}) generates video, and runs cannot generate video yet; ask for text or an image instead`,
      );
    }
  }
  return modelTemplate(name, opts);
}

export function compareTemplate(
  models: string[],
  ranking: RankingPolicy | undefined,
  opts: { temperature?: number | undefined; maxTokens?: number | undefined },
): WorkflowTemplate {
  return create(WorkflowTemplateSchema, {
    id: "compare",
    name: "Compare",
    outputStep: "rank",
    steps: [
      {
        id: "compare",
        name: "Compare models",
        kind: StepKind.COMPARE,
        models,
        prompt: "{{input}}",
        ...(opts.temperature !== undefined ? { temperature: opts.temperature } : {}),
        ...(opts.maxTokens !== undefined ? { maxTokens: opts.maxTokens } : {}),
      },
      {
        id: "rank",
        name: "Rank answers",
        kind: StepKind.RANK,
        rankStep: "compare",
        dependsOn: ["compare"],
        judgeModel: ranking?.judgeModel ?? "",
        criteria: ranking?.criteria ?? [],
      },
    ],
  });
}

export interface PlanDeps {
  registry: Pick<GrpcClient<typeof RegistryService>, "getTemplate" | "getAddon" | "getModel">;
  /** The catalog's answer per tenant and model name, reused for a moment (see checkModels). */
  catalog: TtlCache<Model | undefined>;
}

/** Who is planning: registry reads use the token; catalog answers are kept per tenant. */
export interface Planner {
  token: string;
  tenantId: string;
}

/** How long a catalog answer is reused by the model check. */
export const CATALOG_TTL_MS = 5_000;

export function catalogCache(): TtlCache<Model | undefined> {
  return new TtlCache({ ttlMs: CATALOG_TTL_MS });
}

function bearer(token: string) {
  return { headers: { authorization: `Bearer ${token}` }, timeoutMs: 10_000 };
}

/** Issues as one INVALID_ARGUMENT naming every field path. */
function invalid(issues: Array<{ message: string }>): InvalidArgumentError {
  return new InvalidArgumentError(issues.map((i) => i.message).join("; "));
}

/**
 * The plan of a spec whose mode is known (MODEL, WORKFLOW, COMPARE), or of an AUTO run's route.
 * Registry reads use `token` (the caller's, or a service token acting for the run's user).
 */
export async function planFor(
  spec: RunSpec,
  caller: Planner,
  deps: PlanDeps,
  route?: Classification,
): Promise<Plan> {
  const token = caller.token;
  /** Where the caller wrote a step's model field (undefined: a stored template's, or a route's). */
  let locate: (step: number, field: string) => string | undefined = () => undefined;
  let checked = true;
  const extras: PlanExtras = { vars: {}, addonTexts: {}, rankBy: [], winnerIsOutput: false };
  let template: WorkflowTemplate;
  const mode = spec.mode;
  if (route !== undefined) {
    const target = route.route?.target;
    switch (target?.case) {
      case "model":
        template = await oneModelTemplate(target.value, {}, caller, deps);
        checked = false; // the categorizer checked its routes' models when they were saved
        break;
      case "compare":
        template = compareTemplate(target.value.models, target.value.ranking, {});
        extras.rankBy = target.value.ranking?.by ?? [];
        extras.winnerIsOutput = true;
        checked = false;
        break;
      case "templateId":
        template = await fetchTemplate(target.value, 0, token, deps);
        extras.vars = resolveInputs(template, {}).values;
        break;
      default:
        throw new FailedPreconditionError("the categorizer returned no route");
    }
  } else if (mode.case === "model") {
    template = await oneModelTemplate(
      mode.value.model,
      { temperature: mode.value.temperature, maxTokens: mode.value.maxTokens },
      caller,
      deps,
    );
    locate = () => "spec.model.model";
    if (mode.value.responseFormat !== undefined) {
      extras.responseFormat = Buffer.from(
        toBinary(ResponseFormatSchema, mode.value.responseFormat),
      ).toString("base64");
    }
  } else if (mode.case === "compare") {
    template = compareTemplate(mode.value.models, mode.value.ranking, {
      temperature: mode.value.temperature,
      maxTokens: mode.value.maxTokens,
    });
    extras.rankBy = mode.value.ranking?.by ?? [];
    extras.winnerIsOutput = true;
    locate = (_step, field) =>
      field === "judge_model" ? "spec.compare.ranking.judge_model" : `spec.compare.${field}`;
  } else if (mode.case === "workflow") {
    const def = mode.value.definition;
    if (def.case === "inline") {
      template = def.value;
      const issues = validateRunnable(template, "spec.workflow.inline");
      if (issues.length > 0) throw invalid(issues);
      locate = (step, field) => `spec.workflow.inline.steps[${step}].${field}`;
    } else if (def.case === "templateId") {
      template = await fetchTemplate(def.value, mode.value.templateVersion, token, deps);
    } else {
      throw new InvalidArgumentError(
        "spec.workflow: a template_id or an inline definition is required",
      );
    }
    const inputs = resolveInputs(template, mode.value.variables);
    if (inputs.issues.length > 0) throw invalid(inputs.issues);
    extras.vars = inputs.values;
  } else {
    throw new InvalidArgumentError("spec.mode: AUTO runs are planned after classification");
  }

  // Addons: the run's (every model step) and each step's own, resolved now with the caller's
  // token so the executing replica needs no registry round trip.
  const ids = new Set<string>(spec.addons);
  for (const s of template.steps) for (const a of s.addons) ids.add(a);
  await Promise.all([
    checked ? checkModels(template, locate, caller, deps) : undefined,
    ...[...ids].map(async (id) => {
      try {
        const res = await deps.registry.getAddon({ id }, bearer(token));
        extras.addonTexts[id] = res.addon?.prompt ?? "";
      } catch (err) {
        if (ConnectError.from(err).code === Code.NotFound) {
          if (spec.addons.includes(id)) {
            throw new InvalidArgumentError(`spec.addons: unknown addon "${id}"`);
          }
          throw new FailedPreconditionError(`the workflow uses the unknown addon "${id}"`);
        }
        throw err;
      }
    }),
  ]);
  return { template, extras };
}

/**
 * The tenant's catalog entry for a model name (id or alias), as model-proxy resolves it;
 * undefined when the catalog has none. Rejects when the registry does not answer. Answers are
 * kept per tenant for CATALOG_TTL_MS.
 */
export function lookupModel(
  deps: PlanDeps,
  caller: Planner,
  name: string,
): Promise<Model | undefined> {
  return deps.catalog.get(`${caller.tenantId}\u0000${name}`, async () => {
    try {
      return (await deps.registry.getModel({ id: name }, bearer(caller.token))).model;
    } catch (err) {
      if (ConnectError.from(err).code === Code.NotFound) return undefined;
      throw err;
    }
  });
}

/**
 * Why a model named at `where` cannot run, undefined when it can: a name the caller just wrote
 * is INVALID_ARGUMENT when the catalog has no such model; a stored one (a template's, a session
 * setting) and a disabled model are FAILED_PRECONDITION.
 */
export function modelRefusal(
  name: string,
  model: Model | undefined,
  where: string,
  stored = false,
): InvalidArgumentError | FailedPreconditionError | undefined {
  if (model?.enabled === true) return undefined;
  const state = model === undefined ? "is not in the catalog" : "is disabled in the catalog";
  const message = `${where}: model "${name}" ${state}`;
  if (model === undefined && !stored) return new InvalidArgumentError(message, { field: where });
  return new FailedPreconditionError(message);
}

/**
 * Every model a plan names must be in the tenant's catalog and enabled, so a typo is refused
 * before a run exists instead of failing the run at its first step: INVALID_ARGUMENT with the
 * field's path for a name the caller wrote, FAILED_PRECONDITION for a stored template's (or a
 * disabled model). The check is advisory: when the registry cannot answer, the run is accepted
 * and model-proxy (the authority, with its own cache) decides at the step, as before.
 */
async function checkModels(
  template: WorkflowTemplate,
  locate: (step: number, field: string) => string | undefined,
  caller: Planner,
  deps: PlanDeps,
): Promise<void> {
  const uses: Array<{ name: string; step: number; field: string }> = [];
  template.steps.forEach((s, step) => {
    if (s.model !== "") uses.push({ name: s.model, step, field: "model" });
    s.models.forEach((name, i) => uses.push({ name, step, field: `models[${i}]` }));
    if (s.fallbackModel !== "") uses.push({ name: s.fallbackModel, step, field: "fallback_model" });
    if (s.judgeModel !== "") uses.push({ name: s.judgeModel, step, field: "judge_model" });
  });
  const names = [...new Set(uses.map((u) => u.name))];
  let answers: Map<string, Model | undefined>;
  try {
    answers = new Map(
      await Promise.all(
        names.map(async (name) => [name, await lookupModel(deps, caller, name)] as const),
      ),
    );
  } catch {
    return; // the registry did not answer: model-proxy decides at the step
  }
  for (const use of uses) {
    const written = locate(use.step, use.field);
    const where =
      written ?? `workflow template "${template.id}" step "${template.steps[use.step]?.id ?? ""}"`;
    const refusal = modelRefusal(use.name, answers.get(use.name), where, written === undefined);
    if (refusal !== undefined) throw refusal;
  }
}

async function fetchTemplate(
  id: string,
  version: number,
  token: string,
  deps: PlanDeps,
): Promise<WorkflowTemplate> {
  let template: WorkflowTemplate | undefined;
  try {
    template = (await deps.registry.getTemplate({ id }, bearer(token))).template;
  } catch (err) {
    if (ConnectError.from(err).code === Code.NotFound) {
      throw new NotFoundError(`workflow template "${id}" not found`);
    }
    throw err;
  }
  if (template === undefined) throw new NotFoundError(`workflow template "${id}" not found`);
  if (version > 0 && template.version !== version) {
    throw new FailedPreconditionError(
      `workflow template "${id}" is at version ${template.version}; version ${version} is not available`,
    );
  }
  const issues = validateRunnable(template, `template "${id}"`);
  if (issues.length > 0) {
    throw new FailedPreconditionError(issues.map((i) => i.message).join("; "));
  }
  return template;
}

export { RankCriterion };
