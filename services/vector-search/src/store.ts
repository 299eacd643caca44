// MongoDB, the source of truth. Two collections:
// - `collections`: one document per (tenant, id), the Collection message in binary (`payload`,
//   lossless) plus the fields queries use.
// - `chunks`: one document per chunk, keyed (tenant, collection, document, chunkIndex); the
//   vector as little-endian float32 bytes, metadata as JSON text (keys may hold dots or start
//   with "$", which MongoDB field names may not, and filters run in memory anyway).
// Writes are single-document upserts and deletes (no transactions, FerretDB has none). Replacing
// a document upserts its chunks 0..n-1 and then deletes its chunks >= n, so a crash in between
// leaves at worst stale trailing chunks that the client's retry of the idempotent Upsert removes.
import { fromBinary, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AlreadyExistsError } from "@ensemble/kit";
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
    text: { type: String, default: "" },
    vector: { type: Buffer, required: true },
    metadata: { type: String, default: "{}" },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
chunkSchema.index({ tenantId: 1, collectionId: 1, documentId: 1, chunkIndex: 1 }, { unique: true });

/** Bytes of a stored Binary: lean() reads give a BSON Binary (bytes in `.buffer`), documents a Buffer. */
function bytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (value !== null && typeof value === "object" && "buffer" in value) {
    const inner = value.buffer;
    if (inner instanceof Uint8Array) return inner;
  }
  throw new Error("stored value is not binary");
}

export function vectorToBytes(v: Float32Array): Buffer {
  const buf = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) buf.writeFloatLE(v[i]!, i * 4);
  return buf;
}

export function vectorFromBytes(raw: unknown): Float32Array {
  const b = bytes(raw);
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
  const c = fromBinary(CollectionSchema, bytes(doc.payload));
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

  async touchCollection(ref: CollectionRef, now: Date): Promise<void> {
    await this.#collections.updateOne(
      { tenantId: ref.tenantId, id: ref.id },
      { $set: { updateTime: now } },
    );
  }

  /** Chunks first: a crash midway leaves the collection (and a retry finds it). */
  async deleteCollection(ref: CollectionRef): Promise<boolean> {
    await this.#chunks.deleteMany({ tenantId: ref.tenantId, collectionId: ref.id });
    const res = await this.#collections.deleteOne({ tenantId: ref.tenantId, id: ref.id });
    return res.deletedCount > 0;
  }

  /** Replaces each document's chunks with the given ones. */
  async putDocuments(
    ref: CollectionRef,
    docs: Array<{ documentId: string; chunks: StoredChunk[] }>,
    now: Date,
  ): Promise<void> {
    const ops: Parameters<Model<ChunkDoc>["bulkWrite"]>[0] = [];
    for (const d of docs) {
      for (const c of d.chunks) {
        const key = {
          tenantId: ref.tenantId,
          collectionId: ref.id,
          documentId: d.documentId,
          chunkIndex: c.chunkIndex,
        };
        ops.push({
          replaceOne: {
            filter: key,
            replacement: {
              ...key,
              text: c.text,
              vector: vectorToBytes(c.vector),
              metadata: JSON.stringify(c.metadata),
              updateTime: now,
            },
            upsert: true,
          },
        });
      }
    }
    for (let i = 0; i < ops.length; i += 500) {
      await this.#chunks.bulkWrite(ops.slice(i, i + 500), { ordered: true });
    }
    const trailing = docs.map((d) => ({
      documentId: d.documentId,
      chunkIndex: { $gte: d.chunks.length },
    }));
    for (let i = 0; i < trailing.length; i += 200) {
      await this.#chunks.deleteMany({
        tenantId: ref.tenantId,
        collectionId: ref.id,
        $or: trailing.slice(i, i + 200),
      });
    }
  }

  async deleteDocuments(ref: CollectionRef, documentIds: string[]): Promise<number> {
    let n = 0;
    for (let i = 0; i < documentIds.length; i += 500) {
      const res = await this.#chunks.deleteMany({
        tenantId: ref.tenantId,
        collectionId: ref.id,
        documentId: { $in: documentIds.slice(i, i + 500) },
      });
      n += res.deletedCount;
    }
    return n;
  }

  /** Every chunk of a collection, in batches (the index rebuild). */
  async *chunks(ref: CollectionRef, batchSize = 1_000): AsyncGenerator<StoredChunk[]> {
    const cursor = this.#chunks
      .find({ tenantId: ref.tenantId, collectionId: ref.id })
      .lean<ChunkDoc>()
      .cursor({ batchSize });
    let batch: StoredChunk[] = [];
    for await (const doc of cursor) {
      batch.push({
        documentId: doc.documentId,
        chunkIndex: doc.chunkIndex,
        text: doc.text,
        vector: vectorFromBytes(doc.vector),
        metadata: JSON.parse(doc.metadata) as JsonObject,
      });
      if (batch.length >= batchSize) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0) yield batch;
  }
}
