// Real upstreams and real gateways for the integration tests: an Echo service (the kit's test
// contract: every access level, a stream, a slow method) served by the kit in-process, the
// built registry as a child process (a service's internals are not imported across packages),
// and gateways built with build(deps) on port 0 sharing the test kit's NATS.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  connectNats,
  createJwksVerifier,
  createMetrics,
  createServer,
  openKvRateLimiter,
  principalOf,
  requestIdOf,
  service,
  type KitServer,
  type NatsConnection,
  type RateLimiter,
} from "@ensemble/kit";
import { EchoService } from "@ensemble/proto";
import {
  captureLogs,
  freePort,
  mongoUrl,
  natsUrl,
  ServerProcess,
  uniqueName,
  type CapturedLogs,
  type TestIssuer,
} from "@ensemble/testkit";
import { build, type Gateway, type Upstream } from "../src/index.js";

import { startModelProxyProcess as startModelProxy } from "@ensemble/testkit";

/** The repository root (this file runs from gateway/test under vitest, gateway/dist/test when built). */
const execFileAsync = promisify(execFile);

export const repoRoot = ((): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "tsconfig.base.json")) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
})();

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
      },
      { once: true },
    );
  });
}

export interface EchoUpstream {
  address: string;
  /** Sleeps of EchoSlow that ended early because the call was aborted. */
  abortedSleeps: number;
  server: KitServer;
  close(): Promise<void>;
}

export async function startEcho(issuer: TestIssuer): Promise<EchoUpstream> {
  const logs = captureLogs({ level: "warn" });
  const state = { abortedSleeps: 0 };
  const server = createServer({
    name: "echo",
    version: "test",
    logger: logs.logger,
    verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
    services: [
      service(EchoService, {
        echoPublic: (req, ctx) => ({ message: req.message, requestId: requestIdOf(ctx) }),
        echoUser: (req, ctx) => {
          const p = principalOf(ctx);
          return {
            message: req.name.repeat(Math.max(1, req.repeat)),
            subject: p.subject,
            tenantId: p.tenantId,
            requestId: requestIdOf(ctx),
          };
        },
        echoAdmin: (req) => ({ message: req.message }),
        echoInternal: (req, ctx) => ({
          message: req.message,
          service: principalOf(ctx).service ?? "",
        }),
        async *echoStream(req, ctx) {
          for (let i = 0; i < req.count; i++) {
            if (req.failAfter > 0 && i === req.failAfter) {
              throw new ConnectError("stream failed on purpose", Code.FailedPrecondition);
            }
            if (req.intervalMs > 0) await sleep(req.intervalMs, ctx.signal);
            yield { index: i };
          }
        },
        async echoSlow(req, ctx) {
          const started = Date.now();
          try {
            await sleep(req.sleepMs, ctx.signal);
          } catch (err) {
            state.abortedSleeps += 1;
            throw err;
          }
          return { sleptMs: Date.now() - started };
        },
      }),
    ],
  });
  const port = await server.listen("127.0.0.1:0");
  return {
    address: `127.0.0.1:${port}`,
    get abortedSleeps() {
      return state.abortedSleeps;
    },
    server,
    close: () => server.shutdown({ timeoutMs: 1_000 }),
  };
}

export interface RegistryProcess {
  address: string;
  stop(): Promise<void>;
}

/** The built registry (services/registry/dist), with its own database and KV bucket. */
export async function startRegistryProcess(keys: { jwksUrl: string }): Promise<RegistryProcess> {
  const port = await freePort();
  const proc = new ServerProcess(
    "registry",
    process.execPath,
    [join(repoRoot, "services/registry/dist/src/main.js")],
    {
      ...process.env,
      LOG_LEVEL: "info",
      REGISTRY_ADDR: `127.0.0.1:${port}`,
      METRICS_PORT: "0",
      JWKS_URL: keys.jwksUrl,
      NATS_URL: natsUrl(),
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: uniqueName("gwregistry"),
      INSTANCE_BUCKET: uniqueName("gwinstances"),
      REGISTRY_SEED_DIR: join(repoRoot, "deploy/config"),
    },
  );
  await proc.waitForLine(/registry listening/, 90_000);
  return {
    address: `127.0.0.1:${port}`,
    stop: async () => {
      await proc.stop(10_000);
    },
  };
}

export interface TestGateway {
  url: string;
  port: number;
  gateway: Gateway;
  limiter: RateLimiter;
  logs: CapturedLogs;
  close(): Promise<void>;
}

