// Plugin registrations: out-of-process gRPC servers implementing ensemble.plugin.v1.PluginService.
// A registration is a lease: it lives ttl_ms after its last heartbeat. Reads hide expired
// registrations at once; a sweeper deletes them later (idempotent, so every replica may run it).
// Visibility follows the catalog: the tenant's own registrations plus global ones, the tenant's
// shadowing a global one with the same id.
import { clone, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  createClient,
  InvalidArgumentError,
  type GrpcClient,
  loggerOf,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
  storedBytes,
  type Logger,
} from "@ensemble/kit";
import {
  Health,
  HealthCheckResponse_ServingStatus,
  PluginRegistrationSchema,
  type PluginRegistration,
  type RegistryService,
} from "@ensemble/proto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Model } from "mongoose";
import type { PluginDoc } from "./catalog.model.js";
import {
  DEFAULT_PAGE_SIZE,
  decodePageToken,
  encodePageToken,
  GLOBAL_TENANT,
} from "./catalog-store.js";
import { pageOf } from "./catalog-service.js";

export const DEFAULT_PLUGIN_TTL_MS = 30_000;

export class PluginStore {
  constructor(
    private readonly collection: Model<PluginDoc>,
    private readonly defaultTtlMs: number = DEFAULT_PLUGIN_TTL_MS,
  ) {}

  async register(tenantId: string, plugin: PluginRegistration): Promise<PluginRegistration> {
    const stored = clone(PluginRegistrationSchema, plugin);
    stored.tenantId = "";
    delete stored.createTime;
    delete stored.lastHeartbeatTime;
    delete stored.expireTime;
    const ttlMs = stored.ttlMs > 0 ? stored.ttlMs : this.defaultTtlMs;
    const now = new Date();
    const update = {
      $set: {
        payload: Buffer.from(toBinary(PluginRegistrationSchema, stored)),
        ttlMs,
        lastHeartbeat: now,
        expireAt: new Date(now.getTime() + ttlMs),
      },
      $setOnInsert: { createTime: now },
    };
    for (let attempt = 1; ; attempt++) {
      try {
        const doc = await this.collection.findOneAndUpdate({ tenantId, id: stored.id }, update, {
          upsert: true,
          returnDocument: "after",
          lean: true,
        });
        if (doc === null) throw new Error("plugin upsert returned no document");
        return decode(doc);
      } catch (err) {
        if (attempt < 3 && isDuplicateKey(err)) continue;
        throw err;
      }
    }
  }

  /** Extends the lease; NOT_FOUND when the registration is gone or already expired. */
  async heartbeat(tenantId: string, id: string): Promise<PluginRegistration> {
    const now = new Date();
    const current = await this.collection
      .findOne({ tenantId, id, expireAt: { $gt: now } })
      .lean<PluginDoc>();
    if (current === null) throw expired(id);
    // Conditional on the lease we just read, so a heartbeat never revives a registration that
    // expired (or was re-registered) in between.
    const doc = await this.collection.findOneAndUpdate(
      { tenantId, id, expireAt: current.expireAt },
      { $set: { lastHeartbeat: now, expireAt: new Date(now.getTime() + current.ttlMs) } },
      { returnDocument: "after", lean: true },
    );
    if (doc === null) {
      // Someone else extended it concurrently: still alive, answer with the current state.
      const again = await this.collection
        .findOne({ tenantId, id, expireAt: { $gt: now } })
        .lean<PluginDoc>();
      if (again === null) throw expired(id);
      return decode(again);
    }
    return decode(doc);
  }

  async deregister(tenantId: string, id: string): Promise<boolean> {
    const result = await this.collection.deleteOne({ tenantId, id });
    return result.deletedCount > 0;
  }

