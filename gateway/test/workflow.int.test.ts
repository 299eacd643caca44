// The streaming Run of a workflow template through the gateway, driven by `buf curl` (a client
// nobody here wrote): the run record, its events and its tokens arrive while the run happens,
// and the stream ends with the completed run. Auth, registry, model-proxy and the workflow
// engine run as built processes; the simulator stands in for the providers.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { AuthService, ModelProxyService, RegistryService, RunService } from "@ensemble/proto";
import { startServices, type MeshProcess, type Services } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, startGateway, type AuthProcess, type TestGateway } from "./harness.js";

const BUF = join(repoRoot, "node_modules/.bin/buf");

let sim: Simulator;
let services: Services<"workflow">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let workflow: MeshProcess;
let gw: TestGateway;
let token: string;

beforeAll(async () => {
  // Slow enough that a six-step report visibly streams over a few seconds.
  sim = await startSimulator({ defaults: { ttftMs: 20, tokensPerSecond: 400 } });
  services = await startServices({ simulatorUrl: `${sim.url}/v1`, workflow: {} });
  ({ auth, registry, modelProxy: proxy, workflow } = services);
  gw = await startGateway({
    jwksUrl: auth.jwksUrl,
    serviceToken: await auth.mintServiceToken("gateway"),
    upstreams: [
      { name: "auth", services: [AuthService], address: auth.address },
      { name: "registry", services: [RegistryService], address: registry.address },
      { name: "model-proxy", services: [ModelProxyService], address: proxy.address },
      { name: "workflow", services: [RunService], address: workflow.address },
    ],
  });
  const res = await fetch(`${gw.url}/${AuthService.typeName}/Signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      email: `runner-${Date.now()}@example.com`,
      password: "correct-Horse-battery-9",
    }),
  });
  token = ((await res.json()) as { tokens: { accessToken: string } }).tokens.accessToken;
}, 240_000);

afterAll(async () => {
  await gw?.close();
  await services?.stop();
  await sim?.close();
});

/** Runs buf curl and records when each chunk of its output arrived. */
function curlStream(
  args: string[],
): Promise<{ code: number | null; chunks: Array<{ at: number; text: string }>; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(BUF, args, { cwd: repoRoot });
    const chunks: Array<{ at: number; text: string }> = [];
    let stderr = "";
    child.stdout.on("data", (b: Buffer) =>
      chunks.push({ at: performance.now(), text: b.toString() }),
    );
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, chunks, stderr }));
  });
}

describe("workflow through the gateway", () => {
  it("buf curl - the streaming Run of research_report shows events and tokens as they happen", async () => {
    const started = performance.now();
    const { code, chunks, stderr } = await curlStream([
      "curl",
      "--schema",
      repoRoot,
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-H",
      `authorization: Bearer ${token}`,
      "-d",
      JSON.stringify({
        spec: {
          input: "The impact of remote work on city centres",
          workflow: { templateId: "research_report" },
        },
      }),
      `${gw.url}/${RunService.typeName}/Run`,
    ]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    const text = chunks.map((c) => c.text).join("");
    // buf curl prints one JSON document per streamed message.
    const messages = text
      .split(/\n(?=\{)/)
      .map((m) => JSON.parse(m) as Record<string, Record<string, unknown>>);
    const kinds = messages.map((m) => Object.keys(m)[0]);
    expect(kinds[0]).toBe("run");
    expect(kinds.at(-1)).toBe("run");
    expect(kinds.filter((k) => k === "event").length).toBeGreaterThan(6);
    const events = JSON.stringify(messages.filter((m) => m["event"] !== undefined));
    for (const step of ["plan", "evidence", "perspectives", "draft", "review", "final"]) {
      expect(events).toContain(step);
    }
    expect(events).toContain("simulated");
    expect(messages.at(-1)?.["run"]?.["status"]).toBe("RUN_STATUS_COMPLETED");
    // As they happen: the first output arrived long before the stream ended.
    const first = chunks[0]!.at - started;
    const last = chunks.at(-1)!.at - started;
    expect(chunks.length).toBeGreaterThan(3);
    expect(last - first).toBeGreaterThan(500);
  }, 120_000);
});