export interface GatewayOptions {
  /** Whose JWKS the gateway trusts: a test issuer's or auth's. */
  jwksUrl: string;
  upstreams: Upstream[];
  rate?: number;
  burst?: number;
  lease?: number;
  /** Share one bucket between replicas; default a fresh one. */
  bucket?: string;
  corsOrigins?: string[];
  development?: boolean;
  serviceToken?: string;
  apiKeyCacheMs?: number;
}

export async function startGateway(opts: GatewayOptions): Promise<TestGateway> {
  const logs = captureLogs({ level: "info" });
  const nc: NatsConnection = await connectNats({
    url: natsUrl(),
    name: "gateway-test",
    logger: logs.logger,
  });
  const limiter = await openKvRateLimiter(nc, opts.bucket ?? uniqueName("gwrate"), {
    rate: opts.rate ?? 1000,
    burst: opts.burst ?? 1000,
    ...(opts.lease !== undefined ? { lease: opts.lease } : {}),
    logger: logs.logger,
  });
  const gateway = build({
    version: "test",
    logger: logs.logger,
    verifier: createJwksVerifier({ jwksUrl: opts.jwksUrl }),
    metrics: createMetrics({ service: "gateway", defaultMetrics: false }),
    upstreams: opts.upstreams,
    rateLimiter: limiter,
    corsOrigins: opts.corsOrigins ?? ["https://console.example"],
    development: opts.development ?? false,
    ...(opts.serviceToken !== undefined ? { serviceToken: opts.serviceToken } : {}),
    ...(opts.apiKeyCacheMs !== undefined ? { apiKeyCacheMs: opts.apiKeyCacheMs } : {}),
    maxMessageBytes: 64 * 1024,
  });
  const port = await gateway.listen(0);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    gateway,
    limiter,
    logs,
    close: async () => {
      await gateway.shutdown({ timeoutMs: 2_000 });
      await nc.drain();
    },
  };
}

export const echoUpstream = (address: string): Upstream => ({
  name: "echo",
  services: [EchoService],
  address,
});

export interface AuthProcess {
  address: string;
  jwksUrl: string;
  /** A bootstrap service credential minted with auth's CLI (as the launcher does). */
  mintServiceToken(service: string): Promise<string>;
  /** Its recent output lines (log scans). */
  output(): string;
  stop(): Promise<void>;
}

/** The built auth service (services/auth/dist) with its own database, like `npm start` runs it. */
export async function startAuthProcess(): Promise<AuthProcess> {
  const [port, jwksPort] = [await freePort(), await freePort()];
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: "development",
    LOG_LEVEL: "info",
    AUTH_ADDR: `127.0.0.1:${port}`,
    AUTH_JWKS_PORT: String(jwksPort),
    METRICS_PORT: "0",
    NATS_URL: natsUrl(),
    MONGODB_URL: mongoUrl(),
    MONGODB_DB: uniqueName("gwauth"),
    AUTH_ARGON2_MEMORY_KIB: "8192",
    AUTH_ARGON2_TIME_COST: "1",
  };
  delete env["JWKS_URL"];
  const proc = new ServerProcess(
    "auth",
    process.execPath,
    [join(repoRoot, "services/auth/dist/src/main.js")],
    env,
  );
  await proc.waitForLine(/auth listening/, 90_000);
  return {
    address: `127.0.0.1:${port}`,
    jwksUrl: `http://127.0.0.1:${jwksPort}/.well-known/jwks.json`,
    async mintServiceToken(service) {
      const { stdout } = await execFileAsync(
        process.execPath,
        [join(repoRoot, "services/auth/dist/src/mint-service-token.js"), "--service", service],
        { env, timeout: 30_000 },
      );
      return stdout.trim();
    },
    output: () => proc.output(5_000),
    stop: async () => {
      await proc.stop(10_000);
    },
  };
}

export interface ModelProxyProcessOptions {
  jwksUrl: string;
  authAddress: string;
  registryAddress: string;
  /** The simulator's base URL (".../v1"). */
  simulatorUrl: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * The built model-proxy (services/model-proxy/dist) with its own database and buckets, talking
 * to the given auth, registry and simulator (the test kit's launcher, as for the other services).
 */
export async function startModelProxyProcess(
  opts: ModelProxyProcessOptions,
): Promise<{ address: string; output(): string; stop(): Promise<void> }> {
  const proc = await startModelProxy({
    jwksUrl: opts.jwksUrl,
    authAddress: opts.authAddress,
    registryAddress: opts.registryAddress,
    simulatorUrl: opts.simulatorUrl,
    ...(opts.env !== undefined ? { env: opts.env } : {}),
  });
  return { address: proc.address, output: () => proc.output(), stop: () => proc.stop() };
}
