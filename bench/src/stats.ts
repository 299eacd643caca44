/** Latency summary of one benchmark case, in milliseconds. */
export interface Summary {
  name: string;
  calls: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  callsPerSecond: number;
}

export function summarise(name: string, samplesMs: number[], wallMs: number): Summary {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  const mean = sorted.reduce((s, x) => s + x, 0) / Math.max(1, sorted.length);
  return {
    name,
    calls: sorted.length,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    mean,
    callsPerSecond: (sorted.length / wallMs) * 1000,
  };
}

export function printTable(rows: Summary[]): void {
  const fmt = (x: number) => x.toFixed(3).padStart(9);
  console.log(
    `${"case".padEnd(44)} ${"calls".padStart(7)} ${"p50 ms".padStart(9)} ${"p90 ms".padStart(9)} ${"p99 ms".padStart(9)} ${"calls/s".padStart(9)}`,
  );
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(44)} ${String(r.calls).padStart(7)} ${fmt(r.p50)} ${fmt(r.p90)} ${fmt(r.p99)} ${r.callsPerSecond.toFixed(0).padStart(9)}`,
    );
  }
}
