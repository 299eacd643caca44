// vector-search through its gRPC API: the service built in-process (build(deps), the kit's full
// pipeline: token verification, access policy, protovalidate) over a real MongoDB-wire server,
// called by the kit's gRPC client over loopback with a real token. Ingestion rate through Upsert
// (MongoDB writes and the index), then recall@10 against the service's own exact search and
// Search calls/s from one client (one call in flight) per ef. Same data as bench/src/vector.ts.
//
//   node bench/dist/vector-grpc.js [vectors=100000] [dimensions=384] [queries=300]
//
// MONGODB_URL selects a running server; otherwise the test kit starts one (mongod or FerretDB).
import {
  closeMongo,
  connectMongo,
  createClient,
  createJwksVerifier,
  createRootLogger,
} from "@ensemble/kit";
import { DistanceMetric, VectorSearchService } from "@ensemble/proto";
import { createTestIssuer, startMongo } from "@ensemble/testkit";
import { build, Collections, Store } from "@ensemble/vector-search";
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
const issuer = await createTestIssuer();
const logger = createRootLogger({ service: "vector-search", version: "bench", level: "warn" });
const mongo = await connectMongo({ url: mongoUrl, dbName: `bench_vectors_${Date.now()}`, logger });
const store = await Store.open(mongo);
const server = build({
  version: "bench",
  logger,
  verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
  store,
  collections: new Collections({ store, logger }),
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
  `${"ef".padStart(5)} ${"recall@10".padStart(10)} ${"calls/s".padStart(10)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)}`,
);
for (const ef of [32, 48, 64, 96, 128]) {
  const asArrays = queries.map((q) => Array.from(q));
  for (const q of asArrays.slice(0, 20))
    await vs.search({ collectionId: "bench", vector: q, k: K, efSearch: ef }, opts);
  const lat: number[] = [];
  let found = 0;
  const t0 = performance.now();
  for (let i = 0; i < Q; i++) {
    const t = performance.now();
    const res = await vs.search(
      { collectionId: "bench", vector: asArrays[i]!, k: K, efSearch: ef },
      opts,
    );
    lat.push(performance.now() - t);
    found += res.hits.filter((h) => truth[i]!.has(h.documentId)).length;
  }
  const qps = Q / ((performance.now() - t0) / 1000);
  lat.sort((a, b) => a - b);
  console.log(
    `${String(ef).padStart(5)} ${(found / (Q * K)).toFixed(4).padStart(10)} ${qps.toFixed(0).padStart(10)} ${lat[Math.floor(Q * 0.5)]!.toFixed(2).padStart(8)} ${lat[Math.floor(Q * 0.99)]!.toFixed(2).padStart(8)}`,
  );
}
console.log(`load at end: ${loadavg()}`);

await server.shutdown({ timeoutMs: 2_000 });
await mongo.dropDatabase();
await closeMongo(mongo);
await issuer.close();
await mongoServer?.stop();
