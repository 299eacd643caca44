// The benchmarks' mesh: every piece its own process, as deployed. A real nats-server and the
// MongoDB-wire server from the test kit, the simulator answering at once (no latency, no time to
// first token, no token rate), auth, registry (seeded from deploy/config) and model-proxy; a
// benchmark adds what it measures (the gateway, the workflow engine). Services log at `warn`;
// readiness is a TCP connect (or an HTTP probe), since nothing prints "listening" at warn.
// BENCH_CPU_PROF=<name>,... starts those processes with --cpu-prof (profiles written at exit).
// Also: CPU ticks, RSS and machine load from /proc, for the per-process tables.
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  freePort,
  repoRoot,
  ServerProcess,
  startMongo,
  startNats,
  uniqueName,
  type RunningMongo,
  type RunningServer,
} from "@ensemble/testkit";

export const PASSWORD = "correct-Horse-battery-9";

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A process to watch in the CPU and RSS tables. */
export interface Watched {
  name: string;
  pid: number;
  /** nats-server or the MongoDB-wire server (not ours to slim down). */
  infrastructure?: boolean;
}

/** Addresses of the core services, and the environment every further service starts from. */
export interface Core {
  /** NATS_URL, MONGODB_URL, LOG_LEVEL warn, no metrics port. */
  base: NodeJS.ProcessEnv;
  simUrl: string;
  jwksUrl: string;
  authAddress: string;
  registryAddress: string;
  proxyAddress: string;
}

export class BenchMesh {
  /** In start order; stopped in reverse. */
  readonly #started: Array<{ name: string; proc: ServerProcess }> = [];
  readonly #profiled: Set<string>;
  /** Where the CPU profiles go ("" when none is asked for). */
  readonly profileDir: string;
  #nats: RunningServer | undefined;
  #mongo: RunningMongo | undefined;
  #authEnv: NodeJS.ProcessEnv | undefined;

