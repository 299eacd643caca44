// The workflow format, as pure functions, shared by the registry (which checks every template it
// stores) and the workflow engine (which checks every definition it runs): the semantic checks
// of a step graph beyond what protovalidate expresses in the contract, the variables a run
// supplies, prompt rendering, readiness of steps, and parsing of a JSON/YAML definition.
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import {
  StepKind,
  WorkflowTemplateSchema,
  type WorkflowTemplate,
  type WorkflowStep,
} from "@ensemble/proto";
import { parse as parseYaml } from "yaml";

export interface TemplateIssue {
  /** Path of the offending field, e.g. "template.steps[2].depends_on[0]". */
  field: string;
  /** Human-readable, starts with the field path. */
  message: string;
}

/** `{{ name }}` placeholders; whitespace inside the braces is allowed. */
const VARIABLE = /\{\{\s*([^{}]*?)\s*\}\}/g;
const STEP_OUTPUT = /^steps\.([a-z][a-z0-9_-]*)\.output$/;
const VAR_REF = /^vars\.([a-z][a-z0-9_]*)$/;

/**
 * Returns every problem found (empty when the template is valid). `prefix` is the path of the
 * template in the request or seed file ("template", "templates[1]").
 */
export function validateTemplate(template: WorkflowTemplate, prefix = "template"): TemplateIssue[] {
  const issues: TemplateIssue[] = [];
  const add = (field: string, text: string): void => {
    issues.push({ field, message: `${field}: ${text}` });
  };

  const inputNames = new Map<string, number>();
  template.inputs.forEach((input, i) => {
    if (inputNames.has(input.name)) {
      add(`${prefix}.inputs[${i}].name`, `duplicate input "${input.name}"`);
    } else {
      inputNames.set(input.name, i);
    }
  });

  // Step ids -> index; duplicates are reported and the first one wins for the graph checks.
  const index = new Map<string, number>();
  template.steps.forEach((step, i) => {
    const first = index.get(step.id);
    if (first !== undefined) {
      add(`${prefix}.steps[${i}].id`, `duplicate step id "${step.id}" (also steps[${first}])`);
    } else {
      index.set(step.id, i);
    }
  });

  // Dependencies must exist, and not repeat or point at the step itself.
  const deps: string[][] = template.steps.map((step, i) => {
    const seen = new Set<string>();
    const valid: string[] = [];
    step.dependsOn.forEach((dep, j) => {
      const field = `${prefix}.steps[${i}].depends_on[${j}]`;
      if (dep === step.id) add(field, `step "${step.id}" depends on itself`);
      else if (!index.has(dep)) add(field, `unknown step "${dep}"`);
      else if (seen.has(dep)) add(field, `"${dep}" is listed twice`);
      else valid.push(dep);
      seen.add(dep);
    });
    return valid;
  });

  const cycle = findCycle(template.steps, deps, index);
  if (cycle !== undefined) {
    const at = index.get(cycle[0] ?? "") ?? 0;
    add(`${prefix}.steps[${at}].depends_on`, `dependency cycle ${cycle.join(" -> ")}`);
  }

  if (template.outputStep !== "" && !index.has(template.outputStep)) {
    add(`${prefix}.output_step`, `unknown step "${template.outputStep}"`);
  }

  // Output variables share the vars.<name> namespace with inputs, so names must not collide.
  const outputVars = new Map<string, number>();
  template.steps.forEach((step, i) => {
    if (step.outputVar === "") return;
    const field = `${prefix}.steps[${i}].output_var`;
    if (inputNames.has(step.outputVar)) {
      add(field, `"${step.outputVar}" is already the name of an input`);
    } else if (outputVars.has(step.outputVar)) {
      add(
        field,
        `"${step.outputVar}" is already the output_var of steps[${outputVars.get(step.outputVar)}]`,
      );
    } else {
      outputVars.set(step.outputVar, i);
    }
  });

  // Variables and references may only use what is available when the step runs: the run's
  // input, declared inputs, and steps upstream of it (direct or transitive dependencies).
  // Without a cycle-free graph "upstream" is not defined, so these checks wait for one.
  if (cycle === undefined) {
    const upstream = upstreamSets(template.steps, deps, index);
    template.steps.forEach((step, i) => {
      const before = upstream[i] ?? new Set<string>();
      const at = `${prefix}.steps[${i}]`;
      for (const [fieldName, text] of [
        ["system", step.system],
        ["prompt", step.prompt],
      ] as const) {
        for (const problem of checkVariables(
          text,
          step,
          before,
          inputNames,
          outputVars,
          template,
        )) {
          add(`${at}.${fieldName}`, problem);
        }
      }
      if (step.kind === StepKind.RANK && step.rankStep !== "") {
        const target = index.get(step.rankStep);
        if (target === undefined) {
          add(`${at}.rank_step`, `unknown step "${step.rankStep}"`);
        } else if (template.steps[target]?.kind !== StepKind.COMPARE) {
          add(`${at}.rank_step`, `step "${step.rankStep}" is not a STEP_KIND_COMPARE step`);
        } else if (!before.has(step.rankStep)) {
          add(`${at}.rank_step`, `step "${step.rankStep}" must be a dependency of "${step.id}"`);
        }
      }
    });
  }

  template.steps.forEach((step, i) => {
    for (const [field, text] of kindRequirements(step)) add(`${prefix}.steps[${i}].${field}`, text);
  });

  return issues;
}

