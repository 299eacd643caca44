// grpc.health.v1.Health/Check from the launcher, with grpc-js and the generated health types.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "@ensemble/proto";

/**
 * Health of the whole server (service ""): "SERVING", "NOT_SERVING", … or the gRPC error text.
 * @param {grpc.Client} client
 * @param {number} timeoutMs
 * @returns {Promise<string>}
 */
export function checkHealth(client, timeoutMs) {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (/** @type {import("@ensemble/proto").HealthCheckRequest} */ req) =>
        Buffer.from(toBinary(HealthCheckRequestSchema, req)),
      (/** @type {Buffer} */ bytes) => fromBinary(HealthCheckResponseSchema, bytes),
      create(HealthCheckRequestSchema, { service: "" }),
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err, res) => {
        if (err) resolve(err.details || err.message);
        else resolve(ServingStatus[res?.status ?? ServingStatus.UNKNOWN] ?? "UNKNOWN");
      },
    );
  });
}

/**
 * Polls until the server says SERVING; rejects with the last answer after `timeoutMs`, or as
 * soon as `alive()` turns false.
 * @param {string} address @param {number} timeoutMs @param {() => boolean} alive
 */
export async function waitForServing(address, timeoutMs, alive) {
  // Short reconnect backoff: the first attempts usually come before the server listens.
  const client = new grpc.Client(address, grpc.credentials.createInsecure(), {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 500,
  });
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  try {
    while (Date.now() < deadline && alive()) {
      last = await checkHealth(client, 1_000);
      if (last === "SERVING") return;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  } finally {
    client.close();
  }
  if (!alive()) throw new Error("exited");
  throw new Error(`not SERVING after ${timeoutMs} ms (last health answer: ${last})`);
}
