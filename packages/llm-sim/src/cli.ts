#!/usr/bin/env node
import { parseArgs } from "node:util";
import { startSimulator } from "./server.js";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: process.env["LLM_SIM_PORT"] ?? "8090" },
    host: { type: "string", default: process.env["LLM_SIM_HOST"] ?? "127.0.0.1" },
    help: { type: "boolean", default: false },
  },
});

if (values.help) {
  console.log("Usage: ensemble-llm-sim [--port 8090] [--host 127.0.0.1]");
  process.exit(0);
}
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`ensemble-llm-sim: invalid --port ${values.port}`);
  process.exit(2);
}

const sim = await startSimulator({ port, host: values.host });
console.log(`ensemble-llm-sim listening on ${sim.url}`);
const stop = (): void => {
  sim.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