/** Fields each step kind cannot run without. */
function kindRequirements(step: WorkflowStep): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const need = (ok: boolean, field: string, kind: string): void => {
    if (!ok) out.push([field, `required for ${kind} steps`]);
  };
  switch (step.kind) {
    case StepKind.LLM:
      need(step.model !== "", "model", "STEP_KIND_LLM");
      need(step.prompt !== "", "prompt", "STEP_KIND_LLM");
      break;
    case StepKind.COMPARE:
      if (step.models.length < 2) out.push(["models", "STEP_KIND_COMPARE needs at least 2 models"]);
      need(step.prompt !== "", "prompt", "STEP_KIND_COMPARE");
      break;
    case StepKind.RANK:
      need(step.rankStep !== "", "rank_step", "STEP_KIND_RANK");
      if (step.judgeModel === "" && step.criteria.length === 0) {
        out.push(["judge_model", "STEP_KIND_RANK needs a judge_model or criteria"]);
      }
      break;
    case StepKind.TRANSFORM:
      need(step.prompt !== "", "prompt", "STEP_KIND_TRANSFORM");
      break;
    case StepKind.RETRIEVE:
      need(step.collection !== "", "collection", "STEP_KIND_RETRIEVE");
      break;
    case StepKind.PLUGIN:
      need(step.plugin !== "", "plugin", "STEP_KIND_PLUGIN");
      need(step.pluginMethod !== "", "plugin_method", "STEP_KIND_PLUGIN");
      break;
    case StepKind.IMAGE:
      need(step.model !== "", "model", "STEP_KIND_IMAGE");
      need(step.prompt !== "", "prompt", "STEP_KIND_IMAGE");
      break;
    default:
      break;
  }
  return out;
}

function checkVariables(
  text: string,
  step: WorkflowStep,
  upstream: Set<string>,
  inputs: Map<string, number>,
  outputVars: Map<string, number>,
  template: WorkflowTemplate,
): string[] {
  const problems: string[] = [];
  for (const match of text.matchAll(VARIABLE)) {
    const expr = match[1] ?? "";
    const shown = `{{${expr}}}`;
    if (expr === "input") continue;
    const stepRef = STEP_OUTPUT.exec(expr);
    if (stepRef !== null) {
      const id = stepRef[1] ?? "";
      if (!template.steps.some((s) => s.id === id)) {
        problems.push(`${shown} refers to unknown step "${id}"`);
      } else if (!upstream.has(id)) {
        problems.push(
          `${shown} refers to step "${id}", which is not a dependency (direct or transitive) of "${step.id}"`,
        );
      }
      continue;
    }
    const varRef = VAR_REF.exec(expr);
    if (varRef !== null) {
      const name = varRef[1] ?? "";
      if (inputs.has(name)) continue;
      const producer = outputVars.get(name);
      if (producer === undefined) {
        problems.push(`${shown} is neither a declared input nor the output_var of a step`);
      } else {
        const producerId = template.steps[producer]?.id ?? "";
        if (!upstream.has(producerId)) {
          problems.push(
            `${shown} is the output of step "${producerId}", which is not a dependency (direct or transitive) of "${step.id}"`,
          );
        }
      }
      continue;
    }
    problems.push(
      `unknown variable ${shown} (use {{input}}, {{vars.<name>}} or {{steps.<id>.output}})`,
    );
  }
  // A "{{" left once the placeholders are taken out was meant as one ("{{input}" or "{{input"):
  // as literal text it would reach the model unreplaced.
  const rest = text.replace(VARIABLE, "");
  const open = rest.indexOf("{{");
  if (open >= 0) {
    problems.push(`"${rest.slice(open, open + 24)}" opens a variable that is never closed with }}`);
  }
  return problems;
}

