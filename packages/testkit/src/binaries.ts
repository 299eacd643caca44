// The test kit does not know how to find or build nats-server and FerretDB: the installers in
// scripts/ do (the same ones `npm run setup` and the launcher use). It runs them once per process
// and reads the binary path from the last line of their stdout; their progress ("building
// nats-server … about a minute") passes through to stderr so a slow first run explains itself.
import { spawn } from "node:child_process";
import { basename } from "node:path";
import { fileURLToPath } from "node:url";

// src/ and dist/ both sit at packages/testkit/<dir>/, so the repository root is three levels up.
const scriptsDir = fileURLToPath(new URL("../../../scripts/", import.meta.url));

export type Installer = "install-nats.mjs" | "install-ferretdb.mjs";

const cache = new Map<Installer, Promise<string>>();

/** Path of the binary an installer resolves (installing it first when needed), once per process. */
export function installedBinary(installer: Installer): Promise<string> {
  let pending = cache.get(installer);
  if (!pending) {
    pending = runInstaller(installer);
    cache.set(installer, pending);
    // A failed install may succeed later (e.g. after the network comes back): do not cache it.
    pending.catch(() => cache.delete(installer));
  }
  return pending;
}

/** "mongod" or "ferretdb", from the path install-ferretdb.mjs printed. */
export function mongoKind(path: string): "mongod" | "ferretdb" {
  return basename(path) === "mongod" ? "mongod" : "ferretdb";
}

function runInstaller(installer: Installer): Promise<string> {
  const script = scriptsDir + installer;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, "--quiet"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
      process.stderr.write(chunk);
    });
    child.on("error", reject);
    child.on("close", (code) => {
      const path = stdout.trim().split("\n").pop()?.trim();
      if (code === 0 && path) resolve(path);
      else {
        const why = stderr.trim().split("\n").slice(-10).join("\n");
        reject(new Error(`node scripts/${installer} failed (exit ${code}):\n${why}`));
      }
    });
  });
}
