// The container health check (deploy/docker/healthcheck.mjs) that docker compose relies on:
// healthy only when grpc.health.v1 says SERVING (or the HTTP URL answers 200).
import { execFile } from "node:child_process";
import { createServer as createHttpServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createJwksVerifier, createServer, type KitServer } from "@ensemble/kit";
import { captureLogs, createTestIssuer, freePort } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "../docker/healthcheck.mjs");

function check(...args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [SCRIPT, ...args], { timeout: 15_000 }, (err, _stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : -1;
      resolve({ code, stderr });
    });
  });
}

let server: KitServer;
let address: string;
let http: Server;
let httpStatus = 200;

beforeAll(async () => {
  const issuer = await createTestIssuer();
  server = createServer({
    name: "probe-target",
    version: "test",
    logger: captureLogs({ level: "warn" }).logger,
    verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
    services: [],
  });
  address = `127.0.0.1:${await server.listen("127.0.0.1:0")}`;
  http = createHttpServer((_req, res) => res.writeHead(httpStatus).end());
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
});

afterAll(async () => {
  await server?.shutdown({ timeoutMs: 1_000 });
  http?.close();
});

describe("container health check", () => {
  it("deploy - grpc: healthy while SERVING, unhealthy once NOT_SERVING or unreachable", async () => {
    expect(await check("grpc", address)).toEqual({ code: 0, stderr: "" });
    server.setServing(false);
    const down = await check("grpc", address);
    expect(down.code).toBe(1);
    expect(down.stderr).toContain("not SERVING");
    server.setServing(true);
    expect((await check("grpc", `127.0.0.1:${await freePort()}`)).code).toBe(1);
  }, 30_000);

  it("deploy - http: healthy on 200 only; bad usage is unhealthy", async () => {
    const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/ready`;
    expect((await check("http", url)).code).toBe(0);
    httpStatus = 503;
    const down = await check("http", url);
    expect(down).toEqual({ code: 1, stderr: "unhealthy: HTTP 503\n" });
    expect((await check("tcp")).stderr).toContain("usage");
  }, 30_000);
});
