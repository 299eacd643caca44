#!/usr/bin/env node
// Makes sure a nats-server >= 2.11 is available (PATH, else the tools dir, else `go install`) and
// prints its path as the last line on stdout; progress goes to stderr.
// `--quiet` hides the routine "using …" lines (builds and errors are always reported).
//   node scripts/install-nats.mjs            # e.g. NATS=$(node scripts/install-nats.mjs)
import { ensureNatsServer } from "./lib/nats-server.mjs";
import { runCli } from "./lib/tools.mjs";

runCli(async () => {
  const path = await ensureNatsServer();
  process.stdout.write(path + "\n");
});
