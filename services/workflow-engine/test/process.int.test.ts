// The built engine as a process (what npm start runs), with a bootstrap service credential and
// the categorizer: AUTO runs are classified and executed; a replica killed with SIGKILL in the
// middle of a run leaves its step to a restarted replica, and the run completes once; NATS that
// stops answering for a while neither kills the engine nor loses or hides a run.
import { Code } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  RunEventType,
  RunService,
  RunStatus,
  StepStatus,
  type Run,
} from "@ensemble/proto";
import {
  rejection,
  startServices,
  startNats,
  startWorkflowProcess,
  workflowSharedNames,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

let sim: Simulator;
let services: Services<"categorizer">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let categorizer: MeshProcess;
const engines: MeshProcess[] = [];
let token: string;

const as = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });

async function waitEnd(
  client: GrpcClient<typeof RunService>,
  id: string,
  timeoutMs = 30_000,
): Promise<Run> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const run = (await client.getRun({ runId: id }, as(token))).run!;
    if ([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED].includes(run.status))
      return run;
    if (Date.now() > until) throw new Error(`run ${id} still ${RunStatus[run.status]}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0 } });
  services = await startServices({ simulatorUrl: `${sim.url}/v1`, categorizer: {} });
  ({ auth, registry, modelProxy: proxy, categorizer } = services);
  const signup = await createClient(AuthService, auth.address).signup({
    email: `wf-proc-${Date.now()}@example.com`,
    password: "correct-Horse-battery-9",
    tenant: { case: "tenantName", value: "workflow process" },
  });
  token = signup.tokens?.accessToken ?? "";
}, 240_000);

afterAll(async () => {
  await Promise.allSettled(engines.map((e) => e.stop()));
  await services?.stop().catch(() => undefined);
  await sim?.close();
});

describe("workflow process", () => {
  it("auto - the categorizer's route is executed and published as classified", async () => {
    const engine = await startWorkflowProcess({
      jwksUrl: auth.jwksUrl,
      authAddress: auth.address,
      registryAddress: registry.address,
      modelProxyAddress: proxy.address,
      categorizerAddress: categorizer.address,
      serviceToken: await auth.mintServiceToken("workflow"),
    });
    engines.push(engine);
    const client = createClient(RunService, engine.address);
    const started = await client.startRun({ spec: { input: "What is 2 + 2?" } }, as(token));
    const done = await waitEnd(client, started.run!.id);
    expect(done.status).toBe(RunStatus.COMPLETED);
    expect(done.classification?.route?.target.case).toBeDefined();
    expect(done.steps.length).toBeGreaterThan(0);
    expect(done.output).toContain("[simulated");
    const types: RunEventType[] = [];
    for await (const item of client.watchRun({ runId: done.id }, as(token))) {
      if (item.item.case === "event") types.push(item.item.value.type);
    }
    expect(types.slice(0, 2)).toEqual([RunEventType.CREATED, RunEventType.CLASSIFIED]);
    expect(types.at(-1)).toBe(RunEventType.COMPLETED);
    await engine.stop();
  });

  it("restart - a step of a replica killed with SIGKILL is redelivered and the run completes once", async () => {
    const shared = workflowSharedNames();
    const serviceToken = await auth.mintServiceToken("workflow");
    const opts = {
      jwksUrl: auth.jwksUrl,
      authAddress: auth.address,
      registryAddress: registry.address,
      modelProxyAddress: proxy.address,
      serviceToken,
      shared,
      env: { STEP_ACK_WAIT_MS: "2000", RECOVERY_INTERVAL_MS: "2000" },
    };
    const first = await startWorkflowProcess(opts);
    engines.push(first);
    sim.configure("sim-thinking", { latencyMs: 1_500 });
    try {
      const client = createClient(RunService, first.address);
      const started = await client.startRun(
        {
          spec: {
            input: "survive this",
            mode: { case: "model", value: { model: "sim-thinking" } },
          },
        },
        as(token),
      );
      const id = started.run!.id;
      const until = Date.now() + 5_000;
      while (
        (await client.getRun({ runId: id }, as(token))).run?.steps[0]?.status !== StepStatus.RUNNING
      ) {
        if (Date.now() > until) throw new Error("step never started");
        await new Promise((r) => setTimeout(r, 20));
      }
      await first.kill();
      const second = await startWorkflowProcess(opts);
      engines.push(second);
      const client2 = createClient(RunService, second.address);
      const done = await waitEnd(client2, id);
      expect(done.status).toBe(RunStatus.COMPLETED);
      expect(done.steps[0]?.status).toBe(StepStatus.COMPLETED);
      const types: RunEventType[] = [];
      for await (const item of client2.watchRun({ runId: id }, as(token))) {
        if (item.item.case === "event") types.push(item.item.value.type);
      }
      expect(types.filter((t) => t === RunEventType.STEP_COMPLETED)).toHaveLength(1);
      expect(types.filter((t) => t === RunEventType.COMPLETED)).toHaveLength(1);
    } finally {
      sim.configure("sim-thinking", { latencyMs: 20 });
    }
  });

  it("nats pause - the engine outlives NATS not answering; a run started before completes, one refused during it is not run", async () => {
    // Its own nats-server, so that pausing it touches nothing else of the suite.
    const nats = await startNats();
    const engine = await startWorkflowProcess({
      jwksUrl: auth.jwksUrl,
      authAddress: auth.address,
      registryAddress: registry.address,
      modelProxyAddress: proxy.address,
      serviceToken: await auth.mintServiceToken("workflow"),
      env: { NATS_URL: nats.url, RECOVERY_INTERVAL_MS: "1000" },
    });
    engines.push(engine);
    const natsPid = nats.process.pid;
    if (natsPid === undefined) throw new Error("nats-server has no pid");
    sim.configure("sim-thinking", { latencyMs: 1_500 });
    try {
      const client = createClient(RunService, engine.address);
      const model = (name: string) => ({ case: "model" as const, value: { model: name } });
      const before = await client.startRun(
        { spec: { input: "before the pause", mode: model("sim-thinking") } },
        as(token),
      );
      process.kill(natsPid, "SIGSTOP");
      let refused;
      try {
        // Stored, but its `created` event cannot be: the caller hears UNAVAILABLE (publish and
        // its check time out after ~10 s), not INTERNAL, and the run is not left behind.
        refused = await rejection(
          client.startRun(
            { spec: { input: "during the pause", mode: model("sim-fast") } },
            as(token),
          ),
        );
      } finally {
        process.kill(natsPid, "SIGCONT");
      }
      expect(refused.code).toBe(Code.Unavailable);
      expect(refused.rawMessage).toMatch(/NATS/);
      const done = await waitEnd(client, before.run!.id, 60_000);
      expect(done.status).toBe(RunStatus.COMPLETED);
      const types: RunEventType[] = [];
      for await (const item of client.watchRun({ runId: done.id }, as(token))) {
        if (item.item.case === "event") types.push(item.item.value.type);
      }
      expect(types[0]).toBe(RunEventType.CREATED);
      expect(types.filter((t) => t === RunEventType.STEP_COMPLETED)).toHaveLength(1);
      expect(types.at(-1)).toBe(RunEventType.COMPLETED);
      // Recovery (every second here) found no orphan to run: only the first run exists.
      await new Promise((r) => setTimeout(r, 2_500));
      const listed = await client.listRuns({}, as(token));
      expect(listed.runs.map((r) => r.spec?.input)).not.toContain("during the pause");
      expect(engine.output()).not.toMatch(/triggerUncaughtException|Unhandled/);
    } finally {
      sim.configure("sim-thinking", { latencyMs: 20 });
      await engine.stop();
      await nats.stop();
    }
  }, 120_000);
});
