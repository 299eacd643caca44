// What the service kit's call pipeline costs. The same unary method (EchoUser) is served twice
// in one process: once by a bare grpc-js server with protobuf-es serialisation (the baseline:
// what any gRPC service pays), once by the kit's createServer with the full pipeline (request id,
// trace context, child logger, metrics, JWT verification against a cached JWKS, access policy,
// protovalidate, error mapping) called through the kit's createClient with a bearer token.
// It prints p50/p90/p99 latency sequentially (one call at a time) and throughput with 16 calls in
// flight, and the ratio of kit to baseline. Usage: npm run build && node bench/dist/kit-rpc.js [calls]
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import pino from "pino";
import {
  EchoService,
  EchoUserRequestSchema,
  EchoUserResponseSchema,
  type EchoUserRequest,
} from "@ensemble/proto";
import {
  createClient,
  createJwksVerifier,
  createMetrics,
  createRootLogger,
  createServer,
  principalOf,
  requestIdOf,
  service,
} from "@ensemble/kit";
import { createTestIssuer } from "@ensemble/testkit";
import { printTable, summarise, type Summary } from "./stats.js";

const calls = Number(process.argv[2] ?? 3000);
const concurrency = 16;
const request = create(EchoUserRequestSchema, { name: "bench", repeat: 2, owner: { id: "o-1" } });

function answer(req: EchoUserRequest): string {
  return Array.from({ length: Math.max(1, req.repeat) }, () => req.name).join(" ");
}

async function startBaseline(): Promise<{ port: number; stop(): void }> {
  const server = new grpc.Server();
  const method = EchoService.method.echoUser;
  server.addService(
    {
      EchoUser: {
        path: `/${EchoService.typeName}/${method.name}`,
        requestStream: false,
        responseStream: false,
        requestSerialize: (m: EchoUserRequest) => Buffer.from(toBinary(EchoUserRequestSchema, m)),
        requestDeserialize: (b: Buffer) => fromBinary(EchoUserRequestSchema, b),
        responseSerialize: (m: ReturnType<typeof create<typeof EchoUserResponseSchema>>) =>
          Buffer.from(toBinary(EchoUserResponseSchema, m)),
        responseDeserialize: (b: Buffer) => fromBinary(EchoUserResponseSchema, b),
      },
    },
    {
      EchoUser: (
        call: grpc.ServerUnaryCall<EchoUserRequest, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        cb(null, create(EchoUserResponseSchema, { message: answer(call.request) }));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { port, stop: () => server.forceShutdown() };
}

function baselineCaller(port: number): { call(): Promise<void>; close(): void } {
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const path = `/${EchoService.typeName}/${EchoService.method.echoUser.name}`;
  return {
    call: () =>
      new Promise<void>((resolve, reject) => {
        client.makeUnaryRequest(
          path,
          (m: EchoUserRequest) => Buffer.from(toBinary(EchoUserRequestSchema, m)),
          (b: Buffer) => fromBinary(EchoUserResponseSchema, b),
          request,
          (err) => (err ? reject(err) : resolve()),
        );
      }),
    close: () => client.close(),
  };
}

async function measure(
  name: string,
  call: () => Promise<void>,
  inFlight: number,
): Promise<Summary> {
  for (let i = 0; i < 200; i++) await call(); // warm-up: JIT, JWKS cache, channel
  const samples: number[] = [];
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < calls) {
        next++;
        const t0 = performance.now();
        await call();
        samples.push(performance.now() - t0);
      }
    }),
  );
  return summarise(name, samples, performance.now() - start);
}

async function main(): Promise<void> {
  const issuer = await createTestIssuer();
  const token = await issuer.mint({ sub: "u-bench", tenantId: "t-bench", roles: ["user"] });
  // Real log lines (one per call) are written, to /dev/null so the figures stay readable.
  const logger = createRootLogger({
    service: "bench",
    version: "0",
    destination: pino.destination({ dest: "/dev/null", sync: false }),
  });
  const kit = createServer({
    name: "bench",
    version: "0",
    logger,
    metrics: createMetrics({ service: "bench" }),
    verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
    services: [
      service(EchoService, {
        echoUser(req, ctx) {
          return {
            message: answer(req),
            subject: principalOf(ctx).subject,
            requestId: requestIdOf(ctx),
          };
        },
        // Not measured; present because a registration implements the whole contract.
        echoPublic: (req) => ({ message: req.message }),
        echoAdmin: (req) => ({ message: req.message }),
        echoInternal: (req) => ({ message: req.message }),
        echoSlow: () => ({}),
        async *echoStream() {},
      }),
    ],
  });
  const kitPort = await kit.listen("127.0.0.1:0");
  const kitClient = createClient(EchoService, `127.0.0.1:${kitPort}`, { token: () => token });
  const baseline = await startBaseline();
  const bare = baselineCaller(baseline.port);
  const viaKit = async () => {
    await kitClient.echoUser(request);
  };

  const rows = [
    await measure("baseline: bare grpc-js, 1 in flight", () => bare.call(), 1),
    await measure("kit: full pipeline + JWT, 1 in flight", viaKit, 1),
    await measure(
      `baseline: bare grpc-js, ${concurrency} in flight`,
      () => bare.call(),
      concurrency,
    ),
    await measure(`kit: full pipeline + JWT, ${concurrency} in flight`, viaKit, concurrency),
  ];
  printTable(rows);
  const [b1, k1, bN, kN] = rows as [Summary, Summary, Summary, Summary];
  console.log(
    `\nkit / baseline: p50 ${(k1.p50 / b1.p50).toFixed(2)}x (+${(k1.p50 - b1.p50).toFixed(3)} ms), ` +
      `p99 ${(k1.p99 / b1.p99).toFixed(2)}x (+${(k1.p99 - b1.p99).toFixed(3)} ms), ` +
      `throughput at ${concurrency} in flight ${(kN.callsPerSecond / bN.callsPerSecond).toFixed(2)}x`,
  );

  bare.close();
  baseline.stop();
  await kit.shutdown({ timeoutMs: 1000 });
  await issuer.close();
}

await main();
