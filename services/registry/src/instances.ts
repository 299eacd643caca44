// Service instances in a NATS KV bucket whose entries expire.
//
// The bucket's max age is the instance TTL: every Register/Heartbeat writes a new revision of
// the key `<service>.<instance_id>`, so an instance lives TTL after its last heartbeat. When the
// last revision ages out, nats-server (>= 2.11, subject delete markers) writes a delete marker,
// which every watcher sees as a PURGE: WatchInstances reports REMOVED without any sweeper, and
// with any number of registry replicas (the server does the expiry, once).
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import { NotFoundError, UnavailableError, type Logger } from "@ensemble/kit";
import { InstanceEventType, ServiceInstanceSchema, type ServiceInstance } from "@ensemble/proto";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm, KvWatchInclude, type KV, type KvEntry } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";

export const DEFAULT_INSTANCE_BUCKET = "ensemble_instances";
export const DEFAULT_INSTANCE_TTL_MS = 15_000;

export interface InstanceEvent {
  type: InstanceEventType;
  instance?: ServiceInstance;
}

const NS_PER_MS = 1_000_000;

export class InstanceStore {
  private constructor(
    private readonly kv: KV,
    readonly ttlMs: number,
  ) {}

  /**
   * Opens (creating if needed) the bucket with this TTL. An existing bucket with another TTL is
   * reconfigured, so changing INSTANCE_TTL_MS takes effect on the next start.
   */
  static async open(
    nc: NatsConnection,
    opts: { bucket: string; ttlMs: number; logger: Logger },
  ): Promise<InstanceStore> {
    // Delete markers must outlive a watcher's reconnect, and the server wants at least 1 s.
    const markerTtlMs = Math.max(1_000, opts.ttlMs);
    const kvm = new Kvm(nc);
    let kv: KV;
    try {
      kv = await kvm.create(opts.bucket, { history: 1, ttl: opts.ttlMs, markerTTL: markerTtlMs });
    } catch (err) {
      // Two replicas creating the bucket at once: the loser opens the winner's bucket.
      kv = await kvm.open(opts.bucket).catch(() => {
        throw err;
      });
    }
    const status = await kv.status();
    if (status.ttl !== opts.ttlMs || status.markerTTL === 0) {
      const jsm = await jetstreamManager(nc);
      const stream = `KV_${opts.bucket}`;
      const info = await jsm.streams.info(stream);
      const maxAgeNs = opts.ttlMs * NS_PER_MS;
      await jsm.streams.update(stream, {
        ...info.config,
        max_age: maxAgeNs,
        duplicate_window: Math.min(info.config.duplicate_window, maxAgeNs),
        allow_msg_ttl: true,
        subject_delete_marker_ttl: markerTtlMs * NS_PER_MS,
      });
      opts.logger.info(
        { bucket: opts.bucket, ttlMs: opts.ttlMs, previousTtlMs: status.ttl },
        "instance bucket reconfigured",
      );
    }
    return new InstanceStore(kv, opts.ttlMs);
  }

  /** Adds or replaces an instance; start_time is kept while the instance stays registered. */
  async register(
    instance: Pick<ServiceInstance, "service" | "instanceId" | "address" | "version" | "metadata">,
  ): Promise<ServiceInstance> {
    const key = instanceKey(instance.service, instance.instanceId);
    const existing = this.live(await this.kv.get(key));
    const now = timestampNow();
    const stored = create(ServiceInstanceSchema, {
      service: instance.service,
      instanceId: instance.instanceId,
      address: instance.address,
      version: instance.version,
      metadata: instance.metadata,
      startTime: existing?.startTime ?? now,
      lastHeartbeatTime: now,
    });
    await this.kv.put(key, toBinary(ServiceInstanceSchema, stored));
    return stored;
  }

  /** Writes a new revision (restarting the TTL); NOT_FOUND when the instance has expired. */
  async heartbeat(service: string, instanceId: string): Promise<ServiceInstance> {
    const key = instanceKey(service, instanceId);
    for (let attempt = 1; attempt <= 3; attempt++) {
      const entry = await this.kv.get(key);
      const current = this.live(entry);
      if (entry === null || current === undefined) {
        throw new NotFoundError(
          `instance ${service}/${instanceId} is not registered (or expired); register it again`,
        );
      }
      current.lastHeartbeatTime = timestampNow();
      try {
        // Conditional on the revision we read: a heartbeat never resurrects an instance that
        // expired or deregistered in between.
        await this.kv.update(key, toBinary(ServiceInstanceSchema, current), entry.revision);
        return current;
      } catch {
        // Another write came first (a concurrent heartbeat, a deregister, the expiry): re-read.
      }
    }
    throw new UnavailableError(`instance ${service}/${instanceId}: too many concurrent updates`);
  }

