// The built `ensemble` CLI as a user runs it (a child process), against a live mesh: auth,
// registry, model-proxy, the workflow engine and the gateway as built processes, the simulator
// standing in for providers. Credentials go to a temporary XDG_CONFIG_HOME.
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { AuthService, Role } from "@ensemble/proto";
import {
  freePort,
  natsUrl,
  repoRoot,
  ServerProcess,
  startServices,
  uniqueName,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const CLI = join(repoRoot, "packages/cli/dist/src/main.js");
const PASSWORD = "correct-Horse-battery-9";

let sim: Simulator;
let services: Services<"categorizer" | "workflow">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let workflow: MeshProcess;
let categorizer: MeshProcess;
let gateway: ServerProcess;
let gatewayUrl: string;
let home: string;
const email = `cli-${Date.now()}@example.com`;

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** When each stdout chunk arrived (ms after start). */
  chunks: Array<{ at: number; text: string }>;
}

function cli(
  args: string[],
  opts: { stdin?: string; env?: NodeJS.ProcessEnv; closeStdout?: boolean; cwd?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, [CLI, ...args], {
      env: {
        PATH: process.env["PATH"],
        XDG_CONFIG_HOME: home,
        ENSEMBLE_URL: gatewayUrl,
        ...opts.env,
      },
      stdio: ["pipe", "pipe", "pipe"],
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    });
    const chunks: CliResult["chunks"] = [];
    let stderr = "";
    child.stdout.on("data", (b: Buffer) =>
      chunks.push({ at: performance.now() - started, text: b.toString() }),
    );
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.on("error", reject);
    child.on("close", (code) =>
      resolve({ code, stdout: chunks.map((c) => c.text).join(""), stderr, chunks }),
    );
    // As `| head` that has read enough: the pipe's read end is gone before the CLI writes.
    if (opts.closeStdout === true) child.stdout.destroy();
    child.stdin.end(opts.stdin ?? "");
  });
}

const credentialsPath = () => join(home, "ensemble", "credentials.json");

/**
 * The gateway as a client sees it when model-proxy is down for usage: a proxy in front of it that
 * answers ModelProxyService.GetUsage with UNAVAILABLE and passes everything else through.
 */
async function gatewayWithoutUsage(): Promise<{ url: string; server: Server }> {
  const target = new URL(gatewayUrl);
  const server = createServer((req, res) => {
    if (req.url === "/ensemble.modelproxy.v1.ModelProxyService/GetUsage") {
      req.resume();
      res.writeHead(503, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "unavailable", message: "model-proxy is unreachable" }));
      return;
    }
    const upstream = request(
      {
        host: target.hostname,
        port: target.port,
        path: req.url,
        method: req.method,
        headers: req.headers,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), "ensemble-cli-"));
  // Slow enough that a streamed answer visibly arrives in pieces.
  sim = await startSimulator({ defaults: { ttftMs: 20, tokensPerSecond: 120 } });
  services = await startServices({
    simulatorUrl: `${sim.url}/v1`,
    categorizer: {},
    workflow: {
      useCategorizer: false,
      // Webhooks to the receiver the webhooks test starts on 127.0.0.1, retried within the test.
      env: { WEBHOOK_ALLOW_PRIVATE: "true", WEBHOOK_RETRY_BASE_MS: "100" },
    },
  });
  ({ auth, registry, modelProxy: proxy, categorizer, workflow } = services);
  const port = await freePort();
  gateway = new ServerProcess(
    "gateway",
    process.execPath,
    [join(repoRoot, "gateway/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      GATEWAY_HOST: "127.0.0.1",
      GATEWAY_PORT: String(port),
      JWKS_URL: auth.jwksUrl,
      NATS_URL: natsUrl(),
      SERVICE_TOKEN: await auth.mintServiceToken("gateway"),
      AUTH_ADDR: auth.address,
      REGISTRY_ADDR: registry.address,
      MODEL_PROXY_ADDR: proxy.address,
      WORKFLOW_ADDR: workflow.address,
      CATEGORIZER_ADDR: categorizer.address,
      GATEWAY_RATE_LIMIT_BUCKET: uniqueName("ratelimit").replace(/[^A-Za-z0-9_-]/g, "_"),
      GATEWAY_RATE_LIMIT_RPS: "1000",
      GATEWAY_RATE_LIMIT_BURST: "1000",
    },
  );
  await gateway.waitForLine(/gateway listening/, 90_000);
  gatewayUrl = `http://127.0.0.1:${port}`;
}, 240_000);

afterAll(async () => {
  await gateway?.stop(10_000);
  await services?.stop();
  await sim?.close();
  if (home !== undefined) await rm(home, { recursive: true, force: true });
});

