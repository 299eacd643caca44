// Runs against the real mesh (test/engine-mesh.ts): auth, registry and model-proxy as built
// processes, the LLM simulator as the only provider, NATS JetStream and the MongoDB-wire server
// from the test kit, and the engine in-process.
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import type { Simulator } from "@ensemble/llm-sim";
import {
  RankCriterion,
  RunEventType,
  RunService,
  RunStatus,
  StepKind,
  StepStatus,
  UsageDimension,
  WorkflowTemplateSchema,
  type Run,
  type RunEvent,
  type RunSpec,
} from "@ensemble/proto";
import { rejection } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startEngineMesh, type EngineMesh } from "./engine-mesh.js";

let mesh: EngineMesh;
let sim: Simulator;
let runs: GrpcClient<typeof RunService>;
let userA: string;
let userB: string;

type SpecInit = Parameters<GrpcClient<typeof RunService>["startRun"]>[0]["spec"];
const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function start(spec: SpecInit, token = userA): Promise<Run> {
  const res = await runs.startRun({ spec }, as(token));
  if (res.run === undefined) throw new Error("no run");
  return res.run;
}

async function waitEnd(id: string, token = userA, timeoutMs = 20_000): Promise<Run> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const run = (await runs.getRun({ runId: id }, as(token))).run!;
    if (
      run.status === RunStatus.COMPLETED ||
      run.status === RunStatus.FAILED ||
      run.status === RunStatus.CANCELLED
    ) {
      return run;
    }
    if (Date.now() > until) throw new Error(`run ${id} still ${RunStatus[run.status]}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function events(id: string, after = 0n, token = userA): Promise<RunEvent[]> {
  const out: RunEvent[] = [];
  for await (const item of runs.watchRun({ runId: id, afterSequence: after }, as(token))) {
    if (item.item.case === "event") out.push(item.item.value);
  }
  return out;
}

const ms = (t: { seconds: bigint; nanos: number } | undefined) =>
  t === undefined ? NaN : timestampDate(t as never).getTime();

beforeAll(async () => {
  mesh = await startEngineMesh({
    name: "runs",
    // One provider call per attempt, and no breaker opening while tests make models fail: the
    // engine's own retries and fallbacks are what is under test.
    proxyEnv: { RETRY_MAX_ATTEMPTS: "1", BREAKER_THRESHOLD: "100000" },
    // Failed runs get a user-facing explanation from a model that the failure tests leave up.
    explainerModel: "sim-medium",
  });
  sim = mesh.sim;
  runs = createClient(RunService, await mesh.serve());
  userA = (await mesh.signup("a")).token;
  userB = (await mesh.signup("b")).token;
}, 240_000);

afterAll(async () => {
  await mesh?.stop();
});

function inline(steps: Array<Record<string, unknown>>, extra: Record<string, unknown> = {}) {
  return create(WorkflowTemplateSchema, {
    id: "inline",
    name: "Inline",
    outputStep: (steps.at(-1)?.["id"] as string) ?? "",
    steps: steps as never,
    ...extra,
  });
}

describe("runs", () => {
  it("model mode - one model answers; the record has the answer, tokens, cost and latency", async () => {
    const run = await start({
      input: "What is a monad?",
      mode: { case: "model", value: { model: "sim-fast" } },
    });
    expect([RunStatus.RUNNING, RunStatus.COMPLETED]).toContain(run.status);
    const done = await waitEnd(run.id);
    expect(done.status).toBe(RunStatus.COMPLETED);
    expect(done.output).toContain("[simulated sim-fast]");
    expect(done.output).toContain("What is a monad?");
    const step = done.steps[0]!;
    expect(step.status).toBe(StepStatus.COMPLETED);
    expect(step.answers[0]?.servedBy?.model).toBe("sim-fast");
    expect(step.answers[0]?.usage?.outputTokens).toBeGreaterThan(0n);
    expect(done.usage?.costUsd).toBeGreaterThan(0);
    expect(done.usage?.totalTokens).toBe(step.usage?.totalTokens);
    expect(done.latency).toBeDefined();
    expect(done.lastSequence).toBeGreaterThanOrEqual(4n);
  });

  it("workflow - parallel steps overlap in time, chained steps do not, variables pass between steps", async () => {
    sim.configure("sim-code", { latencyMs: 400 });
    try {
      const template = inline(
        [
          { id: "a", kind: StepKind.LLM, model: "sim-code", prompt: "Facts about {{input}}" },
          {
            id: "b",
            kind: StepKind.LLM,
            model: "sim-code",
            prompt: "Risks of {{input}}",
            outputVar: "risks",
          },
          {
            id: "c",
            kind: StepKind.LLM,
            model: "sim-fast",
            dependsOn: ["a", "b"],
            prompt: "For {{vars.audience}}: {{steps.a.output}} / {{vars.risks}}",
          },
          {
            id: "d",
            kind: StepKind.TRANSFORM,
            dependsOn: ["c"],
            prompt: "REPORT\n{{steps.c.output}}",
          },
        ],
        { inputs: [{ name: "audience", defaultValue: "nobody" }] },
      );
      const run = await start({
        input: "tidal power",
        mode: {
          case: "workflow",
          value: {
            definition: { case: "inline", value: template },
            variables: { audience: "engineers" },
          },
        },
      });
      const done = await waitEnd(run.id);
      expect(done.status).toBe(RunStatus.COMPLETED);
      const [a, b, c, d] = done.steps;
      // a and b overlap: each starts before the other ends.
      expect(ms(a!.startTime)).toBeLessThan(ms(b!.endTime));
      expect(ms(b!.startTime)).toBeLessThan(ms(a!.endTime));
      // c waits for both, d for c.
      expect(ms(c!.startTime)).toBeGreaterThanOrEqual(Math.max(ms(a!.endTime), ms(b!.endTime)));
      expect(ms(d!.startTime)).toBeGreaterThanOrEqual(ms(c!.endTime));
      // c's prompt carried a's output and b's output variable (the simulator quotes its prompt).
      expect(c!.output).toContain("For engineers: [simulated sim-code]");
      expect(c!.output).toContain("Facts about tidal power");
      expect(done.output.startsWith("REPORT\n[simulated sim-fast]")).toBe(true);
      expect(done.outputStepId).toBe("d");
    } finally {
      sim.configure("sim-code", { latencyMs: 0 });
    }
  });

  it("workflow - maxParallel 1 runs independent steps one after the other", async () => {
    sim.configure("sim-code", { latencyMs: 150 });
    try {
      const template = inline(
        [
          { id: "a", kind: StepKind.LLM, model: "sim-code", prompt: "one {{input}}" },
          { id: "b", kind: StepKind.LLM, model: "sim-code", prompt: "two {{input}}" },
          {
            id: "c",
            kind: StepKind.TRANSFORM,
            dependsOn: ["a", "b"],
            prompt: "{{steps.a.output}}{{steps.b.output}}",
          },
        ],
        { maxParallel: 1 },
      );
      const done = await waitEnd(
        (
          await start({
            input: "x",
            mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
          })
        ).id,
      );
      expect(done.status).toBe(RunStatus.COMPLETED);
      const [a, b] = done.steps;
      expect(ms(b!.startTime)).toBeGreaterThanOrEqual(ms(a!.endTime));
    } finally {
      sim.configure("sim-code", { latencyMs: 0 });
    }
  });

  it("workflow - a failing step retries, falls back, then fails the run with a clear error", async () => {
    const fastBefore = sim.requests("sim-fast");
    // sim-vision: a fallback model with no catalog fallback chain of its own in model-proxy.
    const visionBefore = sim.requests("sim-vision");
    sim.configure("sim-fast", { fail: "500" });
    sim.configure("sim-vision", { fail: "503" });
    try {
      const template = inline([
        {
          id: "x",
          kind: StepKind.LLM,
          model: "sim-fast",
          fallbackModel: "sim-vision",
          retries: 1,
          prompt: "{{input}}",
        },
        { id: "y", kind: StepKind.TRANSFORM, dependsOn: ["x"], prompt: "{{steps.x.output}}" },
      ]);
      const run = await start({
        input: "doomed",
        mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
      });
      const done = await waitEnd(run.id);
      expect(done.status).toBe(RunStatus.FAILED);
      expect(done.error?.stepId).toBe("x");
      expect(done.error?.code).not.toBe("");
      expect(done.error?.message).not.toBe("");
      // The explainer model saw the technical cause and its answer is kept next to it.
      expect(done.error?.explanation).toContain("[simulated sim-medium]");
      expect(done.error?.explanation).toContain(`Error code: ${done.error?.code}`);
      const [x, y] = done.steps;
      expect(x!.status).toBe(StepStatus.FAILED);
      expect(x!.attempts).toBe(3);
      expect(x!.fallbackUsed).toBe(true);
      expect(y!.status).toBe(StepStatus.SKIPPED);
      expect(sim.requests("sim-fast") - fastBefore).toBe(2);
      expect(sim.requests("sim-vision") - visionBefore).toBe(1);
      const evs = await events(run.id);
      const failed = evs.filter((e) => e.type === RunEventType.STEP_FAILED);
      expect(
        failed.map((e) => (e.payload.case === "stepFailed" ? e.payload.value.willRetry : null)),
      ).toEqual([true, true, false]);
      expect(
        failed[1]?.payload.case === "stepFailed" && failed[1].payload.value.fallbackModel,
      ).toBe("sim-vision");
      expect(evs.at(-1)?.type).toBe(RunEventType.FAILED);
    } finally {
      sim.configure("sim-fast", { fail: undefined });
      sim.configure("sim-vision", { fail: undefined });
    }
  });

  it("workflow - a step that fails once succeeds on its retry", async () => {
    sim.configure("sim-fast", { failFirst: 1, fail: "500" });
    const template = inline([
      { id: "x", kind: StepKind.LLM, model: "sim-fast", retries: 2, prompt: "{{input}}" },
    ]);
    const done = await waitEnd(
      (
        await start({
          input: "flaky",
          mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
        })
      ).id,
    );
    expect(done.status).toBe(RunStatus.COMPLETED);
    expect(done.steps[0]?.attempts).toBe(2);
    expect(done.steps[0]?.fallbackUsed).toBe(false);
  });

  it("cancel - stops the in-flight model call at once and ends the run CANCELLED", async () => {
    sim.configure("sim-thinking", { latencyMs: 8_000 });
    try {
      const run = await start({
        input: "slow",
        mode: { case: "model", value: { model: "sim-thinking" } },
      });
      const until = Date.now() + 5_000;
      while (
        (await runs.getRun({ runId: run.id }, as(userA))).run?.steps[0]?.status !==
        StepStatus.RUNNING
      ) {
        if (Date.now() > until) throw new Error("step never started");
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 100));
      const cancelledAt = Date.now();
      const res = await runs.cancelRun({ runId: run.id, reason: "changed my mind" }, as(userA));
      expect(res.run?.status).toBe(RunStatus.CANCELLED);
      expect(res.run?.cancelReason).toBe("changed my mind");
      // The step's call was aborted: its record ends right after the cancellation, not 8 s later.
      const until2 = Date.now() + 3_000;
      let step = (await runs.getRun({ runId: run.id }, as(userA))).run!.steps[0]!;
      while (step.endTime === undefined && Date.now() < until2) {
        await new Promise((r) => setTimeout(r, 50));
        step = (await runs.getRun({ runId: run.id }, as(userA))).run!.steps[0]!;
      }
      expect(step.status).toBe(StepStatus.CANCELLED);
      expect(ms(step.endTime) - cancelledAt).toBeLessThan(2_000);
      // Cancelling again returns it unchanged; a completed run cannot be cancelled.
      expect((await runs.cancelRun({ runId: run.id }, as(userA))).run?.status).toBe(
        RunStatus.CANCELLED,
      );
      const evs = await events(run.id);
      expect(evs.at(-1)?.type).toBe(RunEventType.CANCELLED);
      expect(evs.some((e) => e.type === RunEventType.COMPLETED)).toBe(false);
    } finally {
      sim.configure("sim-thinking", { latencyMs: 20 });
    }
  });

  it("cancel - a completed run is FAILED_PRECONDITION", async () => {
    const done = await waitEnd(
      (await start({ input: "hi", mode: { case: "model", value: { model: "sim-fast" } } })).id,
    );
    const err = await rejection(runs.cancelRun({ runId: done.id }, as(userA)));
    expect(err.code).toBe(Code.FailedPrecondition);
  });

  it("watch - a watcher that joins after the end sees every event in order, and can resume", async () => {
    const template = inline([
      { id: "a", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}" },
      { id: "b", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}!" },
      {
        id: "c",
        kind: StepKind.TRANSFORM,
        dependsOn: ["a", "b"],
        prompt: "{{steps.a.output}}{{steps.b.output}}",
      },
    ]);
    const run = await start({
      input: "watch me",
      mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
    });
    const done = await waitEnd(run.id);
    const evs = await events(run.id);
    expect(evs.map((e) => e.sequence)).toEqual(evs.map((_, i) => BigInt(i + 1)));
    expect(evs[0]?.type).toBe(RunEventType.CREATED);
    expect(evs.at(-1)?.type).toBe(RunEventType.COMPLETED);
    expect(
      evs
        .filter((e) => e.type === RunEventType.STEP_COMPLETED)
        .map((e) => e.stepId)
        .sort(),
    ).toEqual(["a", "b", "c"]);
    expect(BigInt(evs.length)).toBe(done.lastSequence);
    const resumed = await events(run.id, 3n);
    expect(resumed.map((e) => e.sequence)).toEqual(evs.slice(3).map((e) => e.sequence));
    expect(await events(run.id, done.lastSequence)).toEqual([]);
  });

  it("run stream - the created run, events with token deltas as they happen, then the final run", async () => {
    const items: Array<{ kind: string; at: number; event?: RunEvent; run?: Run }> = [];
    for await (const item of runs.run(
      { spec: { input: "stream please", mode: { case: "model", value: { model: "sim-medium" } } } },
      as(userA),
    )) {
      if (item.item.case === "run")
        items.push({ kind: "run", at: Date.now(), run: item.item.value });
      else if (item.item.case === "event")
        items.push({ kind: "event", at: Date.now(), event: item.item.value });
    }
    expect(items[0]?.kind).toBe("run");
    expect(items.at(-1)?.run?.status).toBe(RunStatus.COMPLETED);
    const evs = items.filter((i) => i.event !== undefined).map((i) => i.event!);
    const deltas = evs.filter((e) => e.type === RunEventType.STEP_DELTA);
    expect(deltas.length).toBeGreaterThan(3);
    const text = deltas
      .map((d) => (d.payload.case === "stepDelta" ? d.payload.value.text : ""))
      .join("");
    expect(text).toBe(items.at(-1)?.run?.output);
    const completedAt = evs.findIndex((e) => e.type === RunEventType.COMPLETED);
    expect(evs.findIndex((e) => e.type === RunEventType.STEP_DELTA)).toBeLessThan(completedAt);
  });

  it("compare - N models in parallel, each answer measured, ranked by declared criteria", async () => {
    sim.configure("sim-medium", { latencyMs: 300 });
    try {
      const run = await start({
        input: "Name a prime",
        mode: {
          case: "compare",
          value: { models: ["sim-medium", "sim-fast"], ranking: { by: [RankCriterion.LATENCY] } },
        },
      });
      const done = await waitEnd(run.id);
      expect(done.status).toBe(RunStatus.COMPLETED);
      const compare = done.steps.find((s) => s.kind === StepKind.COMPARE)!;
      expect(compare.answers).toHaveLength(2);
      for (const a of compare.answers) {
        expect(a.latency).toBeDefined();
        expect(a.usage?.totalTokens).toBeGreaterThan(0n);
        expect(a.usage?.costUsd).toBeGreaterThan(0);
      }
      expect(done.ranking?.ranked.map((r) => r.model)).toEqual(["sim-fast", "sim-medium"]);
      expect(done.ranking?.ranked[0]?.rank).toBe(1);
      expect(done.ranking?.rationale).not.toBe("");
      expect(done.output).toContain("[simulated sim-fast]");
    } finally {
      sim.configure("sim-medium", { latencyMs: 0 });
    }
  });

  it("compare - a judge model ranks with a rubric and a rationale", async () => {
    const done = await waitEnd(
      (
        await start({
          input: "Explain gravity in one line",
          mode: {
            case: "compare",
            value: {
              models: ["sim-fast", "sim-code"],
              ranking: { judgeModel: "sim-thinking", criteria: ["accuracy", "brevity"] },
            },
          },
        })
      ).id,
    );
    expect(done.status).toBe(RunStatus.COMPLETED);
    expect(done.ranking?.judgeModel).toBe("sim-thinking");
    expect(done.ranking?.criteria).toEqual(["accuracy", "brevity"]);
    expect(done.ranking?.ranked).toHaveLength(2);
    expect(done.ranking?.rationale.length).toBeGreaterThan(0);
    const rank = done.steps.find((s) => s.kind === StepKind.RANK)!;
    expect(rank.answers[0]?.servedBy?.model).toBe("sim-thinking");
  });

  it("template - research_report runs end to end on the simulator", async () => {
    const run = await start({
      input: "Should a mid-size city invest in a tram line?",
      mode: {
        case: "workflow",
        value: {
          definition: { case: "templateId", value: "research_report" },
          variables: { audience: "city council" },
        },
      },
    });
    expect(run.templateId).toBe("research_report");
    const done = await waitEnd(run.id, userA, 60_000);
    expect(done.status).toBe(RunStatus.COMPLETED);
    expect(done.steps.map((s) => s.stepId)).toEqual([
      "plan",
      "evidence",
      "perspectives",
      "draft",
      "review",
      "final",
    ]);
    expect(done.steps.every((s) => s.status === StepStatus.COMPLETED)).toBe(true);
    expect(done.output).toContain("[simulated");
    expect(done.steps.find((s) => s.stepId === "plan")?.answers[0]?.text).toContain("city council");
    const [, evidence, perspectives] = done.steps;
    expect(ms(evidence!.startTime)).toBeLessThan(ms(perspectives!.endTime));
  });

  it("validation - inline graphs with a cycle or a variable on a non-dependency are INVALID_ARGUMENT with the field path", async () => {
    const cyc = inline([
      { id: "a", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}", dependsOn: ["b"] },
      { id: "b", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}", dependsOn: ["a"] },
    ]);
    const err = await rejection(
      start({
        input: "x",
        mode: { case: "workflow", value: { definition: { case: "inline", value: cyc } } },
      }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toContain("spec.workflow.inline.steps[0].depends_on: dependency cycle");
    const stray = inline([
      { id: "a", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}" },
      { id: "b", kind: StepKind.LLM, model: "sim-fast", prompt: "{{steps.a.output}}" },
    ]);
    const err2 = await rejection(
      start({
        input: "x",
        mode: { case: "workflow", value: { definition: { case: "inline", value: stray } } },
      }),
    );
    expect(err2.code).toBe(Code.InvalidArgument);
    expect(err2.rawMessage).toContain("spec.workflow.inline.steps[1].prompt");
    const err3 = await rejection(
      start({
        input: "x",
        mode: {
          case: "workflow",
          value: {
            definition: { case: "templateId", value: "research_report" },
            variables: { nope: "1" },
          },
        },
      }),
    );
    expect(err3.code).toBe(Code.InvalidArgument);
    expect(err3.rawMessage).toContain('spec.workflow.variables["nope"]');
  });

  it("validation - a model not in the catalog is refused before a run exists, naming where it was written", async () => {
    const refused = async (spec: SpecInit) => {
      const err = await rejection(start(spec));
      return { code: err.code, message: err.rawMessage };
    };
    expect(
      await refused({ input: "x", mode: { case: "model", value: { model: "gpt-nope" } } }),
    ).toEqual({
      code: Code.InvalidArgument,
      message: 'spec.model.model: model "gpt-nope" is not in the catalog',
    });
    // Aliases resolve as model-proxy resolves them.
    const aliased = await start({ input: "x", mode: { case: "model", value: { model: "fast" } } });
    expect((await waitEnd(aliased.id)).status).toBe(RunStatus.COMPLETED);
    expect(
      await refused({
        input: "x",
        mode: {
          case: "compare",
          value: { models: ["sim-fast", "sim-nope"], ranking: { by: [RankCriterion.LATENCY] } },
        },
      }),
    ).toEqual({
      code: Code.InvalidArgument,
      message: 'spec.compare.models[1]: model "sim-nope" is not in the catalog',
    });
    const typo = inline([
      { id: "a", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}" },
      {
        id: "b",
        kind: StepKind.LLM,
        model: "sim-fast",
        fallbackModel: "sim-fsat",
        dependsOn: ["a"],
        prompt: "{{steps.a.output}}",
      },
    ]);
    expect(
      await refused({
        input: "x",
        mode: { case: "workflow", value: { definition: { case: "inline", value: typo } } },
      }),
    ).toEqual({
      code: Code.InvalidArgument,
      message:
        'spec.workflow.inline.steps[1].fallback_model: model "sim-fsat" is not in the catalog',
    });

    // A stored template that names a missing model is the template's fault, not the caller's.
    await mesh.registryClient.upsertTemplate(
      { template: { ...typo, id: "typo_template", name: "Typo" } },
      as(userA),
    );
    expect(
      await refused({
        input: "x",
        mode: {
          case: "workflow",
          value: { definition: { case: "templateId", value: "typo_template" } },
        },
      }),
    ).toEqual({
      code: Code.FailedPrecondition,
      message: 'workflow template "typo_template" step "b": model "sim-fsat" is not in the catalog',
    });
    // None of them became a run.
    for (const filter of [{ model: "gpt-nope" }, { templateId: "typo_template" }]) {
      expect((await runs.listRuns(filter, as(userA))).runs).toEqual([]);
    }
  });

  it("api keys - a run started with an API key bills the key: its model calls and its failure explanation, not the user's own runs", async () => {
    const owner = await mesh.signup("apikey");
    const created = await mesh.authClient.createApiKey({ name: "runs" }, as(owner.token));
    const keyId = created.apiKey!.id;
    // What the gateway does with a key on every request.
    const gateway = await mesh.auth.mintServiceToken("gateway");
    const viaKey = (
      await mesh.authClient.authenticateApiKey({ apiKey: created.secret }, as(gateway))
    ).accessToken;

    const ok = await waitEnd(
      (
        await start(
          { input: "keyed", mode: { case: "model", value: { model: "sim-fast" } } },
          viaKey,
        )
      ).id,
      viaKey,
    );
    expect(ok.status).toBe(RunStatus.COMPLETED);
    expect(ok.apiKeyId).toBe(keyId);

    // A failed run's explanation is a model call made for the run, so it is the key's too.
    // (failFirst cleared: with it set, `fail` would only be the mode of those first failures.)
    sim.configure("sim-fast", { fail: "500", failFirst: undefined });
    let failed: Run;
    try {
      const template = inline([
        { id: "x", kind: StepKind.LLM, model: "sim-fast", retries: 0, prompt: "{{input}}" },
      ]);
      failed = await waitEnd(
        (
          await start(
            {
              input: "keyed and doomed",
              mode: {
                case: "workflow",
                value: { definition: { case: "inline", value: template } },
              },
              metadata: { team: "doom" },
            },
            viaKey,
          )
        ).id,
        viaKey,
      );
    } finally {
      sim.configure("sim-fast", { fail: undefined });
    }
    expect(failed.status).toBe(RunStatus.FAILED);
    expect(failed.error?.explanation).toContain("[simulated sim-medium]");

    // The same user's own run, after the key's token was cached: not the key's.
    const own = await waitEnd(
      (
        await start(
          { input: "mine", mode: { case: "model", value: { model: "sim-fast" } } },
          owner.token,
        )
      ).id,
      owner.token,
    );
    expect(own.status).toBe(RunStatus.COMPLETED);
    expect(own.apiKeyId).toBe("");

    // model-proxy writes its ledger in batches: wait for all four calls.
    const usageBy = async () => {
      const deadline = Date.now() + 15_000;
      for (;;) {
        const usage = await mesh.modelProxy.getUsage(
          {
            startTime: timestampFromMs(Date.now() - 3_600_000),
            endTime: timestampFromMs(Date.now() + 3_600_000),
            groupBy: [UsageDimension.API_KEY, UsageDimension.MODEL],
          },
          as(owner.token),
        );
        if (Number(usage.totalRequests) >= 4 || Date.now() > deadline) return usage;
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const usage = await usageBy();
    const buckets = usage.buckets.map((b) => ({
      apiKeyId: b.apiKeyId,
      model: b.model,
      requests: Number(b.requests),
      errors: Number(b.errors),
    }));
    expect(buckets).toEqual(
      expect.arrayContaining([
        { apiKeyId: keyId, model: "sim-fast", requests: 2, errors: 1 },
        { apiKeyId: keyId, model: "sim-medium", requests: 1, errors: 0 },
        { apiKeyId: "", model: "sim-fast", requests: 1, errors: 0 },
      ]),
    );
    expect(buckets).toHaveLength(3);
    // The failed step's call and the explanation's carry the run's labels.
    const labelled = await mesh.modelProxy.getUsage(
      {
        startTime: timestampFromMs(Date.now() - 3_600_000),
        endTime: timestampFromMs(Date.now() + 3_600_000),
        groupBy: [UsageDimension.METADATA],
        metadataKey: "feature",
        metadata: { team: "doom" },
      },
      as(owner.token),
    );
    expect(labelled.buckets.map((b) => [b.metadataValue, Number(b.requests)])).toEqual([
      ["workflow", 1],
      ["workflow-explainer", 1],
    ]);
  });

  it("usage by metadata - a run's labels reach its model calls in the ledger, so usage is reported per team across workflows", async () => {
    const owner = await mesh.signup("labels");
    const template = inline([
      { id: "a", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}} one" },
      { id: "b", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}} two" },
    ]);
    const run = await waitEnd(
      (
        await start(
          {
            input: "labelled",
            mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
            metadata: { team: "search", note: "x".repeat(300) },
          },
          owner.token,
        )
      ).id,
      owner.token,
    );
    expect(run.status).toBe(RunStatus.COMPLETED);
    const deadline = Date.now() + 15_000;
    let usage;
    for (;;) {
      usage = await mesh.modelProxy.getUsage(
        {
          startTime: timestampFromMs(Date.now() - 3_600_000),
          endTime: timestampFromMs(Date.now() + 3_600_000),
          groupBy: [UsageDimension.METADATA],
          metadataKey: "team",
          metadata: { feature: "workflow" },
        },
        as(owner.token),
      );
      if (Number(usage.totalRequests) >= 2 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(usage.buckets.map((b) => [b.metadataValue, Number(b.requests)])).toEqual([
      ["search", 2],
    ]);
    expect(usage.total?.costUsd).toBeCloseTo(run.usage?.costUsd ?? -1, 9);
  });

  it("auto - without a categorizer AUTO is FAILED_PRECONDITION", async () => {
    const err = await rejection(start({ input: "anything" }));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toContain("categorizer");
  });

  it("idempotency - the same key returns the same run", async () => {
    const spec: SpecInit = { input: "once", mode: { case: "model", value: { model: "sim-fast" } } };
    const first = await runs.startRun({ spec, idempotencyKey: "k-1" }, as(userA));
    const second = await runs.startRun({ spec, idempotencyKey: "k-1" }, as(userA));
    expect(second.run?.id).toBe(first.run?.id);
    const other = await runs.startRun({ spec, idempotencyKey: "k-1" }, as(userB));
    expect(other.run?.id).not.toBe(first.run?.id);
  });

  it("tenancy - runs of one tenant are invisible to another; list is newest first with pages", async () => {
    const mine = await waitEnd(
      (
        await start({
          input: "secret",
          mode: { case: "model", value: { model: "sim-fast" } },
          metadata: { team: "x" },
        })
      ).id,
    );
    expect((await rejection(runs.getRun({ runId: mine.id }, as(userB)))).code).toBe(Code.NotFound);
    expect((await rejection(runs.cancelRun({ runId: mine.id }, as(userB)))).code).toBe(
      Code.NotFound,
    );
    expect((await rejection(events(mine.id, 0n, userB))).code).toBe(Code.NotFound);
    const theirs = await runs.listRuns({}, as(userB));
    expect(theirs.runs.some((r) => r.id === mine.id)).toBe(false);
    const page1 = await runs.listRuns({ page: { pageSize: 2 } }, as(userA));
    expect(page1.runs).toHaveLength(2);
    expect(page1.runs[0]?.id).toBe(mine.id);
    expect(page1.page?.nextPageToken).not.toBe("");
    const page2 = await runs.listRuns(
      { page: { pageSize: 2, pageToken: page1.page!.nextPageToken } },
      as(userA),
    );
    expect(page2.runs.map((r) => r.id)).not.toContain(mine.id);
    expect(ms(page2.runs[0]!.createTime)).toBeLessThanOrEqual(ms(page1.runs[1]!.createTime));
    const filtered = await runs.listRuns({ metadata: { team: "x" } }, as(userA));
    expect(filtered.runs.map((r) => r.id)).toEqual([mine.id]);
    expect(
      (await runs.listRuns({ model: "sim-fast", statuses: [RunStatus.COMPLETED] }, as(userA))).runs
        .length,
    ).toBeGreaterThan(0);
  });
});

export type { RunSpec };
