// Stored Responses API answers (ModelProxyService StoreResponse / GetStoredResponse /
// DeleteStoredResponse): what lets `previous_response_id` continue a conversation. One document
// per response in `stored_responses`, keyed by `_id` = [tenant, user, response id]: the owner is
// part of the key, so every read and write is the `{_id}` lookup FerretDB answers from its index
// (a filter with any other field scans the collection there), and another user's id is simply
// not there. The StoredResponse itself is in binary. Kept for `ttlMs` (OpenAI keeps them 30 days): an older one is
// missing to every read at once, and sweep() deletes them (FerretDB 1.24 has no TTL indexes; the
// sweep's filter on createTime scans the collection there, so it runs rarely, not per call).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { storedBytes } from "@ensemble/kit";
import { StoredResponseSchema, type StoredResponse } from "@ensemble/proto";
import { Schema, type Connection, type Model } from "mongoose";

interface StoredResponseDoc {
  _id: string;
  tenantId: string;
  userId: string;
  record: Buffer;
  createTime: Date;
}

const schema = new Schema<StoredResponseDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    record: { type: Buffer, required: true },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);

/** Who a stored response belongs to (from the verified token). */
export interface Owner {
  tenantId: string;
  userId: string;
}

function key(owner: Owner, id: string): string {
  return JSON.stringify([owner.tenantId, owner.userId, id]);
}

export interface StoredResponsesOptions {
  /** How long a stored response is kept. */
  ttlMs: number;
  now?: () => number;
}

export class StoredResponses {
  readonly #model: Model<StoredResponseDoc>;
  readonly #ttlMs: number;
  readonly #now: () => number;

  private constructor(model: Model<StoredResponseDoc>, opts: StoredResponsesOptions) {
    this.#model = model;
    this.#ttlMs = opts.ttlMs;
    this.#now = opts.now ?? Date.now;
  }

  static async open(conn: Connection, opts: StoredResponsesOptions): Promise<StoredResponses> {
    const model =
      (conn.models["StoredResponse"] as Model<StoredResponseDoc> | undefined) ??
      conn.model<StoredResponseDoc>("StoredResponse", schema, "stored_responses");
    await model.init();
    return new StoredResponses(model, opts);
  }

  /** Deletes every response older than the TTL; returns how many. */
  async sweep(): Promise<number> {
    const res = await this.#model.collection.deleteMany({
      createTime: { $lt: new Date(this.#now() - this.#ttlMs) },
    });
    return res.deletedCount;
  }

  /** Stores (or replaces) the owner's response. */
  async put(owner: Owner, response: StoredResponse): Promise<void> {
    const record = create(StoredResponseSchema, { ...response, createTime: timestampNow() });
    await this.#model.collection.updateOne(
      { _id: key(owner, response.id) as never },
      {
        $set: {
          tenantId: owner.tenantId,
          userId: owner.userId,
          record: Buffer.from(toBinary(StoredResponseSchema, record)),
          createTime: new Date(this.#now()),
        },
      },
      { upsert: true },
    );
  }

  /** The owner's response, or undefined (none, or another user's). */
  async get(owner: Owner, id: string): Promise<StoredResponse | undefined> {
    const doc = (await this.#model.collection.findOne({
      _id: key(owner, id) as never,
    })) as StoredResponseDoc | null;
    if (doc === null || doc.createTime.getTime() < this.#now() - this.#ttlMs) return undefined;
    return fromBinary(StoredResponseSchema, storedBytes(doc.record));
  }

  /** Deletes the owner's response; false when there was none. */
  async delete(owner: Owner, id: string): Promise<boolean> {
    const res = await this.#model.collection.deleteOne({ _id: key(owner, id) as never });
    return res.deletedCount > 0;
  }
}
