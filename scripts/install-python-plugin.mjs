#!/usr/bin/env node
// Sets up the Python plugin example (examples/plugins/python-wordstats): a virtual environment
// with the pinned requirements (grpcio, grpcio-tools, grpcio-health-checking, protobuf from
// PyPI), then Python code generated from the contracts in proto/ (the plugin protocol, the
// registry it registers with, and everything they import) into the example's gen/ directory.
// Prints the venv's python as the last line on stdout; progress goes to stderr.
//   node scripts/install-python-plugin.mjs [--quiet]
//
// Idempotent: the venv is reused while requirements.txt and the Python version are unchanged
// (a stamp file in the venv); the code is regenerated on every run (about a second), so it can
// never be stale and is not committed.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  note,
  progress,
  repoRoot,
  run,
  runCli,
  seconds,
  tail,
  ToolError,
  toolsDir,
  which,
} from "./lib/tools.mjs";

const example = join(repoRoot, "examples/plugins/python-wordstats");
const requirements = join(example, "requirements.txt");
/** The contracts the plugin uses; their imports are added by following `import` lines. */
const roots = ["ensemble/plugin/v1/plugin.proto", "ensemble/registry/v1/registry.proto"];

/** `$ENSEMBLE_PYTHON_VENV`, else beside the tools dir (outside the repository, reused by clones). */
function venvDir() {
  return process.env.ENSEMBLE_PYTHON_VENV ?? join(dirname(toolsDir()), "python-plugin-venv");
}

/** @returns {Promise<string>} the system python3 */
async function findPython() {
  const python = process.env.PYTHON ?? which("python3");
  if (python === undefined) {
    throw new ToolError(
      "python3 is not on PATH: the Python plugin example needs Python 3.9 or newer " +
        "(Debian: apt-get install python3 python3-venv), or set PYTHON to an interpreter",
    );
  }
  const res = await run(python, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]);
  const [major, minor] = res.stdout.trim().split(".").map(Number);
  if (res.code !== 0 || major !== 3 || (minor ?? 0) < 9) {
    throw new ToolError(`${python} is not Python 3.9 or newer (${res.stdout.trim() || "?"})`);
  }
  return python;
}

/**
 * `python -m venv`; on Debian without the venv module (python3-venv) and as root, installs it.
 * @param {string} python @param {string} dir
 */
async function createVenv(python, dir) {
  let res = await run(python, ["-m", "venv", "--clear", dir], { timeoutMs: 120_000 });
  if (res.code !== 0 && /ensurepip|venv/.test(res.stdout + res.stderr)) {
    const root = process.getuid?.() === 0;
    if (!root || which("apt-get") === undefined) {
      throw new ToolError(
        `${python} cannot create a virtual environment (the venv module is missing); ` +
          "install it (Debian: apt-get install python3-venv) and run this again",
      );
    }
    progress("installing python3-venv with apt-get (the venv module is missing)");
    await run("apt-get", ["update", "-q"], { timeoutMs: 300_000 });
    const apt = await run("apt-get", ["install", "-y", "-q", "python3-venv"], {
      timeoutMs: 300_000,
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
    if (apt.code !== 0) {
      throw new ToolError(`apt-get install python3-venv failed:\n${tail(apt.stdout + apt.stderr)}`);
    }
    res = await run(python, ["-m", "venv", "--clear", dir], { timeoutMs: 120_000 });
  }
  if (res.code !== 0) {
    throw new ToolError(`${python} -m venv ${dir} failed:\n${tail(res.stdout + res.stderr)}`);
  }
}

/** @param {string} python @returns {Promise<string>} the venv's python */
async function ensureVenv(python) {
  const dir = venvDir();
  const venvPython = join(dir, "bin", "python");
  const version = (await run(python, ["--version"])).stdout.trim();
  const stamp = createHash("sha256")
    .update(readFileSync(requirements))
    .update(version)
    .digest("hex");
  const stampFile = join(dir, "ensemble.sha256");
  if (existsSync(venvPython) && existsSync(stampFile)) {
    if (readFileSync(stampFile, "utf8").trim() === stamp) {
      note(`using ${dir}`);
      return venvPython;
    }
  }
  const start = performance.now();
  progress(`creating the Python plugin venv in ${dir} (pip install -r ${requirements})`);
  mkdirSync(dirname(dir), { recursive: true });
  rmSync(stampFile, { force: true });
  await createVenv(python, dir);
  const pip = await run(
    venvPython,
    ["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", requirements],
    { timeoutMs: 600_000 },
  );
  if (pip.code !== 0) {
    throw new ToolError(`pip install failed:\n${tail(pip.stdout + pip.stderr)}`);
  }
  writeFileSync(stampFile, stamp + "\n");
  progress(`Python plugin venv ready (${seconds(start)})`);
  return venvPython;
}

/**
 * The root contracts and every file they import (transitively), except protobuf's own.
 * @returns {string[]}
 */
function contracts() {
  /** @type {Set<string>} */
  const out = new Set();
  const queue = [...roots];
  while (queue.length > 0) {
    const file = /** @type {string} */ (queue.shift());
    if (out.has(file)) continue;
    out.add(file);
    const text = readFileSync(join(repoRoot, "proto", file), "utf8");
    for (const m of text.matchAll(/^import\s+(?:public\s+)?"([^"]+)";/gm)) {
      const dep = m[1] ?? "";
      if (!dep.startsWith("google/protobuf/")) queue.push(dep);
    }
  }
  return [...out].sort();
}

/** @param {string} venvPython */
async function generate(venvPython) {
  const wkt = await run(venvPython, [
    "-c",
    "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))",
  ]);
  if (wkt.code !== 0) throw new ToolError(`grpc_tools is missing:\n${tail(wkt.stderr)}`);
  const target = join(example, "gen");
  const tmp = `${target}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const files = contracts();
  const res = await run(
    venvPython,
    [
      "-m",
      "grpc_tools.protoc",
      `-I${join(repoRoot, "proto")}`,
      `-I${wkt.stdout.trim()}`,
      `--python_out=${tmp}`,
      `--pyi_out=${tmp}`,
      `--grpc_python_out=${tmp}`,
      ...files,
    ],
    { cwd: repoRoot, timeoutMs: 120_000 },
  );
  if (res.code !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new ToolError(`grpc_tools.protoc failed:\n${tail(res.stdout + res.stderr)}`);
  }
  rmSync(target, { recursive: true, force: true });
  renameSync(tmp, target);
  note(`generated ${files.length} contracts into ${target}`);
}

runCli(async () => {
  const python = await findPython();
  const venvPython = await ensureVenv(python);
  await generate(venvPython);
  process.stdout.write(venvPython + "\n");
});