/** A dependency cycle as step ids (first id repeated at the end), or undefined. */
function findCycle(
  steps: WorkflowStep[],
  deps: string[][],
  index: Map<string, number>,
): string[] | undefined {
  const state = new Array<0 | 1 | 2>(steps.length).fill(0); // 0 new, 1 on stack, 2 done
  const stack: number[] = [];
  const visit = (i: number): string[] | undefined => {
    state[i] = 1;
    stack.push(i);
    for (const dep of deps[i] ?? []) {
      const j = index.get(dep);
      if (j === undefined) continue;
      if (state[j] === 1) {
        const from = stack.indexOf(j);
        return [...stack.slice(from), j].map((k) => steps[k]?.id ?? "");
      }
      if (state[j] === 0) {
        const found = visit(j);
        if (found !== undefined) return found;
      }
    }
    stack.pop();
    state[i] = 2;
    return undefined;
  };
  for (let i = 0; i < steps.length; i++) {
    if (state[i] === 0) {
      const found = visit(i);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/** For each step, the ids of every step it depends on directly or transitively (graph is acyclic). */
function upstreamSets(
  steps: WorkflowStep[],
  deps: string[][],
  index: Map<string, number>,
): Array<Set<string>> {
  const memo = new Array<Set<string> | undefined>(steps.length);
  const compute = (i: number): Set<string> => {
    const known = memo[i];
    if (known !== undefined) return known;
    const out = new Set<string>();
    for (const dep of deps[i] ?? []) {
      out.add(dep);
      const j = index.get(dep);
      if (j !== undefined) for (const id of compute(j)) out.add(id);
    }
    memo[i] = out;
    return out;
  };
  return steps.map((_, i) => compute(i));
}

/** Step kinds this engine executes. */
export const SUPPORTED_KINDS: ReadonlySet<StepKind> = new Set([
  StepKind.LLM,
  StepKind.COMPARE,
  StepKind.RANK,
  StepKind.TRANSFORM,
  StepKind.RETRIEVE,
  StepKind.PLUGIN,
  StepKind.IMAGE,
]);

/**
 * The graph rules plus what this engine can run: every step's kind must be supported, and a
 * retrieve step's `collection` may name a declared input (`{{vars.<input>}}`) so that a template
 * can leave the collection to the caller. Only inputs: they are known when the run is planned,
 * so a bad reference is refused before anything runs. The registry does not check this field
 * (it is this engine that renders it).
 */
export function validateRunnable(template: WorkflowTemplate, prefix = "template"): TemplateIssue[] {
  const issues = validateTemplate(template, prefix);
  const inputs = new Set(template.inputs.map((input) => input.name));
  template.steps.forEach((step, i) => {
    if (!SUPPORTED_KINDS.has(step.kind)) {
      const field = `${prefix}.steps[${i}].kind`;
      issues.push({
        field,
        message: `${field}: ${StepKind[step.kind] ?? String(step.kind)} steps are not supported by the workflow engine yet`,
      });
    }
    if (step.kind === StepKind.RETRIEVE) {
      const field = `${prefix}.steps[${i}].collection`;
      for (const match of step.collection.matchAll(VARIABLE)) {
        const name = VAR_REF.exec(match[1] ?? "")?.[1];
        if (name === undefined || !inputs.has(name)) {
          issues.push({
            field,
            message: `${field}: {{${match[1] ?? ""}}} is not allowed here; a collection may only use {{vars.<name>}} of a declared input`,
          });
        }
      }
    }
  });
  return issues;
}

/**
 * The values of `{{vars.<name>}}` for a run: the caller's values over the inputs' defaults. A
 * missing required input and an undeclared variable are problems (field paths under `prefix`).
 */
export function resolveInputs(
  template: WorkflowTemplate,
  supplied: Readonly<Record<string, string>>,
  prefix = "spec.workflow.variables",
): { values: Record<string, string>; issues: TemplateIssue[] } {
  const values: Record<string, string> = {};
  const issues: TemplateIssue[] = [];
  const declared = new Set(template.inputs.map((i) => i.name));
  for (const name of Object.keys(supplied).sort()) {
    if (!declared.has(name)) {
      const field = `${prefix}["${name}"]`;
      issues.push({
        field,
        message: `${field}: "${name}" is not an input of template "${template.id}"`,
      });
    }
  }
  for (const input of template.inputs) {
    const given = supplied[input.name];
    if (given !== undefined) values[input.name] = given;
    else if (input.required) {
      const field = `${prefix}["${input.name}"]`;
      issues.push({ field, message: `${field}: required input "${input.name}" is missing` });
    } else values[input.name] = input.defaultValue;
  }
  return { values, issues };
}

/** What a prompt template can refer to when its step runs. */
export interface RenderScope {
  input: string;
  vars: Readonly<Record<string, string>>;
  /** Outputs of completed steps, by id. */
  outputs: Readonly<Record<string, string>>;
}

/**
 * Replaces `{{input}}`, `{{vars.<name>}}` and `{{steps.<id>.output}}`. Validation guarantees
 * every reference exists by the time a step runs; a reference that does not (a bug) renders as
 * an empty string rather than leaking the placeholder to a model.
 */
export function renderTemplate(text: string, scope: RenderScope): string {
  return text.replace(VARIABLE, (_match, expr: string) => {
    if (expr === "input") return scope.input;
    const stepRef = STEP_OUTPUT.exec(expr);
    if (stepRef !== null) return scope.outputs[stepRef[1] ?? ""] ?? "";
    const varRef = VAR_REF.exec(expr);
    if (varRef !== null) return scope.vars[varRef[1] ?? ""] ?? "";
    return "";
  });
}

/** Step states the scheduler needs. */
export interface StepProgress {
  /** Steps handed to the work queue (running or waiting there), by id. */
  dispatched: ReadonlySet<string>;
  /** Steps that completed with an output. */
  completed: ReadonlySet<string>;
  /** Steps that ended without one (failed, skipped, cancelled). */
  ended: ReadonlySet<string>;
}

/**
 * Steps to dispatch now, in plan order: not yet dispatched, every dependency completed, and no
 * more than `maxParallel` (0 = unlimited) dispatched-but-unfinished steps in the run.
 */
export function readySteps(
  template: WorkflowTemplate,
  progress: StepProgress,
  maxParallel: number,
): string[] {
  let inFlight = 0;
  for (const id of progress.dispatched) {
    if (!progress.completed.has(id) && !progress.ended.has(id)) inFlight++;
  }
  const out: string[] = [];
  for (const step of template.steps) {
    if (maxParallel > 0 && inFlight + out.length >= maxParallel) break;
    if (progress.dispatched.has(step.id) || progress.completed.has(step.id)) continue;
    if (progress.ended.has(step.id)) continue;
    if (step.dependsOn.every((d) => progress.completed.has(d))) out.push(step.id);
  }
  return out;
}

/**
 * A workflow definition written by hand: the protobuf JSON mapping of WorkflowTemplate, as JSON
 * or YAML (YAML is a superset of JSON), either the template itself or `{template: {...}}`.
 * Throws InvalidDefinitionError with a readable reason; run validateRunnable on the result.
 */
export function parseWorkflowDefinition(text: string): WorkflowTemplate {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new InvalidDefinitionError(
      `not valid JSON or YAML: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  if (doc !== null && typeof doc === "object" && !Array.isArray(doc) && "template" in doc) {
    doc = doc.template;
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new InvalidDefinitionError("expected a workflow template object");
  }
  try {
    return fromJson(WorkflowTemplateSchema, doc as JsonValue);
  } catch (err) {
    throw new InvalidDefinitionError(err instanceof Error ? err.message : String(err));
  }
}

export class InvalidDefinitionError extends Error {
  override name = "InvalidDefinitionError";
}
