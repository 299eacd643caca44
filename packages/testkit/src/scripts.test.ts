// The scripts the test kit relies on (installers), and the launcher and token minter that share
// their code. They live here because scripts/ has no TypeScript project of its own.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect } from "@nats-io/transport-node";
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from "jose";
import { MongoClient } from "mongodb";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "./process.js";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "ensemble-scripts-"));
  dirs.push(dir);
  return dir;
}

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NATS_URL;
  delete env.MONGODB_URL;
  delete env.JWKS_URL;
  return env;
}

function runScript(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: root,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("scripts", () => {
  it("install-nats - prints the path of a nats-server >= 2.11 as the last stdout line", async () => {
    const res = await runScript(["scripts/install-nats.mjs"], process.env);
    expect(res.code).toBe(0);
    const path = res.stdout.trim().split("\n").pop() ?? "";
    const version = await runScript(
      [
        "-e",
        `require("child_process").execFileSync(${JSON.stringify(path)}, ["--version"], { stdio: "inherit" })`,
      ],
      process.env,
    );
    const [major = 0, minor = 0] = (/v(\d+)\.(\d+)/.exec(version.stdout)?.slice(1) ?? []).map(
      Number,
    );
    expect(major > 2 || (major === 2 && minor >= 11)).toBe(true);
  });

  it("mint-token - prints a token that verifies against the dev issuer's jwks.json with the agreed claims", async () => {
    const data = await tempDir();
    const res = await runScript(
      [
        "scripts/mint-token.mjs",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--role",
        "admin",
        "--service",
        "workflow-engine",
        "--ttl",
        "15m",
      ],
      cleanEnv({ ENSEMBLE_DATA_DIR: data }),
    );
    expect(res.stderr).toBe("");
    expect(res.code).toBe(0);
    const jwks = JSON.parse(
      await readFile(join(data, "dev-issuer", "jwks.json"), "utf8"),
    ) as JSONWebKeySet;
    expect(jwks.keys[0]).not.toHaveProperty("d");
    const { payload } = await jwtVerify(res.stdout.trim(), createLocalJWKSet(jwks), {
      issuer: "ensemble-auth",
      audience: "ensemble",
    });
    expect(payload).toMatchObject({
      sub: "alice",
      tid: "acme",
      roles: ["user", "admin"],
      typ: "service",
      svc: "workflow-engine",
    });
    expect(payload.exp! - payload.iat!).toBe(900);
    expect((await stat(join(data, "dev-issuer", "private.jwk.json"))).mode & 0o777).toBe(0o600);
  });

  it("mint-token - refuses a token without a user or service", async () => {
    const res = await runScript(
      ["scripts/mint-token.mjs", "--tenant", "acme"],
      cleanEnv({ ENSEMBLE_DATA_DIR: await tempDir() }),
    );
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/--user or --service is required/);
  });

  it("start --infra-only - serves NATS and MongoDB, and SIGTERM stops them with exit 0", async () => {
    const [natsPort, mongoPort] = [await freePort(), await freePort()];
    const data = await tempDir();
    const launcher = spawn(process.execPath, ["scripts/start.mjs", "--infra-only"], {
      cwd: root,
      env: cleanEnv({
        ENSEMBLE_DATA_DIR: data,
        NATS_PORT: String(natsPort),
        MONGODB_PORT: String(mongoPort),
        NO_COLOR: "1",
      }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    launcher.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    launcher.stderr.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    const exited = once(launcher, "exit") as Promise<[number | null, NodeJS.Signals | null]>;
    try {
      await expect
        .poll(() => output, { timeout: 60_000, interval: 100 })
        .toContain("Ctrl-C stops everything.");
      expect(output).toContain(`nats://127.0.0.1:${natsPort}`);
      const nc = await connect({ servers: `nats://127.0.0.1:${natsPort}` });
      await nc.flush();
      await nc.close();
      const client = await new MongoClient(`mongodb://127.0.0.1:${mongoPort}`).connect();
      expect(await client.db("admin").command({ ping: 1 })).toMatchObject({ ok: 1 });
      await client.close();
    } finally {
      launcher.kill("SIGTERM");
    }
    const [code] = await exited;
    expect(code).toBe(0);
    await expect(
      connect({ servers: `nats://127.0.0.1:${natsPort}`, reconnect: false, timeout: 1_000 }),
    ).rejects.toThrow();
  });

  it("start - a taken port fails before anything starts, naming the port and the variable", async () => {
    const blocker = createServer().listen(0, "127.0.0.1");
    await once(blocker, "listening");
    const port = (blocker.address() as { port: number }).port;
    try {
      const res = await runScript(
        ["scripts/start.mjs", "--infra-only"],
        cleanEnv({
          ENSEMBLE_DATA_DIR: await tempDir(),
          NATS_PORT: String(port),
          MONGODB_PORT: String(await freePort()),
        }),
      );
      expect(res.code).toBe(1);
      expect(res.stderr).toContain(`port ${port} (NATS) is already in use`);
      expect(res.stderr).toContain("NATS_PORT");
    } finally {
      blocker.close();
    }
  });
});
