#!/usr/bin/env node
import { parseArgs } from "node:util";
import type { ModelProfile } from "./models.js";
import { startSimulator } from "./server.js";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: process.env["LLM_SIM_PORT"] ?? "8090" },
    host: { type: "string", default: process.env["LLM_SIM_HOST"] ?? "127.0.0.1" },
    // Defaults for every model (over the built-in profiles), e.g. `--ttft-ms 0
    // --tokens-per-second 0` for a simulator that answers at once (benchmarks).
    "latency-ms": { type: "string" },
    "ttft-ms": { type: "string" },
    "tokens-per-second": { type: "string" },
    help: { type: "boolean", default: false },
  },
});

if (values.help) {
  console.log(
    "Usage: ensemble-llm-sim [--port 8090] [--host 127.0.0.1] [--latency-ms N] [--ttft-ms N] [--tokens-per-second N]\n" +
      "  --latency-ms, --ttft-ms, --tokens-per-second set that field of every model's profile (0 = no delay).",
  );
  process.exit(0);
}
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`ensemble-llm-sim: invalid --port ${values.port}`);
  process.exit(2);
}

function nonNegative(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n < 0) {
    console.error(`ensemble-llm-sim: invalid --${flag} ${value} (a number >= 0)`);
    process.exit(2);
  }
  return n;
}
const latencyMs = nonNegative("latency-ms", values["latency-ms"]);
const ttftMs = nonNegative("ttft-ms", values["ttft-ms"]);
const tokensPerSecond = nonNegative("tokens-per-second", values["tokens-per-second"]);
const defaults: Partial<ModelProfile> = {
  ...(latencyMs !== undefined ? { latencyMs } : {}),
  ...(ttftMs !== undefined ? { ttftMs } : {}),
  ...(tokensPerSecond !== undefined ? { tokensPerSecond } : {}),
};

const sim = await startSimulator({ port, host: values.host, defaults });
console.log(`ensemble-llm-sim listening on ${sim.url}`);
const stop = (): void => {
  sim.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
