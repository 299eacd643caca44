#!/usr/bin/env node
// Container health check without extra binaries (no grpc_health_probe in the image):
//   healthcheck.mjs grpc 127.0.0.1:50051 [service]   grpc.health.v1.Health/Check == SERVING
//   healthcheck.mjs http http://127.0.0.1:8080/ready  200
// Exits 0 when healthy, 1 otherwise (with the reason on stderr).
/* global fetch, AbortSignal */
import grpc from "@grpc/grpc-js";

const [kind, target, service = ""] = process.argv.slice(2);
const TIMEOUT_MS = 3_000;

/**
 * HealthCheckRequest { string service = 1; } encoded by hand: no generated code needed.
 * @param {string} name
 * @returns {Buffer}
 */
function encodeRequest(name) {
  const bytes = Buffer.from(name, "utf8");
  if (bytes.length === 0) return Buffer.alloc(0);
  if (bytes.length > 127) throw new Error("service name too long");
  return Buffer.concat([Buffer.from([0x0a, bytes.length]), bytes]);
}

/**
 * HealthCheckResponse { ServingStatus status = 1; } -> the status number (0 when absent).
 * @param {Buffer} buf
 * @returns {number}
 */
function decodeStatus(buf) {
  return buf.length >= 2 && buf[0] === 0x08 ? (buf[1] ?? 0) : 0;
}

/** @param {string} address @returns {Promise<void>} */
function checkGrpc(address) {
  return new Promise((resolve, reject) => {
    const client = new grpc.Client(address, grpc.credentials.createInsecure());
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (/** @type {Buffer} */ value) => value,
      (/** @type {Buffer} */ value) => value,
      encodeRequest(service),
      new grpc.Metadata(),
      { deadline: Date.now() + TIMEOUT_MS },
      (err, response) => {
        client.close();
        if (err) reject(new Error(err.details || err.message));
        else if (response === undefined || decodeStatus(response) !== 1)
          reject(new Error(`status ${response ? decodeStatus(response) : "none"}, not SERVING`));
        else resolve();
      },
    );
  });
}

/** @param {string} url */
async function checkHttp(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
}

try {
  if (kind === "grpc" && target) await checkGrpc(target);
  else if (kind === "http" && target) await checkHttp(target);
  else throw new Error("usage: healthcheck.mjs grpc <host:port> [service] | http <url>");
  process.exit(0);
} catch (err) {
  process.stderr.write(`unhealthy: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
