// MongoDB, the source of truth. Two collections:
// - `collections`: one document per (tenant, id), the Collection message in binary (`payload`,
//   lossless) plus the fields queries use.
// - `chunks`: one document per chunk; the vector as little-endian float32 bytes, metadata as JSON
//   text (keys may hold dots or start with "$", which MongoDB field names may not, and filters
//   run in memory anyway).
//
// Writing a document inserts its new chunks under a fresh `version` (each row also carries the
// version's chunk count), then deletes the document's rows of other versions. Inserts only, and
// one delete per request: FerretDB (SQLite) uses an index for `{_id}` alone, so a per-chunk
// replaceOne scans the whole collection each time (measured: 1,000 upserts took 8 s into a
// collection of 1,600 rows). A crash between the insert and the delete leaves two versions; the
// loader keeps each document's newest complete version, so a half-written document never shows
// and a finished one is never lost. No transactions (FerretDB has none).
import { fromBinary, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AlreadyExistsError, storedBytes } from "@ensemble/kit";
import { CollectionSchema, type Collection } from "@ensemble/proto";
import { Schema, type Connection, type Model } from "mongoose";

interface CollectionDoc {
  tenantId: string;
  id: string;
  payload: Buffer;
  createTime: Date;
  updateTime: Date;
}

interface ChunkDoc {
  tenantId: string;
  collectionId: string;
  documentId: string;
  chunkIndex: number;
  /**
   * The write that produced this row (fixed-width, so newer sorts later as a string); a
   * document's rows of older versions are garbage.
   */
  version: string;
  /** Chunks of this version of the document (a version with fewer rows is incomplete). */
  chunkCount: number;
  text: string;
  vector: Buffer;
  metadata: string;
  updateTime: Date;
}

