// A real auth service for integration tests: its own database on the test kit's MongoDB-wire
// server, its own JWKS endpoint on an ephemeral port, real gRPC on an ephemeral port.
//
// The server verifies callers against its OWN JWKS HTTP endpoint (as main.ts does by default),
// not through an in-process shortcut: the tests then cover the very document and path every
// other service and the gateway verify with, and a rotation is seen the way they see it (a
// refetch on the unknown kid; the cooldown is 0 here so tests need not wait).
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createNotices,
  type GrpcClient,
} from "@ensemble/kit";
import { create, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { AuthService, LoginRequestSchema } from "@ensemble/proto";
import { captureLogs, mongoUrl, natsUrl, uniqueName, type CapturedLogs } from "@ensemble/testkit";
import type { Connection } from "mongoose";
import { authModels, ensureIndexes, type AuthModels } from "../src/auth.model.js";
import { startJwksServer } from "../src/jwks-http.js";
import type { ThrottleOptions } from "../src/login-throttle.js";
import { createPasswordHasher } from "../src/secrets.js";
import { build } from "../src/server.js";
import { keyStoreFrom, settingsFrom } from "../src/setup.js";
import type { KeyStore } from "../src/signing-keys.js";

export interface Harness {
  address: string;
  jwksUrl: string;
  dbName: string;
  logs: CapturedLogs;
  mongo: Connection;
  models: AuthModels;
  keys: KeyStore;
  client(token?: string): GrpcClient<typeof AuthService>;
  /** A short-lived service token signed with auth's current key (what IssueServiceToken gives). */
  serviceToken(service: string): Promise<string>;
  close(): Promise<void>;
}

export async function startAuth(
  opts: { throttle?: Partial<ThrottleOptions> } = {},
): Promise<Harness> {
  const logs = captureLogs({ level: "debug" });
  const logger = logs.logger;
  const dbName = uniqueName("auth");
  const mongo = await connectMongo({ url: mongoUrl(), dbName, logger });
  const nc = await connectNats({ url: natsUrl(), name: "auth-test", logger });
  const models = authModels(mongo);
  await ensureIndexes(models);
  const settings = settingsFrom({
    AUTH_ACCESS_TOKEN_TTL_MINUTES: 15,
    AUTH_REFRESH_TOKEN_TTL_DAYS: 30,
  });
  const keys = keyStoreFrom(
    {
      NODE_ENV: "test",
      AUTH_KEY_ENCRYPTION_SECRET: "test-only-key-encryption-secret-0123456789",
      JWT_ISSUER: "ensemble-auth",
      JWT_AUDIENCE: "ensemble",
    },
    models,
    settings,
    logger,
  );
  await keys.ensureKey();
  const jwks = await startJwksServer(keys, { port: 0, logger });
  const server = build({
    version: "test",
    logger,
    verifier: createJwksVerifier({ jwksUrl: jwks.url, refetchCooldownMs: 0 }),
    models,
    keys,
    hasher: await createPasswordHasher({ memoryCost: 19_456, timeCost: 2 }),
    settings,
    notices: createNotices(nc, logger),
    throttle: {
      maxFailuresPerAccount: 5,
      maxFailuresPerAddress: 50,
      windowMs: 15 * 60_000,
      ...opts.throttle,
    },
  });
  const port = await server.listen("127.0.0.1:0");
  const address = `127.0.0.1:${port}`;
  return {
    address,
    jwksUrl: jwks.url,
    dbName,
    logs,
    mongo,
    models,
    keys,
    client: (token) =>
      createClient(AuthService, address, token === undefined ? {} : { token: () => token }),
    serviceToken: async (service) =>
      (await keys.sign({ sub: service, tid: "", roles: [], typ: "service", svc: service }, 60_000))
        .token,
    async close() {
      await server.shutdown({ timeoutMs: 2_000 });
      await jwks.close();
      await nc.drain();
      await mongo.dropDatabase().catch(() => undefined);
      await closeMongo(mongo);
    },
  };
}

/**
 * A Login over bare grpc-js, to read what the kit's client deliberately drops: the trailers
 * (retry-after-ms on RESOURCE_EXHAUSTED).
 */
export function rawLogin(
  address: string,
  req: { email: string; password: string },
): Promise<{ code: number; trailers: grpc.Metadata }> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      "/ensemble.auth.v1.AuthService/Login",
      (m: Uint8Array) => Buffer.from(m),
      (b: Buffer) => b,
      toBinary(LoginRequestSchema, create(LoginRequestSchema, req)),
      (err) => {
        client.close();
        if (err === null) reject(new Error("expected the login to fail"));
        else resolve({ code: err.code, trailers: err.metadata });
      },
    );
  });
}

/** The error a promise rejects with (fails the test when it resolves). */
export async function rejection(
  promise: Promise<unknown>,
): Promise<Error & { code?: number; rawMessage?: string; metadata?: Headers }> {
  try {
    await promise;
  } catch (err) {
    return err as Error & { code?: number; rawMessage?: string; metadata?: Headers };
  }
  throw new Error("expected the call to fail, but it succeeded");
}

let counter = 0;
/** A fresh email per test (users are unique across tenants). */
export function email(prefix: string): string {
  counter += 1;
  return `${prefix}.${process.pid}.${counter}.${Date.now().toString(36)}@example.test`;
}

/** The header of a JWT (kid). */
export function jwtHeader(token: string): { kid?: string; alg?: string } {
  const [head] = token.split(".");
  return JSON.parse(Buffer.from(head ?? "", "base64url").toString("utf8")) as { kid?: string };
}

export function jwtClaims(token: string): Record<string, unknown> {
  const part = token.split(".")[1] ?? "";
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as Record<string, unknown>;
}
