#!/usr/bin/env node
// ensemble: the command line for an Ensemble gateway (see cli.ts; README.md for the commands).
import { run } from "./cli.js";

// A reader that stops early (`ensemble runs list | head`) closes the pipe: stop quietly with
// success instead of dying on an unhandled EPIPE. A closed stderr only loses the diagnostics:
// the command goes on and still exits with its own code (a failure must not turn into 0).
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
process.stderr.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code !== "EPIPE") throw err;
});

const code = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
});
process.exitCode = code;
