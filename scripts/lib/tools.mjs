// Shared helpers for the installers, the launcher and the token minter: where local tools live,
// how to run a command and keep its output for an error message, and how to find a binary on PATH.
import { performance } from "node:perf_hooks";
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file is scripts/lib/tools.mjs). */
export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Where installers put the binaries they build: `$ENSEMBLE_BIN_DIR`, else
 * `${XDG_CACHE_HOME:-$HOME/.cache}/ensemble/bin`. Outside the repository so that a fresh clone
 * (and CI's) reuses what an earlier run built.
 * @param {NodeJS.ProcessEnv} [env]
 */
export function toolsDir(env = process.env) {
  if (env.ENSEMBLE_BIN_DIR) return env.ENSEMBLE_BIN_DIR;
  const cache = env.XDG_CACHE_HOME || join(homedir(), ".cache");
  return join(cache, "ensemble", "bin");
}

/** An error whose message is meant for a person; the CLIs print only its message. */
export class ToolError extends Error {
  /** @param {string} message @param {{ cause?: unknown }} [opts] */
  constructor(message, opts) {
    super(message, opts);
    this.name = "ToolError";
  }
}

// `--quiet` (the test kit passes it) hides the routine "using …" lines but never a build or an error.
const quiet = process.argv.includes("--quiet");

/**
 * Progress goes to stderr so that stdout carries only the result (a path, a token).
 * @param {string} message
 */
export function progress(message) {
  process.stderr.write(message + "\n");
}

/**
 * A routine line ("using /path"), hidden by `--quiet`.
 * @param {string} message
 */
export function note(message) {
  if (!quiet) progress(message);
}

/**
 * Absolute path of an executable on PATH, or undefined.
 * @param {string} name
 * @param {NodeJS.ProcessEnv} [env]
 */
export function which(name, env = process.env) {
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/**
 * @typedef {{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }} RunResult
 */

/**
 * Runs a command to completion and collects its output. Rejects only when it cannot be started
 * (ENOENT etc.); the caller decides what a non-zero exit means.
 * @param {string} command
 * @param {string[]} args
 * @param {{ cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }} [opts]
 * @returns {Promise<RunResult>}
 */
export function run(command, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += String(chunk)));
    child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += String(chunk)));
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs);
    child.on("error", (err) => {
      if (timer) clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * The last lines of a command's output, for an error message.
 * @param {string} text
 * @param {number} [n]
 */
export function tail(text, n = 15) {
  return text.trimEnd().split("\n").slice(-n).join("\n");
}

/**
 * The installed Go version ("go1.26.8"), or undefined when `go` cannot be run.
 * @returns {Promise<string | undefined>}
 */
export async function goVersion() {
  try {
    const res = await run("go", ["version"], { timeoutMs: 15_000 });
    if (res.code !== 0) return undefined;
    return /go version (\S+)/.exec(res.stdout)?.[1] ?? "unknown";
  } catch {
    return undefined;
  }
}

/**
 * Seconds since `start` (a `performance.now()` value), for progress lines.
 * @param {number} start
 */
export function seconds(start) {
  return `${((performance.now() - start) / 1000).toFixed(1)} s`;
}

/**
 * Runs a CLI's main function: prints a ToolError's message alone (it is written for people),
 * anything else with its stack, and exits 1.
 * @param {() => Promise<void>} main
 */
export function runCli(main) {
  main().catch((/** @type {unknown} */ err) => {
    if (err instanceof ToolError) process.stderr.write(`error: ${err.message}\n`);
    else
      process.stderr.write(
        `error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
    process.exit(1);
  });
}