  /** Removes an instance; false when it was not registered. */
  async deregister(service: string, instanceId: string): Promise<boolean> {
    const key = instanceKey(service, instanceId);
    const entry = await this.kv.get(key);
    if (this.live(entry) === undefined) return false;
    await this.kv.delete(key);
    return true;
  }

  /** Live instances (of one service, or all), ordered by service then instance id. */
  async list(service = ""): Promise<ServiceInstance[]> {
    const keys: string[] = [];
    for await (const key of await this.kv.keys(service === "" ? ">" : `${service}.*`)) {
      keys.push(key);
    }
    const out: ServiceInstance[] = [];
    for (const key of keys.sort()) {
      const instance = this.live(await this.kv.get(key));
      if (instance !== undefined) out.push(instance);
    }
    return out;
  }

  /**
   * The current set (ADDED each, then SYNCED), then live changes until `signal` aborts.
   * The live watcher starts before the snapshot is read, so nothing that happens in between is
   * lost; a change the snapshot already shows may then be reported once more as UPDATED.
   */
  async *watch(service: string, signal: AbortSignal): AsyncGenerator<InstanceEvent> {
    const watcher = await this.kv.watch({
      key: service === "" ? ">" : `${service}.*`,
      include: KvWatchInclude.UpdatesOnly,
    });
    const stop = (): void => watcher.stop();
    signal.addEventListener("abort", stop, { once: true });
    try {
      const known = new Set<string>();
      for (const instance of await this.list(service)) {
        known.add(instanceKey(instance.service, instance.instanceId));
        yield { type: InstanceEventType.ADDED, instance };
      }
      yield { type: InstanceEventType.SYNCED };
      try {
        for await (const entry of watcher) {
          const event = toEvent(entry, known);
          if (event !== undefined) yield event;
        }
      } catch (err) {
        // The consumer behind the watch failed (e.g. the bucket was removed): the client may retry.
        throw new UnavailableError("instance watch failed; watch again", { cause: err });
      }
      if (!signal.aborted) {
        // The watcher ended without being asked to (NATS connection closed or draining).
        throw new UnavailableError("instance watch interrupted; watch again");
      }
    } finally {
      signal.removeEventListener("abort", stop);
      watcher.stop();
    }
  }

  /** The instance in a KV entry, unless deleted, purged or past its TTL by our clock. */
  private live(entry: KvEntry | null): ServiceInstance | undefined {
    if (entry === null || entry.operation !== "PUT") return undefined;
    const instance = fromBinary(ServiceInstanceSchema, entry.value);
    const last = instance.lastHeartbeatTime;
    // The server expires on its own timer; between the TTL and that timer the entry is dead.
    if (last !== undefined && timestampDate(last).getTime() + this.ttlMs < Date.now()) {
      return undefined;
    }
    return instance;
  }
}

function toEvent(entry: KvEntry, known: Set<string>): InstanceEvent | undefined {
  const key = entry.key;
  if (entry.operation === "PUT") {
    const instance = fromBinary(ServiceInstanceSchema, entry.value);
    const type = known.has(key) ? InstanceEventType.UPDATED : InstanceEventType.ADDED;
    known.add(key);
    return { type, instance };
  }
  // DEL (deregistered) or PURGE (expired). A delete of a key we never reported as present is
  // noise: e.g. the expiry marker of an earlier delete marker.
  if (!known.delete(key)) return undefined;
  const [service = "", instanceId = ""] = splitKey(key);
  return {
    type: InstanceEventType.REMOVED,
    instance: create(ServiceInstanceSchema, { service, instanceId }),
  };
}

export function instanceKey(service: string, instanceId: string): string {
  return `${service}.${instanceId}`;
}

function splitKey(key: string): [string, string] {
  const dot = key.indexOf(".");
  return dot < 0 ? [key, ""] : [key.slice(0, dot), key.slice(dot + 1)];
}

/** Keeps one instance (this process) registered: heartbeats every ttl/3, re-registers on expiry. */
export function keepRegistered(
  store: InstanceStore,
  instance: Pick<ServiceInstance, "service" | "instanceId" | "address" | "version" | "metadata">,
  logger: Logger,
): { register(): Promise<void>; stop(): Promise<void> } {
  const log = logger.child({ component: "self-registration" });
  let timer: NodeJS.Timeout | undefined;
  const beat = async (): Promise<void> => {
    try {
      await store.heartbeat(instance.service, instance.instanceId);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      await store.register(instance);
      log.warn("own instance registration had expired; registered again");
    }
  };
  return {
    async register() {
      await store.register(instance);
      timer = setInterval(
        () =>
          void beat().catch((err: unknown) =>
            log.warn({ err }, "heartbeat of own instance failed"),
          ),
        Math.max(100, Math.floor(store.ttlMs / 3)),
      );
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      await store.deregister(instance.service, instance.instanceId);
    },
  };
}