  constructor(name: string) {
    this.#profiled = new Set(
      (process.env["BENCH_CPU_PROF"] ?? "")
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== ""),
    );
    this.profileDir = this.#profiled.size > 0 ? mkdtempSync(join(tmpdir(), `${name}-prof-`)) : "";
  }

  get natsUrl(): string {
    if (this.#nats === undefined) throw new Error("the mesh is not started");
    return this.#nats.url;
  }

  /** Starts a built script of the repository as a named process (profiled when asked). */
  node(name: string, script: string, args: string[], env: NodeJS.ProcessEnv): ServerProcess {
    const flags = this.#profiled.has(name)
      ? ["--cpu-prof", "--cpu-prof-dir", this.profileDir, "--cpu-prof-name", `${name}.cpuprofile`]
      : [];
    const extra = (process.env["BENCH_NODE_FLAGS"] ?? "").split(" ").filter((f) => f !== "");
    flags.push(...extra);
    const proc = new ServerProcess(
      name,
      process.execPath,
      [...flags, join(repoRoot, script), ...args],
      env,
    );
    this.#started.push({ name, proc });
    return proc;
  }

  /** nats-server, the MongoDB-wire server, the simulator, auth, registry and model-proxy. */
  async startCore(opts: { proxyEnv?: NodeJS.ProcessEnv } = {}): Promise<Core> {
    this.#nats = await startNats();
    this.#mongo = await startMongo();
    const base: NodeJS.ProcessEnv = {
      ...process.env,
      LOG_LEVEL: "warn",
      METRICS_PORT: "0",
      NATS_URL: this.#nats.url,
      MONGODB_URL: this.#mongo.url,
    };
    delete base["JWKS_URL"];
    delete base["NODE_OPTIONS"];

    const simPort = await freePort();
    const sim = this.node(
      "simulator",
      "packages/llm-sim/dist/cli.js",
      [
        "--port",
        String(simPort),
        "--ttft-ms",
        "0",
        "--tokens-per-second",
        "0",
        "--latency-ms",
        "0",
      ],
      base,
    );
    const simUrl = `http://127.0.0.1:${simPort}`;

    const [authPort, jwksPort] = [await freePort(), await freePort()];
    this.#authEnv = {
      ...base,
      NODE_ENV: "development",
      AUTH_ADDR: `127.0.0.1:${authPort}`,
      AUTH_JWKS_PORT: String(jwksPort),
      MONGODB_DB: uniqueName("auth"),
      AUTH_ARGON2_MEMORY_KIB: "8192",
      AUTH_ARGON2_TIME_COST: "1",
    };
    const auth = this.node("auth", "services/auth/dist/src/main.js", [], this.#authEnv);
    const jwksUrl = `http://127.0.0.1:${jwksPort}/.well-known/jwks.json`;
    await sim.waitForLine(/listening/, 30_000);
    await waitForPort(auth, authPort);
    await waitForHttp(auth, jwksUrl);

    const registryPort = await freePort();
    const registry = this.node("registry", "services/registry/dist/src/main.js", [], {
      ...base,
      REGISTRY_ADDR: `127.0.0.1:${registryPort}`,
      JWKS_URL: jwksUrl,
      MONGODB_DB: uniqueName("registry"),
      INSTANCE_BUCKET: uniqueName("instances"),
      REGISTRY_SEED_DIR: join(repoRoot, "deploy/config"),
    });
    await waitForPort(registry, registryPort);

    const proxyPort = await freePort();
    const proxy = this.node("model-proxy", "services/model-proxy/dist/src/main.js", [], {
      ...base,
      MODEL_PROXY_ADDR: `127.0.0.1:${proxyPort}`,
      JWKS_URL: jwksUrl,
      AUTH_ADDR: `127.0.0.1:${authPort}`,
      REGISTRY_ADDR: `127.0.0.1:${registryPort}`,
      MONGODB_DB: uniqueName("modelproxy"),
      RATE_LIMIT_BUCKET: uniqueName("limits"),
      SPEND_BUCKET: uniqueName("spend"),
      CACHE_BUCKET: uniqueName("cache"),
      LLM_SIM_URL: `${simUrl}/v1`,
      ...opts.proxyEnv,
    });
    await waitForPort(proxy, proxyPort);

    return {
      base,
      simUrl,
      jwksUrl,
      authAddress: `127.0.0.1:${authPort}`,
      registryAddress: `127.0.0.1:${registryPort}`,
      proxyAddress: `127.0.0.1:${proxyPort}`,
    };
  }

  /** A service token from auth's own minting command (as deploy/ does at start-up). */
  async mintServiceToken(service: string): Promise<string> {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [join(repoRoot, "services/auth/dist/src/mint-service-token.js"), "--service", service],
      { env: this.#authEnv, timeout: 30_000 },
    );
    return stdout.trim();
  }

  /** Every process of the run, this one (the load generator) and the infrastructure included. */
  watched(): Watched[] {
    const out: Watched[] = [];
    for (const { name, proc } of this.#started)
      if (proc.pid !== undefined) out.push({ name, pid: proc.pid });
    out.push({ name: "bench (load generator)", pid: process.pid });
    const nats = this.#nats?.process.pid;
    if (nats !== undefined) out.push({ name: "nats-server", pid: nats, infrastructure: true });
    const mongo = this.#mongo;
    if (mongo?.process.pid !== undefined)
      out.push({ name: mongo.kind, pid: mongo.process.pid, infrastructure: true });
    return out;
  }

  /** The last output of every process it started (for BENCH_LOGS). */
  lastOutput(chars = 4_000): Array<{ name: string; text: string }> {
    return this.#started.map(({ name, proc }) => ({ name, text: proc.output(chars) }));
  }

  /** Last started first (a front end stops taking requests before what it calls), then the infrastructure. */
  async stop(): Promise<void> {
    for (const { proc } of [...this.#started].reverse())
      await proc.stop(15_000).catch(() => undefined);
    await this.#mongo?.stop().catch(() => undefined);
    await this.#nats?.stop().catch(() => undefined);
  }
}

/** Resolves once something accepts a TCP connection on the port. */
export async function waitForPort(
  proc: ServerProcess,
  port: number,
  timeoutMs = 90_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!proc.running) throw proc.failure("exited before it was ready");
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw proc.failure(`did not listen on ${port} within ${timeoutMs} ms`);
}

/** Resolves once the URL answers 2xx. */
export async function waitForHttp(
  proc: ServerProcess,
  url: string,
  timeoutMs = 90_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    if (!proc.running) throw proc.failure("exited before it was ready");
    try {
      const res = await fetch(url);
      last = `HTTP ${res.status}`;
      await res.arrayBuffer();
      if (res.ok) return;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await sleep(200);
  }
  throw proc.failure(`${url} not ready within ${timeoutMs} ms (last: ${last})`);
}

// ---------------------------------------------------------------- /proc

export function rssMb(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m?.[1] !== undefined ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** utime + stime of a process, in clock ticks (100 per second on Linux). */
export function cpuTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

/**
 * Ticks of the whole machine (every core): user+nice+system (process time), irq+softirq+steal
 * (interrupts, loopback packet processing, the hypervisor), and the total.
 */
export function machineTicks(): { process: number; other: number; total: number } {
  const n = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "")
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const at = (i: number) => n[i] ?? 0;
  return {
    process: at(0) + at(1) + at(2),
    other: at(5) + at(6) + at(7),
    total: n.slice(0, 8).reduce((s, x) => s + x, 0),
  };
}

export const loadText = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");
