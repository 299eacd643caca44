// Tenant-scoped storage of one catalog kind (models, addons or templates).
//
// Visibility: a tenant sees its own entries plus the global ones (tenantId ""), and its own
// entry shadows a global entry with the same id. Writes touch the caller tenant's entries only;
// writing the id of a global entry creates the tenant's own override, and deleting that
// override makes the global entry visible again. Global entries are written only by the seed
// loader. Every write is one single-document atomic operation (no transactions), so this works
// on FerretDB as well as MongoDB.
import {
  clone,
  fromBinary,
  toBinary,
  type DescMessage,
  type MessageShape,
} from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { InvalidArgumentError, NotFoundError, storedBytes } from "@ensemble/kit";
import type { Model, QueryFilter } from "mongoose";
import type { CatalogDoc } from "./catalog.model.js";

export const GLOBAL_TENANT = "";
export const DEFAULT_PAGE_SIZE = 50;

/** The fields every catalog message has (Model, PromptAddon, WorkflowTemplate). */
export interface CatalogFields {
  id: string;
  tenantId: string;
  createTime?: MessageShape<typeof import("@bufbuild/protobuf/wkt").TimestampSchema>;
  updateTime?: MessageShape<typeof import("@bufbuild/protobuf/wkt").TimestampSchema>;
}

export type FilterFields = Partial<
  Omit<CatalogDoc, "tenantId" | "id" | "payload" | "createTime" | "updateTime">
>;

export interface CatalogKind<Desc extends DescMessage> {
  /** "model", "addon", "template": used in messages. */
  noun: string;
  schema: Desc;
  /** The query fields copied out of the message on every write. */
  filterFields(message: MessageShape<Desc>): FilterFields;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

export interface UpsertResult<T> {
  item: T;
  created: boolean;
}

type Catalog<Desc extends DescMessage> = MessageShape<Desc> & CatalogFields;

export class CatalogStore<Desc extends DescMessage> {
  constructor(
    readonly kind: CatalogKind<Desc>,
    private readonly collection: Model<CatalogDoc>,
  ) {}

  /** The entry with this id visible to the tenant (its own first, else the global one). */
  async find(tenantId: string, id: string): Promise<Catalog<Desc> | undefined> {
    const docs = await this.collection
      .find({ tenantId: { $in: visibleTenants(tenantId) }, id })
      .lean<CatalogDoc[]>();
    const doc = docs.find((d) => d.tenantId === tenantId) ?? docs[0];
    return doc === undefined ? undefined : this.decode(doc);
  }

  async get(tenantId: string, id: string): Promise<Catalog<Desc>> {
    const found = await this.find(tenantId, id);
    if (found === undefined) throw new NotFoundError(`${this.kind.noun} "${id}" not found`);
    return found;
  }

  /** Visible entries matching `filter`, ordered by id, one page at a time. */
  async list(
    tenantId: string,
    filter: QueryFilter<CatalogDoc>,
    page: { pageSize: number; pageToken: string },
  ): Promise<Page<Catalog<Desc>>> {
    const size = page.pageSize > 0 ? page.pageSize : DEFAULT_PAGE_SIZE;
    const after = decodePageToken(page.pageToken);
    const conditions: Array<QueryFilter<CatalogDoc>> = [await this.visibility(tenantId), filter];
    if (after !== undefined) conditions.push({ id: { $gt: after } });
    const docs = await this.collection
      .find({ $and: conditions })
      .sort({ id: 1 })
      .limit(size + 1)
      .lean<CatalogDoc[]>();
    const items = docs.slice(0, size).map((d) => this.decode(d));
    const last = items.at(-1);
    return {
      items,
      nextPageToken: docs.length > size && last !== undefined ? encodePageToken(last.id) : "",
    };
  }

  /**
   * Query condition for "visible to this tenant, after shadowing". Shadowing must happen
   * before other filters: a tenant's disabled override of a global model hides the global one
   * even from a query for enabled models. The tenant's own ids are few (a catalog, not a log).
   */
  async visibility(tenantId: string): Promise<QueryFilter<CatalogDoc>> {
    if (tenantId === GLOBAL_TENANT) return { tenantId: GLOBAL_TENANT };
    const own = await this.collection
      .find({ tenantId }, { id: 1, _id: 0 })
      .lean<{ id: string }[]>();
    if (own.length === 0) return { tenantId: { $in: [tenantId, GLOBAL_TENANT] } };
    return {
      $or: [{ tenantId }, { tenantId: GLOBAL_TENANT, id: { $nin: own.map((d) => d.id) } }],
    };
  }

