// The durability claim of issue 5, with real processes: two engine replicas share one database,
// work queue and event stream; 100 runs of a three-step workflow (two parallel steps and one that
// joins them) are started on both, and one replica is killed with SIGKILL while steps are being
// taken, executed and completed. The survivor gets the dead replica's un-acked steps redelivered
// (STEP_ACK_WAIT_MS) and finishes its half-done tails. Then, for every run: COMPLETED; the run
// record has its three steps, each completed once; model-proxy's ledger (the bill) has exactly
// one entry per (run, step), besides calls the kill cut mid-answer (billed for what was produced,
// without a step); RUN_EVENTS has gapless per-run sequences, one step.completed per step and
// one terminal event, the run's last.
import { create, fromBinary } from "@bufbuild/protobuf";
import { createClient, jetstreamManager } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  RunEventSchema,
  RunEventType,
  RunService,
  RunStatus,
  RunView,
  StepKind,
  StepStatus,
  WorkflowTemplateSchema,
  type Run,
  type RunEvent,
} from "@ensemble/proto";
import {
  mongoUrl,
  natsUrl,
  startAuthProcess,
  startModelProxyProcess,
  startRegistryProcess,
  startWorkflowProcess,
  uniqueName,
  workflowSharedNames,
  type AuthProcess,
  type MeshProcess,
} from "@ensemble/testkit";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import mongoose from "mongoose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const RUNS = 100;
const STEPS = ["pros", "cons", "brief"];
/** Each model call takes this long, so runs are in flight when the replica dies. */
const MODEL_LATENCY_MS = 300;

let sim: Simulator;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
const engines: MeshProcess[] = [];
let nc: NatsConnection | undefined;
let ledgerDb: mongoose.Connection | undefined;
const ledgerDbName = uniqueName("modelproxy");
let token: string;

const as = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const template = create(WorkflowTemplateSchema, {
  id: "crash",
  name: "Crash",
  outputStep: "brief",
  steps: [
    { id: "pros", kind: StepKind.LLM, model: "sim-fast", prompt: "Arguments for: {{input}}" },
    { id: "cons", kind: StepKind.LLM, model: "sim-fast", prompt: "Arguments against: {{input}}" },
    {
      id: "brief",
      kind: StepKind.LLM,
      model: "sim-fast",
      dependsOn: ["pros", "cons"],
      prompt: "Brief. For: {{steps.pros.output}} Against: {{steps.cons.output}}",
    },
  ],
});

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0 } });
  sim.configure("sim-fast", { latencyMs: MODEL_LATENCY_MS, ttftMs: 0, tokensPerSecond: 0 });
  auth = await startAuthProcess();
  registry = await startRegistryProcess({ jwksUrl: auth.jwksUrl });
  proxy = await startModelProxyProcess({
    jwksUrl: auth.jwksUrl,
    authAddress: auth.address,
    registryAddress: registry.address,
    simulatorUrl: `${sim.url}/v1`,
    database: ledgerDbName,
  });
  const signup = await createClient(AuthService, auth.address).signup({
    email: `wf-crash-${Date.now()}@example.com`,
    password: "correct-Horse-battery-9",
    tenant: { case: "tenantName", value: "workflow crash" },
  });
  token = signup.tokens?.accessToken ?? "";
  nc = await connect({ servers: natsUrl() });
  ledgerDb = await mongoose.createConnection(mongoUrl(), { dbName: ledgerDbName }).asPromise();
}, 240_000);

afterAll(async () => {
  await Promise.allSettled(engines.map((e) => e.stop()));
  await Promise.allSettled([proxy?.stop(), registry?.stop(), auth?.stop()]);
  await nc?.close();
  await ledgerDb?.close();
  await sim?.close();
});

/** Every stored event of the stream, in stream order. */
async function storedEvents(stream: string): Promise<RunEvent[]> {
  const jsm = await jetstreamManager(nc!);
  const info = await jsm.streams.info(stream);
  const out: RunEvent[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const msg = await jsm.streams.getMessage(stream, { seq });
    if (msg !== null) out.push(fromBinary(RunEventSchema, msg.data));
  }
  return out;
}