describe("ensemble CLI against a live mesh", () => {
  it("cli - signup and login store a session readable only by the user; whoami uses it", async () => {
    const signup = await cli(["signup", "-e", email, "--password-stdin"], {
      stdin: `${PASSWORD}\n`,
    });
    expect(signup.stderr).toBe("");
    expect(signup.code).toBe(0);
    expect(signup.stdout).toContain(email);

    const login = await cli(["--json", "login", "--email", email, "--password-stdin"], {
      stdin: `${PASSWORD}\n`,
    });
    expect(login.code).toBe(0);
    expect(JSON.parse(login.stdout)).toMatchObject({ email, url: gatewayUrl });

    const info = await stat(credentialsPath());
    expect(info.mode & 0o777).toBe(0o600);
    expect((await stat(join(home, "ensemble"))).mode & 0o777).toBe(0o700);
    const stored = await readFile(credentialsPath(), "utf8");
    expect(stored).not.toContain(PASSWORD);

    const me = await cli(["--json", "whoami"]);
    expect(me.code).toBe(0);
    expect(JSON.parse(me.stdout)).toMatchObject({ email });
  }, 60_000);

  it("cli - a wrong password is refused with a message and exit code 1, and stores nothing new", async () => {
    const before = await readFile(credentialsPath(), "utf8");
    const res = await cli(["login", "-e", email, "--password-stdin"], {
      stdin: "wrong-Password-123\n",
    });
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^error: /);
    expect(res.stderr).not.toContain("wrong-Password-123");
    expect(await readFile(credentialsPath(), "utf8")).toBe(before);
  }, 30_000);

  it("cli - an expired access token is refreshed with the refresh token, which rotates", async () => {
    const file = JSON.parse(await readFile(credentialsPath(), "utf8")) as {
      sessions: Record<
        string,
        { accessTokenExpiresAt: number; refreshToken: string; accessToken: string }
      >;
    };
    const session = file.sessions[gatewayUrl]!;
    const oldRefresh = session.refreshToken;
    session.accessTokenExpiresAt = Date.now() - 1_000;
    await writeFile(credentialsPath(), JSON.stringify(file), { mode: 0o600 });

    const res = await cli(["--json", "models"]);
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    const after = JSON.parse(await readFile(credentialsPath(), "utf8")) as typeof file;
    const next = after.sessions[gatewayUrl]!;
    expect(next.refreshToken).not.toBe(oldRefresh);
    expect(next.accessTokenExpiresAt).toBeGreaterThan(Date.now());
    expect((await stat(credentialsPath())).mode & 0o777).toBe(0o600);
  }, 30_000);

  it("cli - a token the gateway refuses after the user's role was set is refreshed once, and the command goes through", async () => {
    type File = { sessions: Record<string, { accessToken: string; refreshToken: string }> };
    const read = async () =>
      (JSON.parse(await readFile(credentialsPath(), "utf8")) as File).sessions[gatewayUrl]!;
    const before = await read();
    const me = JSON.parse((await cli(["--json", "whoami"])).stdout) as { userId: string };
    // iat has whole seconds: the change must come in a later second than the token.
    await new Promise((r) => setTimeout(r, 1_100));
    // From another client, as a second admin would: the user (the tenant's admin) stays admin.
    const other = createConnectTransport({ baseUrl: gatewayUrl, httpVersion: "1.1" });
    await createClient(AuthService, other).setUserRole(
      { userId: me.userId, role: Role.ADMIN },
      { headers: { authorization: `Bearer ${before.accessToken}` } },
    );
    const res = await cli(["--json", "keys", "list"]);
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    const after = await read();
    expect(after.accessToken).not.toBe(before.accessToken);
    expect(after.refreshToken).not.toBe(before.refreshToken);
  }, 30_000);

  it("cli - chat streams the answer in pieces as the model writes it", async () => {
    const res = await cli([
      "chat",
      "-m",
      "sim-fast",
      "Tell me about streaming answers in a terminal",
    ]);
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    expect(res.stdout).toContain("[simulated sim-fast]");
    // Streamed: several chunks, the first well before the last.
    expect(res.chunks.length).toBeGreaterThan(3);
    expect(res.chunks.at(-1)!.at - res.chunks[0]!.at).toBeGreaterThan(100);

    // auto: the categorizer picks (a proof goes to the thinking role).
    const auto = await cli(["--json", "chat", "-m", "auto", "Prove that 17 is prime"]);
    expect(auto.code, auto.stderr).toBe(0);
    expect(auto.stdout).toContain('"model":"sim-thinking"');

    const json = await cli(["--json", "chat", "-m", "fast", "Hello"]);
    expect(json.code).toBe(0);
    const lines = json.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.some((l) => "delta" in l)).toBe(true);
    const done = lines.at(-1)?.["done"] as { content?: string } | undefined;
    expect(done?.content).toContain("simulated");
  }, 60_000);

  it("cli - run a template shows each step's progress as it happens, then the output", async () => {
    const res = await cli([
      "run",
      "-t",
      "research_report",
      "The impact of remote work on city centres",
    ]);
    expect(res.code).toBe(0);
    for (const step of ["plan", "evidence", "perspectives", "draft", "review", "final"]) {
      expect(res.stderr).toMatch(new RegExp(`✓ ${step}`));
    }
    expect(res.stderr).toMatch(/\[6\/6\] ✓/);
    expect(res.stderr).toMatch(/completed in/);
    expect(res.stdout).toContain("simulated");

    const list = await cli(["--json", "runs", "list", "-n", "5"]);
    expect(list.code).toBe(0);
    const runs = (
      JSON.parse(list.stdout) as {
        runs: Array<{ id: string; status: string; templateId?: string }>;
      }
    ).runs;
    expect(runs[0]).toMatchObject({
      status: "RUN_STATUS_COMPLETED",
      templateId: "research_report",
    });

    // Watching it afterwards replays its events from the start, counted as they happened.
    const watch = await cli(["runs", "watch", runs[0]!.id]);
    expect(watch.code).toBe(0);
    expect(watch.stderr).toMatch(/\[0\/6\] ▶ plan/);
    const counts = [...watch.stderr.matchAll(/\[(\d+)\/6\]/g)].map((m) => Number(m[1]));
    expect(Math.max(...counts)).toBe(6);
    expect(watch.stderr).toMatch(/\[6\/6\] ✓ final/);

    const got = await cli(["runs", "get", runs[0]!.id]);
    expect(got.code).toBe(0);
    expect(got.stdout).toContain(`run ${runs[0]!.id}: completed`);
    expect(got.stdout).toMatch(/final\s+Final report\s+completed\s+medium/);
  }, 120_000);

  it("cli - an inline workflow file runs, and --json streams events as NDJSON", async () => {
    const file = join(home, "wf.yaml");
    await writeFile(
      file,
      [
        "id: two_steps",
        "name: Two steps",
        "steps:",
        "  - id: draft",
        "    kind: STEP_KIND_LLM",
        "    model: sim-fast",
        "    prompt: 'Draft an answer to: {{input}}'",
        "  - id: polish",
        "    kind: STEP_KIND_LLM",
        "    model: sim-fast",
        "    dependsOn: [draft]",
        "    prompt: 'Polish this: {{steps.draft.output}}'",
        "outputStep: polish",
        "",
      ].join("\n"),
    );
    const res = await cli(["--json", "run", "-f", file, "What is a work queue?"]);
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    const lines = res.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, Record<string, unknown>>);
    const events = lines.filter((l) => l["event"] !== undefined).map((l) => l["event"]!);
    expect(events.filter((e) => e["stepCompleted"] !== undefined)).toHaveLength(2);
    expect(lines.at(-1)?.["run"]?.["status"]).toBe("RUN_STATUS_COMPLETED");
  }, 90_000);

  it("cli - run --compare shows the ranking, by the default judge or by --rank-by", async () => {
    const judged = await cli(["run", "-c", "sim-fast,sim-medium", "Name a sorting algorithm"]);
    expect(judged.code, judged.stderr).toBe(0);
    expect(judged.stderr).toMatch(/ranking \(judged by sim-medium\):\n {2}1\. sim-\w+/);
    expect(judged.stdout).toContain("simulated");

    const byCost = await cli([
      "--json",
      "run",
      "-c",
      "sim-fast,sim-thinking",
      "--rank-by",
      "cost,latency",
      "Name a sorting algorithm",
    ]);
    expect(byCost.code, byCost.stderr).toBe(0);
    const last = JSON.parse(byCost.stdout.trim().split("\n").at(-1)!) as {
      run: {
        status: string;
        ranking: { judgeModel?: string; by: string[]; ranked: Array<{ model: string }> };
      };
    };
    expect(last.run.status).toBe("RUN_STATUS_COMPLETED");
    expect(last.run.ranking.judgeModel ?? "").toBe("");
    expect(last.run.ranking.by).toEqual(["RANK_CRITERION_COST", "RANK_CRITERION_LATENCY"]);
    // The cheaper model wins on cost.
    expect(last.run.ranking.ranked.map((r) => r.model)).toEqual(["sim-fast", "sim-thinking"]);

    const wrong = await cli(["run", "-c", "sim-fast,sim-medium", "--rank-by", "speed", "x"]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain("--rank-by speed: expected one of latency, cost, shortest");
    const stray = await cli(["run", "-m", "sim-fast", "--judge", "sim-medium", "x"]);
    expect(stray.code).not.toBe(0);
    expect(stray.stderr).toContain("--judge and --rank-by rank the answers of --compare");
  }, 90_000);

  it("cli - an image run names its artifact, runs artifact / run --save write the PNG, runs delete removes it", async () => {
    const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
    const res = await cli(["run", "-m", "image", "a red fox in the snow"]);
    expect(res.code, res.stderr).toBe(0);
    const line =
      /artifact (\S+): image\/png, [\d.]+ (?:B|KiB) \(save: ensemble runs artifact (\S+) \1\)/.exec(
        res.stderr,
      );
    expect(line, res.stderr).not.toBeNull();
    const [, artifactId, runId] = line!;

    const got = await cli(["runs", "get", runId!]);
    expect(got.code).toBe(0);
    expect(got.stdout).toContain(`save: ensemble runs artifact ${runId} ${artifactId}`);

    // With no artifact id: every artifact of the run, into the current directory.
    const here = await mkdtemp(join(home, "here-"));
    const all = await cli(["runs", "artifact", runId!], { cwd: here });
    expect(all.code, all.stderr).toBe(0);
    expect(all.stderr).toMatch(/^saved \S+\.png \(image\/png, [\d.]+ (B|KiB)\)$/m);
    const files = await readdir(here);
    expect(files).toHaveLength(1);
    expect([...(await readFile(join(here, files[0]!))).subarray(0, 8)]).toEqual(PNG);

    // One artifact to a named file.
    const named = join(here, "fox.png");
    const one = await cli(["--json", "runs", "artifact", runId!, artifactId!, "-o", named]);
    expect(one.code, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout)).toMatchObject({
      saved: [{ path: named, artifact: { id: artifactId, mimeType: "image/png" } }],
    });
    expect([...(await readFile(named)).subarray(0, 8)]).toEqual(PNG);

    // run --save: the images land in the directory once the run completes.
    const dir = join(home, "saved");
    const saved = await cli(["run", "-q", "-m", "image", "--save", dir, "a lighthouse at dusk"]);
    expect(saved.code, saved.stderr).toBe(0);
    const savedFiles = await readdir(dir);
    expect(savedFiles).toHaveLength(1);
    expect([...(await readFile(join(dir, savedFiles[0]!))).subarray(0, 8)]).toEqual(PNG);

    // A text run has nothing to save: a clear error, exit code 1.
    const text = await cli(["run", "-q", "-m", "sim-fast", "--save", dir, "Say hello"]);
    expect(text.code).toBe(1);
    expect(text.stderr).toMatch(/error: run \S+ has no artifacts/);
    const unknown = await cli(["runs", "artifact", runId!, "no-such-artifact"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^error: NotFound/);

    // Deleted, the run and its image are gone.
    const deleted = await cli(["runs", "delete", runId!]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stdout).toContain(`run ${runId} deleted`);
    const after = await cli(["runs", "artifact", runId!]);
    expect(after.code).toBe(1);
    expect(after.stderr).toMatch(/^error: NotFound/);
  }, 90_000);

  it("cli - keys create shows the secret once, the key works, list shows it, revoke ends it", async () => {
    const created = await cli(["--json", "keys", "create", "ci"]);
    expect(created.code).toBe(0);
    const key = JSON.parse(created.stdout) as { id: string; secret: string };
    expect(key.secret).toMatch(/^ens_/);

    const viaKey = await cli(["--json", "whoami"], {
      env: { ENSEMBLE_API_KEY: key.secret, XDG_CONFIG_HOME: join(home, "nobody") },
    });
    expect(viaKey.code).toBe(0);
    expect(JSON.parse(viaKey.stdout)).toMatchObject({ email, apiKeyId: key.id });

    const list = await cli(["keys", "list"]);
    expect(list.stdout).toContain(key.id);
    expect(list.stdout).not.toContain(key.secret);

    const revoked = await cli(["keys", "revoke", key.id]);
    expect(revoked.code).toBe(0);
    const after = await cli(["--json", "keys", "list", "--revoked"]);
    const keys = (
      JSON.parse(after.stdout) as { apiKeys: Array<{ id: string; revoked: string | null }> }
    ).apiKeys;
    expect(keys.find((k) => k.id === key.id)?.revoked).not.toBeNull();
  }, 60_000);

  it("cli - keys carry limits: create and list show them with the month's spend, update keeps the part not named", async () => {
    type Limits = {
      models: string[];
      monthlyLimitUsd: number | null;
      requestsPerMinute: number | null;
      tokensPerMinute: number | null;
    };
    const limitsOf = (r: { stdout: string }) => (JSON.parse(r.stdout) as { limits: Limits }).limits;

    const created = await cli([
      "--json",
      "keys",
      "create",
      "limited",
      "--models",
      "fast,sim-embed",
      "--budget",
      "5",
      "--rpm",
      "60",
      "--tpm",
      "90000",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const key = JSON.parse(created.stdout) as { id: string; secret: string; limits: Limits };
    expect(key.limits).toEqual({
      models: ["fast", "sim-embed"],
      monthlyLimitUsd: 5,
      requestsPerMinute: 60,
      tokensPerMinute: 90000,
    });

    // The budget column says what the key has spent of it this month: nothing yet.
    const list = await cli(["keys", "list"]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stderr).toBe("");
    const [head, ...rows] = list.stdout.trimEnd().split("\n");
    expect(head).toMatch(/\bscopes\s+models\s+spent \(month\)\s+rate\s+created\b/);
    expect(rows.find((r) => r.startsWith(key.id))).toMatch(
      /\sfast,sim-embed\s+\$0\.00 of \$5\.00\s+60 rpm, 90000 tpm\s/,
    );
    expect(list.stdout).not.toContain(key.secret);

    // --budget alone: the models and the per-minute limits stay.
    const budget = await cli(["--json", "keys", "update", key.id, "--budget", "12.5"]);
    expect(budget.code, budget.stderr).toBe(0);
    expect(limitsOf(budget)).toEqual({
      models: ["fast", "sim-embed"],
      monthlyLimitUsd: 12.5,
      requestsPerMinute: 60,
      tokensPerMinute: 90000,
    });
    const got = await cli(["keys", "get", key.id]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toMatch(/^models\s+fast,sim-embed$/m);
    expect(got.stdout).toMatch(/^budget\/month\s+\$12\.50$/m);
    expect(got.stdout).toMatch(/^spent\/month\s+\$0\.00 of \$12\.50$/m);
    expect(got.stdout).toMatch(/^requests\/min\s+60$/m);
    expect(got.stdout).toMatch(/^tokens\/min\s+90000$/m);

    // --models alone: the rest stays; a name nothing here answers is pointed out.
    const models = await cli(["--json", "keys", "update", key.id, "--models", "sim-fast,sim-fsat"]);
    expect(models.code, models.stderr).toBe(0);
    expect(limitsOf(models)).toEqual({
      models: ["sim-fast", "sim-fsat"],
      monthlyLimitUsd: 12.5,
      requestsPerMinute: 60,
      tokensPerMinute: 90000,
    });
    expect(models.stderr).toContain("nothing callable here is named sim-fsat;");

    // A chat made with the key is its spend this month, in list (--json and the table) and get.
    const chat = await fetch(`${gatewayUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key.secret}` },
      body: JSON.stringify({
        model: "sim-fast",
        messages: [{ role: "user", content: "Spend a little of this key's budget" }],
      }),
    });
    expect(chat.status).toBe(200);
    type Listed = { apiKeys: Array<{ id: string; spentThisMonthUsd: number | null }> };
    const spentNow = async () => {
      const res = await cli(["--json", "keys", "list"]);
      expect(res.code, res.stderr).toBe(0);
      return (JSON.parse(res.stdout) as Listed).apiKeys.find((k) => k.id === key.id)
        ?.spentThisMonthUsd;
    };
    // The ledger is written in batches; give it a moment.
    let spent = await spentNow();
    for (let i = 0; i < 40 && spent === 0; i++) {
      await new Promise((r) => setTimeout(r, 250));
      spent = await spentNow();
    }
    expect(spent).toBeGreaterThan(0);
    const gotSpent = await cli(["--json", "keys", "get", key.id]);
    expect(gotSpent.code, gotSpent.stderr).toBe(0);
    expect(JSON.parse(gotSpent.stdout)).toMatchObject({ id: key.id, spentThisMonthUsd: spent });
    const described = await cli(["keys", "get", key.id]);
    // A simulator chat costs a fraction of a cent: shown as such, not as $0.00.
    expect(described.stdout).toMatch(/^spent\/month\s+<\$0\.01 of \$12\.50$/m);

    // With model-proxy unreachable the keys are still listed, their spend as "?", and a note says
    // why; --json has null. Through a proxy that fails GetUsage, with the key as the credential.
    const broken = await gatewayWithoutUsage();
    try {
      const viaBroken = { env: { ENSEMBLE_URL: broken.url, ENSEMBLE_API_KEY: key.secret } };
      const unknown = await cli(["keys", "list"], viaBroken);
      expect(unknown.code, unknown.stderr).toBe(0);
      expect(unknown.stdout.split("\n").find((r) => r.startsWith(key.id))).toMatch(
        /\ssim-fast,sim-fsat\s+\? of \$12\.50\s+60 rpm, 90000 tpm\s/,
      );
      expect(unknown.stderr).toContain("note: this month's spend is unknown (shown as ?)");
      expect(unknown.stderr).toContain("model-proxy is unreachable");
      const unknownJson = await cli(["--json", "keys", "get", key.id], viaBroken);
      expect(unknownJson.code, unknownJson.stderr).toBe(0);
      expect(JSON.parse(unknownJson.stdout)).toMatchObject({
        id: key.id,
        spentThisMonthUsd: null,
      });
    } finally {
      broken.server.closeAllConnections();
      await new Promise((r) => broken.server.close(r));
    }

    // --rpm with --no-tpm: one rate changes, the other goes, models and budget stay.
    const rates = await cli(["--json", "keys", "update", key.id, "--rpm", "120", "--no-tpm"]);
    expect(rates.code, rates.stderr).toBe(0);
    expect(limitsOf(rates)).toEqual({
      models: ["sim-fast", "sim-fsat"],
      monthlyLimitUsd: 12.5,
      requestsPerMinute: 120,
      tokensPerMinute: null,
    });
    const rated = await cli(["keys", "list"]);
    expect(rated.stdout.split("\n").find((r) => r.startsWith(key.id))).toMatch(
      /\s<\$0\.01 of \$12\.50\s+120 rpm\s/,
    );

    // All removed: the key is unlimited again.
    const cleared = await cli([
      "--json",
      "keys",
      "update",
      key.id,
      "--name",
      "unlimited",
      "--all-models",
      "--no-budget",
      "--no-rpm",
    ]);
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(JSON.parse(cleared.stdout)).toMatchObject({
      name: "unlimited",
      limits: { models: [], monthlyLimitUsd: null, requestsPerMinute: null, tokensPerMinute: null },
    });
    // Without a budget of its own, the key's spend stands alone.
    const after = await cli(["keys", "list"]);
    expect(after.stdout.split("\n").find((r) => r.startsWith(key.id))).toMatch(
      /\sunlimited\s.*\sall\s+<\$0\.01\s+-\s/,
    );

    // Bad or contradictory flags: exit 2, a message naming the flag, nothing created or changed.
    const bad = await cli(["keys", "create", "bad-budget", "--budget", "five"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--budget five: expected USD per month");
    const negative = await cli(["keys", "update", key.id, "--budget", "-1"]);
    expect(negative.code).toBe(2);
    expect(negative.stderr).toContain("--budget -1: expected USD per month");
    const both = await cli(["keys", "update", key.id, "--budget", "5", "--no-budget"]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("--budget and --no-budget contradict each other");
    const zero = await cli(["keys", "create", "bad-rpm", "--rpm", "0"]);
    expect(zero.code).toBe(2);
    expect(zero.stderr).toContain("--rpm 0: expected requests per minute");
    const fraction = await cli(["keys", "update", key.id, "--rpm", "1.5"]);
    expect(fraction.code).toBe(2);
    expect(fraction.stderr).toContain("--rpm 1.5: expected requests per minute");
    const tooMany = await cli(["keys", "update", key.id, "--tpm", "1000000001"]);
    expect(tooMany.code).toBe(2);
    expect(tooMany.stderr).toContain("--tpm 1000000001: expected tokens per minute");
    const bothRpm = await cli(["keys", "update", key.id, "--rpm", "5", "--no-rpm"]);
    expect(bothRpm.code).toBe(2);
    expect(bothRpm.stderr).toContain("--rpm and --no-rpm contradict each other");
    const nothing = await cli(["keys", "update", key.id]);
    expect(nothing.code).toBe(2);
    expect(nothing.stderr).toContain("nothing to change");
    const keys = await cli(["--json", "keys", "list"]);
    const listed = (
      JSON.parse(keys.stdout) as { apiKeys: Array<{ id: string; name: string; limits: Limits }> }
    ).apiKeys;
    expect(listed.some((k) => k.name === "bad-budget" || k.name === "bad-rpm")).toBe(false);
    expect(listed.find((k) => k.id === key.id)?.limits).toEqual({
      models: [],
      monthlyLimitUsd: null,
      requestsPerMinute: null,
      tokensPerMinute: null,
    });
  }, 60_000);

  it("cli - keys roll gives a key a new secret shown once; with --grace the old one works until then, without it stops", async () => {
    // What the gateway answers a request made with `secret`: 200, or 401 once it is refused.
    const modelsWith = async (secret: string) => {
      const res = await fetch(`${gatewayUrl}/v1/models`, {
        headers: { authorization: `Bearer ${secret}` },
      });
      await res.arrayBuffer();
      return res.status;
    };
    type Rolled = {
      id: string;
      prefix: string;
      secret: string;
      rolled: string | null;
      previousSecretExpires: string | null;
    };
    const created = await cli(["--json", "keys", "create", "rolled"]);
    expect(created.code, created.stderr).toBe(0);
    const key = JSON.parse(created.stdout) as Rolled;
    expect(key).toMatchObject({ rolled: null, previousSecretExpires: null });

    // With an hour of grace: the new secret on stdout, once, with the same warning as create.
    const before = Date.now();
    const graced = await cli(["keys", "roll", key.id, "--grace", "1h"]);
    expect(graced.code, graced.stderr).toBe(0);
    expect(graced.stderr).toContain("The secret is shown only now; store it safely");
    const [second = "", note = ""] = graced.stdout.trimEnd().split("\n");
    expect(second.startsWith(`${key.prefix}_`)).toBe(true);
    expect(second).not.toBe(key.secret);
    const until = /the old secret works until (\S+)\)$/.exec(note)?.[1];
    expect(note).toContain(`(id ${key.id}, name rolled;`);
    expect(Date.parse(until ?? "") - before).toBeGreaterThan(3_590_000);
    expect(Date.parse(until ?? "") - before).toBeLessThan(3_660_000);
    // Both secrets authenticate while the grace lasts.
    expect(await modelsWith(second)).toBe(200);
    expect(await modelsWith(key.secret)).toBe(200);

    const got = await cli(["keys", "get", key.id]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toMatch(/^rolled\s+\d{4}-\d\d-\d\dT\S+Z$/m);
    expect(got.stdout).toMatch(new RegExp(`^old secret\\s+works until ${until}$`, "m"));
    expect(got.stdout).not.toContain(second);
    const gotJson = await cli(["--json", "keys", "get", key.id]);
    expect(JSON.parse(gotJson.stdout)).toMatchObject({
      id: key.id,
      prefix: key.prefix,
      previousSecretExpires: until,
    });
    expect((JSON.parse(gotJson.stdout) as Rolled).rolled).not.toBeNull();

    // Without a grace, with --json: the secret before stops, and the grace of the first ends.
    const now = await cli(["--json", "keys", "roll", key.id]);
    expect(now.code, now.stderr).toBe(0);
    const third = JSON.parse(now.stdout) as Rolled;
    expect(third).toMatchObject({ id: key.id, name: "rolled", previousSecretExpires: null });
    expect(third.secret.startsWith(`${key.prefix}_`)).toBe(true);
    expect([key.secret, second]).not.toContain(third.secret);
    expect(await modelsWith(third.secret)).toBe(200);
    const after = await cli(["keys", "get", key.id]);
    expect(after.stdout).not.toMatch(/^old secret/m);
    // The gateway keeps an exchanged key for GATEWAY_API_KEY_CACHE_MS (30 s by default, which
    // this mesh keeps) and RollApiKey does not drop it, so the two secrets used above may still
    // be accepted for that long. The refusal is checked on a key whose old secrets the gateway
    // has never seen.
    const other = JSON.parse(
      (await cli(["--json", "keys", "create", "rolled-unseen"])).stdout,
    ) as Rolled;
    const otherGraced = await cli(["--json", "keys", "roll", other.id, "--grace", "1h"]);
    expect(otherGraced.code, otherGraced.stderr).toBe(0);
    const otherSecond = (JSON.parse(otherGraced.stdout) as Rolled).secret;
    const otherNow = await cli(["--json", "keys", "roll", other.id]);
    expect(otherNow.code, otherNow.stderr).toBe(0);
    expect(await modelsWith(other.secret)).toBe(401);
    expect(await modelsWith(otherSecond)).toBe(401);
    expect(await modelsWith((JSON.parse(otherNow.stdout) as Rolled).secret)).toBe(200);

    // More than 7 days of grace is bad usage: exit 2, nothing sent, the key as it was.
    const tooLong = await cli(["keys", "roll", key.id, "--grace", "8d"]);
    expect(tooLong.code).toBe(2);
    expect(tooLong.stderr).toContain("--grace 8d: the old secret may keep working at most 7d");
    const unchanged = await cli(["--json", "keys", "get", key.id]);
    expect((JSON.parse(unchanged.stdout) as Rolled).rolled).toBe(third.rolled);
    // A revoked key cannot be rolled back to life.
    expect((await cli(["keys", "revoke", other.id])).code).toBe(0);
    const revoked = await cli(["keys", "roll", other.id]);
    expect(revoked.code).toBe(1);
    expect(revoked.stderr).toMatch(/^error: FailedPrecondition: .*revoked/);
    expect(revoked.stdout).toBe("");
  }, 60_000);

  it("cli - models lists the catalog and usage counts this user's calls", async () => {
    const models = await cli(["--json", "models", "--provider", "simulator"]);
    expect(models.code).toBe(0);
    type Model = { id: string } & Record<string, unknown>;
    const listed = (JSON.parse(models.stdout) as { models: Model[] }).models;
    const byId = new Map(listed.map((m) => [m.id, m]));
    // The prompt cache prices deploy/config/models.yaml gives sim-fast; sim-embed has none, and
    // so no such fields (unset means the input price).
    expect(byId.get("sim-fast")).toMatchObject({
      inputPricePerMtok: 0.1,
      cachedInputPricePerMtok: 0.025,
      cacheWritePricePerMtok: 0.125,
      outputPricePerMtok: 0.4,
    });
    expect(byId.get("sim-embed")).toBeDefined();
    expect(byId.get("sim-embed")).not.toHaveProperty("cachedInputPricePerMtok");
    expect(byId.get("sim-embed")).not.toHaveProperty("cacheWritePricePerMtok");
    // As text: the cached input price in full (not rounded to cents), "-" when unset.
    const modelTable = await cli(["models", "--provider", "simulator"]);
    expect(modelTable.code, modelTable.stderr).toBe(0);
    const [modelHead, ...modelRows] = modelTable.stdout.trimEnd().split("\n");
    expect(modelHead).toMatch(
      /^id\s+provider\s+roles\s+context\s+\$\/Mtok in\s+cached in\s+\$\/Mtok out$/,
    );
    expect(modelRows).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^sim-fast\s+simulator\s+\S+\s+128000\s+0\.10\s+0\.025\s+0\.40$/),
        expect.stringMatching(/^sim-embed\s+simulator\s+\S+\s+\d+\s+0\.02\s+-\s+0\.00$/),
      ]),
    );

    // The ledger is written in batches; give it a moment.
    type Total = Record<
      | "requests"
      | "inputTokens"
      | "cachedInputTokens"
      | "cacheWriteInputTokens"
      | "outputTokens"
      | "reasoningTokens"
      | "costUsd",
      number
    >;
    let total = { requests: 0 } as Total;
    for (let i = 0; i < 20 && total.requests === 0; i++) {
      const usage = await cli(["--json", "usage", "--days", "1", "--by", "model"]);
      expect(usage.code).toBe(0);
      total = (JSON.parse(usage.stdout) as { total: typeof total }).total;
      if (total.requests === 0) await new Promise((r) => setTimeout(r, 250));
    }
    expect(total.requests).toBeGreaterThan(0);
    // The prompt cache's and reasoning's figures are there, as parts of the input and output.
    expect(Object.keys(total).sort()).toEqual([
      "cacheWriteInputTokens",
      "cachedInputTokens",
      "costUsd",
      "inputTokens",
      "outputTokens",
      "reasoningTokens",
      "requests",
    ]);
    for (const value of Object.values(total)) expect(typeof value).toBe("number");
    expect(total.cachedInputTokens + total.cacheWriteInputTokens).toBeLessThanOrEqual(
      total.inputTokens,
    );
    expect(total.reasoningTokens).toBeLessThanOrEqual(total.outputTokens);

    // The table has one column per --by dimension, in that order, then the figures; the total
    // line says how much of the input was cached.
    const table = await cli(["usage", "--days", "1", "--by", "user,hour,operation"]);
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(
      /^user\s+hour\s+operation\s+requests\s+tokens in\s+cached in\s+tokens out\s+reasoning\s+cost$/,
    );
    expect(lines[1]).toMatch(
      /^usr_\w+\s+\d{4}-\d\d-\d\d \d\d:00\s+chat\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\$[\d.]+$/,
    );
    expect(lines.at(-1)).toMatch(
      /^total: \d+ requests, \d+ tokens, \d+ of [1-9]\d* input tokens cached \(\d+%\), \$[\d.]+$/,
    );
  }, 60_000);

  it("cli - a long system prompt sent again is read from the provider's prompt cache: chat --json and usage count the cached input, the table and the total line show it", async () => {
    // A user of their own, so that usage counts these two calls alone; a tenant of its own, so
    // that no exact or semantic cache another test turns on answers the second call itself.
    const env = { XDG_CONFIG_HOME: join(home, "cached") };
    const as = (args: string[]) => cli(args, { env });
    const signup = await cli(
      ["signup", "-e", `cli-cached-${Date.now()}@example.com`, "--password-stdin"],
      { stdin: `${PASSWORD}\n`, env },
    );
    expect(signup.code, signup.stderr).toBe(0);
    // Over the 1024 tokens a provider caches from (one token per word here); unique, so that
    // nothing sent before shares its start.
    const system = `Case ${Date.now()}. ${Array.from({ length: 1200 }, (_, i) => `rule${i}`).join(" ")}`;
    type Done = { inputTokens: number; cachedInputTokens: number; reasoningTokens: number };
    const chat = async (question: string): Promise<Done> => {
      const res = await as(["--json", "chat", "-m", "sim-fast", "-s", system, question]);
      expect(res.code, res.stderr).toBe(0);
      return (JSON.parse(res.stdout.trim().split("\n").at(-1)!) as { done: Done }).done;
    };
    const first = await chat("Which rule comes first?");
    expect(first.inputTokens).toBeGreaterThan(1200);
    expect(first.cachedInputTokens).toBe(0);
    expect(first.reasoningTokens).toBe(0);
    // Another question after the same system prompt: its start comes from the cache.
    const second = await chat("Which rule comes last?");
    expect(second.cachedInputTokens).toBeGreaterThanOrEqual(1024);
    expect(second.cachedInputTokens).toBeLessThan(second.inputTokens);

    type Figures = { requests: number; inputTokens: number; cachedInputTokens: number };
    let usage: { buckets: Array<Figures & { model: string }>; total: Figures } | undefined;
    // The ledger is written in batches: ask until both calls are counted.
    for (let i = 0; i < 40 && usage?.total.requests !== 2; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 250));
      const res = await as(["--json", "usage", "--days", "1", "--by", "model"]);
      expect(res.code, res.stderr).toBe(0);
      usage = JSON.parse(res.stdout) as typeof usage;
    }
    expect(usage?.buckets).toEqual([
      expect.objectContaining({
        model: "sim-fast",
        requests: 2,
        inputTokens: first.inputTokens + second.inputTokens,
        cachedInputTokens: second.cachedInputTokens,
      }),
    ]);
    expect(usage?.total).toMatchObject({ cachedInputTokens: second.cachedInputTokens });

    const table = await as(["usage", "--days", "1", "--by", "model"]);
    expect(table.code, table.stderr).toBe(0);
    const [head, row, , total] = table.stdout.trimEnd().split("\n");
    expect(head).toMatch(/^model\s+requests\s+tokens in\s+cached in\s+tokens out\s/);
    expect(row).toMatch(
      new RegExp(
        `^sim-fast\\s+2\\s+${first.inputTokens + second.inputTokens}\\s+${second.cachedInputTokens}\\s`,
      ),
    );
    const share = Math.round(
      (second.cachedInputTokens / (first.inputTokens + second.inputTokens)) * 100,
    );
    expect(total).toMatch(
      new RegExp(
        `^total: 2 requests, \\d+ tokens, ${second.cachedInputTokens} of ${first.inputTokens + second.inputTokens} input tokens cached \\(${share}%\\), \\$`,
      ),
    );
  }, 60_000);

  it("cli - usage by label: chat and run --label label calls, usage --by label:team counts them per team and --label filters; bad label flags exit 2", async () => {
    const chat = (labels: string[], text: string) =>
      cli(["chat", "-m", "sim-fast", ...labels.flatMap((l) => ["--label", l]), text]);
    const chats = await Promise.all([
      chat(["team=alpha"], "One for alpha"),
      chat(["team=alpha", "env=prod"], "Another for alpha"),
      chat(["team=beta", "env=prod"], "One for beta"),
      chat([], "One for nobody in particular"),
    ]);
    for (const c of chats) expect(c.code, c.stderr).toBe(0);
    // A run's labels go on its steps' calls.
    const run = await cli([
      "run",
      "-q",
      "-m",
      "sim-fast",
      "--label",
      "team=gamma",
      "One for gamma",
    ]);
    expect(run.code, run.stderr).toBe(0);

    type Usage = {
      buckets: Array<{
        metadataValue: string | null;
        requests: number;
        model: string | null;
        inputTokens: number;
        cachedInputTokens: number;
        cacheWriteInputTokens: number;
        reasoningTokens: number;
      }>;
      total: { requests: number };
    };
    const usage = async (args: string[]): Promise<Usage> => {
      const res = await cli(["--json", "usage", "--days", "1", ...args]);
      expect(res.code, res.stderr).toBe(0);
      return JSON.parse(res.stdout) as Usage;
    };
    /** Requests per value of the label grouped by. */
    const perTeam = (u: Usage): Record<string, number> =>
      Object.fromEntries(u.buckets.map((b) => [b.metadataValue ?? "(not grouped)", b.requests]));
    // The ledger is written in batches: ask until every labelled call is counted.
    let byTeam: Record<string, number> = {};
    for (let i = 0; i < 40; i++) {
      byTeam = perTeam(await usage(["--by", "label:team"]));
      if (byTeam["alpha"] === 2 && byTeam["beta"] === 1 && byTeam["gamma"] === 1) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(byTeam).toMatchObject({ alpha: 2, beta: 1, gamma: 1 });
    // Calls without the label (this one and the other tests') have the value "".
    expect(byTeam[""]).toBeGreaterThanOrEqual(1);

    // The table's column is the label's key; calls without it show as -.
    const table = await cli(["usage", "--days", "1", "--by", "label:team,model"]);
    expect(table.code, table.stderr).toBe(0);
    const [head, ...rows] = table.stdout.trimEnd().split("\n");
    expect(head).toMatch(
      /^team\s+model\s+requests\s+tokens in\s+cached in\s+tokens out\s+reasoning\s+cost$/,
    );
    expect(rows).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^alpha\s+sim-fast\s+2\s/),
        // A short prompt, under the 1024 tokens a provider caches from: nothing cached; sim-fast
        // does not reason.
        expect.stringMatching(/^beta\s+sim-fast\s+1\s+[1-9]\d*\s+0\s+[1-9]\d*\s+0\s+\$/),
        expect.stringMatching(/^gamma\s+sim-fast\s+1\s/),
        expect.stringMatching(/^-\s+\S+\s+\d+\s/),
      ]),
    );

    // --label keeps the calls holding every pair given, whatever they are grouped by.
    expect(perTeam(await usage(["--by", "label:team", "--label", "team=alpha"]))).toEqual({
      alpha: 2,
    });
    const prod = await usage(["--by", "label:team", "--label", "env=prod"]);
    expect(perTeam(prod)).toEqual({ alpha: 1, beta: 1 });
    expect(prod.total.requests).toBe(2);
    const both = await usage(["--by", "model", "--label", "team=beta", "--label", "env=prod"]);
    expect(both.buckets).toEqual([
      expect.objectContaining({
        model: "sim-fast",
        requests: 1,
        // A short prompt: nothing read from or written to the prompt cache; no reasoning.
        cachedInputTokens: 0,
        cacheWriteInputTokens: 0,
        reasoningTokens: 0,
      }),
    ]);
    expect(both.buckets[0]!.inputTokens).toBeGreaterThan(0);
    // Not grouped by a label: no value, as for the other dimensions not asked for.
    expect(both.buckets[0]!.metadataValue).toBeNull();
    // The run's calls carry feature=workflow besides its labels.
    expect(perTeam(await usage(["--by", "label:feature", "--label", "team=gamma"]))).toEqual({
      workflow: 1,
    });
    // runs list --label finds the labelled run, and only it.
    const labelled = await cli(["--json", "runs", "list", "--label", "team=gamma"]);
    expect(labelled.code, labelled.stderr).toBe(0);
    const labelledRuns = (
      JSON.parse(labelled.stdout) as { runs: Array<{ spec: { input: string } }> }
    ).runs;
    expect(labelledRuns.map((r) => r.spec.input)).toEqual(["One for gamma"]);
    const none = await usage(["--by", "label:team", "--label", "team=nobody"]);
    expect(none.buckets).toEqual([]);
    expect(none.total.requests).toBe(0);

    // Bad label flags are usage errors, found before anything is sent.
    const twoLabels = await cli(["usage", "--by", "label:x,label:y"]);
    expect(twoLabels.code).toBe(2);
    expect(twoLabels.stderr).toMatch(/--by: at most one label:<key>/);
    const noValue = await cli(["usage", "--label", "team"]);
    expect(noValue.code).toBe(2);
    expect(noValue.stderr).toContain("--label team: expected key=value");
    const nine = await cli([
      "usage",
      ...Array.from({ length: 9 }, (_, i) => ["--label", `k${i}=v`]).flat(),
    ]);
    expect(nine.code).toBe(2);
    expect(nine.stderr).toContain("--label: at most 8 labels (9 given)");
    const badChat = await cli(["chat", "-m", "sim-fast", "--label", "=alpha", "Hi"]);
    expect(badChat.code).toBe(2);
    expect(badChat.stdout).toBe("");
  }, 90_000);

  it("cli - chat --log and log: true keep the call: logs list shows it, logs get prints the question and the answer", async () => {
    const question = `Remember the code word pineapple (${Date.now()})`;
    const chat = await cli([
      "chat",
      "--log",
      "-m",
      "sim-fast",
      "-s",
      "Answer in one sentence.",
      question,
    ]);
    expect(chat.code, chat.stderr).toBe(0);
    const id = /^logged: ensemble logs get (chatcmpl-\w+)$/m.exec(chat.stderr)?.[1];
    expect(id, chat.stderr).toBeDefined();
    const answer = chat.stdout.trim();
    expect(answer).toContain("pineapple");
    const unlogged = await cli(["--json", "chat", "-m", "sim-fast", "Not for the log"]);
    expect(unlogged.code, unlogged.stderr).toBe(0);
    const unloggedId = (
      JSON.parse(unlogged.stdout.trim().split("\n").at(-1)!) as { done: { id: string } }
    ).done.id;
    // Through the gateway's OpenAI route with an API key, asking for an alias.
    const key = JSON.parse((await cli(["--json", "keys", "create", "logged"])).stdout) as {
      id: string;
      secret: string;
    };
    const viaKey = await fetch(`${gatewayUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key.secret}` },
      body: JSON.stringify({
        model: "fast",
        messages: [{ role: "user", content: "Sent through the OpenAI route" }],
        log: true,
      }),
    });
    expect(viaKey.status).toBe(200);
    const keyCall = ((await viaKey.json()) as { id: string }).id;

    // Written after the answers, off their path: wait for both.
    type Listed = { calls: Array<{ id: string; apiKeyId?: string; requestedModel?: string }> };
    const listed = async (...args: string[]) => {
      const res = await cli(["--json", "logs", "list", ...args]);
      expect(res.code, res.stderr).toBe(0);
      return (JSON.parse(res.stdout) as Listed).calls;
    };
    let calls = await listed();
    for (
      let i = 0;
      i < 40 && !(calls.some((c) => c.id === id) && calls.some((c) => c.id === keyCall));
      i++
    ) {
      await new Promise((r) => setTimeout(r, 250));
      calls = await listed();
    }
    expect(calls.map((c) => c.id).slice(0, 2)).toEqual([keyCall, id]);
    expect(calls.map((c) => c.id)).not.toContain(unloggedId);

    const list = await cli(["logs", "list"]);
    expect(list.code, list.stderr).toBe(0);
    const [head, ...rows] = list.stdout.trimEnd().split("\n");
    expect(head).toMatch(
      /^time\s+id\s+model\s+status\s+latency\s+tokens in\/out\s+cost\s+question$/,
    );
    expect(rows.find((r) => r.includes(id!))).toMatch(
      new RegExp(
        `^\\d{4}-\\d\\d-\\d\\dT\\S+Z\\s+${id}\\s+sim-fast\\s+OK\\s+[\\d.]+s\\s+[1-9]\\d*/[1-9]\\d*\\s+\\$[\\d.]+\\s+Remember the code word pineapple \\(`,
      ),
    );
    expect(rows.find((r) => r.includes(keyCall))).toMatch(/\sfast→sim-fast\s+OK\s/);

    // Filters: the model asked for, the API key, the period, failures only.
    expect((await listed("--model", "fast")).map((c) => c.id)).toEqual([keyCall]);
    expect((await listed("--key", key.id)).map((c) => c.id)).toEqual([keyCall]);
    expect((await listed("--since", "1h")).map((c) => c.id)).toContain(id);
    const errors = await cli(["logs", "list", "--errors"]);
    expect(errors.code).toBe(0);
    expect(errors.stdout.trim()).toBe("(none)");
    expect(errors.stderr).toContain("log: true");
    const everyone = await cli(["logs", "list", "--all-users", "-n", "5"]);
    expect(everyone.code, everyone.stderr).toBe(0);
    expect(everyone.stdout.split("\n")[0]).toMatch(/^time\s+id\s+user\s+model\s/);

    // One call: its figures, the messages sent and the answer.
    const got = await cli(["logs", "get", id!]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toMatch(new RegExp(`^call ${id}: OK$`, "m"));
    expect(got.stdout).toMatch(/^model\s+sim-fast \(simulator\)$/m);
    expect(got.stdout).toMatch(/^streaming\s+yes$/m);
    expect(got.stdout).toContain("[system]\nAnswer in one sentence.\n");
    expect(got.stdout).toContain(`[user]\n${question}\n`);
    expect(got.stdout).toContain(`[answer]\n${answer}`);
    const json = await cli(["--json", "logs", "get", id!]);
    expect(json.code, json.stderr).toBe(0);
    const whole = JSON.parse(json.stdout) as {
      summary: { id: string; status: string };
      request: { log: boolean; messages: Array<{ content: Array<{ text: string }> }> };
      response: { message: { content: Array<{ text: string }> } };
    };
    expect(whole.summary).toMatchObject({ id, status: "OK" });
    expect(whole.request.log).toBe(true);
    expect(whole.request.messages[1]!.content[0]!.text).toBe(question);
    expect(whole.response.message.content[0]!.text.trim()).toBe(answer);

    // Not a logged call (or not logged at all): a clear error, exit code 1.
    const nope = await cli(["logs", "get", "nope"]);
    expect(nope.code).toBe(1);
    expect(nope.stderr).toMatch(/^error: no logged call nope: it was not logged, has expired/);
    expect((await cli(["logs", "get", unloggedId])).code).toBe(1);
    const bad = await cli(["logs", "list", "--since", "soon"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--since soon: expected a duration");
  }, 60_000);

  it("cli - tenant settings: an admin sets the call log, the cache and the semantic cache threshold, the setting not given is kept, bad values exit 2, a non-admin is refused", async () => {
    type Settings = {
      logCalls: boolean;
      defaultCache: string;
      semanticCacheMinSimilarity: number;
      guardrails: Record<string, string[]>;
      updateTime: string | null;
      updatedBy: string | null;
    };
    const noGuardrails = { redactPii: [], blockPii: [], blockedTerms: [], blockedOutputTerms: [] };
    const settings = async (args: string[] = [], env?: NodeJS.ProcessEnv) => {
      const res = await cli(["--json", "tenant", "settings", ...args], env ? { env } : {});
      expect(res.code, res.stderr).toBe(0);
      return JSON.parse(res.stdout) as Settings;
    };
    await expect(settings()).resolves.toEqual({
      logCalls: false,
      defaultCache: "default",
      semanticCacheMinSimilarity: 0,
      guardrails: noGuardrails,
      updateTime: null,
      updatedBy: null,
    });

    const me = JSON.parse((await cli(["--json", "whoami"])).stdout) as { userId: string };
    const set = await settings(["--log-calls", "on", "--cache", "exact"]);
    expect(set.updateTime).toMatch(/^\d{4}-\d\d-\d\dT[\d:]+Z$/);
    expect(set).toEqual({
      logCalls: true,
      defaultCache: "exact",
      semanticCacheMinSimilarity: 0,
      guardrails: noGuardrails,
      updateTime: set.updateTime,
      updatedBy: me.userId,
    });
    await expect(settings()).resolves.toEqual(set);
    const read = await cli(["tenant", "settings"]);
    expect(read.code, read.stderr).toBe(0);
    expect(read.stdout).toMatch(/^log calls\s+on \(every chat is kept in the call log\)$/m);
    expect(read.stdout).toMatch(/^cache\s+exact$/m);
    expect(read.stdout).toMatch(/^semantic threshold\s+default \(the deployment's\)$/m);
    expect(read.stdout).toMatch(
      new RegExp(`^changed\\s+${set.updateTime} by user ${me.userId}$`, "m"),
    );

    // The semantic cache threshold: set alone, shown as text and JSON, read back as set.
    const threshold = await cli(["tenant", "settings", "--semantic-threshold", "0.92"]);
    expect(threshold.code, threshold.stderr).toBe(0);
    expect(threshold.stdout).toMatch(/^updated\n/);
    expect(threshold.stdout).toMatch(/^semantic threshold\s+0\.92$/m);
    await expect(settings()).resolves.toMatchObject({
      logCalls: true,
      defaultCache: "exact",
      semanticCacheMinSimilarity: 0.92,
    });
    const readThreshold = await cli(["tenant", "settings"]);
    expect(readThreshold.code, readThreshold.stderr).toBe(0);
    expect(readThreshold.stdout).toMatch(/^cache\s+exact\nsemantic threshold\s+0\.92$/m);

    // UpdateTenantSettings changes only what is given: the ones not given are kept.
    await expect(settings(["--log-calls", "off"])).resolves.toMatchObject({
      logCalls: false,
      defaultCache: "exact",
      semanticCacheMinSimilarity: 0.92,
    });
    const semantic = await cli(["tenant", "settings", "--cache", "semantic"]);
    expect(semantic.code, semantic.stderr).toBe(0);
    expect(semantic.stdout).toMatch(
      /^updated\nlog calls\s+off\ncache\s+semantic .*\nsemantic threshold\s+0\.92\n/,
    );
    expect(semantic.stderr).toContain("BUDGET_CACHE_MS");

    // Bad values: refused before anything is asked, exit 2, nothing changed.
    const bad = await cli(["tenant", "settings", "--cache", "fuzzy"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--cache fuzzy: expected one of default, off, exact, semantic");
    expect(bad.stdout).toBe("");
    const badLog = await cli(["tenant", "settings", "--log-calls", "yes", "--cache", "off"]);
    expect(badLog.code).toBe(2);
    expect(badLog.stderr).toContain("--log-calls yes: expected on or off");
    for (const value of ["0.2", "1.5", "high"]) {
      const badThreshold = await cli(["tenant", "settings", "--semantic-threshold", value]);
      expect(badThreshold.code, value).toBe(2);
      expect(badThreshold.stderr).toContain(
        `--semantic-threshold ${value}: expected a number from 0.5 to 1`,
      );
      expect(badThreshold.stdout).toBe("");
    }
    await expect(settings()).resolves.toMatchObject({
      logCalls: false,
      defaultCache: "semantic",
      semanticCacheMinSimilarity: 0.92,
    });

    // An API key without the admin scope acts as a plain user: it reads them, cannot change them.
    const key = JSON.parse(
      (await cli(["--json", "keys", "create", "settings-reader", "--scope", "read,write"])).stdout,
    ) as { secret: string };
    const asUser = { ENSEMBLE_API_KEY: key.secret };
    await expect(settings([], asUser)).resolves.toMatchObject({ defaultCache: "semantic" });
    const denied = await cli(["tenant", "settings", "--log-calls", "on"], { env: asUser });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(
      /^error: permission denied: only a tenant admin can change the tenant's settings .*admin role/,
    );
    expect(denied.stdout).toBe("");
    await expect(settings()).resolves.toMatchObject({ logCalls: false });

    // Back to the defaults for the tests after this one ("default": the deployment's threshold).
    await expect(
      settings(["--log-calls", "off", "--cache", "default", "--semantic-threshold", "default"]),
    ).resolves.toMatchObject({
      logCalls: false,
      defaultCache: "default",
      semanticCacheMinSimilarity: 0,
    });
  }, 60_000);

  it("cli - tenant settings: an admin sets guardrails list by list, sees them as text and JSON, other changes keep them; chat redacts an email, refuses a blocked term, withholds a blocked answer", async () => {
    // A tenant of its own, whose settings model-proxy has not read yet (it keeps them for
    // BUDGET_CACHE_MS, 30s here, from a tenant's first call): its first chat sees what is set here.
    const env = { XDG_CONFIG_HOME: join(home, "guarded") };
    const as = (args: string[]) => cli(args, { env });
    const signup = await cli(
      ["signup", "-e", `cli-guard-${Date.now()}@example.com`, "--password-stdin"],
      { stdin: `${PASSWORD}\n`, env },
    );
    expect(signup.code, signup.stderr).toBe(0);
    type Settings = {
      logCalls: boolean;
      defaultCache: string;
      guardrails: {
        redactPii: string[];
        blockPii: string[];
        blockedTerms: string[];
        blockedOutputTerms: string[];
      };
    };
    const settings = async (args: string[] = []) => {
      const res = await as(["--json", "tenant", "settings", ...args]);
      expect(res.code, res.stderr).toBe(0);
      return JSON.parse(res.stdout) as Settings;
    };
    await expect(settings()).resolves.toMatchObject({
      guardrails: { redactPii: [], blockPii: [], blockedTerms: [], blockedOutputTerms: [] },
    });
    const fresh = await as(["tenant", "settings"]);
    expect(fresh.code, fresh.stderr).toBe(0);
    expect(fresh.stdout).toMatch(/^redact pii\s+none\nblock pii\s+none\nblock terms\s+none\n/m);

    // An unknown kind: refused before anything is sent, naming the kinds there are.
    const bad = await as(["tenant", "settings", "--redact-pii", "email,fax"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(
      "--redact-pii fax: expected one of email, phone, credit-card, iban, ip-address, us-ssn, secret",
    );
    expect(bad.stdout).toBe("");

    const set = await as([
      "tenant",
      "settings",
      "--redact-pii",
      "email,phone",
      "--block-pii",
      "secret",
      "--block-terms",
      "Project Zephyr, codename",
      "--block-output-terms",
      "pineapple",
    ]);
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/^updated\n/);
    expect(set.stdout).toMatch(
      /^redact pii\s+email, phone \(replaced in prompts by \[EMAIL\], \[PHONE\] before a provider sees them\)$/m,
    );
    expect(set.stdout).toMatch(/^block pii\s+secret \(prompts holding one are refused\)$/m);
    expect(set.stdout).toMatch(
      /^block terms\s+"Project Zephyr", "codename" \(prompts holding one are refused\)$/m,
    );
    expect(set.stdout).toMatch(
      /^block output terms\s+"pineapple" \(answers holding one are withheld\)$/m,
    );
    expect(set.stderr).toContain("BUDGET_CACHE_MS");
    const guardrails = {
      redactPii: ["email", "phone"],
      blockPii: ["secret"],
      blockedTerms: ["Project Zephyr", "codename"],
      blockedOutputTerms: ["pineapple"],
    };
    await expect(settings()).resolves.toMatchObject({
      logCalls: false,
      defaultCache: "default",
      guardrails,
    });

    // The cache and the call log change alone: the guardrails stay.
    await expect(settings(["--cache", "off"])).resolves.toMatchObject({
      defaultCache: "off",
      guardrails,
    });
    await expect(settings(["--log-calls", "on"])).resolves.toMatchObject({
      logCalls: true,
      defaultCache: "off",
      guardrails,
    });
    // A guardrail flag changes its list alone: the other lists, the cache and the call log stay.
    const narrowed = {
      redactPii: ["email"],
      blockPii: [],
      blockedTerms: ["Project Zephyr", "codename"],
      blockedOutputTerms: ["pineapple"],
    };
    await expect(settings(["--redact-pii", "EMAIL", "--block-pii", "none"])).resolves.toEqual({
      logCalls: true,
      defaultCache: "off",
      semanticCacheMinSimilarity: 0,
      guardrails: narrowed,
      updateTime: expect.stringMatching(/^\d{4}-/) as unknown,
      updatedBy: expect.any(String) as unknown,
    });
    const read = await as(["tenant", "settings"]);
    expect(read.code, read.stderr).toBe(0);
    expect(read.stdout).toMatch(
      /^log calls\s+on .*\ncache\s+off\nsemantic threshold\s+default .*\nredact pii\s+email \(replaced in prompts by \[EMAIL\] before a provider sees them\)\nblock pii\s+none\nblock terms\s+"Project Zephyr", "codename" .*\nblock output terms\s+"pineapple" .*\nchanged\s+\d{4}-/,
    );

    // model-proxy applies them: the address never reaches the provider (the simulator repeats
    // the prompt it got), a blocked term (any case) refuses the call, a blocked word in the
    // answer withholds it.
    const redacted = await as([
      "chat",
      "-m",
      "sim-fast",
      "Please write to jane.doe@example.com about the launch",
    ]);
    expect(redacted.code, redacted.stderr).toBe(0);
    expect(redacted.stdout).toContain('You said: "Please write to [EMAIL] about the launch"');
    expect(redacted.stdout).not.toContain("jane.doe@example.com");

    const blocked = await as(["chat", "-m", "sim-fast", "What is the status of project zephyr?"]);
    expect(blocked.code).toBe(1);
    expect(blocked.stderr).toMatch(/^error: InvalidArgument: blocked by the tenant's guardrails/);
    expect(blocked.stdout).toBe("");

    const withheld = await as(["chat", "-m", "sim-fast", "My favourite fruit is pineapple"]);
    expect(withheld.code, withheld.stderr).toBe(0);
    expect(withheld.stdout).not.toContain("pineapple");
    expect(withheld.stderr).toMatch(
      /answer was withheld by a content filter \(the tenant's guardrails/,
    );
  }, 60_000);

  it("cli - webhooks: create prints the secret once, a run's end reaches the receiver signed (retried after a 503), deliveries and list show it, delete removes it; bad events exit 2, a non-admin is refused", async () => {
    // The tenant's endpoints, on a receiver here (the engine runs with WEBHOOK_ALLOW_PRIVATE):
    // /ok answers 503 once, then 200; /down always 500; /failed-only is never called.
    const received: Array<{ path: string; headers: Record<string, string>; body: string }> = [];
    const answers: Record<string, number[]> = { "/ok": [503] };
    const receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const path = req.url ?? "";
        received.push({
          path,
          headers: req.headers as Record<string, string>,
          body: Buffer.concat(chunks).toString("utf8"),
        });
        const status = path === "/down" ? 500 : (answers[path]?.shift() ?? 200);
        res
          .writeHead(status, { "content-type": "text/plain" })
          .end(status === 200 ? "ok" : "receiver down");
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
    const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    type Delivery = { runId: string; status: string; attempts?: number; lastStatusCode?: number };
    const deliveries = async (id: string) => {
      const res = await cli(["--json", "webhooks", "deliveries", id]);
      expect(res.code, res.stderr).toBe(0);
      return (JSON.parse(res.stdout) as { deliveries: Delivery[] }).deliveries;
    };
    try {
      // An unknown event word: refused before anything is sent, naming the words there are.
      const bad = await cli(["webhooks", "create", `${base}/ok`, "--events", "completed,finished"]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain(
        "--events finished: expected one of completed, failed, cancelled, budget, schedule-paused (or all)",
      );
      expect(bad.stdout).toBe("");
      const none = await cli(["webhooks", "list"]);
      expect(none.code, none.stderr).toBe(0);
      expect(none.stdout.trim()).toBe("(none)");
      expect(none.stderr).toContain("ensemble webhooks create");

      // Created: the secret on stdout once, with how to keep and use it on stderr.
      const created = await cli([
        "webhooks",
        "create",
        `${base}/ok`,
        "--events",
        "completed",
        "--description",
        "billing system",
      ]);
      expect(created.code, created.stderr).toBe(0);
      const okId = /^webhook (wh_\w+) created$/m.exec(created.stdout)?.[1];
      expect(okId, created.stdout).toBeDefined();
      expect(created.stdout).toMatch(new RegExp(`^url\\s+${escape(base)}/ok$`, "m"));
      expect(created.stdout).toMatch(/^events\s+run\.completed$/m);
      expect(created.stdout).toMatch(/^description\s+billing system$/m);
      const secret = /^secret\s+(whsec_\S+)$/m.exec(created.stdout)?.[1] ?? "";
      expect(secret).toMatch(/^whsec_[A-Za-z0-9+/=]{20,}$/);
      expect(created.stderr).toContain("Save the secret now; it is not shown again");
      expect(created.stderr).toContain(`only its start, ${secret.slice(0, 10)}…`);
      expect(created.stderr).toMatch(/webhook-id, webhook-timestamp and\s+webhook-signature/);
      expect(created.stderr).toContain("standardwebhooks");

      // --json: {webhook, secret}; every event when --events is not given.
      type Created = {
        webhook: { id: string; url: string; events?: string[]; secretHint: string };
        secret: string;
      };
      const downRes = await cli(["--json", "webhooks", "create", `${base}/down`]);
      expect(downRes.code, downRes.stderr).toBe(0);
      const down = JSON.parse(downRes.stdout) as Created;
      expect(down.webhook).toMatchObject({
        url: `${base}/down`,
        secretHint: `${down.secret.slice(0, 10)}…`,
      });
      expect(down.webhook.events ?? []).toEqual([]);
      expect(down.secret).toMatch(/^whsec_/);
      expect(down.secret).not.toBe(secret);
      const failedRes = await cli([
        "--json",
        "webhooks",
        "create",
        `${base}/failed-only`,
        "--events",
        "run.failed",
      ]);
      expect(failedRes.code, failedRes.stderr).toBe(0);
      const failedOnly = JSON.parse(failedRes.stdout) as Created;
      expect(failedOnly.webhook.events).toEqual(["WEBHOOK_EVENT_TYPE_RUN_FAILED"]);

      // A run that completes.
      const run = await cli(["--json", "run", "-m", "sim-fast", "Tell the webhook about monads"]);
      expect(run.code, run.stderr).toBe(0);
      const last = JSON.parse(run.stdout.trim().split("\n").at(-1)!) as {
        run: { id: string; status: string };
      };
      expect(last.run.status).toBe("RUN_STATUS_COMPLETED");
      const runId = last.run.id;

      // /ok: refused once, then delivered; the same delivery (webhook-id) both times, each signed.
      const until = Date.now() + 20_000;
      while (received.filter((r) => r.path === "/ok").length < 2 && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const atOk = received.filter((r) => r.path === "/ok");
      expect(atOk).toHaveLength(2);
      const [first, second] = atOk as [(typeof atOk)[0], (typeof atOk)[0]];
      expect(second.headers["webhook-id"]).toBe(first.headers["webhook-id"]);
      expect(second.body).toBe(first.body);
      const verified = new Webhook(secret).verify(second.body, second.headers) as {
        type: string;
        data: { runId: string; type: string };
      };
      expect(verified.type).toBe("run.completed");
      expect(verified.data).toMatchObject({ runId, type: "RUN_EVENT_TYPE_COMPLETED" });
      expect(() => new Webhook(secret).verify(first.body, first.headers)).not.toThrow();
      // A forged body, or another webhook's secret, does not verify.
      expect(() =>
        new Webhook(secret).verify(second.body.replace("monads", "monadz"), second.headers),
      ).toThrow();
      expect(() => new Webhook(down.secret).verify(second.body, second.headers)).toThrow();

      let ok = await deliveries(okId!);
      for (let i = 0; i < 40 && ok[0]?.status !== "WEBHOOK_DELIVERY_STATUS_DELIVERED"; i++) {
        await new Promise((r) => setTimeout(r, 250));
        ok = await deliveries(okId!);
      }
      expect(ok).toMatchObject([
        { runId, status: "WEBHOOK_DELIVERY_STATUS_DELIVERED", attempts: 2, lastStatusCode: 200 },
      ]);
      const okTable = await cli(["webhooks", "deliveries", okId!]);
      expect(okTable.code, okTable.stderr).toBe(0);
      const [head, ...rows] = okTable.stdout.trimEnd().split("\n");
      expect(head).toMatch(
        /^time\s+event\s+run\s+status\s+attempts\s+code\s+next attempt\s+error$/,
      );
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatch(
        new RegExp(
          `^\\d{4}-\\d\\d-\\d\\dT\\S+Z\\s+run\\.completed\\s+${runId}\\s+delivered\\s+2\\s+200\\s+-\\s+-$`,
        ),
      );

      // /down: pending, with the endpoint's answer and when the next attempt is due.
      let downList = await deliveries(down.webhook.id);
      for (let i = 0; i < 40 && (downList[0]?.attempts ?? 0) < 1; i++) {
        await new Promise((r) => setTimeout(r, 250));
        downList = await deliveries(down.webhook.id);
      }
      expect(downList).toMatchObject([
        { runId, status: "WEBHOOK_DELIVERY_STATUS_PENDING", lastStatusCode: 500 },
      ]);
      const downTable = await cli(["webhooks", "deliveries", down.webhook.id, "-n", "5"]);
      expect(downTable.code, downTable.stderr).toBe(0);
      expect(downTable.stdout.trimEnd().split("\n")[1]).toMatch(
        new RegExp(
          `\\s+run\\.completed\\s+${runId}\\s+pending\\s+[1-9]\\d*\\s+500\\s+\\d{4}-\\S+Z\\s+HTTP 500: receiver down$`,
        ),
      );
      // /failed-only wants failed runs: nothing for this one.
      const quiet = await cli(["webhooks", "deliveries", failedOnly.webhook.id]);
      expect(quiet.code, quiet.stderr).toBe(0);
      expect(quiet.stdout.trim()).toBe("(none)");
      expect(quiet.stderr).toContain("no deliveries yet");
      expect(received.some((r) => r.path === "/failed-only")).toBe(false);
      const badLimit = await cli(["webhooks", "deliveries", okId!, "--limit", "0"]);
      expect(badLimit.code).toBe(2);
      expect(badLimit.stderr).toContain("--limit 0: expected a whole number from 1 to 500");

      // list: each webhook with its secret's hint, never a secret.
      const list = await cli(["webhooks", "list"]);
      expect(list.code, list.stderr).toBe(0);
      const [listHead, ...listRows] = list.stdout.trimEnd().split("\n");
      expect(listHead).toMatch(/^id\s+url\s+events\s+description\s+secret hint\s+created$/);
      expect(listRows.map((r) => r.split(/\s+/)[0])).toEqual([
        okId,
        down.webhook.id,
        failedOnly.webhook.id,
      ]);
      expect(listRows[0]).toMatch(
        new RegExp(
          `^${okId}\\s+${escape(base)}/ok\\s+run\\.completed\\s+billing system\\s+${escape(secret.slice(0, 10))}…\\s+\\d{4}-\\S+Z$`,
        ),
      );
      expect(listRows[1]).toMatch(
        new RegExp(`/down\\s+all\\s+-\\s+${escape(down.webhook.secretHint)}\\s`),
      );
      expect(listRows[2]).toMatch(/\/failed-only\s+run\.failed\s+-\s/);
      const listJson = await cli(["--json", "webhooks", "list"]);
      expect(listJson.code, listJson.stderr).toBe(0);
      for (const text of [list.stdout, listJson.stdout]) {
        for (const s of [secret, down.secret, failedOnly.secret]) expect(text).not.toContain(s);
      }
      expect(
        (JSON.parse(listJson.stdout) as { webhooks: Array<{ secretHint: string }> }).webhooks.map(
          (w) => w.secretHint,
        ),
      ).toEqual([
        `${secret.slice(0, 10)}…`,
        down.webhook.secretHint,
        failedOnly.webhook.secretHint,
      ]);

      // An API key without the admin scope acts as a plain user: refused, with who may.
      const key = JSON.parse(
        (await cli(["--json", "keys", "create", "webhooks-user", "--scope", "read,write"])).stdout,
      ) as { secret: string };
      const asUser = { env: { ENSEMBLE_API_KEY: key.secret } };
      for (const args of [["list"], ["create", `${base}/sneaky`], ["delete", okId!]]) {
        const denied = await cli(["webhooks", ...args], asUser);
        expect(denied.code).toBe(1);
        expect(denied.stderr).toMatch(
          /^error: permission denied: only a tenant admin can manage the tenant's webhooks \(with an API key, one with the admin scope\)/,
        );
        expect(denied.stdout).toBe("");
      }

      // delete: gone from the list; its deliveries with it; a second delete names the id.
      const deleted = await cli(["webhooks", "delete", okId!]);
      expect(deleted.code, deleted.stderr).toBe(0);
      expect(deleted.stdout.trim()).toBe(`webhook ${okId} deleted`);
      const after = await cli(["--json", "webhooks", "list"]);
      expect(
        (JSON.parse(after.stdout) as { webhooks: Array<{ id: string }> }).webhooks.map((w) => w.id),
      ).toEqual([down.webhook.id, failedOnly.webhook.id]);
      for (const args of [
        ["delete", okId!],
        ["deliveries", okId!],
      ]) {
        const gone = await cli(["webhooks", ...args]);
        expect(gone.code).toBe(1);
        expect(gone.stderr).toContain(`error: no webhook ${okId} in your tenant`);
      }
      for (const id of [down.webhook.id, failedOnly.webhook.id]) {
        expect((await cli(["--json", "webhooks", "delete", id])).stdout).toContain(`"deleted"`);
      }
      const empty = await cli(["webhooks", "list"]);
      expect(empty.stdout.trim()).toBe("(none)");
    } finally {
      receiver.closeAllConnections();
      await new Promise((r) => receiver.close(r));
    }
  }, 90_000);

  it("cli - schedules: a seconds cron fires model runs, get shows its fires; pause stops it with its reason (and tells a schedule-paused webhook), list shows it paused, update renames it and keeps the spec not given, resume fires it again, delete removes it; bad flags exit 2", async () => {
    // A tenant of its own (its signup makes this user its admin, for the webhook), so that the
    // list holds only what this test creates.
    const env = { XDG_CONFIG_HOME: join(home, "scheduled") };
    const as = (args: string[]) => cli(args, { env });
    const signup = await cli(
      ["signup", "-e", `cli-sched-${Date.now()}@example.com`, "--password-stdin"],
      { stdin: `${PASSWORD}\n`, env },
    );
    expect(signup.code, signup.stderr).toBe(0);
    type Sched = {
      id: string;
      name: string;
      fireCount?: string;
      lastRunId?: string;
      paused?: boolean;
      pauseReason?: string;
      nextFireTime?: string;
      spec: { input: string; model?: { model: string } };
    };
    const get = async (id: string) => {
      const res = await as(["--json", "schedules", "get", id]);
      expect(res.code, res.stderr).toBe(0);
      return JSON.parse(res.stdout) as Sched;
    };
    const fires = async (id: string) => Number((await get(id)).fireCount ?? "0");
    /** Polls until the schedule has fired more than `than` times (or 20 s pass); its fires. */
    const firedMoreThan = async (id: string, than: number) => {
      let n = await fires(id);
      for (
        const until = Date.now() + 20_000;
        n <= than && Date.now() < until;
        n = await fires(id)
      ) {
        await new Promise((r) => setTimeout(r, 250));
      }
      return n;
    };

    // Bad flag combinations: refused before anything is sent.
    const both = await as([
      "schedules",
      "create",
      "tick",
      "--cron",
      "* * * * * *",
      "--at",
      "+1h",
      "-m",
      "sim-fast",
      "x",
    ]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("--cron and --at contradict each other");
    const noTime = await as(["schedules", "create", "tick", "-m", "sim-fast", "x"]);
    expect(noTime.code).toBe(2);
    expect(noTime.stderr).toContain("give --cron EXPRESSION (with --tz ZONE) or --at TIME");
    const badCron = await as([
      "schedules",
      "create",
      "tick",
      "--cron",
      "* *",
      "-m",
      "sim-fast",
      "x",
    ]);
    expect(badCron.code).toBe(2);
    expect(badCron.stderr).toContain('--cron "* *": expected five fields');
    const nothing = await as(["schedules", "update", "sch_none"]);
    expect(nothing.code).toBe(2);
    expect(nothing.stderr).toContain("nothing to change");
    const empty = await as(["schedules", "list"]);
    expect(empty.code, empty.stderr).toBe(0);
    expect(empty.stdout.trim()).toBe("(none)");
    expect(empty.stderr).toContain("ensemble schedules create");

    // A webhook told when a schedule is paused, on a receiver here.
    const received: Array<{ type: string; data: Sched }> = [];
    const receiver = createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        received.push(JSON.parse(body) as (typeof received)[0]);
        res.writeHead(200).end("ok");
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    try {
      const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/paused`;
      const hook = await as(["webhooks", "create", hookUrl, "--events", "schedule-paused"]);
      expect(hook.code, hook.stderr).toBe(0);
      expect(hook.stdout).toMatch(/^events\s+schedule\.paused$/m);

      // Every second, one model run each.
      const created = await as([
        "schedules",
        "create",
        "every-second",
        "--cron",
        "* * * * * *",
        "-m",
        "sim-fast",
        "--label",
        "team=ops",
        "Say tick",
      ]);
      expect(created.code, created.stderr).toBe(0);
      const id = /^schedule (sch_\w+) created$/m.exec(created.stdout)?.[1] ?? "";
      expect(id, created.stdout).toMatch(/^sch_/);
      expect(created.stdout).toMatch(/^when\s+\* \* \* \* \* \* \(UTC\)$/m);
      expect(created.stdout).toMatch(/^state\s+active$/m);
      expect(created.stdout).toMatch(/^next fire\s+\d{4}-\d\d-\d\dT\S+Z$/m);
      expect(created.stdout).toMatch(/^runs\s+model sim-fast$/m);
      expect(created.stdout).toMatch(/^input\s+Say tick$/m);

      // It fires: get counts the fires and names the last run, which the schedule started.
      expect(await firedMoreThan(id, 0)).toBeGreaterThanOrEqual(1);
      const shown = await as(["schedules", "get", id]);
      expect(shown.code, shown.stderr).toBe(0);
      expect(shown.stdout).toMatch(/^fires\s+[1-9]\d*$/m);
      expect(shown.stdout).toMatch(/^last fire\s+\d{4}-\S+Z$/m);
      expect(shown.stdout).toMatch(/^last error\s+-$/m);
      const runId = /^last run\s+(run_\w+)$/m.exec(shown.stdout)?.[1] ?? "";
      expect(runId, shown.stdout).toMatch(/^run_/);
      const run = await as(["--json", "runs", "get", runId]);
      expect(run.code, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout)).toMatchObject({
        scheduleId: id,
        spec: { input: "Say tick", model: { model: "sim-fast" } },
      });
      const runText = await as(["runs", "get", runId]);
      expect(runText.stdout).toMatch(new RegExp(`^started by schedule ${id}$`, "m"));
      // runs list --schedule: only the runs it started, the last one among them.
      const listed = await as(["--json", "runs", "list", "--schedule", id, "-n", "100"]);
      expect(listed.code, listed.stderr).toBe(0);
      const listedRuns = (
        JSON.parse(listed.stdout) as { runs: Array<{ id: string; scheduleId: string }> }
      ).runs;
      expect(listedRuns.map((r) => r.id)).toContain(runId);
      expect(listedRuns.every((r) => r.scheduleId === id)).toBe(true);
      // Its runs carry the schedule's labels.
      const byLabel = await as(["--json", "runs", "list", "--label", "team=ops", "-n", "100"]);
      expect(
        (JSON.parse(byLabel.stdout) as { runs: Array<{ id: string }> }).runs.map((r) => r.id),
      ).toContain(runId);
      const noneListed = await as(["--json", "runs", "list", "--schedule", "sch_none"]);
      expect((JSON.parse(noneListed.stdout) as { runs: unknown[] }).runs).toEqual([]);

      // pause: paused with its reason, no next fire; it fires no more.
      const paused = await as(["schedules", "pause", id, "--reason", "maintenance window"]);
      expect(paused.code, paused.stderr).toBe(0);
      expect(paused.stdout).toMatch(new RegExp(`^schedule ${id} paused$`, "m"));
      expect(paused.stdout).toMatch(/^state\s+paused$/m);
      expect(paused.stdout).toMatch(/^paused\s+since \d{4}-\S+Z$/m);
      expect(paused.stdout).toMatch(/^pause reason\s+maintenance window$/m);
      expect(paused.stdout).toMatch(/^next fire\s+-$/m);
      // (an occurrence being fired as it was paused may still be counted)
      await new Promise((r) => setTimeout(r, 1_500));
      const whenPaused = await fires(id);
      await new Promise((r) => setTimeout(r, 2_500));
      expect(await fires(id)).toBe(whenPaused);
      for (let i = 0; i < 40 && received.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(received).toMatchObject([
        { type: "schedule.paused", data: { id, paused: true, pauseReason: "maintenance window" } },
      ]);

      // list: the schedule, paused, with no next fire.
      const list = await as(["schedules", "list"]);
      expect(list.code, list.stderr).toBe(0);
      const [head, ...rows] = list.stdout.trimEnd().split("\n");
      expect(head).toMatch(/^id\s+name\s+when\s+next fire\s+last fire\s+fires\s+state$/);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatch(
        new RegExp(
          `^${id}\\s+every-second\\s+\\* \\* \\* \\* \\* \\* \\(UTC\\)\\s+-\\s+\\d{4}-\\S+Z\\s+${whenPaused}\\s+paused$`,
        ),
      );

      // update: renamed, still paused; a new input keeps the model; --var on a model run refused.
      const renamed = await as(["schedules", "update", id, "--name", "renamed"]);
      expect(renamed.code, renamed.stderr).toBe(0);
      expect(renamed.stdout).toMatch(new RegExp(`^schedule ${id} updated$`, "m"));
      expect(renamed.stdout).toMatch(/^name\s+renamed$/m);
      expect(renamed.stdout).toMatch(/^state\s+paused$/m);
      const retold = await as(["schedules", "update", id, "Say", "tock"]);
      expect(retold.code, retold.stderr).toBe(0);
      await expect(get(id)).resolves.toMatchObject({
        name: "renamed",
        paused: true,
        spec: { input: "Say tock", model: { model: "sim-fast" } },
      });
      const badVar = await as(["schedules", "update", id, "--var", "tone=dry"]);
      expect(badVar.code).toBe(2);
      expect(badVar.stderr).toContain(
        `--var sets workflow variables, and schedule ${id} runs model sim-fast`,
      );

      // resume: active again, with a next fire; it fires again.
      const resumed = await as(["schedules", "resume", id]);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stdout).toMatch(new RegExp(`^schedule ${id} resumed$`, "m"));
      expect(resumed.stdout).toMatch(/^state\s+active$/m);
      expect(resumed.stdout).toMatch(/^next fire\s+\d{4}-\S+Z$/m);
      expect(resumed.stdout).not.toMatch(/^pause reason/m);
      expect(await firedMoreThan(id, whenPaused)).toBeGreaterThan(whenPaused);

      // A one-time schedule whose time passed while it was paused cannot resume: the engine's why.
      const once = await as([
        "--json",
        "schedules",
        "create",
        "once",
        "--at",
        "+3s",
        "-m",
        "sim-fast",
        "x",
      ]);
      expect(once.code, once.stderr).toBe(0);
      const onceId = (JSON.parse(once.stdout) as Sched).id;
      expect((await as(["schedules", "pause", onceId])).code).toBe(0);
      await new Promise((r) => setTimeout(r, 3_500));
      const late = await as(["schedules", "resume", onceId]);
      expect(late.code).toBe(1);
      expect(late.stderr).toMatch(
        /^error: FailedPrecondition: its time \(\S+\) passed while it was paused/,
      );
      expect(late.stderr).toContain(`ensemble schedules update ${onceId} --at TIME`);

      // delete: gone; get and a second delete say so.
      for (const sid of [id, onceId]) {
        const deleted = await as(["schedules", "delete", sid]);
        expect(deleted.code, deleted.stderr).toBe(0);
        expect(deleted.stdout.trim()).toBe(`schedule ${sid} deleted`);
      }
      for (const args of [
        ["get", id],
        ["delete", id],
        ["pause", id],
      ]) {
        const gone = await as(["schedules", ...args]);
        expect(gone.code).toBe(1);
        expect(gone.stderr).toContain(
          `error: no schedule ${id} of yours (\`ensemble schedules list\` shows them)`,
        );
      }
      expect((await as(["schedules", "list"])).stdout.trim()).toBe("(none)");
    } finally {
      receiver.closeAllConnections();
      await new Promise((r) => receiver.close(r));
    }
  }, 120_000);

  it("cli - a bad flag names it, suggests --help and exits 2; a bad value says what is expected", async () => {
    const bad = await cli(["runs", "list", "--limt", "5"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("unknown option '--limt'");
    expect(bad.stderr).toContain("--limit");
    expect(bad.stderr).toContain("--help");
    expect(bad.stdout).toBe("");

    const value = await cli(["usage", "--by", "weekday"]);
    expect(value.code).toBe(2);
    expect(value.stderr).toMatch(/--by weekday: expected one of .*model/);

    const help = await cli(["run", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("--template <id>");
  }, 30_000);

  it("cli - a reader that closes the pipe early (| head) ends it quietly with success", async () => {
    const cut = await cli(["--help"], { closeStdout: true });
    expect(cut.stderr).not.toMatch(/EPIPE|Unhandled/);
    expect(cut.code).toBe(0);
  }, 30_000);

  it("cli - logout ends the session: later calls ask to log in", async () => {
    const out = await cli(["logout"]);
    expect(out.code).toBe(0);
    const after = await cli(["models"]);
    expect(after.code).toBe(1);
    expect(after.stderr).toContain("ensemble login");
  }, 30_000);
});
