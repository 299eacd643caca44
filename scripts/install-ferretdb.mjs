#!/usr/bin/env node
// Makes sure a MongoDB-wire server is available: `mongod` on PATH wins, else FerretDB built from
// scripts/ferretdb into the tools dir (rebuilt when those sources change). Prints the binary's
// path as the last line on stdout; progress goes to stderr.
// `--quiet` hides the routine "using …" lines (builds and errors are always reported).
import { ensureMongoServer } from "./lib/mongo-server.mjs";
import { runCli } from "./lib/tools.mjs";

runCli(async () => {
  const server = await ensureMongoServer();
  process.stdout.write(server.path + "\n");
});
