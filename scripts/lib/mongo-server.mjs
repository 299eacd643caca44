// Finds or builds the local MongoDB-wire server: `mongod` on PATH when there is one, otherwise
// FerretDB (SQLite backend) built from the small wrapper in scripts/ferretdb. We wrap FerretDB's
// embeddable package because a module-proxy build of its own cmd/ferretdb has no version stamp
// and refuses to start. scripts/ferretdb/patches.json lists small fixes applied to FerretDB's
// vendored sources at build time (the module cache stays untouched); each says why.
import { performance } from "node:perf_hooks";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import {
  ToolError,
  goVersion,
  note,
  progress,
  repoRoot,
  run,
  seconds,
  tail,
  toolsDir,
  which,
} from "./tools.mjs";

export const ferretdbSourceDir = join(repoRoot, "scripts", "ferretdb");
const SOURCES = ["go.mod", "go.sum", "main.go", "patches.json"];

/**
 * @typedef {{ kind: "mongod" | "ferretdb"; path: string }} MongoServer
 */

/**
 * What kind of server a path is, from its file name (the installer prints only the path).
 * @param {string} path
 * @returns {MongoServer["kind"]}
 */
export function mongoServerKind(path) {
  return basename(path) === "mongod" ? "mongod" : "ferretdb";
}

/** sha256 of the wrapper's sources: a binary built from other sources is rebuilt. */
export async function ferretdbSourceHash() {
  const hash = createHash("sha256");
  for (const name of SOURCES) {
    hash.update(name + "\0");
    hash.update(await readFile(join(ferretdbSourceDir, name)));
  }
  return hash.digest("hex");
}

/**
 * @param {{ env?: NodeJS.ProcessEnv }} [opts]
 * @returns {Promise<MongoServer>}
 */
export async function ensureMongoServer(opts = {}) {
  const env = opts.env ?? process.env;
  const mongod = which("mongod", env);
  if (mongod) {
    note(`mongodb: using mongod from PATH (${mongod}) instead of FerretDB`);
    return { kind: "mongod", path: mongod };
  }

  const dir = toolsDir(env);
  const binary = join(dir, "ferretdb");
  const stamp = binary + ".sha256";
  const want = await ferretdbSourceHash();
  if (existsSync(binary)) {
    const have = await readFile(stamp, "utf8").then(
      (text) => text.trim(),
      () => "",
    );
    if (have === want) {
      note(`mongodb: no mongod on PATH; using FerretDB ${binary}`);
      return { kind: "ferretdb", path: binary };
    }
    progress(`mongodb: ${binary} was built from other sources than scripts/ferretdb; rebuilding`);
  }

  const go = await goVersion();
  if (!go) {
    throw new ToolError(
      "no mongod on PATH and Go is not installed to build FerretDB: install Go (apt-get install golang) " +
        "or MongoDB, or set MONGODB_URL to a running server",
    );
  }
  await mkdir(dir, { recursive: true });
  // Build to a temporary name and rename, so that a concurrent run never starts a partial file.
  const scratch = `${binary}.tmp-${process.pid}`;
  const start = performance.now();
  progress(
    `mongodb: no mongod on PATH; building FerretDB from scripts/ferretdb with go build ` +
      `(${go}; about 3 minutes on a fresh machine, seconds when Go's cache is warm) into ${dir}…`,
  );
  const sources = `${binary}.src-${process.pid}`;
  try {
    await patchedSources(sources, env);
    const res = await run("go", ["build", "-mod=vendor", "-o", scratch, "."], {
      cwd: sources,
      env,
      timeoutMs: 20 * 60_000,
    });
    if (res.code !== 0) {
      throw new ToolError(
        `FerretDB: go build failed (exit ${res.code ?? res.signal}):\n${tail(res.stderr + res.stdout)}\n` +
          "Fix the Go setup, put mongod on PATH, or set MONGODB_URL.",
      );
    }
    await rename(scratch, binary);
    await writeFile(stamp, want + "\n");
  } finally {
    await rm(scratch, { force: true });
    await rm(sources, { recursive: true, force: true });
  }
  progress(`mongodb: built FerretDB in ${seconds(start)}: ${binary}`);
  return { kind: "ferretdb", path: binary };
}

/**
 * A copy of scripts/ferretdb in `dir` with its dependencies vendored and the patches of
 * scripts/ferretdb/patches.json applied to the vendored FerretDB (Go refuses to overlay files in
 * the module cache, and the cache must stay pristine). A patch whose text is not found exactly
 * once fails the build: the module changed under it.
 * @param {string} dir
 * @param {NodeJS.ProcessEnv} env
 */
async function patchedSources(dir, env) {
  await mkdir(dir, { recursive: true });
  for (const name of ["go.mod", "go.sum", "main.go"]) {
    await writeFile(join(dir, name), await readFile(join(ferretdbSourceDir, name)));
  }
  const vendor = await run("go", ["mod", "vendor"], { cwd: dir, env, timeoutMs: 15 * 60_000 });
  if (vendor.code !== 0) {
    throw new ToolError(`FerretDB: go mod vendor failed:\n${tail(vendor.stderr + vendor.stdout)}`);
  }
  /** @type {unknown} */
  const parsed = JSON.parse(await readFile(join(ferretdbSourceDir, "patches.json"), "utf8"));
  const patches = /** @type {{ file: string; find: string; replace: string; why: string }[]} */ (
    parsed
  );
  for (const [i, patch] of patches.entries()) {
    const file = join(dir, "vendor", "github.com", "FerretDB", "FerretDB", patch.file);
    const text = await readFile(file, "utf8");
    const at = text.indexOf(patch.find);
    if (at < 0 || text.indexOf(patch.find, at + 1) >= 0) {
      throw new ToolError(
        `FerretDB: patch ${i + 1} (${patch.file}) does not apply: its text is not found exactly once`,
      );
    }
    await writeFile(file, text.replace(patch.find, patch.replace));
  }
}
