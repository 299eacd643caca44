// Plugins against the real mesh: auth, registry and model-proxy as built processes, the
// simulator, NATS and the MongoDB-wire server; the engine in-process. The plugin is the Python
// example (examples/plugins/python-wordstats), a separate process with code generated from the
// same contracts, started while everything runs: it registers itself, a workflow calls it, and
// it disappears from the registry when it stops (SIGTERM: it deregisters; SIGKILL: its lease
// runs out), or when it stops answering health checks.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import {
  RegistryService,
  RunService,
  RunStatus,
  StepKind,
  StepStatus,
  WorkflowTemplateSchema,
  type Run,
} from "@ensemble/proto";
import { freePort, repoRoot, ServerProcess } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startEngineMesh, type EngineMesh } from "./engine-mesh.js";

const execFileAsync = promisify(execFile);

let python: string;
let mesh: EngineMesh;
let runs: GrpcClient<typeof RunService>;
let registry: GrpcClient<typeof RegistryService>;
let userA: string;
let userB: string;
const plugins: ServerProcess[] = [];

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

/**
 * The example's venv and generated code (scripts/install-python-plugin.mjs, idempotent). No
 * Python is a failure with the installer's message, never a skipped test.
 */
async function installPython(): Promise<string> {
  try {
    const { stdout } = await execFileAsync(
      process.execPath,
      [join(repoRoot, "scripts/install-python-plugin.mjs"), "--quiet"],
      { timeout: 600_000 },
    );
    return stdout.trim().split("\n").at(-1) ?? "";
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? String(err);
    throw new Error(`the Python plugin example cannot be set up:\n${stderr}`);
  }
}

/** Starts the Python plugin; resolves once it has registered. */
async function startPlugin(id: string, ttlMs: number): Promise<ServerProcess> {
  const proc = new ServerProcess(
    `plugin ${id}`,
    python,
    [join(repoRoot, "examples/plugins/python-wordstats/wordstats.py")],
    {
      ...process.env,
      PYTHONUNBUFFERED: "1",
      ENSEMBLE_ADDR: mesh.registry.address,
      ENSEMBLE_TOKEN: userA,
      PLUGIN_ID: id,
      PLUGIN_LISTEN: `127.0.0.1:${await freePort()}`,
      PLUGIN_TTL_MS: String(ttlMs),
    },
  );
  plugins.push(proc);
  await proc.waitForLine(/"msg": "registered"/, 30_000);
  return proc;
}

