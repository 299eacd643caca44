// The collections this replica serves: each one's settings and its in-memory index, loaded from
// MongoDB on first use (and warmed for every collection at start), keyed by tenant and id so no
// lookup can cross tenants. Writes to one collection run one after another (a promise chain per
// collection), so MongoDB and the index see documents in the same order; searches never wait
// for writes. Other replicas' writes arrive as changes (changes.ts) and go through the same
// chain: the documents they name are reloaded from MongoDB.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Logger } from "@ensemble/kit";
import { VectorChangeKind, type Collection, type VectorChange } from "@ensemble/proto";
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

/** Milliseconds since the epoch of a stored time (unset: 0). */
const ms = (t: Timestamp | undefined) => (t === undefined ? 0 : timestampDate(t).getTime());

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

  /**
   * Applies another replica's write (or, `own`, waits for this replica's earlier writes: its own
   * changes are applied already). A collection this replica has not loaded needs nothing: its
   * load reads MongoDB, which has the write.
   */
  async apply(change: VectorChange, own: boolean): Promise<void> {
    const k = key(change.tenantId, change.collectionId);
    const entry = this.#loaded.get(k);
    if (entry === undefined) return;
    const c = await entry.catch(() => undefined);
    if (c === undefined) return;
    const time = change.time === undefined ? 0 : ms(change.time);
    await this.write(c, async () => {
      if (own) return;
      if (change.kind === VectorChangeKind.DOCUMENTS) {
        if (c.deleted) return;
        const index = await c.index;
        const docs = await this.#store.documents(c.ref, change.documentIds);
        const found = new Set(docs.map((d) => d.documentId));
        index.remove(change.documentIds.filter((id) => !found.has(id)));
        index.put(docs);
        if (time > ms(c.collection.updateTime)) c.collection.updateTime = change.time;
        return;
      }
      // CREATED or DELETED: an older incarnation of the id than the one the change is about is
      // gone; a newer one (loaded after the id was re-created) stays.
      const createdAt = ms(c.collection.createTime);
      const gone =
        change.kind === VectorChangeKind.COLLECTION_DELETED ? createdAt <= time : createdAt < time;
      if (gone) this.#drop(k, entry, c);
    });
  }

  /** Rebuilds a loaded collection's index from MongoDB (after its pending writes). */
  async rebuild(tenantId: string, id: string): Promise<void> {
    const entry = this.#loaded.get(key(tenantId, id));
    const c = await entry?.catch(() => undefined);
    if (c === undefined) return;
    await this.write(c, () => this.#refill(c));
  }

  /**
   * Compares every loaded collection with MongoDB: one that is gone (or was re-created) is
   * dropped, one whose update time differs is rebuilt. Returns how many were.
   */
  async reconcile(): Promise<number> {
    // Entries registered before the read: MongoDB had each of them when it was read.
    const loaded = [...this.#loaded];
    const stored = new Map(
      (await this.#store.allCollections()).map((c) => [key(c.tenantId, c.id), c]),
    );
    let changed = 0;
    for (const [k, entry] of loaded) {
      const c = await entry.catch(() => undefined);
      // Not loaded yet, or loading from MongoDB right now: nothing to compare.
      if (c === undefined || c.ready === undefined || c.deleted) continue;
      await this.write(c, async () => {
        if (c.deleted) return;
        const s = stored.get(k);
        if (s === undefined || ms(s.createTime) !== ms(c.collection.createTime)) {
          this.#drop(k, entry, c);
          changed++;
        } else if (ms(s.updateTime) > ms(c.collection.updateTime)) {
          await this.#refill(c);
          c.collection.updateTime = s.updateTime;
          changed++;
        }
      });
    }
    return changed;
  }

  /** The collection is gone: calls holding it fail NOT_FOUND, the next lookup reads MongoDB. */
  #drop(k: string, entry: Promise<LoadedCollection | undefined>, c: LoadedCollection): void {
    c.deleted = true;
    if (this.#loaded.get(k) === entry) this.#loaded.delete(k);
  }

  async #refill(c: LoadedCollection): Promise<void> {
    const index = await this.#fill(c.ref, this.#newIndex(c.collection));
    c.index = Promise.resolve(index);
    c.ready = index;
  }

  #newIndex(collection: Collection): VectorIndex {
    return new VectorIndex({
      dimensions: collection.dimensions,
      metric: collection.metric,
      connectivity: collection.index?.m || DEFAULT_M,
      efConstruction: collection.index?.efConstruction || DEFAULT_EF_CONSTRUCTION,
      efSearch: collection.index?.efSearch || DEFAULT_EF_SEARCH,
      addThreads: this.#addThreads,
    });
  }

  #open(collection: Collection, empty = false): LoadedCollection {
    const ref = { tenantId: collection.tenantId, id: collection.id };
    const index = this.#newIndex(collection);
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
