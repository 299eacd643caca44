// The vector benchmarks' data: N vectors of D dimensions around 100 cluster centres on the unit
// sphere, each cluster with its own spread (so clusters overlap unevenly, like topics in a real
// embedding space), drawn from a seeded generator so every run sees the same vectors. Queries
// come from the same distribution but are not in the data.
import { readFileSync } from "node:fs";

export const CLUSTERS = 100;
export const SEED = 20_26;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Sample {
  v: Float32Array;
  cluster: number;
}

export function clusteredData(
  n: number,
  d: number,
  queries: number,
): { data: Sample[]; queries: Float32Array[] } {
  const rand = mulberry32(SEED);
  const gauss = (): number => {
    const u = Math.max(rand(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
  const centres = Array.from({ length: CLUSTERS }, () => {
    const c = Float32Array.from({ length: d }, gauss);
    const norm = Math.hypot(...c);
    return c.map((x) => x / norm);
  });
  const spread = Array.from({ length: CLUSTERS }, () => (0.6 + rand() * 0.8) / Math.sqrt(d));
  const sample = (): Sample => {
    const cluster = Math.floor(rand() * CLUSTERS);
    const c = centres[cluster]!;
    const s = spread[cluster]!;
    return { v: Float32Array.from({ length: d }, (_, i) => c[i]! + s * gauss()), cluster };
  };
  const data = Array.from({ length: n }, sample);
  return { data, queries: Array.from({ length: queries }, () => sample().v) };
}

export function loadavg(): string {
  try {
    return readFileSync("/proc/loadavg", "utf8").trim();
  } catch {
    return "n/a";
  }
}