const collectionSchema = new Schema<CollectionDoc>(
  {
    tenantId: { type: String, required: true },
    id: { type: String, required: true },
    payload: { type: Buffer, required: true },
    createTime: { type: Date, required: true },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
collectionSchema.index({ tenantId: 1, id: 1 }, { unique: true });

const chunkSchema = new Schema<ChunkDoc>(
  {
    tenantId: { type: String, required: true },
    collectionId: { type: String, required: true },
    documentId: { type: String, required: true },
    chunkIndex: { type: Number, required: true },
    version: { type: String, required: true },
    chunkCount: { type: Number, required: true },
    text: { type: String, default: "" },
    vector: { type: Buffer, required: true },
    metadata: { type: String, default: "{}" },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
// Not unique: FerretDB 1.24 reported duplicates for rows differing only in `version` under a
// unique index over these fields; versions are unique by construction (nextVersion).
chunkSchema.index({ tenantId: 1, collectionId: 1, documentId: 1, version: 1, chunkIndex: 1 });

export function vectorToBytes(v: Float32Array): Buffer {
  const buf = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) buf.writeFloatLE(v[i]!, i * 4);
  return buf;
}

export function vectorFromBytes(raw: unknown): Float32Array {
  const b = storedBytes(raw);
  const v = new Float32Array(b.byteLength / 4);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < v.length; i++) v[i] = view.getFloat32(i * 4, true);
  return v;
}

export interface StoredChunk {
  documentId: string;
  chunkIndex: number;
  text: string;
  vector: Float32Array;
  metadata: JsonObject;
}

export interface CollectionRef {
  tenantId: string;
  id: string;
}

function toCollection(doc: CollectionDoc): Collection {
  const c = fromBinary(CollectionSchema, storedBytes(doc.payload));
  c.tenantId = doc.tenantId;
  c.createTime = timestampFromDate(doc.createTime);
  c.updateTime = timestampFromDate(doc.updateTime);
  return c;
}

function isDuplicateKey(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 11000;
}

export class Store {
  readonly #collections: Model<CollectionDoc>;
  readonly #chunks: Model<ChunkDoc>;

  private constructor(conn: Connection) {
    this.#collections =
      (conn.models["VectorCollection"] as Model<CollectionDoc> | undefined) ??
      conn.model<CollectionDoc>("VectorCollection", collectionSchema, "collections");
    this.#chunks =
      (conn.models["VectorChunk"] as Model<ChunkDoc> | undefined) ??
      conn.model<ChunkDoc>("VectorChunk", chunkSchema, "chunks");
  }

  static async open(conn: Connection): Promise<Store> {
    const store = new Store(conn);
    await store.#collections.createIndexes();
    await store.#chunks.createIndexes();
    return store;
  }

  async createCollection(tenantId: string, c: Collection, now: Date): Promise<Collection> {
    const stored = { ...c, tenantId: "", createTime: undefined, updateTime: undefined };
    // A new collection starts empty: an upsert another replica finished after this id's last
    // DeleteCollection (it had checked the collection just before) left chunks under the id.
    if ((await this.#collections.exists({ tenantId, id: c.id })) === null) {
      await this.#chunks.deleteMany({ tenantId, collectionId: c.id });
    }
    try {
      await this.#collections.create({
        tenantId,
        id: c.id,
        payload: Buffer.from(toBinary(CollectionSchema, stored as Collection)),
        createTime: now,
        updateTime: now,
      });
    } catch (err) {
      if (isDuplicateKey(err)) {
        throw new AlreadyExistsError(`collection ${c.id} already exists`, { cause: err });
      }
      throw err;
    }
    return toCollection({
      tenantId,
      id: c.id,
      payload: Buffer.from(toBinary(CollectionSchema, stored as Collection)),
      createTime: now,
      updateTime: now,
    });
  }

  async getCollection(tenantId: string, id: string): Promise<Collection | undefined> {
    const doc = await this.#collections.findOne({ tenantId, id }).lean<CollectionDoc>();
    return doc === null ? undefined : toCollection(doc);
  }

  /** Ordered by id, starting after `afterId`. */
  async listCollections(tenantId: string, afterId: string, limit: number): Promise<Collection[]> {
    const docs = await this.#collections
      .find({ tenantId, ...(afterId !== "" ? { id: { $gt: afterId } } : {}) })
      .sort({ id: 1 })
      .limit(limit)
      .lean<CollectionDoc[]>();
    return docs.map(toCollection);
  }

  /** Every collection of every tenant (the start-up rebuild). */
  async allCollections(): Promise<Collection[]> {
    const docs = await this.#collections
      .find({})
      .sort({ tenantId: 1, id: 1 })
      .lean<CollectionDoc[]>();
    return docs.map(toCollection);
  }

  /** Moves the update time forward (never back: replicas' writes may land out of order). */
  async touchCollection(ref: CollectionRef, now: Date): Promise<void> {
    await this.#collections.updateOne(
      { tenantId: ref.tenantId, id: ref.id },
      { $max: { updateTime: now } },
    );
  }

  /** Chunks first: a crash midway leaves the collection (and a retry finds it). */
  async deleteCollection(ref: CollectionRef): Promise<boolean> {
    await this.#chunks.deleteMany({ tenantId: ref.tenantId, collectionId: ref.id });
    const res = await this.#collections.deleteOne({ tenantId: ref.tenantId, id: ref.id });
    return res.deletedCount > 0;
  }

  /**
   * Replaces each document's chunks with the given ones. `known` are the ids that may have rows
   * already (the others are new, so nothing needs deleting).
   */
  async putDocuments(
    ref: CollectionRef,
    docs: Array<{ documentId: string; chunks: StoredChunk[] }>,
    known: string[],
    now: Date,
  ): Promise<void> {
    const version = nextVersion(now);
    const rows: ChunkDoc[] = [];
    for (const d of docs) {
      for (const c of d.chunks) {
        rows.push({
          tenantId: ref.tenantId,
          collectionId: ref.id,
          documentId: d.documentId,
          chunkIndex: c.chunkIndex,
          version,
          chunkCount: d.chunks.length,
          text: c.text,
          vector: vectorToBytes(c.vector),
          metadata: JSON.stringify(c.metadata),
          updateTime: now,
        });
      }
    }
    for (let i = 0; i < rows.length; i += 500) {
      await this.#chunks.insertMany(rows.slice(i, i + 500), { ordered: true, lean: true });
    }
    if (known.length > 0) {
      await this.#chunks.deleteMany({
        tenantId: ref.tenantId,
        collectionId: ref.id,
        documentId: { $in: known },
        version: { $ne: version },
      });
    }
  }

  async deleteDocuments(ref: CollectionRef, documentIds: string[]): Promise<number> {
    if (documentIds.length === 0) return 0;
    const res = await this.#chunks.deleteMany({
      tenantId: ref.tenantId,
      collectionId: ref.id,
      documentId: { $in: documentIds },
    });
    return res.deletedCount;
  }

  /**
   * Every document of a collection (or the given ones; absent ones are left out) with its newest
   * complete version's chunks: the index rebuild, and reloading what another replica wrote. Rows
   * come in storage order, so a document is only known complete at the end.
   */
  async documents(
    ref: CollectionRef,
    documentIds?: string[],
  ): Promise<Array<{ documentId: string; chunks: StoredChunk[] }>> {
    if (documentIds?.length === 0) return [];
    const best = new Map<string, { version: string; count: number; chunks: StoredChunk[] }>();
    const partial = new Map<string, Map<string, { count: number; chunks: StoredChunk[] }>>();
    const cursor = this.#chunks
      .find({
        tenantId: ref.tenantId,
        collectionId: ref.id,
        ...(documentIds !== undefined ? { documentId: { $in: documentIds } } : {}),
      })
      .lean<ChunkDoc>()
      .cursor({ batchSize: 1_000 });
    for await (const doc of cursor) {
      let versions = partial.get(doc.documentId);
      if (versions === undefined) {
        versions = new Map<string, { count: number; chunks: StoredChunk[] }>();
        partial.set(doc.documentId, versions);
      }
      let v = versions.get(doc.version);
      if (v === undefined) versions.set(doc.version, (v = { count: doc.chunkCount, chunks: [] }));
      v.chunks.push({
        documentId: doc.documentId,
        chunkIndex: doc.chunkIndex,
        text: doc.text,
        vector: vectorFromBytes(doc.vector),
        metadata: JSON.parse(doc.metadata) as JsonObject,
      });
    }
    for (const [documentId, versions] of partial) {
      for (const [version, v] of versions) {
        if (v.chunks.length < v.count) continue;
        const current = best.get(documentId);
        if (current === undefined || version > current.version)
          best.set(documentId, { version, ...v });
      }
    }
    return [...best].map(([documentId, v]) => ({
      documentId,
      chunks: v.chunks.sort((a, b) => a.chunkIndex - b.chunkIndex),
    }));
  }
}

let lastVersion = 0;
/** Increasing within a process, and across restarts while the clock does not go back. */
function nextVersion(now: Date): string {
  lastVersion = Math.max(lastVersion + 1, now.getTime() * 1_000);
  return String(lastVersion).padStart(20, "0");
}
