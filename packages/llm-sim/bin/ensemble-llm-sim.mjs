#!/usr/bin/env node
// npm links a workspace's bin when it installs, before anything is built, and skips a bin whose
// file does not exist yet; so the bin is this committed file, which runs the build's output.
import { existsSync } from "node:fs";

const main = new URL("../dist/cli.js", import.meta.url);
if (!existsSync(main)) {
  console.error("ensemble-llm-sim is not built yet: run `npm run build` at the repository root");
  process.exit(1);
}
await import(main.href);
