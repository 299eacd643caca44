// One collection's in-memory index: an HNSW graph (USearch, native, prebuilt binaries) plus the
// chunks it points at (document, text, metadata, and a copy of the vector for exact scoring,
// exact search and compaction). MongoDB holds the truth; this is rebuilt from it at start.
//
// Concurrency: every method is synchronous, so on Node's single thread a search never sees a
// half-applied document (a document's old chunks leave and its new chunks arrive in one call).
//
// Filtered search: HNSW is asked for more candidates than k (growing 4x each round) and hits
// failing the filter are dropped; when that does not give k hits, the filtered set is scanned
// exactly. So no hit ever fails the filter, and k hits come back whenever k chunks pass it.
import type { JsonObject } from "@bufbuild/protobuf";
import { DistanceMetric } from "@ensemble/proto";
import usearch, { type Index as UsearchIndex } from "usearch";
import type { Predicate } from "./filter.js";

export interface IndexParams {
  dimensions: number;
  metric: DistanceMetric;
  /** Links per node (M). */
  connectivity: number;
  efConstruction: number;
  efSearch: number;
  /** Threads USearch may use while adding a batch (0 = all cores). */
  addThreads?: number;
}

export const DEFAULT_M = 16;
export const DEFAULT_EF_CONSTRUCTION = 200;
/** Measured on bench/src/vector.ts: recall@10 >= 0.95 on 100k clustered 384-d vectors. */
export const DEFAULT_EF_SEARCH = 64;

export interface ChunkInput {
  chunkIndex: number;
  text: string;
  vector: Float32Array;
  metadata: JsonObject;
}

export interface Entry extends ChunkInput {
  documentId: string;
}

export interface Hit {
  entry: Entry;
  /** Higher is closer (cosine, dot product, or minus the Euclidean distance). */
  score: number;
}

export interface SearchOptions {
  k: number;
  filter?: Predicate | undefined;
  ef?: number | undefined;
  exact?: boolean | undefined;
}

/** Scales a vector to unit length in place (a zero vector stays zero). */
export function normalizeVector(v: Float32Array): Float32Array {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  if (s > 0) {
    const inv = 1 / Math.sqrt(s);
    for (let i = 0; i < v.length; i++) v[i]! *= inv;
  }
  return v;
}

export function scoreFn(metric: DistanceMetric): (a: Float32Array, b: Float32Array) => number {
  if (metric === DistanceMetric.L2) {
    return (a, b) => {
      let s = 0;
      for (let i = 0; i < a.length; i++) {
        const d = a[i]! - b[i]!;
        s += d * d;
      }
      return -Math.sqrt(s);
    };
  }
  return (a, b) => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
    return s;
  };
}

function toKeys(keys: number[]): BigUint64Array {
  const out = new BigUint64Array(keys.length);
  for (let i = 0; i < keys.length; i++) out[i] = BigInt(keys[i]!);
  return out;
}

/** Best first; ties in a stable order (document, then chunk). */
function byScore(a: Hit, b: Hit): number {
  return (
    b.score - a.score ||
    (a.entry.documentId < b.entry.documentId
      ? -1
      : a.entry.documentId > b.entry.documentId
        ? 1
        : 0) ||
    a.entry.chunkIndex - b.entry.chunkIndex
  );
}

/** Candidates fetched from the graph before giving up on it and scanning the filtered set. */
const MAX_CANDIDATES = 4_096;
/** Compact (rebuild the graph) when removed nodes outnumber live ones and exceed this. */
const COMPACT_AFTER = 10_000;

export class VectorIndex {
  readonly params: IndexParams;
  readonly #score: (a: Float32Array, b: Float32Array) => number;
  #graph: UsearchIndex;
  readonly #entries = new Map<number, Entry>();
  readonly #documents = new Map<string, number[]>();
  #nextKey = 1;
  /** Nodes removed from the graph since it was built (USearch keeps them as tombstones). */
  #removed = 0;

  /** USearch's distance as the contract's score: 1 - ip is the distance for ip and cosine. */
  readonly #distanceToScore: (d: number) => number;

  constructor(params: IndexParams) {
    this.params = params;
    this.#score = scoreFn(params.metric);
    this.#distanceToScore =
      params.metric === DistanceMetric.L2 ? (d) => -Math.sqrt(Math.max(0, d)) : (d) => 1 - d;
    this.#graph = this.#newGraph();
  }

