// What the gateway adds to a call. The same USER unary method (EchoUser, served by the kit with
// its full pipeline) is called at a fixed rate (open loop: a call starts every 1/rate s whether
// or not the previous one finished), once straight to the service over gRPC and once through
// the gateway (gRPC over h2c, plus Connect JSON over HTTP/1.1), with the same client library
// (connect-node) and the same bearer token. The gateway path pays: h2c/HTTP parsing, JWT check
// (cached), access policy, the KV-leased rate limit (on a real nats-server), and a second gRPC
// hop. The cases alternate in 2 s rounds. Prints p50/p90/p99, the added latency at p50/p99 and the ratio to the direct call.
// Usage: npm run build && node bench/dist/gateway.js [rate per second] [seconds]
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  createJwksVerifier,
  createMetrics,
  createNotices,
  createServer,
  connectNats,
  principalOf,
  service,
} from "@ensemble/kit";
import { build, openKvRateLimiter } from "@ensemble/gateway";
import { EchoService } from "@ensemble/proto";
import { createTestIssuer, startNats } from "@ensemble/testkit";
import pino from "pino";
import { printTable, summarise, type Summary } from "./stats.js";

const rate = Number(process.argv[2] ?? 200);
const seconds = Number(process.argv[3] ?? 10);
const warmupCalls = 300;

type Call = () => Promise<unknown>;

/** Calls at `rate` per second for `durationS`, open loop; latency samples (ms) of the successes. */
async function atRate(name: string, call: Call, durationS: number): Promise<number[]> {
  const total = Math.round(rate * durationS);
  const intervalMs = 1000 / rate;
  const samples: number[] = [];
  const inflight: Array<Promise<void>> = [];
  let failures = 0;
  const start = performance.now();
  for (let i = 0; i < total; i++) {
    const wait = start + i * intervalMs - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    const t0 = performance.now();
    inflight.push(
      call().then(
        () => void samples.push(performance.now() - t0),
        () => void (failures += 1),
      ),
    );
  }
  await Promise.all(inflight);
  if (failures > 0) console.error(`${name}: ${failures} calls failed`);
  return samples;
}

/**
 * The cases take turns in short rounds, so a busy neighbour on the machine slows them alike
 * instead of whichever case happened to run at that moment.
 */
async function compare(
  cases: Array<{ name: string; client: Client<typeof EchoService> }>,
  token: string,
): Promise<Summary[]> {
  const headers = { authorization: `Bearer ${token}` };
  const calls = cases.map(
    ({ client }): Call =>
      () =>
        client.echoUser({ name: "bench", repeat: 2, owner: { id: "o-1" } }, { headers }),
  );
  for (const call of calls) for (let i = 0; i < warmupCalls; i++) await call();
  const rounds = Math.max(1, Math.round(seconds / 2));
  const samples = cases.map((): number[] => []);
  const wall = cases.map(() => 0);
  for (let r = 0; r < rounds; r++) {
    for (const [i, c] of cases.entries()) {
      const t = performance.now();
      samples[i]?.push(...(await atRate(c.name, calls[i] as Call, seconds / rounds)));
      wall[i] = (wall[i] ?? 0) + performance.now() - t;
    }
  }
  return cases.map((c, i) => summarise(c.name, samples[i] ?? [], wall[i] ?? 1));
}

async function main(): Promise<void> {
  const logger = pino({ level: "silent" });
  const nats = await startNats({});
  const issuer = await createTestIssuer();
  const token = await issuer.mint({ tenantId: "acme", sub: "bench-user" });
  const verifier = () => createJwksVerifier({ jwksUrl: issuer.jwksUrl });

  const echo = createServer({
    name: "echo",
    version: "bench",
    logger,
    verifier: verifier(),
    metrics: createMetrics({ service: "echo" }),
    services: [
      service(EchoService, {
        echoPublic: (req) => ({ message: req.message }),
        echoUser: (req, ctx) => ({
          message: Array.from({ length: Math.max(1, req.repeat) }, () => req.name).join(" "),
          subject: principalOf(ctx).subject,
        }),
        echoAdmin: (req) => ({ message: req.message }),
        echoInternal: (req) => ({ message: req.message }),
        async *echoStream() {},
        echoSlow: () => ({ sleptMs: 0 }),
      }),
    ],
  });
  const echoPort = await echo.listen("127.0.0.1:0");

  const nc = await connectNats({ url: nats.url, name: "bench-gateway", logger });
  const gateway = build({
    version: "bench",
    logger,
    verifier: verifier(),
    metrics: createMetrics({ service: "gateway" }),
    upstreams: [{ name: "echo", services: [EchoService], address: `127.0.0.1:${echoPort}` }],
    // Generous: the bench measures the cost of the limiter, not refusals.
    notices: createNotices(nc, logger),
    rateLimiter: await openKvRateLimiter(nc, "bench_ratelimit", {
      rate: rate * 10,
      burst: rate * 10,
      logger,
    }),
  });
  const gatewayPort = await gateway.listen(0);

  const client = (transport: Transport) => createClient(EchoService, transport);
  const direct = client(createGrpcTransport({ baseUrl: `http://127.0.0.1:${echoPort}` }));
  const viaGrpc = client(createGrpcTransport({ baseUrl: `http://127.0.0.1:${gatewayPort}` }));
  const viaConnect = client(
    createConnectTransport({ baseUrl: `http://127.0.0.1:${gatewayPort}`, httpVersion: "1.1" }),
  );

  console.log(
    `USER unary EchoUser at ${rate} calls/s for ${seconds} s each (open loop, cases in alternating 2 s rounds)\n`,
  );
  const rows = await compare(
    [
      { name: "direct to the service (gRPC)", client: direct },
      { name: "through the gateway (gRPC, h2c)", client: viaGrpc },
      { name: "through the gateway (Connect JSON, HTTP/1.1)", client: viaConnect },
    ],
    token,
  );
  printTable(rows);
  const [base, ...others] = rows;
  if (base !== undefined) {
    console.log("");
    for (const r of others) {
      console.log(
        `${r.name}: added p50 ${(r.p50 - base.p50).toFixed(3)} ms, p99 ${(r.p99 - base.p99).toFixed(3)} ms; ratio p50 ${(r.p50 / base.p50).toFixed(2)}x, p99 ${(r.p99 / base.p99).toFixed(2)}x`,
      );
    }
  }

  await gateway.shutdown({ timeoutMs: 1_000 });
  await nc.drain();
  await echo.shutdown({ timeoutMs: 1_000 });
  await issuer.close();
  await nats.stop();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