  /** Visible entries matching `filter` (no paging), ordered by id. */
  async findAll(tenantId: string, filter: QueryFilter<CatalogDoc>): Promise<Array<Catalog<Desc>>> {
    const docs = await this.collection
      .find({ $and: [await this.visibility(tenantId), filter] })
      .sort({ id: 1 })
      .lean<CatalogDoc[]>();
    return docs.map((d) => this.decode(d));
  }

  /** Creates or replaces the tenant's entry with message.id. Output-only fields are ignored. */
  async upsert(
    tenantId: string,
    message: MessageShape<Desc>,
  ): Promise<UpsertResult<Catalog<Desc>>> {
    const stored = clone(this.kind.schema, message) as Catalog<Desc>;
    stored.tenantId = "";
    delete stored.createTime;
    delete stored.updateTime;
    const now = new Date();
    const update = {
      $set: {
        payload: Buffer.from(toBinary(this.kind.schema, stored)),
        updateTime: now,
        ...this.kind.filterFields(stored),
      },
      $setOnInsert: { createTime: now },
    };
    // Two replicas inserting the same new id race on the unique index; the loser retries
    // and finds the document, turning its insert into an update.
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await this.collection.findOneAndUpdate({ tenantId, id: stored.id }, update, {
          upsert: true,
          returnDocument: "after",
          includeResultMetadata: true,
          lean: true,
        });
        const doc = result.value;
        if (doc === null) throw new Error(`upsert of ${this.kind.noun} returned no document`);
        return {
          item: this.decode(doc),
          created: result.lastErrorObject?.updatedExisting !== true,
        };
      } catch (err) {
        if (attempt < 3 && isDuplicateKey(err)) continue;
        throw err;
      }
    }
  }

  /** Deletes the tenant's own entry; false when it had none. */
  async delete(tenantId: string, id: string): Promise<boolean> {
    const result = await this.collection.deleteOne({ tenantId, id });
    return result.deletedCount > 0;
  }

  /** Every entry of exactly this tenant (no global fallback), for the seed loader. */
  async ownEntries(tenantId: string): Promise<Array<{ id: string; payload: Uint8Array }>> {
    const docs = await this.collection
      .find({ tenantId }, { id: 1, payload: 1 })
      .lean<CatalogDoc[]>();
    return docs.map((d) => ({ id: d.id, payload: storedBytes(d.payload) }));
  }

  async deleteMany(tenantId: string, ids: string[]): Promise<number> {
    if (ids.length === 0) return 0;
    const result = await this.collection.deleteMany({ tenantId, id: { $in: ids } });
    return result.deletedCount;
  }

  private decode(doc: CatalogDoc): Catalog<Desc> {
    const message = fromBinary(this.kind.schema, storedBytes(doc.payload)) as Catalog<Desc>;
    message.tenantId = doc.tenantId;
    message.createTime = timestampFromDate(new Date(doc.createTime));
    message.updateTime = timestampFromDate(new Date(doc.updateTime));
    return message;
  }
}

export function visibleTenants(tenantId: string): string[] {
  return tenantId === GLOBAL_TENANT ? [GLOBAL_TENANT] : [tenantId, GLOBAL_TENANT];
}

// Page tokens are opaque to clients; inside they carry the last id of the previous page, so
// paging stays stable while entries are added or removed.
export function encodePageToken(lastId: string): string {
  return Buffer.from(JSON.stringify({ after: lastId }), "utf8").toString("base64url");
}

export function decodePageToken(token: string): string | undefined {
  if (token === "") return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    if (
      parsed !== null &&
      typeof parsed === "object" &&
      "after" in parsed &&
      typeof parsed.after === "string"
    ) {
      return parsed.after;
    }
  } catch {
    // fall through
  }
  throw new InvalidArgumentError("page.page_token: not a page token from this list", {
    field: "page.page_token",
  });
}

function isDuplicateKey(err: unknown): boolean {
  return err !== null && typeof err === "object" && "code" in err && err.code === 11000;
}
