// Image runs against the real mesh (auth, registry, model-proxy, categorizer and the engine as
// built processes, the simulator as the image provider, NATS and the MongoDB-wire server): a
// request for an image is routed to the image model and runs an image step whose PNG is stored
// as an artifact, fetched with GetArtifact by whoever may see the run and by no one else; a
// workflow's image step feeds later steps; video, which runs cannot generate, is refused clearly.
import { createHash } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  RunEventType,
  RunService,
  RunStatus,
  StepKind,
  StepStatus,
  WorkflowTemplateSchema,
  type Run,
  type RunSpecSchema,
} from "@ensemble/proto";
import {
  rejection,
  startServices,
  startWorkflowProcess,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const PASSWORD = "correct-Horse-battery-9";
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

let sim: Simulator;
let services: Services<"categorizer" | "workflow">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let workflow: MeshProcess;
let runs: GrpcClient<typeof RunService>;
let userA: string;
let userB: string;

const as = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });

async function run(token: string, spec: MessageInitShape<typeof RunSpecSchema>): Promise<Run> {
  const res = await runs.startRun({ spec }, as(token));
  const id = res.run?.id ?? "";
  const until = Date.now() + 30_000;
  for (;;) {
    const r = (await runs.getRun({ runId: id }, as(token))).run!;
    if ([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED].includes(r.status)) return r;
    if (Date.now() > until) throw new Error(`run ${id} still ${RunStatus[r.status]}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0 } });
  services = await startServices({
    simulatorUrl: `${sim.url}/v1`,
    categorizer: {},
    workflow: {},
  });
  ({ auth, registry, modelProxy: proxy, workflow } = services);
  runs = createClient(RunService, workflow.address);
  const authClient = createClient(AuthService, auth.address);
  const stamp = Date.now();
  const signup = async (who: string) =>
    (
      await authClient.signup({
        email: `images-${who}-${stamp}@example.com`,
        password: PASSWORD,
        tenant: { case: "tenantName", value: `images ${who}` },
      })
    ).tokens?.accessToken ?? "";
  userA = await signup("a");
  userB = await signup("b");
}, 300_000);

afterAll(async () => {
  await services?.stop().catch(() => undefined);
  await sim?.close();
});

describe("image runs", () => {
  it("images - an AUTO request for an image runs an image step; its PNG is an artifact that GetArtifact returns to the run's owner only", async () => {
    const r = await run(userA, { input: "Generate an image of a red fox in the snow" });
    expect(r.status, JSON.stringify(r.error)).toBe(RunStatus.COMPLETED);
    expect(r.classification?.routeId).toBe("image-generation");
    expect(r.steps.map((s) => [s.kind, s.status])).toEqual([
      [StepKind.IMAGE, StepStatus.COMPLETED],
    ]);
    const step = r.steps[0]!;
    expect(step.answers[0]?.servedBy?.model).toBe("sim-image");
    expect(step.usage?.costUsd ?? 0).toBeGreaterThan(0);
    expect(r.artifacts).toHaveLength(1);
    expect(step.artifacts).toEqual(r.artifacts);
    const art = r.artifacts[0]!;
    expect(art).toMatchObject({ stepId: "image", index: 0, mimeType: "image/png" });
    expect(r.output).toContain(`artifact ${art.id}`);
    expect(r.output).toContain("red fox in the snow");

    const got = await runs.getArtifact({ runId: r.id, artifactId: art.id }, as(userA));
    expect([...got.data.subarray(0, 8)]).toEqual(PNG_SIGNATURE);
    expect(BigInt(got.data.length)).toBe(art.sizeBytes);
    expect(createHash("sha256").update(got.data).digest("hex")).toBe(art.sha256);
    expect(got.artifact).toEqual(art);

    // The events carry the descriptions (not the bytes): the step's end and the run's.
    const ends: Array<{ type: RunEventType; ids: string[] }> = [];
    for await (const item of runs.watchRun({ runId: r.id }, as(userA))) {
      if (item.item.case !== "event") continue;
      const p = item.item.value.payload;
      if (p.case === "stepCompleted" || p.case === "completed") {
        ends.push({ type: item.item.value.type, ids: p.value.artifacts.map((a) => a.id) });
      }
    }
    expect(ends).toEqual([
      { type: RunEventType.STEP_COMPLETED, ids: [art.id] },
      { type: RunEventType.COMPLETED, ids: [art.id] },
    ]);

    // Another tenant's user, and the right artifact under another run: NOT_FOUND.
    const foreign = await rejection(
      runs.getArtifact({ runId: r.id, artifactId: art.id }, as(userB)),
    );
    expect(foreign.code).toBe(Code.NotFound);
    const other = await run(userA, {
      input: "hello",
      mode: { case: "model", value: { model: "fast" } },
    });
    const misplaced = await rejection(
      runs.getArtifact({ runId: other.id, artifactId: art.id }, as(userA)),
    );
    expect(misplaced.code).toBe(Code.NotFound);
    expect(misplaced.rawMessage).toContain(art.id);
  });

  it("images - a workflow's image step makes several images and its output reaches the next step; MODEL mode with an image model runs an image step", async () => {
    const template = create(WorkflowTemplateSchema, {
      id: "poster",
      name: "Poster",
      outputStep: "caption",
      steps: [
        {
          id: "picture",
          kind: StepKind.IMAGE,
          model: "image",
          prompt: "A travel poster of {{input}}",
          imageCount: 2,
          imageSize: "512x512",
        },
        {
          id: "caption",
          kind: StepKind.LLM,
          model: "fast",
          prompt: "Caption these: {{steps.picture.output}}",
          dependsOn: ["picture"],
        },
      ],
    });
    const r = await run(userA, {
      input: "Lisbon",
      mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
    });
    expect(r.status, JSON.stringify(r.error)).toBe(RunStatus.COMPLETED);
    const picture = r.steps.find((s) => s.stepId === "picture")!;
    expect(picture.artifacts.map((a) => a.index)).toEqual([0, 1]);
    expect(new Set(picture.artifacts.map((a) => a.id)).size).toBe(2);
    // The run's result is the caption step's: no result files.
    expect(r.artifacts).toEqual([]);
    expect(r.output).toContain("Image 2 of 2");
    expect(r.output).toContain("A travel poster of Lisbon");
    for (const a of picture.artifacts) {
      const got = await runs.getArtifact({ runId: r.id, artifactId: a.id }, as(userA));
      expect([...got.data.subarray(0, 4)]).toEqual(PNG_SIGNATURE.slice(0, 4));
    }

    const direct = await run(userA, {
      input: "a lighthouse at dawn",
      mode: { case: "model", value: { model: "image" } },
    });
    expect(direct.status, JSON.stringify(direct.error)).toBe(RunStatus.COMPLETED);
    expect(direct.steps.map((s) => s.kind)).toEqual([StepKind.IMAGE]);
    expect(direct.artifacts).toHaveLength(1);
  });

  it("delete - an ended run goes with its artifacts; a running one is refused until cancelled; another tenant's is NOT_FOUND", async () => {
    const r = await run(userA, { input: "Generate an image of a lighthouse at dawn" });
    const art = r.artifacts[0]!;
    const foreign = await rejection(runs.deleteRun({ runId: r.id }, as(userB)));
    expect(foreign.code).toBe(Code.NotFound);
    await runs.deleteRun({ runId: r.id }, as(userA));
    // Each asked in turn (a rejection nobody awaits yet would be reported as unhandled).
    const after: Array<() => Promise<unknown>> = [
      () => runs.getRun({ runId: r.id }, as(userA)),
      () => runs.getArtifact({ runId: r.id, artifactId: art.id }, as(userA)),
      () => runs.deleteRun({ runId: r.id }, as(userA)),
      async () => {
        for await (const _ of runs.watchRun({ runId: r.id }, as(userA))) void _;
      },
    ];
    for (const call of after) expect((await rejection(call())).code).toBe(Code.NotFound);
    const listed = await runs.listRuns({}, as(userA));
    expect(listed.runs.map((x) => x.id)).not.toContain(r.id);

    sim.configure("sim-thinking", { latencyMs: 3_000 });
    try {
      const started = await runs.startRun(
        { spec: { input: "slow", mode: { case: "model", value: { model: "sim-thinking" } } } },
        as(userA),
      );
      const id = started.run!.id;
      const busy = await rejection(runs.deleteRun({ runId: id }, as(userA)));
      expect(busy.code).toBe(Code.FailedPrecondition);
      expect(busy.rawMessage).toContain("cancel it before deleting it");
      await runs.cancelRun({ runId: id }, as(userA));
      await runs.deleteRun({ runId: id }, as(userA));
      expect((await rejection(runs.getRun({ runId: id }, as(userA)))).code).toBe(Code.NotFound);
    } finally {
      sim.configure("sim-thinking", { latencyMs: 0 });
    }
  });

  it("retention - with RUN_RETENTION_MS an ended run is deleted once that old; a running one is not", async () => {
    const engine = await startWorkflowProcess({
      jwksUrl: auth.jwksUrl,
      authAddress: auth.address,
      registryAddress: registry.address,
      modelProxyAddress: proxy.address,
      serviceToken: await auth.mintServiceToken("workflow"),
      env: { RUN_RETENTION_MS: "1500", RECOVERY_INTERVAL_MS: "300" },
    });
    try {
      const client = createClient(RunService, engine.address);
      const image = await client.startRun(
        { spec: { input: "a red kite", mode: { case: "model", value: { model: "image" } } } },
        as(userA),
      );
      sim.configure("sim-thinking", { latencyMs: 4_000 });
      const slow = await client.startRun(
        { spec: { input: "slow", mode: { case: "model", value: { model: "sim-thinking" } } } },
        as(userA),
      );
      const until = Date.now() + 15_000;
      for (;;) {
        const gone = await client.getRun({ runId: image.run!.id }, as(userA)).then(
          () => false,
          () => true,
        );
        if (gone) break;
        if (Date.now() > until) throw new Error("the expired run was not deleted");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      // Still running past the retention: kept.
      const running = (await client.getRun({ runId: slow.run!.id }, as(userA))).run!;
      expect(running.status).toBe(RunStatus.RUNNING);
    } finally {
      sim.configure("sim-thinking", { latencyMs: 0 });
      await engine.stop();
    }
  });

  it("images - video generation, which runs cannot do, is refused with a clear error", async () => {
    const auto = await run(userA, {
      input: "Make a short video of a paper boat drifting down a rainy street.",
    });
    expect(auto.classification?.routeId).toBe("video-generation");
    expect(auto.status).toBe(RunStatus.FAILED);
    expect(auto.error?.code).toBe("FAILED_PRECONDITION");
    expect(auto.error?.message).toContain("runs cannot generate video yet");

    const direct = await rejection(
      runs.startRun(
        { spec: { input: "a boat", mode: { case: "model", value: { model: "sim-video" } } } },
        as(userA),
      ),
    );
    expect(direct.code).toBe(Code.FailedPrecondition);
    expect(direct.rawMessage).toContain("runs cannot generate video yet");
  });
});
