// A real registry for integration tests: its own database and KV bucket on the test kit's
// NATS and MongoDB-wire servers, tokens from a test issuer whose JWKS it trusts, real gRPC on
// an ephemeral port.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createNotices,
  type GrpcClient,
  type NatsConnection,
} from "@ensemble/kit";
import { Health, RegistryService } from "@ensemble/proto";
import {
  captureLogs,
  createTestIssuer,
  mongoUrl,
  natsUrl,
  uniqueName,
  type CapturedLogs,
  type TestIssuer,
} from "@ensemble/testkit";
import type { Connection } from "mongoose";
import { createCatalog, type Catalog } from "../src/catalog-service.js";
import { ensureIndexes, registryModels } from "../src/catalog.model.js";
import { InstanceStore } from "../src/instances.js";
import { loadSeeds, type SeedResult } from "../src/seed.js";
import { build, type RegistryServer } from "../src/server.js";

export interface Harness {
  address: string;
  issuer: TestIssuer;
  logs: CapturedLogs;
  mongo: Connection;
  nc: NatsConnection;
  instances: InstanceStore;
  catalog: Catalog;
  server: RegistryServer;
  /** A client calling with this token (none: no authorization header). */
  client(token?: string): GrpcClient<typeof RegistryService>;
  health(): GrpcClient<typeof Health>;
  adminToken(tenantId: string): Promise<string>;
  userToken(tenantId: string): Promise<string>;
  serviceToken(service: string): Promise<string>;
  seed(dir: string): Promise<SeedResult[]>;
  close(): Promise<void>;
}

export async function startRegistry(
  opts: { instanceTtlMs?: number; pluginTtlMs?: number } = {},
): Promise<Harness> {
  const logs = captureLogs({ level: "info" });
  const logger = logs.logger;
  const issuer = await createTestIssuer();
  const [mongo, nc] = await Promise.all([
    connectMongo({ url: mongoUrl(), dbName: uniqueName("registry"), logger }),
    connectNats({ url: natsUrl(), name: "registry-test", logger }),
  ]);
  const instances = await InstanceStore.open(nc, {
    bucket: uniqueName("instances"),
    ttlMs: opts.instanceTtlMs ?? 15_000,
    logger,
  });
  const models = registryModels(mongo);
  await ensureIndexes(models);
  const catalog = createCatalog(models);
  const server = build({
    version: "test",
    logger,
    verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
    mongo,
    instances,
    notices: createNotices(nc, logger),
    ...(opts.pluginTtlMs !== undefined ? { pluginTtlMs: opts.pluginTtlMs } : {}),
  });
  const port = await server.listen("127.0.0.1:0");
  const address = `127.0.0.1:${port}`;
  return {
    address,
    issuer,
    logs,
    mongo,
    nc,
    instances,
    catalog,
    server,
    client: (token) =>
      createClient(RegistryService, address, token === undefined ? {} : { token: () => token }),
    health: () => createClient(Health, address),
    adminToken: (tenantId) =>
      issuer.mint({ tenantId, roles: ["user", "admin"], sub: `admin-${tenantId}` }),
    userToken: (tenantId) => issuer.mint({ tenantId, roles: ["user"], sub: `user-${tenantId}` }),
    serviceToken: (service) =>
      issuer.mint({ tenantId: "", svc: service, typ: "service", roles: [] }),
    seed: (dir) => loadSeeds(dir, catalog, logger),
    async close() {
      await server.shutdown({ timeoutMs: 2_000 });
      await mongo.dropDatabase().catch(() => undefined);
      await closeMongo(mongo);
      await nc.close();
      await issuer.close();
    },
  };
}

/** A temporary seed directory holding these files; returns its path and a remover. */
export async function seedDir(
  files: Record<string, string>,
): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "registry-seed-"));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** The error a promise rejects with (fails the test when it resolves). */
export async function rejection(
  promise: Promise<unknown>,
): Promise<Error & { code?: number; rawMessage?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as Error & { code?: number };
  }
  throw new Error("expected the call to fail, but it succeeded");
}
