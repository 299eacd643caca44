// model-proxy on its own, and what a gRPC client costs its caller. Every piece is its own process
// (simulator at zero latency, auth, registry, model-proxy, nats-server, the MongoDB-wire server);
// the load generator holds N unary Chat calls in flight (closed loop) with three clients in
// turn, in rounds so machine noise hits them alike:
//   - the kit's client (what the gateway and the services use: request id, trace context,
//     deadline propagation, error mapping over grpc-js),
//   - a bare grpc-js client with the same protobuf-es serialisation (the baseline),
//   - connect-node's gRPC transport (the other gRPC client a TypeScript service could use),
// and, as the floor under all of them, the simulator's own /v1/chat/completions over undici.
// Printed per case: calls/s, latency p50/p99, CPU µs per call of the load generator (the client's
// cost) and of model-proxy and the simulator, and the ratios to the bare grpc-js client.
//
//   node bench/dist/model-proxy.js [seconds-per-round=5] [in-flight=32] [rounds=2]
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient as connectClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createClient } from "@ensemble/kit";
import {
  AuthService,
  ChatRequestSchema,
  ChatResponseSchema,
  ChatRole,
  ModelProxyService,
} from "@ensemble/proto";
import * as grpc from "@grpc/grpc-js";
import { Pool } from "undici";
import { BenchMesh, cpuTicks, PASSWORD } from "./mesh.js";
import { summarise } from "./stats.js";

const [SECONDS = 5, IN_FLIGHT = 32, ROUNDS = 2] = process.argv.slice(2).map(Number);
const PROMPT = "Say hello to the benchmark in a few words.";

interface Totals {
  calls: number;
  wallMs: number;
  samples: number[];
  clientUs: number;
  proxyTicks: number;
  simTicks: number;
}

async function main(): Promise<void> {
  const bench = new BenchMesh("model-proxy");
  console.log(
    `model-proxy: ${SECONDS} s per case per round, ${ROUNDS} rounds, ${IN_FLIGHT} calls in flight`,
  );
  try {
    const core = await bench.startCore();
    const procs = bench.watched();
    const pid = (name: string) => procs.find((p) => p.name === name)?.pid ?? 0;
    const signup = await createClient(AuthService, core.authAddress).signup({
      email: `bench-${Date.now()}@example.com`,
      password: PASSWORD,
      tenant: { case: "tenantName", value: "bench tenant" },
    });
    const token = signup.tokens?.accessToken ?? "";
    const request = create(ChatRequestSchema, {
      model: "sim-fast",
      maxTokens: 16,
      messages: [{ role: ChatRole.USER, content: [{ part: { case: "text", value: PROMPT } }] }],
    });
    const headers = { authorization: `Bearer ${token}` };

    const kit = createClient(ModelProxyService, core.proxyAddress);
    const connect = connectClient(
      ModelProxyService,
      createGrpcTransport({ baseUrl: `http://${core.proxyAddress}` }),
    );
    const bare = new grpc.Client(core.proxyAddress, grpc.credentials.createInsecure());
    const bareChat = () =>
      new Promise<unknown>((resolve, reject) => {
        const md = new grpc.Metadata();
        md.set("authorization", headers.authorization);
        bare.makeUnaryRequest(
          `/${ModelProxyService.typeName}/Chat`,
          (m: typeof request) => Buffer.from(toBinary(ChatRequestSchema, m)),
          (b: Buffer) => fromBinary(ChatResponseSchema, b),
          request,
          md,
          {},
          (err, res) => (err ? reject(err) : resolve(res)),
        );
      });
    const sim = new Pool(core.simUrl, { connections: 256 });
    const simBody = JSON.stringify({
      model: "sim-fast",
      max_tokens: 16,
      messages: [{ role: "user", content: PROMPT }],
    });
    const simChat = async () => {
      const res = await sim.request({
        path: "/v1/chat/completions",
        method: "POST",
        headers: { "content-type": "application/json" },
        body: simBody,
      });
      await res.body.json();
      if (res.statusCode !== 200) throw new Error(`simulator: HTTP ${res.statusCode}`);
    };
    const cases: Array<[string, () => Promise<unknown>]> = [
      ["kit client (grpc-js)", () => kit.chat(request, { headers })],
      ["bare grpc-js client (baseline)", bareChat],
      ["connect-node gRPC transport", () => connect.chat(request, { headers })],
      ["simulator direct (undici, no model-proxy)", simChat],
    ];

    const totals = new Map<string, Totals>();
    const run = async (call: () => Promise<unknown>, ms: number, into?: Totals) => {
      const stop = performance.now() + ms;
      const cpu = process.cpuUsage();
      const [proxy0, sim0] = [cpuTicks(pid("model-proxy")), cpuTicks(pid("simulator"))];
      const started = performance.now();
      let calls = 0;
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async () => {
          while (performance.now() < stop) {
            const t = performance.now();
            await call();
            into?.samples.push(performance.now() - t);
            calls++;
          }
        }),
      );
      if (into === undefined) return;
      const used = process.cpuUsage(cpu);
      into.calls += calls;
      into.wallMs += performance.now() - started;
      into.clientUs += used.user + used.system;
      into.proxyTicks += cpuTicks(pid("model-proxy")) - proxy0;
      into.simTicks += cpuTicks(pid("simulator")) - sim0;
    };
    // Warm-up: connections, JIT, the token and catalog caches.
    for (const [, call] of cases) await run(call, 1_000);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, call] of cases) {
        const t = totals.get(name) ?? {
          calls: 0,
          wallMs: 0,
          samples: [],
          clientUs: 0,
          proxyTicks: 0,
          simTicks: 0,
        };
        totals.set(name, t);
        await run(call, SECONDS * 1_000, t);
      }
    }

    const tickUs = 10_000;
    const rows = cases.map(([name]) => {
      const t = totals.get(name)!;
      const s = summarise(name, t.samples, t.wallMs);
      return {
        name,
        rate: s.callsPerSecond,
        p50: s.p50,
        p99: s.p99,
        client: t.clientUs / t.calls,
        proxy: (t.proxyTicks * tickUs) / t.calls,
        sim: (t.simTicks * tickUs) / t.calls,
      };
    });
    const base = rows[1]!;
    console.log(
      `\n${"case".padEnd(42)} ${"calls/s".padStart(8)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)} ${"client µs".padStart(10)} ${"proxy µs".padStart(9)} ${"sim µs".padStart(7)}  ratio client / rate`,
    );
    for (const r of rows) {
      console.log(
        `${r.name.padEnd(42)} ${r.rate.toFixed(0).padStart(8)} ${r.p50.toFixed(2).padStart(8)} ${r.p99.toFixed(2).padStart(8)} ${r.client.toFixed(0).padStart(10)} ${r.proxy.toFixed(0).padStart(9)} ${r.sim.toFixed(0).padStart(7)}  ${(r.client / base.client).toFixed(2)}x / ${(r.rate / base.rate).toFixed(2)}x`,
      );
    }
    console.log(
      "\nCPU per call from /proc (10 ms ticks) for model-proxy and the simulator, process.cpuUsage for the client.",
    );
    bare.close();
    await sim.close();
  } finally {
    await bench.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