describe("workflow crash", () => {
  it("crash - 100 three-step runs on two replicas, one SIGKILLed mid-flight: every run completes, every step once in the record, the ledger and the events", async () => {
    const shared = workflowSharedNames();
    const opts = {
      jwksUrl: auth.jwksUrl,
      authAddress: auth.address,
      registryAddress: registry.address,
      modelProxyAddress: proxy.address,
      serviceToken: await auth.mintServiceToken("workflow"),
      shared,
      env: {
        STEP_ACK_WAIT_MS: "2000",
        RECOVERY_INTERVAL_MS: "2000",
        TENANT_MAX_PARALLEL: "64",
      },
    };
    const [victim, survivor] = await Promise.all([
      startWorkflowProcess(opts),
      startWorkflowProcess(opts),
    ]);
    engines.push(victim, survivor);
    const client = createClient(RunService, survivor.address);

    // Count distinct step completions as they are published, to kill while steps are
    // completing (a republished event reaches core subscribers again, even when JetStream drops
    // it as a duplicate).
    const completed = new Set<string>();
    const sub = nc!.subscribe(`${shared.eventsRoot}.*.*.step.completed`, {
      callback: (_err, msg) => {
        const e = fromBinary(RunEventSchema, msg.data);
        completed.add(`${e.runId}/${e.stepId}`);
      },
    });

    // Kill once a fifth of the steps completed: the victim then holds steps in every phase
    // (taken, calling the model, claimed but not yet published or acked). The watcher runs
    // while runs are still being started (through the survivor: both replicas take steps from
    // the shared queue), so a slow start cannot let every run finish before the kill.
    const killed = (async () => {
      const killBy = Date.now() + 60_000;
      while (completed.size < (RUNS * STEPS.length) / 5) {
        if (Date.now() > killBy) throw new Error(`only ${completed.size} steps completed`);
        await sleep(5);
      }
      const atKill = completed.size;
      await victim.kill();
      return atKill;
    })();
    void killed.catch(() => undefined); // awaited below; this only keeps an early failure handled

    const started = Date.now();
    const ids = await Promise.all(
      Array.from({ length: RUNS }, async (_, i) => {
        const res = await client.startRun(
          {
            spec: {
              input: `crash run ${i}`,
              mode: {
                case: "workflow",
                value: { definition: { case: "inline", value: template } },
              },
            },
          },
          as(token),
        );
        return res.run!.id;
      }),
    ).catch((err: unknown) => {
      for (const e of engines)
        console.error(
          e
            .output()
            .split("\n")
            .filter((l) => /"level":"(error|warn)"/.test(l))
            .slice(-5)
            .join("\n"),
        );
      throw err;
    });
    expect(new Set(ids).size).toBe(RUNS);
    const atKill = await killed;
    expect(atKill).toBeLessThan(RUNS * STEPS.length);

    // Every run completes on the survivor.
    const runs = new Map<string, Run>();
    const until = Date.now() + 45_000;
    while (runs.size < RUNS) {
      for (const id of ids) {
        if (runs.has(id)) continue;
        const run = (await client.getRun({ runId: id, view: RunView.FULL }, as(token))).run!;
        if ([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED].includes(run.status))
          runs.set(id, run);
      }
      if (runs.size === RUNS) break;
      if (Date.now() > until) throw new Error(`${RUNS - runs.size} runs did not end in time`);
      await sleep(250);
    }
    sub.unsubscribe();
    console.log(
      `crash test: ${atKill}/${RUNS * STEPS.length} steps had completed at the kill; all runs ended ${((Date.now() - started) / 1000).toFixed(1)} s after the first start`,
    );

    for (const run of runs.values()) {
      expect(run.status, `run ${run.id}: ${run.error?.message ?? ""}`).toBe(RunStatus.COMPLETED);
      expect(run.steps.map((s) => s.stepId)).toEqual(STEPS);
      for (const step of run.steps) {
        expect(step.status).toBe(StepStatus.COMPLETED);
        expect(step.answers).toHaveLength(1);
      }
      expect(run.output).toContain("[simulated sim-fast]");
    }

    // The bill: one ledger entry per (run, step), each a successful call. The ledger is written
    // in batches, so wait until every step's entry is there, then look for more.
    const ledger = ledgerDb!.collection<{
      runId: string;
      stepId: string;
      status: string;
      attempt: number;
    }>("ledger");
    const wanted = RUNS * STEPS.length;
    const ledgerBy = Date.now() + 15_000;
    while ((await ledger.countDocuments({ runId: { $in: ids }, stepId: { $ne: "" } })) < wanted) {
      if (Date.now() > ledgerBy) break;
      await sleep(250);
    }
    await sleep(1_000);
    const entries = await ledger
      .find({ runId: { $in: ids } }, { projection: { runId: 1, stepId: 1, status: 1, attempt: 1 } })
      .toArray();
    // A call the SIGKILL cut mid-answer is billed for what the provider produced, without a step
    // id (a failed call never takes the step's slot, so the retry that succeeds bills the step).
    const cut = entries.filter((e) => e.stepId === "");
    expect(cut.filter((e) => e.status !== "Canceled")).toEqual([]);
    const perStep = new Map<string, string[]>();
    for (const e of entries) {
      if (e.stepId === "") continue;
      const key = `${e.runId}/${e.stepId}`;
      perStep.set(key, [...(perStep.get(key) ?? []), `${e.status}#${e.attempt}`]);
    }
    const twice = [...perStep].filter(([, s]) => s.length > 1);
    expect(twice, "ledger entries billed more than once").toEqual([]);
    const expected = new Set(ids.flatMap((id) => STEPS.map((step) => `${id}/${step}`)));
    expect(
      [...perStep].filter(([key]) => !expected.has(key)),
      "ledger entries of no step of the runs",
    ).toEqual([]);
    expect(perStep.size).toBe(wanted);
    for (const id of ids) {
      for (const step of STEPS)
        expect(perStep.get(`${id}/${step}`)).toEqual([expect.stringMatching(/^OK#/)]);
    }

    // The events: per run a gapless sequence from 1, each step completed once, one end.
    const events = (await storedEvents(shared.eventsStream)).filter((e) => runs.has(e.runId));
    const byRun = new Map<string, RunEvent[]>();
    for (const e of events) byRun.set(e.runId, [...(byRun.get(e.runId) ?? []), e]);
    expect(byRun.size).toBe(RUNS);
    for (const [runId, list] of byRun) {
      expect(
        list.map((e) => Number(e.sequence)),
        `run ${runId}`,
      ).toEqual(list.map((_, i) => i + 1));
      const completed = list
        .filter((e) => e.type === RunEventType.STEP_COMPLETED)
        .map((e) => e.stepId)
        .sort();
      expect(completed, `run ${runId} step.completed`).toEqual([...STEPS].sort());
      expect(list.filter((e) => e.type === RunEventType.COMPLETED)).toHaveLength(1);
      expect(list.at(-1)?.type).toBe(RunEventType.COMPLETED);
    }
  }, 150_000);
});