  async list(
    tenantId: string,
    page: { pageSize: number; pageToken: string },
  ): Promise<{ items: PluginRegistration[]; nextPageToken: string }> {
    const size = page.pageSize > 0 ? page.pageSize : DEFAULT_PAGE_SIZE;
    const after = decodePageToken(page.pageToken);
    const now = new Date();
    // Shadowing looks at live registrations only: an expired tenant plugin hides nothing.
    const own =
      tenantId === GLOBAL_TENANT
        ? []
        : await this.collection
            .find({ tenantId, expireAt: { $gt: now } }, { id: 1, _id: 0 })
            .lean<{ id: string }[]>();
    const visible =
      tenantId === GLOBAL_TENANT
        ? { tenantId: GLOBAL_TENANT }
        : {
            $or: [{ tenantId }, { tenantId: GLOBAL_TENANT, id: { $nin: own.map((d) => d.id) } }],
          };
    const docs = await this.collection
      .find({
        $and: [
          visible,
          { expireAt: { $gt: now } },
          ...(after === undefined ? [] : [{ id: { $gt: after } }]),
        ],
      })
      .sort({ id: 1 })
      .limit(size + 1)
      .lean<PluginDoc[]>();
    const items = docs.slice(0, size).map(decode);
    const last = items.at(-1);
    return {
      items,
      nextPageToken: docs.length > size && last !== undefined ? encodePageToken(last.id) : "",
    };
  }

  /** Every live registration of every tenant (for the health checker). */
  async live(): Promise<PluginRegistration[]> {
    const docs = await this.collection
      .find({ expireAt: { $gt: new Date() } })
      .sort({ tenantId: 1, id: 1 })
      .lean<PluginDoc[]>();
    return docs.map(decode);
  }

  /**
   * Deletes the registration when it is still the one that was checked (same address and
   * creation), so a plugin that re-registered elsewhere in between is left alone.
   */
  async removeIfUnchanged(plugin: PluginRegistration): Promise<boolean> {
    const doc = await this.collection
      .findOne({ tenantId: plugin.tenantId, id: plugin.id })
      .lean<PluginDoc>();
    if (doc === null) return false;
    const current = decode(doc);
    if (
      current.address !== plugin.address ||
      new Date(doc.createTime).getTime() !== timestampMs(plugin.createTime)
    ) {
      return false;
    }
    const result = await this.collection.deleteOne({
      tenantId: plugin.tenantId,
      id: plugin.id,
      createTime: doc.createTime,
    });
    return result.deletedCount > 0;
  }

  /** Deletes every expired registration; returns how many. */
  async sweep(): Promise<number> {
    const result = await this.collection.deleteMany({ expireAt: { $lte: new Date() } });
    return result.deletedCount;
  }
}

/** What one grpc.health.v1 check of a plugin found. */
export type PluginHealth = "serving" | "failing";

export interface PluginHealthOptions {
  /** How often every live registration is checked; 0 = never. */
  intervalMs: number;
  /** Consecutive failed checks after which a registration is removed. */
  failures: number;
  /** Per check. */
  timeoutMs: number;
  /** Tests swap the probe; default: grpc.health.v1 Check over the kit's client. */
  probe?: (address: string, timeoutMs: number) => Promise<PluginHealth>;
}

/**
 * grpc.health.v1 `Check` of the whole server (service ""). A plugin without the health service
 * (UNIMPLEMENTED) counts as serving: the protocol only recommends it, and answering at all shows
 * the process is up. NOT_SERVING, no answer in time or no connection is a failure.
 */
export function grpcHealthProbe(): (address: string, timeoutMs: number) => Promise<PluginHealth> {
  const clients = new Map<string, GrpcClient<typeof Health>>();
  return async (address, timeoutMs) => {
    let client = clients.get(address);
    if (client === undefined) {
      client = createClient(Health, address);
      clients.set(address, client);
    }
    try {
      const res = await client.check({ service: "" }, { timeoutMs });
      return res.status === HealthCheckResponse_ServingStatus.SERVING ? "serving" : "failing";
    } catch (err) {
      return ConnectError.from(err).code === Code.Unimplemented ? "serving" : "failing";
    }
  };
}

/**
 * Runs PluginStore.sweep every intervalMs until stopped and, with `health`, checks every live
 * registration: one that fails `health.failures` checks in a row is removed even while it
 * heart-beats (its next heartbeat gets NOT_FOUND, so a plugin that recovers registers again).
 */
