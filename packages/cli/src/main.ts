#!/usr/bin/env node
// ensemble: the command line for an Ensemble gateway (see cli.ts; README.md for the commands).
import { run } from "./cli.js";

const code = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
});
process.exitCode = code;
