// Finds or installs nats-server >= 2.11 (the registry's KV heartbeats rely on per-message TTLs and
// subject delete markers, which older servers do not have; Debian ships 2.9).
import { performance } from "node:perf_hooks";
import { mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import {
  ToolError,
  goVersion,
  note,
  progress,
  run,
  seconds,
  tail,
  toolsDir,
  which,
} from "./tools.mjs";

/** The release `go install` builds when no suitable nats-server is found. */
export const NATS_SERVER_VERSION = "v2.15.3";
/** The oldest release we accept. */
export const NATS_SERVER_MIN = /** @type {const} */ ([2, 11]);

/**
 * The version a nats-server binary reports ("2.9.10"), or undefined if it cannot be run.
 * @param {string} path
 * @returns {Promise<string | undefined>}
 */
export async function natsServerVersion(path) {
  try {
    const res = await run(path, ["--version"], { timeoutMs: 10_000 });
    return /v?(\d+\.\d+\.\d+)/.exec(res.stdout + res.stderr)?.[1];
  } catch {
    return undefined;
  }
}

/** @param {string | undefined} version */
function recentEnough(version) {
  if (!version) return false;
  const [major = 0, minor = 0] = version.split(".").map(Number);
  return (
    major > NATS_SERVER_MIN[0] || (major === NATS_SERVER_MIN[0] && minor >= NATS_SERVER_MIN[1])
  );
}

/**
 * Path of a usable nats-server: PATH if recent enough, else the tools-dir copy, else built with
 * `go install` into the tools dir. Progress goes to stderr.
 * @param {{ env?: NodeJS.ProcessEnv }} [opts]
 * @returns {Promise<string>}
 */
export async function ensureNatsServer(opts = {}) {
  const env = opts.env ?? process.env;
  const min = NATS_SERVER_MIN.join(".");
  const onPath = which("nats-server", env);
  if (onPath) {
    const version = await natsServerVersion(onPath);
    if (recentEnough(version)) {
      note(`nats-server: using ${onPath} (v${version})`);
      return onPath;
    }
    note(
      `nats-server: ${onPath} is v${version ?? "?"}, older than the ${min} we need; looking in the tools dir`,
    );
  }

  const dir = toolsDir(env);
  const local = join(dir, "nats-server");
  if (existsSync(local)) {
    const version = await natsServerVersion(local);
    if (recentEnough(version)) {
      note(`nats-server: using ${local} (v${version})`);
      return local;
    }
    progress(`nats-server: ${local} is v${version ?? "?"} (unusable); rebuilding`);
  }

  const go = await goVersion();
  if (!go) {
    throw new ToolError(
      `nats-server ${min} or newer is not installed and Go is not installed to build it: ` +
        `install Go (apt-get install golang) or nats-server >= ${min}, or set NATS_URL to a running server`,
    );
  }
  await mkdir(dir, { recursive: true });
  // Build into a scratch GOBIN and rename: a concurrent run never sees a half-written binary.
  const scratch = await mkdtemp(join(dir, ".nats-server-"));
  const start = performance.now();
  progress(
    `nats-server: building ${NATS_SERVER_VERSION} with go install (${go}; about a minute on a fresh machine) into ${dir}…`,
  );
  try {
    const res = await run(
      "go",
      ["install", `github.com/nats-io/nats-server/v2@${NATS_SERVER_VERSION}`],
      {
        env: { ...env, GOBIN: scratch },
        timeoutMs: 15 * 60_000,
      },
    );
    if (res.code !== 0) {
      throw new ToolError(
        `nats-server: go install failed (exit ${res.code ?? res.signal}):\n${tail(res.stderr + res.stdout)}\n` +
          `Fix the Go setup, install nats-server >= ${min} yourself, or set NATS_URL.`,
      );
    }
    await rename(join(scratch, "nats-server"), local);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  const version = await natsServerVersion(local);
  progress(`nats-server: built v${version ?? "?"} in ${seconds(start)}: ${local}`);
  return local;
}
