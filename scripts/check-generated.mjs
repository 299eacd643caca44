// Fails when the committed generated code (packages/proto/src/gen and its barrel) differs from
// what `npm run generate` would produce now, so a contract change can't land without its code.
// Generates into a temporary directory; the work tree is never touched.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

const repo = new URL("..", import.meta.url).pathname;
const committed = join(repo, "packages/proto/src/gen");
const out = mkdtempSync(join(tmpdir(), "ensemble-gen-"));

/** @param {string} dir @returns {string[]} */
function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

try {
  execFileSync("buf", ["generate", "-o", out], { cwd: repo, stdio: "inherit" });
  const fresh = join(out, "packages/proto/src/gen");
  const a = new Set(files(committed).map((f) => relative(committed, f)));
  const b = new Set(files(fresh).map((f) => relative(fresh, f)));
  const stale = [...new Set([...a, ...b])].filter(
    (f) =>
      !a.has(f) ||
      !b.has(f) ||
      !readFileSync(join(committed, f)).equals(readFileSync(join(fresh, f))),
  );
  if (stale.length > 0) {
    console.error("Generated code is stale; run `npm run generate` and commit. Differs:");
    for (const f of stale.sort()) console.error(`  packages/proto/src/gen/${f}`);
    process.exit(1);
  }
  console.log(`generated code is up to date (${a.size} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
