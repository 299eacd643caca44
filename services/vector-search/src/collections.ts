// The collections this replica serves: each one's settings and its in-memory index, loaded from
// MongoDB on first use (and warmed for every collection at start), keyed by tenant and id so no
// lookup can cross tenants. Writes to one collection run one after another (a promise chain per
// collection), so MongoDB and the index see documents in the same order; searches never wait
// for writes.
import type { Logger } from "@ensemble/kit";
import type { Collection } from "@ensemble/proto";
import type { CollectionRef, Store } from "./store.js";
import {
  DEFAULT_EF_CONSTRUCTION,
  DEFAULT_EF_SEARCH,
  DEFAULT_M,
  VectorIndex,
} from "./vector-index.js";

export interface LoadedCollection {
  collection: Collection;
  ref: CollectionRef;
  /** Resolves once the index holds every stored chunk. */
  index: Promise<VectorIndex>;
  /** Set when `index` has resolved (for Stats without waiting). */
  ready: VectorIndex | undefined;
  /** Tail of this collection's write chain. */
  writes: Promise<unknown>;
  deleted: boolean;
}

export interface CollectionsOptions {
  store: Store;
  logger: Logger;
  /** Threads USearch may use to add a batch (0 = all cores). */
  addThreads?: number;
}

const key = (tenantId: string, id: string) => `${tenantId}\u0000${id}`;

/** Yields to the event loop so a long rebuild does not stall calls in flight. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

export class Collections {
  readonly #store: Store;
  readonly #logger: Logger;
  readonly #addThreads: number;
  readonly #loaded = new Map<string, Promise<LoadedCollection | undefined>>();

  constructor(opts: CollectionsOptions) {
    this.#store = opts.store;
    this.#logger = opts.logger;
    this.#addThreads = opts.addThreads ?? 0;
  }

  /** The tenant's collection with its index loading (or loaded); undefined when it does not exist. */
  get(tenantId: string, id: string): Promise<LoadedCollection | undefined> {
    const k = key(tenantId, id);
    let entry = this.#loaded.get(k);
    if (entry === undefined) {
      entry = this.#store
        .getCollection(tenantId, id)
        .then((c) => (c === undefined ? undefined : this.#open(c)));
      this.#loaded.set(k, entry);
      const current = entry;
      // Neither a failed read nor "not found" is kept: another replica may create it.
      current.then(
        (c) => {
          if (c === undefined && this.#loaded.get(k) === current) this.#loaded.delete(k);
        },
        () => {
          if (this.#loaded.get(k) === current) this.#loaded.delete(k);
        },
      );
    }
    return entry;
  }

  /** Registers a collection this replica just created (its index starts empty). */
  created(collection: Collection): LoadedCollection {
    const loaded = this.#open(collection, true);
    this.#loaded.set(key(collection.tenantId, collection.id), Promise.resolve(loaded));
    return loaded;
  }

  forget(tenantId: string, id: string): void {
    this.#loaded.delete(key(tenantId, id));
  }

  /** Runs `fn` after every earlier write to the collection has finished. */
  write<T>(c: LoadedCollection, fn: () => Promise<T>): Promise<T> {
    const run = c.writes.then(fn, fn);
    c.writes = run.catch(() => undefined);
    return run;
  }

  /** Loads every stored collection's index, one after another (called at start, not awaited by calls). */
  async warmAll(): Promise<void> {
    const all = await this.#store.allCollections();
    for (const c of all) {
      const loaded = await this.get(c.tenantId, c.id);
      await loaded?.index;
    }
    this.#logger.info({ collections: all.length }, "vector indexes loaded");
  }

  #open(collection: Collection, empty = false): LoadedCollection {
    const ref = { tenantId: collection.tenantId, id: collection.id };
    const index = new VectorIndex({
      dimensions: collection.dimensions,
      metric: collection.metric,
      connectivity: collection.index?.m || DEFAULT_M,
      efConstruction: collection.index?.efConstruction || DEFAULT_EF_CONSTRUCTION,
      efSearch: collection.index?.efSearch || DEFAULT_EF_SEARCH,
      addThreads: this.#addThreads,
    });
    const loaded: LoadedCollection = {
      collection,
      ref,
      index: Promise.resolve(index),
      ready: empty ? index : undefined,
      writes: Promise.resolve(),
      deleted: false,
    };
    if (!empty) {
      loaded.index = this.#fill(ref, index).then((i) => (loaded.ready = i));
      // Writes wait for the rebuild, so a document written meanwhile is not overwritten by an
      // older copy read during it.
      loaded.writes = loaded.index.catch(() => undefined);
      loaded.index.catch(() => {
        // A failed load is retried by the next call.
        this.forget(ref.tenantId, ref.id);
      });
    }
    return loaded;
  }

  async #fill(ref: CollectionRef, index: VectorIndex): Promise<VectorIndex> {
    const started = performance.now();
    const docs = await this.#store.documents(ref);
    let chunks = 0;
    // In batches, yielding between them: adding to the graph is synchronous.
    for (let i = 0; i < docs.length; i += 256) {
      const batch = docs.slice(i, i + 256);
      index.put(batch);
      for (const d of batch) chunks += d.chunks.length;
      await tick();
    }
    this.#logger.info(
      {
        tenant: ref.tenantId,
        collection: ref.id,
        chunks,
        ms: Math.round(performance.now() - started),
      },
      "vector index built",
    );
    return index;
  }
}