  #newGraph(): UsearchIndex {
    const { dimensions, metric, connectivity, efConstruction, efSearch } = this.params;
    return new usearch.Index({
      dimensions,
      // Cosine vectors are normalised on the way in, so the inner product is the cosine.
      metric: metric === DistanceMetric.L2 ? usearch.MetricKind.L2sq : usearch.MetricKind.IP,
      quantization: usearch.ScalarKind.F32,
      connectivity,
      expansion_add: efConstruction,
      expansion_search: efSearch,
      multi: false,
    });
  }

  get chunks(): number {
    return this.#entries.size;
  }

  get documents(): number {
    return this.#documents.size;
  }

  /** Approximate bytes held: vectors twice (graph and copy), graph links, and the chunks' text. */
  get bytes(): number {
    const nodes = this.#entries.size + this.#removed;
    const links = nodes * this.params.connectivity * 2 * 4 * 1.1;
    let text = 0;
    for (const e of this.#entries.values()) text += e.text.length * 2 + 64;
    return Math.round(
      nodes * this.params.dimensions * 4 +
        this.#entries.size * this.params.dimensions * 4 +
        links +
        text,
    );
  }

  has(documentId: string): boolean {
    return this.#documents.has(documentId);
  }

  /** The chunks of a document, in order. */
  document(documentId: string): Entry[] {
    return (this.#documents.get(documentId) ?? []).map((k) => this.#entries.get(k)!);
  }

  /** Ids of the documents whose chunks pass the predicate (chunks of a document share metadata). */
  documentsMatching(p: Predicate): string[] {
    const out = new Set<string>();
    for (const e of this.#entries.values()) if (p(e.metadata)) out.add(e.documentId);
    return [...out];
  }

  /** Replaces documents (all their previous chunks) in one synchronous step. */
  put(docs: Array<{ documentId: string; chunks: ChunkInput[] }>): void {
    const keys: number[] = [];
    const vectors: Float32Array[] = [];
    for (const d of docs) {
      this.#drop(d.documentId);
      const own: number[] = [];
      for (const c of d.chunks) {
        if (c.vector.length !== this.params.dimensions) {
          throw new Error(
            `vector of ${c.vector.length} dimensions in a ${this.params.dimensions}-d index`,
          );
        }
        const key = this.#nextKey++;
        if (this.params.metric === DistanceMetric.COSINE) normalizeVector(c.vector);
        this.#entries.set(key, { ...c, documentId: d.documentId });
        own.push(key);
        keys.push(key);
        vectors.push(c.vector);
      }
      if (own.length > 0) this.#documents.set(d.documentId, own);
    }
    if (keys.length === 0) return;
    this.#addToGraph(keys, vectors);
    this.#maybeCompact();
  }

  /** Removes documents; returns the chunks removed. */
  remove(documentIds: Iterable<string>): number {
    let n = 0;
    for (const id of documentIds) n += this.#drop(id);
    this.#maybeCompact();
    return n;
  }

  #drop(documentId: string): number {
    const keys = this.#documents.get(documentId);
    if (keys === undefined) return 0;
    for (const k of keys) this.#entries.delete(k);
    this.#graph.remove(toKeys(keys));
    this.#removed += keys.length;
    this.#documents.delete(documentId);
    return keys.length;
  }

  #addToGraph(keys: number[], vectors: Float32Array[]): void {
    const d = this.params.dimensions;
    const flat = new Float32Array(vectors.length * d);
    vectors.forEach((v, i) => flat.set(v, i * d));
    this.#graph.add(toKeys(keys), flat, this.params.addThreads ?? 0);
  }

  #maybeCompact(): void {
    if (this.#removed < COMPACT_AFTER || this.#removed < this.#entries.size) return;
    this.#graph = this.#newGraph();
    this.#removed = 0;
    const keys = [...this.#entries.keys()];
    for (let i = 0; i < keys.length; i += 4_096) {
      const batch = keys.slice(i, i + 4_096);
      this.#addToGraph(
        batch,
        batch.map((k) => this.#entries.get(k)!.vector),
      );
    }
  }

  /** The query as the index compares it (a normalised copy for cosine). */
  prepareQuery(vector: Float32Array): Float32Array {
    return this.params.metric === DistanceMetric.COSINE
      ? normalizeVector(Float32Array.from(vector))
      : vector;
  }

  /** The k best chunks passing the filter, best first. */
  search(query: Float32Array, opts: SearchOptions): Hit[] {
    const q = this.prepareQuery(query);
    const live = this.#entries.size;
    const k = Math.min(opts.k, live);
    if (k === 0) return [];
    if (opts.exact === true) return this.exact(q, opts.k, opts.filter);
    const filter = opts.filter;
    // USearch searches with max(its configured ef, results asked), so asking for max(k, ef)
    // results is a per-query ef; within the configured ef, asking for k is the same search.
    const ef = opts.ef !== undefined && opts.ef > this.params.efSearch ? opts.ef : 0;
    let wanted = Math.max(filter === undefined ? k : k * 2, ef);
    const toScore = this.#distanceToScore;
    for (;;) {
      const asked = Math.min(wanted, live + this.#removed);
      const found = this.#graph.search(q, asked, 1);
      const hits: Hit[] = [];
      for (let i = 0; i < found.keys.length; i++) {
        const entry = this.#entries.get(Number(found.keys[i]!));
        if (entry === undefined || (filter !== undefined && !filter(entry.metadata))) continue;
        hits.push({ entry, score: toScore(found.distances[i]!) });
      }
      if (hits.length >= k) {
        hits.sort(byScore);
        return hits.slice(0, k);
      }
      if (filter === undefined && hits.length >= live) return hits.sort(byScore);
      if (asked >= live + this.#removed || wanted >= MAX_CANDIDATES) break;
      // Ask for as many as this round's pass rate says k hits need (with a margin); when that
      // is beyond what the graph can give cheaply, the filter is selective: scan instead.
      const passRate = hits.length / Math.max(1, found.keys.length);
      const need = passRate > 0 ? Math.ceil((k / passRate) * 1.5) : Infinity;
      if (need > MAX_CANDIDATES) break;
      wanted = Math.min(Math.max(wanted * 2, need), MAX_CANDIDATES);
    }
    // The filter is selective (or the graph came back short): the filtered set, exactly.
    return this.exact(q, opts.k, filter);
  }

  /** Brute force over every live chunk passing the filter. `q` is already prepared. */
  exact(q: Float32Array, k: number, filter?: Predicate): Hit[] {
    const top: Hit[] = [];
    let worst = -Infinity;
    for (const entry of this.#entries.values()) {
      if (filter !== undefined && !filter(entry.metadata)) continue;
      const score = this.#score(q, entry.vector);
      if (top.length >= k && score <= worst) continue;
      top.push({ entry, score });
      if (top.length > k * 2) {
        top.sort(byScore);
        top.length = k;
        worst = top[k - 1]!.score;
      }
    }
    top.sort(byScore);
    return top.slice(0, k);
  }
}