async function listed(token = userA): Promise<Map<string, string>> {
  const res = await registry.listPlugins({}, as(token));
  return new Map(res.plugins.map((p) => [p.id, p.address]));
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number) {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function runWorkflow(steps: Array<Record<string, unknown>>, input: string): Promise<Run> {
  const template = create(WorkflowTemplateSchema, {
    id: "plugins",
    name: "Plugins",
    outputStep: (steps.at(-1)?.["id"] as string) ?? "",
    steps: steps as never,
  });
  const res = await runs.startRun(
    {
      spec: {
        input,
        mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
      },
    },
    as(userA),
  );
  const id = res.run?.id ?? "";
  const until = Date.now() + 30_000;
  for (;;) {
    const run = (await runs.getRun({ runId: id }, as(userA))).run!;
    if ([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED].includes(run.status))
      return run;
    if (Date.now() > until) throw new Error(`run ${id} still ${RunStatus[run.status]}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The same word rule as the plugin (Python's Unicode \w), to check its figures independently. */
function wordsOf(text: string): string[] {
  return (text.match(/[\p{L}\p{N}_]+(?:['’][\p{L}\p{N}_]+)*/gu) ?? []).map((w) => w.toLowerCase());
}

beforeAll(async () => {
  python = await installPython();
  mesh = await startEngineMesh({
    name: "plugins",
    // Short sweeps and health checks so removals show within a test.
    registryEnv: {
      PLUGIN_SWEEP_INTERVAL_MS: "200",
      PLUGIN_HEALTH_INTERVAL_MS: "300",
      PLUGIN_HEALTH_FAILURES: "2",
      PLUGIN_HEALTH_TIMEOUT_MS: "500",
    },
    plugins: true,
    settings: { stepTimeoutMs: 10_000, runTimeoutMs: 60_000 },
  });
  registry = mesh.registryClient;
  runs = createClient(RunService, await mesh.serve());
  userA = (await mesh.signup("a")).token;
  userB = (await mesh.signup("b")).token;
}, 600_000);

afterAll(async () => {
  await Promise.allSettled(plugins.map((p) => p.kill()));
  await mesh?.stop();
});

describe("plugins", () => {
  it("plugins - a Python plugin started while the mesh runs is listed, called by a workflow after an llm step, and gone when it stops", async () => {
    expect((await listed()).has("wordstats")).toBe(false);
    const plugin = await startPlugin("wordstats", 5_000);
    const visible = await listed();
    expect(visible.get("wordstats")).toMatch(/^127\.0\.0\.1:\d+$/);
    // Another tenant does not see it.
    expect((await listed(userB)).has("wordstats")).toBe(false);

    const run = await runWorkflow(
      [
        { id: "draft", kind: StepKind.LLM, model: "sim-fast", prompt: "Write about {{input}}" },
        {
          id: "stats",
          kind: StepKind.PLUGIN,
          plugin: "wordstats",
          pluginMethod: "stats",
          dependsOn: ["draft"],
          prompt: "{{steps.draft.output}}",
        },
        {
          // A JSON prompt is the inputs object; its strings are rendered (quotes stay valid).
          id: "keywords",
          kind: StepKind.PLUGIN,
          plugin: "wordstats",
          pluginMethod: "keywords",
          dependsOn: ["draft"],
          prompt: '{"text": "{{steps.draft.output}} \\"tidal\\" tidal tidal", "limit": 2}',
        },
        {
          id: "report",
          kind: StepKind.TRANSFORM,
          dependsOn: ["stats", "keywords"],
          prompt: "STATS {{steps.stats.output}}\nKEYWORDS {{steps.keywords.output}}",
        },
      ],
      "tidal power",
    );
    expect(run.status, JSON.stringify(run.error)).toBe(RunStatus.COMPLETED);
    const draft = run.steps.find((s) => s.stepId === "draft")!;
    const words = wordsOf(draft.output);
    expect(words.length).toBeGreaterThan(3);
    // The plugin's figures, checked against the llm step's actual answer.
    expect(run.output).toContain(
      `STATS words: ${words.length}, unique: ${new Set(words).size}, sentences:`,
    );
    expect(run.output).toMatch(/\nKEYWORDS tidal, \w+$/);
    const stats = run.steps.find((s) => s.stepId === "stats")!;
    expect(stats.kind).toBe(StepKind.PLUGIN);
    expect(stats.status).toBe(StepStatus.COMPLETED);
    expect(stats.attempts).toBe(1);
    expect(plugin.output(50)).toContain(`"run_id": "${run.id}"`);

    // The plugin's own errors fail the step with its code and message.
    const bad = await runWorkflow(
      [
        {
          id: "s",
          kind: StepKind.PLUGIN,
          plugin: "wordstats",
          pluginMethod: "stats",
          prompt: '{"text": ""}',
        },
      ],
      "x",
    );
    expect(bad.status).toBe(RunStatus.FAILED);
    expect(bad.error?.code).toBe("INVALID_ARGUMENT");
    expect(bad.error?.message).toBe(
      'plugin "wordstats" failed stats: inputs.text must be a non-empty string',
    );
    expect(bad.error?.stepId).toBe("s");
    const noMethod = await runWorkflow(
      [
        {
          id: "s",
          kind: StepKind.PLUGIN,
          plugin: "wordstats",
          pluginMethod: "translate",
          prompt: "{{input}}",
        },
      ],
      "x",
    );
    expect(noMethod.error?.code).toBe("NOT_FOUND");
    expect(noMethod.error?.message).toBe(
      'plugin "wordstats" has no method "translate" (it offers "stats", "keywords")',
    );

    // SIGTERM: it deregisters and exits cleanly; it is gone at once, and a run can no longer use it.
    const exit = await plugin.stop(10_000);
    expect(exit.code).toBe(0);
    expect(plugin.output(10)).toContain('"msg": "deregistered"');
    expect((await listed()).has("wordstats")).toBe(false);
    const after = await runWorkflow(
      [
        {
          id: "s",
          kind: StepKind.PLUGIN,
          plugin: "wordstats",
          pluginMethod: "stats",
          prompt: "{{input}}",
        },
      ],
      "x",
    );
    expect(after.status).toBe(RunStatus.FAILED);
    expect(after.error?.code).toBe("NOT_FOUND");
  }, 120_000);

  it("plugins - a SIGKILLed plugin disappears from the registry when its heartbeats stop", async () => {
    const plugin = await startPlugin("wordstats-killed", 1_500);
    // Alive across several leases: its heartbeats keep it.
    await new Promise((r) => setTimeout(r, 2_000));
    expect((await listed()).has("wordstats-killed")).toBe(true);
    await plugin.kill();
    // No deregistration: the lease (1.5 s after the last heartbeat) runs out, or the registry's
    // health checks (every 300 ms here, 2 failures) remove it first.
    await waitUntil(
      "the killed plugin leaves ListPlugins",
      async () => !(await listed()).has("wordstats-killed"),
      5_000,
    );
  }, 60_000);

  it("plugins - a registration whose address answers no health check is removed even while it heart-beats", async () => {
    const id = "ghost";
    await registry.registerPlugin(
      {
        plugin: {
          id,
          address: `127.0.0.1:${await freePort()}`,
          methods: ["stats"],
          ttlMs: 60_000,
        },
      },
      as(userA),
    );
    expect((await listed()).has(id)).toBe(true);
    await waitUntil(
      "the unhealthy plugin leaves ListPlugins",
      async () => {
        await registry.heartbeatPlugin({ id }, as(userA)).catch(() => undefined);
        return !(await listed()).has(id);
      },
      10_000,
    );
    const err = await registry.heartbeatPlugin({ id }, as(userA)).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.NotFound);
  }, 30_000);

  it("plugins - a workflow naming an unknown plugin fails with a clear error", async () => {
    const run = await runWorkflow(
      [
        { id: "draft", kind: StepKind.LLM, model: "sim-fast", prompt: "{{input}}" },
        {
          id: "lookup",
          kind: StepKind.PLUGIN,
          plugin: "no-such-plugin",
          pluginMethod: "lookup",
          dependsOn: ["draft"],
          prompt: "{{steps.draft.output}}",
        },
      ],
      "hello",
    );
    expect(run.status).toBe(RunStatus.FAILED);
    expect(run.error?.code).toBe("NOT_FOUND");
    expect(run.error?.stepId).toBe("lookup");
    expect(run.error?.message).toBe(
      'plugin "no-such-plugin" is not registered for this tenant (or it stopped heart-beating)',
    );
    expect(run.steps.find((s) => s.stepId === "draft")?.status).toBe(StepStatus.COMPLETED);
  }, 60_000);
});
