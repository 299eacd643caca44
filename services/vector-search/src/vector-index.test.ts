import { DistanceMetric } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { VectorIndex } from "./vector-index.js";

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function fill(metric: DistanceMetric, n: number, d: number) {
  const r = rng(7);
  const index = new VectorIndex({
    dimensions: d,
    metric,
    connectivity: 16,
    efConstruction: 100,
    efSearch: 32,
  });
  const docs = Array.from({ length: n }, (_, i) => ({
    documentId: `d${i}`,
    chunks: [
      {
        chunkIndex: 0,
        text: "",
        vector: Float32Array.from({ length: d }, () => r() - 0.5),
        metadata: { group: i % 50, even: i % 2 === 0 },
      },
    ],
  }));
  index.put(docs);
  return { index, r };
}

describe("vector index", () => {
  for (const metric of [DistanceMetric.COSINE, DistanceMetric.DOT, DistanceMetric.L2]) {
    it(`${DistanceMetric[metric]} - approximate hits agree with exact search, scores higher is closer`, () => {
      const { index, r } = fill(metric, 2_000, 16);
      let agree = 0;
      for (let q = 0; q < 50; q++) {
        const query = Float32Array.from({ length: 16 }, () => r() - 0.5);
        const approx = index.search(query, { k: 10, ef: 128 });
        const exact = index.search(query, { k: 10, exact: true });
        expect(approx).toHaveLength(10);
        for (let i = 1; i < approx.length; i++)
          expect(approx[i - 1]!.score).toBeGreaterThanOrEqual(approx[i]!.score);
        const ids = new Set(exact.map((h) => h.entry.documentId));
        agree += approx.filter((h) => ids.has(h.entry.documentId)).length;
      }
      expect(agree / 500).toBeGreaterThan(0.95);
    });
  }

  it("filters - no hit fails the filter, and k hits whenever k pass (selective and broad)", () => {
    const { index, r } = fill(DistanceMetric.COSINE, 3_000, 16);
    for (const [filter, passing] of [
      [(m: Record<string, unknown>) => m["group"] === 3, 60],
      [(m: Record<string, unknown>) => m["even"] === true, 1_500],
      [(m: Record<string, unknown>) => m["group"] === 999, 0],
    ] as const) {
      const query = Float32Array.from({ length: 16 }, () => r() - 0.5);
      const hits = index.search(query, { k: 100, filter });
      expect(hits).toHaveLength(Math.min(100, passing));
      expect(hits.every((h) => filter(h.entry.metadata))).toBe(true);
      const exact = index.search(query, { k: 100, filter, exact: true });
      expect(hits[0]?.entry.documentId).toBe(exact[0]?.entry.documentId);
    }
  });

  it("replace and remove - a document's old chunks leave with it", () => {
    const { index } = fill(DistanceMetric.L2, 100, 4);
    const v = Float32Array.from([9, 9, 9, 9]);
    index.put([
      {
        documentId: "d1",
        chunks: [0, 1].map((i) => ({
          chunkIndex: i,
          text: `t${i}`,
          vector: Float32Array.from(v),
          metadata: {},
        })),
      },
    ]);
    expect(index.chunks).toBe(101);
    expect(index.documents).toBe(100);
    const hits = index.search(v, { k: 3 });
    expect(hits.slice(0, 2).map((h) => [h.entry.documentId, h.entry.chunkIndex, h.score])).toEqual([
      ["d1", 0, -0],
      ["d1", 1, -0],
    ]);
    expect(index.remove(["d1", "nope"])).toBe(2);
    expect(index.search(v, { k: 100 }).some((h) => h.entry.documentId === "d1")).toBe(false);
  });
});
