import { create } from "@bufbuild/protobuf";
import {
  StepKind,
  WorkflowStepSchema,
  WorkflowTemplateSchema,
  type WorkflowStep,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import {
  parseWorkflowDefinition,
  readySteps,
  renderTemplate,
  resolveInputs,
  validateRunnable,
} from "./workflow.js";

type StepInit = Partial<Omit<WorkflowStep, "$typeName" | "$unknown">>;

const llm = (id: string, init: StepInit = {}): StepInit => ({
  id,
  kind: StepKind.LLM,
  model: "fast",
  prompt: "{{input}}",
  ...init,
});

function template(steps: StepInit[], init: Record<string, unknown> = {}) {
  return create(WorkflowTemplateSchema, {
    id: "t",
    name: "T",
    outputStep: steps.at(-1)?.id ?? "",
    steps: steps.map((s) => create(WorkflowStepSchema, s)),
    ...init,
  });
}

describe("workflow format", () => {
  it("workflow format - names unknown steps, cycles and variables on non-dependencies by field path", () => {
    const issues = validateRunnable(
      template([
        llm("a", { dependsOn: ["c"] }),
        llm("b", { dependsOn: ["ghost"], prompt: "{{steps.a.output}}" }),
        llm("c", { dependsOn: ["a"] }),
      ]),
      "spec.workflow.inline",
    ).map((i) => i.message);
    expect(issues).toContain('spec.workflow.inline.steps[1].depends_on[0]: unknown step "ghost"');
    expect(
      issues.some((m) =>
        m.startsWith("spec.workflow.inline.steps[0].depends_on: dependency cycle"),
      ),
    ).toBe(true);
    const stray = validateRunnable(
      template([llm("a"), llm("b", { prompt: "{{steps.a.output}}" })]),
    );
    expect(stray.map((i) => i.field)).toEqual(["template.steps[1].prompt"]);
  });

  it("workflow format - refuses step kinds the engine cannot run", () => {
    const issues = validateRunnable(template([{ id: "x", kind: StepKind.UNSPECIFIED }]));
    expect(issues.map((i) => i.field)).toEqual(["template.steps[0].kind"]);
  });

  it("workflow format - retrieve steps run, need a collection, which may only name a declared input", () => {
    const retrieve = { id: "r", kind: StepKind.RETRIEVE, prompt: "{{input}}" };
    expect(validateRunnable(template([{ ...retrieve, collection: "docs" }]))).toEqual([]);
    expect(
      validateRunnable(
        template([{ ...retrieve, collection: "{{ vars.kb }}" }], { inputs: [{ name: "kb" }] }),
      ),
    ).toEqual([]);
    expect(validateRunnable(template([retrieve])).map((i) => i.field)).toEqual([
      "template.steps[0].collection",
    ]);
    const stray = validateRunnable(
      template([{ ...retrieve, collection: "{{vars.other}}-{{input}}" }], {
        inputs: [{ name: "kb" }],
      }),
    ).map((i) => i.message);
    expect(stray).toEqual([
      "template.steps[0].collection: {{vars.other}} is not allowed here; a collection may only use {{vars.<name>}} of a declared input",
      "template.steps[0].collection: {{input}} is not allowed here; a collection may only use {{vars.<name>}} of a declared input",
    ]);
  });

  it("workflow format - plugin steps run, and need plugin and plugin_method", () => {
    const ok = template([
      { id: "p", kind: StepKind.PLUGIN, plugin: "wordstats", pluginMethod: "stats" },
    ]);
    expect(validateRunnable(ok)).toEqual([]);
    const missing = validateRunnable(template([{ id: "p", kind: StepKind.PLUGIN }]));
    expect(missing.map((i) => i.field)).toEqual([
      "template.steps[0].plugin",
      "template.steps[0].plugin_method",
    ]);
  });

  it("workflow format - inputs take the caller's values, then defaults; required and undeclared ones are problems", () => {
    const t = template([llm("a")], {
      inputs: [
        { name: "tone", defaultValue: "warm" },
        { name: "goal", required: true },
      ],
    });
    expect(resolveInputs(t, { goal: "sales" })).toEqual({
      values: { tone: "warm", goal: "sales" },
      issues: [],
    });
    const bad = resolveInputs(t, { extra: "x" }).issues.map((i) => i.field);
    expect(bad).toEqual(['spec.workflow.variables["extra"]', 'spec.workflow.variables["goal"]']);
  });

  it("workflow format - renders input, vars and step outputs", () => {
    expect(
      renderTemplate("{{input}} / {{ vars.tone }} / {{steps.a.output}} / {{steps.zz.output}}", {
        input: "Q",
        vars: { tone: "warm" },
        outputs: { a: "A!" },
      }),
    ).toBe("Q / warm / A! / ");
  });

  it("workflow format - ready steps: dependencies completed, plan order, capped by maxParallel", () => {
    const t = template([llm("a"), llm("b"), llm("c", { dependsOn: ["a", "b"] }), llm("d")]);
    const none = new Set<string>();
    expect(readySteps(t, { dispatched: none, completed: none, ended: none }, 0)).toEqual([
      "a",
      "b",
      "d",
    ]);
    expect(readySteps(t, { dispatched: none, completed: none, ended: none }, 2)).toEqual([
      "a",
      "b",
    ]);
    expect(
      readySteps(t, { dispatched: new Set(["a", "b"]), completed: new Set(["a"]), ended: none }, 2),
    ).toEqual(["d"]);
    expect(
      readySteps(
        t,
        { dispatched: new Set(["a", "b", "d"]), completed: new Set(["a", "b"]), ended: none },
        0,
      ),
    ).toEqual(["c"]);
  });

  it("workflow format - parses JSON and YAML definitions (protobuf JSON mapping)", () => {
    const yaml = `
id: brief
name: Brief
outputStep: b
steps:
  - id: a
    kind: STEP_KIND_LLM
    model: fast
    prompt: "Facts: {{input}}"
  - id: b
    kind: STEP_KIND_TRANSFORM
    dependsOn: [a]
    prompt: "{{steps.a.output}}"
`;
    const fromYaml = parseWorkflowDefinition(yaml);
    expect(fromYaml.steps.map((s) => s.id)).toEqual(["a", "b"]);
    expect(validateRunnable(fromYaml)).toEqual([]);
    const fromJson = parseWorkflowDefinition(
      JSON.stringify({
        template: {
          id: "x",
          name: "X",
          outputStep: "a",
          steps: [{ id: "a", kind: "STEP_KIND_TRANSFORM", prompt: "hi" }],
        },
      }),
    );
    expect(fromJson.steps[0]?.kind).toBe(StepKind.TRANSFORM);
    expect(() => parseWorkflowDefinition("steps: [")).toThrow(/not valid JSON or YAML/);
    expect(() => parseWorkflowDefinition('{"steps": [{"kind": "NOPE"}]}')).toThrow();
  });
});
