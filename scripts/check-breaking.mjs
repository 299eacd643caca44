// `buf breaking` against the contracts of the last landed release of main, named by the commit
// in proto/BREAKING_BASELINE. A deliberate breaking change updates that file in the same
// change, so it is visible in review; without a baseline (before the first landing) the check
// says so and passes.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";

const repo = new URL("..", import.meta.url).pathname;
const file = new URL("../proto/BREAKING_BASELINE", import.meta.url).pathname;
const baseline = existsSync(file) ? readFileSync(file, "utf8").trim() : "";
if (!/^[0-9a-f]{7,40}$/.test(baseline)) {
  console.log("buf breaking: no baseline commit in proto/BREAKING_BASELINE yet; skipped");
  process.exit(0);
}
// buf clones the repository without the full history, where an abbreviated hash resolves to
// nothing: it gets the full one.
let commit;
try {
  commit = execFileSync("git", ["rev-parse", "--verify", `${baseline}^{commit}`], {
    cwd: repo,
    encoding: "utf8",
  }).trim();
} catch {
  console.error(`buf breaking: baseline ${baseline} is not in this clone's history`);
  process.exit(1);
}
execFileSync("buf", ["breaking", "--against", `.git#ref=${commit}`], {
  cwd: repo,
  stdio: "inherit",
});
console.log(`buf breaking: no breaking change against ${baseline}`);
