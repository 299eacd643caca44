import { create } from "@bufbuild/protobuf";
import {
  StepKind,
  WorkflowStepSchema,
  WorkflowTemplateSchema,
  type WorkflowStep,
  type WorkflowTemplate,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { validateTemplate } from "./workflow.js";

type StepInit = Partial<Omit<WorkflowStep, "$typeName" | "$unknown">>;
type TemplateInit = Partial<Omit<WorkflowTemplate, "$typeName" | "$unknown" | "steps">>;

function llm(id: string, init: Partial<StepInit> = {}): StepInit {
  return { id, kind: StepKind.LLM, model: "fast", prompt: "{{input}}", ...init };
}

function template(steps: StepInit[], init: TemplateInit = {}): WorkflowTemplate {
  return create(WorkflowTemplateSchema, {
    id: "t",
    name: "T",
    outputStep: steps.at(-1)?.id ?? "",
    inputs: [{ name: "audience" }],
    steps: steps.map((s) => create(WorkflowStepSchema, s)),
    ...init,
  });
}

function messages(t: WorkflowTemplate): string[] {
  return validateTemplate(t).map((i) => i.message);
}

describe("template validation", () => {
  it("template validation - accepts a diamond graph with inputs, step outputs and output vars", () => {
    const t = template([
      llm("plan", { prompt: "{{input}} for {{ vars.audience }}", outputVar: "outline" }),
      llm("a", { dependsOn: ["plan"], prompt: "{{steps.plan.output}}" }),
      llm("b", { dependsOn: ["plan"], prompt: "{{vars.outline}}" }),
      llm("final", {
        dependsOn: ["a", "b"],
        prompt: "{{steps.a.output}} {{steps.b.output}} {{steps.plan.output}}",
      }),
    ]);
    expect(validateTemplate(t)).toEqual([]);
  });

  it("template validation - names the dependency that points at an unknown step", () => {
    const t = template([llm("plan"), llm("outline"), llm("review", { dependsOn: ["draft"] })]);
    expect(validateTemplate(t)).toContainEqual({
      field: "template.steps[2].depends_on[0]",
      message: 'template.steps[2].depends_on[0]: unknown step "draft"',
    });
  });

  it("template validation - rejects duplicate step ids", () => {
    expect(messages(template([llm("a"), llm("a")]))).toContain(
      'template.steps[1].id: duplicate step id "a" (also steps[0])',
    );
  });

  it("template validation - rejects a dependency cycle and shows it", () => {
    const t = template([
      llm("a", { dependsOn: ["c"] }),
      llm("b", { dependsOn: ["a"] }),
      llm("c", { dependsOn: ["b"] }),
    ]);
    expect(messages(t)).toContain(
      "template.steps[0].depends_on: dependency cycle a -> c -> b -> a",
    );
  });

  it("template validation - rejects a step depending on itself", () => {
    expect(messages(template([llm("a", { dependsOn: ["a"] })]))).toContain(
      'template.steps[0].depends_on[0]: step "a" depends on itself',
    );
  });

  it("template validation - output_step must name a step", () => {
    expect(messages(template([llm("a")], { outputStep: "final" }))).toEqual([
      'template.output_step: unknown step "final"',
    ]);
  });

  it("template validation - a step may only read outputs of its upstream steps", () => {
    const t = template([
      llm("a"),
      llm("b", { prompt: "{{steps.a.output}}" }),
      llm("c", { dependsOn: ["b"], system: "{{steps.zzz.output}}", prompt: "{{steps.b.output}}" }),
    ]);
    expect(messages(t)).toEqual([
      'template.steps[1].prompt: {{steps.a.output}} refers to step "a", which is not a dependency (direct or transitive) of "b"',
      'template.steps[2].system: {{steps.zzz.output}} refers to unknown step "zzz"',
    ]);
  });

  it("template validation - vars must be declared inputs or upstream output vars", () => {
    const t = template([
      llm("a", { outputVar: "summary" }),
      llm("b", { prompt: "{{vars.summary}} {{vars.tone}} {{input}}" }),
    ]);
    expect(messages(t)).toEqual([
      'template.steps[1].prompt: {{vars.summary}} is the output of step "a", which is not a dependency (direct or transitive) of "b"',
      "template.steps[1].prompt: {{vars.tone}} is neither a declared input nor the output_var of a step",
    ]);
  });

  it("template validation - rejects unknown variable forms", () => {
    expect(messages(template([llm("a", { prompt: "{{user.name}}" })]))).toEqual([
      "template.steps[0].prompt: unknown variable {{user.name}} (use {{input}}, {{vars.<name>}} or {{steps.<id>.output}})",
    ]);
  });

  it("template validation - a variable left unclosed is refused, not sent to the model as text", () => {
    expect(messages(template([llm("a", { prompt: "Summarise {{input" })]))).toEqual([
      'template.steps[0].prompt: "{{input" opens a variable that is never closed with }}',
    ]);
    expect(messages(template([llm("a", { system: "Be brief. {{input}" })]))).toEqual([
      'template.steps[0].system: "{{input}" opens a variable that is never closed with }}',
    ]);
    // Closed placeholders, single braces and a lone "}}" are fine.
    expect(messages(template([llm("a", { prompt: '{{ input }} as JSON: {"a": 1} }}' })]))).toEqual(
      [],
    );
  });

  it("template validation - output vars may not shadow inputs", () => {
    expect(messages(template([llm("a", { outputVar: "audience" })]))).toEqual([
      'template.steps[0].output_var: "audience" is already the name of an input',
    ]);
  });

  it("template validation - each step kind has what it needs to run", () => {
    const t = template([
      { id: "a", kind: StepKind.LLM, prompt: "x" },
      { id: "cmp", kind: StepKind.COMPARE, models: ["fast"], prompt: "x" },
      { id: "rank", kind: StepKind.RANK, dependsOn: ["a"], rankStep: "a" },
      { id: "get", kind: StepKind.RETRIEVE },
      { id: "plug", kind: StepKind.PLUGIN, plugin: "p" },
      { id: "draw", kind: StepKind.IMAGE, model: "image" },
    ]);
    expect(messages(t)).toEqual([
      'template.steps[2].rank_step: step "a" is not a STEP_KIND_COMPARE step',
      "template.steps[0].model: required for STEP_KIND_LLM steps",
      "template.steps[1].models: STEP_KIND_COMPARE needs at least 2 models",
      "template.steps[2].judge_model: STEP_KIND_RANK needs a judge_model or criteria",
      "template.steps[3].collection: required for STEP_KIND_RETRIEVE steps",
      "template.steps[4].plugin_method: required for STEP_KIND_PLUGIN steps",
      "template.steps[5].prompt: required for STEP_KIND_IMAGE steps",
    ]);
  });

  it("template validation - a rank step must depend on the compare step it ranks", () => {
    const t = template([
      { id: "cmp", kind: StepKind.COMPARE, models: ["fast", "medium"], prompt: "{{input}}" },
      { id: "rank", kind: StepKind.RANK, rankStep: "cmp", judgeModel: "thinking" },
    ]);
    expect(messages(t)).toEqual([
      'template.steps[1].rank_step: step "cmp" must be a dependency of "rank"',
    ]);
  });
});
