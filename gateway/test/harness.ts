// Real upstreams and real gateways for the integration tests: an Echo service (the kit's test
// contract: every access level, a stream, a slow method) served by the kit in-process, the
// built registry as a child process (a service's internals are not imported across packages),
// and gateways built with build(deps) on port 0 sharing the test kit's NATS.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  connectNats,
  createNotices,
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
  natsUrl,
  uniqueName,
  type CapturedLogs,
  type TestIssuer,
} from "@ensemble/testkit";
import { build, type Gateway, type Upstream } from "../src/index.js";

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
  wsPingIntervalMs?: number;
  /** Serve the built web console from this directory. */
  consoleDir?: string;
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
    notices: createNotices(nc, logs.logger),
    corsOrigins: opts.corsOrigins ?? ["https://console.example"],
    development: opts.development ?? false,
    ...(opts.serviceToken !== undefined ? { serviceToken: opts.serviceToken } : {}),
    ...(opts.apiKeyCacheMs !== undefined ? { apiKeyCacheMs: opts.apiKeyCacheMs } : {}),
    ...(opts.consoleDir !== undefined ? { consoleDir: opts.consoleDir } : {}),
    ...(opts.wsPingIntervalMs !== undefined ? { wsPingIntervalMs: opts.wsPingIntervalMs } : {}),
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

// The built services as child processes: the test kit's starters, shared by every package.
export {
  repoRoot,
  startAuthProcess,
  startRegistryProcess,
  type AuthProcess,
  type MeshProcess as RegistryProcess,
} from "@ensemble/testkit";
