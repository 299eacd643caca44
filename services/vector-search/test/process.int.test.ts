// The built service as `npm start` runs it (main.ts): documents written to one process are all
// found by the next one on the same database, after a clean stop and after a SIGKILL (MongoDB is
// the source of truth; the index is rebuilt at start). Tokens come from the test kit's issuer.
import { createClient } from "@ensemble/kit";
import { DistanceMetric, IndexState, VectorSearchService } from "@ensemble/proto";
import {
  createTestIssuer,
  startVectorSearchProcess,
  uniqueName,
  type MeshProcess,
  type TestIssuer,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

let issuer: TestIssuer;
let proc: MeshProcess | undefined;
const database = uniqueName("vectorsearch");

beforeAll(async () => {
  issuer = await createTestIssuer();
}, 60_000);

afterAll(async () => {
  await proc?.stop();
  await issuer?.close();
});

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("vector-search process", () => {
  it("restart - every document is searchable again after a clean stop and after SIGKILL", async () => {
    const admin = await issuer.mint({ tenantId: "t-proc", roles: ["user", "admin"] });
    const user = await issuer.mint({ tenantId: "t-proc" });
    const other = await issuer.mint({ tenantId: "t-other" });
    const as = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });
    const d = 32;
    const r = rng(3);
    const vectors = Array.from({ length: 2_000 }, () => Array.from({ length: d }, () => r() - 0.5));

    proc = await startVectorSearchProcess({ jwksUrl: issuer.jwksUrl, database });
    let vs = createClient(VectorSearchService, proc.address);
    await vs.createCollection(
      { collection: { id: "kept", dimensions: d, metric: DistanceMetric.COSINE } },
      as(admin),
    );
    for (let i = 0; i < vectors.length; i += 1_000) {
      await vs.upsert(
        {
          collectionId: "kept",
          documents: vectors
            .slice(i, i + 1_000)
            .map((v, j) => ({ id: `v${i + j}`, vector: v, metadata: { n: i + j } })),
        },
        as(user),
      );
    }

    async function allFound(): Promise<void> {
      // A search waits for the collection's index to be rebuilt; Stats then reports it ready.
      // Exact search proves every sampled document is in the rebuilt index; the graph search
      // must find nearly all of them too (HNSW can leave a node or two out of reach of its own
      // vector: 198 of 200 once on CI's machine, so it is not held to all).
      let exact = 0;
      let approximate = 0;
      for (let i = 0; i < vectors.length; i += 10) {
        for (const mode of ["exact", "approximate"] as const) {
          const res = await vs.search(
            {
              collectionId: "kept",
              vector: vectors[i]!,
              k: 1,
              efSearch: 512,
              exact: mode === "exact",
            },
            as(user),
          );
          if (res.hits[0]?.documentId !== `v${i}`) continue;
          if (mode === "exact") exact++;
          else approximate++;
        }
      }
      expect(exact).toBe(200);
      expect(approximate).toBeGreaterThanOrEqual(194);
      const stats = await vs.stats({ collectionId: "kept" }, as(user));
      expect(stats.documents).toBe(2_000n);
      expect(stats.indexState).toBe(IndexState.READY);
    }
    await allFound();

    for (const how of ["stop", "kill"] as const) {
      await (how === "stop" ? proc.stop() : proc.kill());
      proc = await startVectorSearchProcess({ jwksUrl: issuer.jwksUrl, database });
      vs = createClient(VectorSearchService, proc.address);
      // The first search waits for the rebuild (checked before the log's kept tail moves on).
      await vs.search({ collectionId: "kept", vector: vectors[0]!, k: 1 }, as(user));
      expect(proc.output()).toMatch(/vector index built/);
      await allFound();
    }
    // Another tenant still sees nothing of it.
    const list = await vs.listCollections({}, as(other));
    expect(list.collections).toEqual([]);
  }, 180_000);
});