export function startPluginSweeper(
  store: PluginStore,
  opts: { intervalMs: number; logger: Logger; health?: PluginHealthOptions },
): { stop(): void } {
  const timer = setInterval(() => {
    store.sweep().then(
      (n) => {
        if (n > 0) opts.logger.info({ removed: n }, "expired plugin registrations removed");
      },
      (err: unknown) => opts.logger.warn({ err }, "plugin sweep failed"),
    );
  }, opts.intervalMs);
  timer.unref();
  const health = opts.health;
  let healthTimer: NodeJS.Timeout | undefined;
  if (health !== undefined && health.intervalMs > 0) {
    const probe = health.probe ?? grpcHealthProbe();
    /** "<tenant>/<id>@<address>" -> consecutive failures. */
    const failed = new Map<string, number>();
    let running = false;
    const check = async (): Promise<void> => {
      const plugins = await store.live();
      const seen = new Set<string>();
      await Promise.all(
        plugins.map(async (plugin) => {
          const key = `${plugin.tenantId}/${plugin.id}@${plugin.address}`;
          seen.add(key);
          if ((await probe(plugin.address, health.timeoutMs)) === "serving") {
            failed.delete(key);
            return;
          }
          const n = (failed.get(key) ?? 0) + 1;
          failed.set(key, n);
          if (n < health.failures) return;
          failed.delete(key);
          if (await store.removeIfUnchanged(plugin)) {
            opts.logger.warn(
              { plugin: plugin.id, tenantId: plugin.tenantId, failedChecks: n },
              "plugin registration removed: its health checks failed",
            );
          }
        }),
      );
      for (const key of failed.keys()) if (!seen.has(key)) failed.delete(key);
    };
    healthTimer = setInterval(() => {
      if (running) return;
      running = true;
      check()
        .catch((err: unknown) => opts.logger.warn({ err }, "plugin health check failed"))
        .finally(() => {
          running = false;
        });
    }, health.intervalMs);
    healthTimer.unref();
  }
  return {
    stop: () => {
      clearInterval(timer);
      if (healthTimer !== undefined) clearInterval(healthTimer);
    },
  };
}

function timestampMs(t: { seconds: bigint; nanos: number } | undefined): number {
  return t === undefined ? 0 : Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
}

function decode(doc: PluginDoc): PluginRegistration {
  const plugin = fromBinary(PluginRegistrationSchema, storedBytes(doc.payload));
  plugin.tenantId = doc.tenantId;
  plugin.ttlMs = doc.ttlMs;
  plugin.createTime = timestampFromDate(new Date(doc.createTime));
  plugin.lastHeartbeatTime = timestampFromDate(new Date(doc.lastHeartbeat));
  plugin.expireTime = timestampFromDate(new Date(doc.expireAt));
  return plugin;
}

function expired(id: string): NotFoundError {
  return new NotFoundError(
    `plugin "${id}" is not registered (or its registration expired); register it again`,
  );
}

function isDuplicateKey(err: unknown): boolean {
  return err !== null && typeof err === "object" && "code" in err && err.code === 11000;
}

function writeTenant(ctx: HandlerContext): string {
  const { tenantId } = principalOf(ctx);
  if (tenantId === GLOBAL_TENANT) {
    throw new PermissionDeniedError("registering a plugin needs a token for a tenant");
  }
  return tenantId;
}

type PluginMethods = "listPlugins" | "registerPlugin" | "heartbeatPlugin" | "deregisterPlugin";

export function pluginHandlers(
  store: PluginStore,
): Pick<ServiceImpl<typeof RegistryService>, PluginMethods> {
  return {
    async listPlugins(req, ctx) {
      const page = await store.list(principalOf(ctx).tenantId, pageOf(req.page));
      return { plugins: page.items, page: { nextPageToken: page.nextPageToken } };
    },

    async registerPlugin(req, ctx) {
      const tenantId = writeTenant(ctx);
      if (req.plugin === undefined) {
        throw new InvalidArgumentError("plugin: value is required", { field: "plugin" });
      }
      const plugin = await store.register(tenantId, req.plugin);
      loggerOf(ctx).info({ plugin: plugin.id, address: plugin.address }, "plugin registered");
      return { plugin };
    },

    async heartbeatPlugin(req, ctx) {
      return { plugin: await store.heartbeat(writeTenant(ctx), req.id) };
    },

    async deregisterPlugin(req, ctx) {
      const tenantId = writeTenant(ctx);
      if (!(await store.deregister(tenantId, req.id))) {
        throw new NotFoundError(`plugin "${req.id}" is not registered`);
      }
      loggerOf(ctx).info({ plugin: req.id }, "plugin deregistered");
      return {};
    },
  };
}
