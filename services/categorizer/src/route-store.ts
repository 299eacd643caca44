// Routes in MongoDB (the categorizer's own database): one document per (tenant, id), the Route
// message in binary (`payload`, lossless) plus the fields queries use. `tenantId` "" holds the
// global routes, which come only from the seed file. Reads go through a per-tenant cache with a
// short TTL, so a warm Classify makes no database round trip; this replica's own writes clear
// its cache at once, other replicas on the change notice (service.ts), or within the TTL.
import { clone, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { storedBytes } from "@ensemble/kit";
import { RouteSchema, type Route } from "@ensemble/proto";
import { Schema, type Connection, type Model } from "mongoose";
import { mergeRoutes } from "./routes.js";

export const GLOBAL_TENANT = "";

interface RouteDoc {
  tenantId: string;
  id: string;
  priority: number;
  enabled: boolean;
  payload: Buffer;
  createTime: Date;
  updateTime: Date;
}

const routeSchema = new Schema<RouteDoc>(
  {
    // Not `required`: mongoose rejects "" for required strings, and "" is the global tenant.
    tenantId: { type: String, default: "" },
    id: { type: String, required: true },
    priority: { type: Number, required: true },
    enabled: { type: Boolean, required: true },
    payload: { type: Buffer, required: true },
    createTime: { type: Date, required: true },
    updateTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
routeSchema.index({ tenantId: 1, id: 1 }, { unique: true });

export function routeModel(conn: Connection): Model<RouteDoc> {
  const existing = conn.models["Route"] as Model<RouteDoc> | undefined;
  return existing ?? conn.model<RouteDoc>("Route", routeSchema, "routes");
}

function toRoute(doc: RouteDoc): Route {
  const route = fromBinary(RouteSchema, storedBytes(doc.payload));
  route.tenantId = doc.tenantId;
  route.createTime = timestampFromDate(doc.createTime);
  route.updateTime = timestampFromDate(doc.updateTime);
  return route;
}

export interface RouteStoreOptions {
  cacheTtlMs: number;
  now?: () => number;
}

export class RouteStore {
  readonly #model: Model<RouteDoc>;
  readonly #ttlMs: number;
  readonly #now: () => number;
  // tenant -> routes in effect (merged with the global ones), as a shared promise so a burst of
  // cold calls reads once.
  readonly #cache = new Map<string, { routes: Promise<Route[]>; expiresAt: number }>();

  constructor(model: Model<RouteDoc>, opts: RouteStoreOptions) {
    this.#model = model;
    this.#ttlMs = opts.cacheTtlMs;
    this.#now = opts.now ?? Date.now;
  }

  static async open(conn: Connection, opts: RouteStoreOptions): Promise<RouteStore> {
    const model = routeModel(conn);
    await model.init(); // the unique index keeps concurrent upserts from duplicating
    return new RouteStore(model, opts);
  }

  /** The routes in effect for the tenant, in evaluation order (disabled ones included). */
  async effective(tenantId: string): Promise<Route[]> {
    const now = this.#now();
    let entry = this.#cache.get(tenantId);
    if (entry === undefined || entry.expiresAt <= now) {
      entry = { routes: this.#load(tenantId), expiresAt: now + this.#ttlMs };
      if (this.#cache.size >= 10_000) this.#cache.clear();
      this.#cache.set(tenantId, entry);
      const current = entry;
      current.routes.catch(() => {
        if (this.#cache.get(tenantId) === current) this.#cache.delete(tenantId);
      });
    }
    return entry.routes;
  }

  async #load(tenantId: string): Promise<Route[]> {
    const docs = await this.#model
      .find({ tenantId: { $in: tenantId === GLOBAL_TENANT ? [""] : ["", tenantId] } })
      .lean<RouteDoc[]>()
      .exec();
    const global = docs.filter((d) => d.tenantId === GLOBAL_TENANT).map(toRoute);
    const own = docs.filter((d) => d.tenantId !== GLOBAL_TENANT).map(toRoute);
    return mergeRoutes(global, tenantId === GLOBAL_TENANT ? [] : own);
  }

  /** Creates or replaces the tenant's route; returns it as stored. */
  async upsert(tenantId: string, route: Route): Promise<Route> {
    const now = new Date();
    const stored = clone(RouteSchema, route);
    stored.tenantId = "";
    stored.createTime = undefined;
    stored.updateTime = undefined;
    const doc = await this.#model
      .findOneAndUpdate(
        { tenantId, id: route.id },
        {
          $set: {
            priority: route.priority,
            enabled: route.enabled,
            payload: Buffer.from(toBinary(RouteSchema, stored)),
            updateTime: now,
          },
          $setOnInsert: { createTime: now },
        },
        { upsert: true, returnDocument: "after" },
      )
      .lean<RouteDoc>()
      .exec();
    this.#cache.delete(tenantId);
    if (tenantId === GLOBAL_TENANT) this.#cache.clear();
    return toRoute(doc);
  }

  /** True when the tenant had such a route. */
  async delete(tenantId: string, id: string): Promise<boolean> {
    const res = await this.#model.deleteOne({ tenantId, id }).exec();
    this.#cache.delete(tenantId);
    if (tenantId === GLOBAL_TENANT) this.#cache.clear();
    return res.deletedCount > 0;
  }

  /** The stored global routes by id (the seed compares and cleans up with them). */
  async globalIds(): Promise<Map<string, Uint8Array>> {
    const docs = await this.#model.find({ tenantId: GLOBAL_TENANT }).lean<RouteDoc[]>().exec();
    return new Map(docs.map((d) => [d.id, storedBytes(d.payload)]));
  }

  clearCache(): void {
    this.#cache.clear();
  }

  /** Drops the tenant's cached routes (another replica changed them). */
  forget(tenantId: string): void {
    this.#cache.delete(tenantId);
    if (tenantId === GLOBAL_TENANT) this.#cache.clear();
  }
}
