// vector-search through its gRPC API: the service built in-process (build(deps), the kit's full
// pipeline: token verification, access policy, protovalidate) over a real MongoDB-wire server,
// called by the kit's gRPC client over loopback with a real token. Ingestion rate through Upsert
// (MongoDB writes and the index), then recall@10 against the service's own exact search and
// Search calls/s from one client (one call in flight) per ef. Same data as bench/src/vector.ts.
//
//   node bench/dist/vector-grpc.js [vectors=100000] [dimensions=384] [queries=300]
//
// MONGODB_URL and NATS_URL select running servers; otherwise the test kit starts them (mongod or
// FerretDB; nats-server: every call first asks the change stream whether another replica wrote
// to the collection, see services/vector-search/src/changes.ts).
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createMetrics,
  createRootLogger,
  jetstreamManager,
} from "@ensemble/kit";
import { DistanceMetric, ReadConsistency, VectorSearchService } from "@ensemble/proto";
import { createTestIssuer, startMongo, startNats } from "@ensemble/testkit";
import { build, ChangeFeed, Collections, Store } from "@ensemble/vector-search";
import { clusteredData, loadavg } from "./vector-data.js";

const N = Number(process.argv[2] ?? 100_000);
const D = Number(process.argv[3] ?? 384);
const Q = Number(process.argv[4] ?? 300);
const K = 10;

console.log(
  `vector-search over gRPC: ${N.toLocaleString("en")} vectors x ${D}, ${Q} queries, k=${K}`,
);
console.log(`load before: ${loadavg()}`);
const { data, queries } = clusteredData(N, D, Q);

const mongoServer = process.env["MONGODB_URL"] === undefined ? await startMongo() : undefined;
const mongoUrl = process.env["MONGODB_URL"] ?? mongoServer!.url;
const natsServer = process.env["NATS_URL"] === undefined ? await startNats() : undefined;
const issuer = await createTestIssuer();
const logger = createRootLogger({ service: "vector-search", version: "bench", level: "warn" });
const mongo = await connectMongo({ url: mongoUrl, dbName: `bench_vectors_${Date.now()}`, logger });
const nc = await connectNats({
  url: process.env["NATS_URL"] ?? natsServer!.url,
  name: "vector-search",
  logger,
});
const store = await Store.open(mongo);
const collections = new Collections({ store, logger });
const stream = `BENCH_VECTORS_${Date.now()}`;
const metrics = createMetrics({ service: "vector-search", defaultMetrics: false });
const changes = await ChangeFeed.open({ nc, collections, logger, metrics, stream, root: stream });
const server = build({
  version: "bench",
  logger,
  verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
  store,
  collections,
  changes,
});
const vs = createClient(VectorSearchService, `127.0.0.1:${await server.listen("127.0.0.1:0")}`);
const token = await issuer.mint({ tenantId: "bench", roles: ["user", "admin"], expiresIn: "2h" });
const opts = { headers: { authorization: `Bearer ${token}` }, timeoutMs: 600_000 };

await vs.createCollection(
  { collection: { id: "bench", dimensions: D, metric: DistanceMetric.COSINE } },
  opts,
);
const started = performance.now();
for (let i = 0; i < N; i += 1_000) {
  await vs.upsert(
    {
      collectionId: "bench",
      documents: data.slice(i, i + 1_000).map((d, j) => ({
        id: `d${i + j}`,
        vector: Array.from(d.v),
        metadata: { cluster: d.cluster },
      })),
    },
    opts,
  );
}
const ingestSec = (performance.now() - started) / 1000;
console.log(
  `ingest through Upsert (1,000 per call, MongoDB + index): ${Math.round(N / ingestSec).toLocaleString("en")} vectors/s (${ingestSec.toFixed(1)} s; ${mongoServer?.kind ?? "MONGODB_URL"})`,
);

const exactStart = performance.now();
const truth: Set<string>[] = [];
for (const q of queries) {
  const res = await vs.search(
    { collectionId: "bench", vector: Array.from(q), k: K, exact: true },
    opts,
  );
  truth.push(new Set(res.hits.map((h) => h.documentId)));
}
const exactQps = Q / ((performance.now() - exactStart) / 1000);
console.log(`exact Search: ${exactQps.toFixed(0)} calls/s (baseline)`);
console.log(
  `${"ef".padStart(5)} ${"reads".padStart(8)} ${"recall@10".padStart(10)} ${"calls/s".padStart(10)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)}`,
);
const asArrays = queries.map((q) => Array.from(q));
/** Q searches one after another; prints recall, calls/s and latency. */
async function searches(ef: number, consistency: ReadConsistency): Promise<void> {
  for (const q of asArrays.slice(0, 20))
    await vs.search({ collectionId: "bench", vector: q, k: K, efSearch: ef, consistency }, opts);
  const lat: number[] = [];
  let found = 0;
  const t0 = performance.now();
  for (let i = 0; i < Q; i++) {
    const t = performance.now();
    const res = await vs.search(
      { collectionId: "bench", vector: asArrays[i]!, k: K, efSearch: ef, consistency },
      opts,
    );
    lat.push(performance.now() - t);
    found += res.hits.filter((h) => truth[i]!.has(h.documentId)).length;
  }
  const qps = Q / ((performance.now() - t0) / 1000);
  lat.sort((a, b) => a - b);
  const reads = consistency === ReadConsistency.STRONG ? "strong" : "eventual";
  console.log(
    `${String(ef).padStart(5)} ${reads.padStart(8)} ${(found / (Q * K)).toFixed(4).padStart(10)} ${qps.toFixed(0).padStart(10)} ${lat[Math.floor(Q * 0.5)]!.toFixed(2).padStart(8)} ${lat[Math.floor(Q * 0.99)]!.toFixed(2).padStart(8)}`,
  );
}
for (const ef of [32, 48, 64, 96, 128]) await searches(ef, ReadConsistency.EVENTUAL);
// What a STRONG read pays to see every other replica's earlier write: the change stream lookup
// (one JetStream direct get) before the collection is touched; the default ef again beside it.
await searches(64, ReadConsistency.EVENTUAL);
await searches(64, ReadConsistency.STRONG);
const catchUp =
  (await metrics.registry.getSingleMetric("ensemble_vector_search_catch_up_seconds")?.get())
    ?.values ?? [];
const sum =
  catchUp.find((v) => (v as { metricName?: string }).metricName?.endsWith("_sum"))?.value ?? 0;
const count =
  catchUp.find((v) => (v as { metricName?: string }).metricName?.endsWith("_count"))?.value ?? 0;
if (count > 0) {
  console.log(
    `catch-up (change stream lookup) of the STRONG reads and the Upserts: mean ${((sum / count) * 1e6).toFixed(0)} µs over ${count} calls`,
  );
}
console.log(`load at end: ${loadavg()}`);

await server.shutdown({ timeoutMs: 2_000 });
await changes.stop();
await (await jetstreamManager(nc)).streams.delete(stream);
await nc.drain();
await mongo.dropDatabase();
await closeMongo(mongo);
await issuer.close();
await mongoServer?.stop();
await natsServer?.stop();
