// Change notices between replicas. A service that changes something other replicas cache (an API
// key, a user, a tenant's settings or budgets, a catalog entry, webhook endpoints) tells them on
// core NATS once the change is stored, and waits for the server to have passed the notice on
// (a flush) before it answers; every replica holding a copy drops it on receipt, synchronously,
// so its next call reads the change. A notice is not stored: one that is lost (NATS down, a
// replica reconnecting) costs at most the cache's TTL, which stays as the bound.
// Payload: ChangeNotice (events.proto) on `<root>.<kind>`.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ChangeNoticeSchema, type ChangeNotice } from "@ensemble/proto";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./logger.js";
import type { KitServer } from "./server.js";

export type NoticeKind =
  "api-key" | "user" | "session" | "tenant" | "catalog" | "routes" | "webhooks";

export const NOTICE_ROOT = "ensemble.notices";

export interface Notices {
  /**
   * Tells every replica that `kind` changed for `tenantId` (and `id`). Resolves once NATS has
   * passed it on; never throws (a failure is logged: the receivers' TTLs still bound it).
   */
  publish(kind: NoticeKind, tenantId: string, id?: string): Promise<void>;
  /** Calls `fn` for every notice of `kind`, as it arrives. */
  subscribe(kind: NoticeKind, fn: (notice: ChangeNotice) => void): { unsubscribe(): void };
}

/** Longest a change waits for NATS to confirm its notice (it is disconnected meanwhile). */
const FLUSH_TIMEOUT_MS = 1_000;

export function createNotices(nc: NatsConnection, logger: Logger, root = NOTICE_ROOT): Notices {
  const log = logger.child({ component: "notices" });
  return {
    async publish(kind, tenantId, id = "") {
      let timer: NodeJS.Timeout | undefined;
      try {
        nc.publish(
          `${root}.${kind}`,
          toBinary(
            ChangeNoticeSchema,
            create(ChangeNoticeSchema, { tenantId, id, time: timestampNow() }),
          ),
        );
        // Bounded: on a half-open connection the flush would wait for NATS's stale-connection
        // detection (tens of seconds), and the change must not.
        await Promise.race([
          nc.flush(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`NATS did not confirm within ${FLUSH_TIMEOUT_MS} ms`)),
              FLUSH_TIMEOUT_MS,
            );
          }),
        ]);
      } catch (err) {
        log.warn(
          { err, kind, tenantId },
          "could not tell the other replicas about a change; their caches expire it instead",
        );
      } finally {
        clearTimeout(timer);
      }
    },
    subscribe(kind, fn) {
      return nc.subscribe(`${root}.${kind}`, {
        callback: (err, msg) => {
          if (err !== null) return;
          try {
            fn(fromBinary(ChangeNoticeSchema, msg.data));
          } catch (e) {
            log.warn({ err: e, kind }, "an unreadable change notice; ignored");
          }
        },
      });
    },
  };
}

/** `server`, which also ends `subscriptions` (notices it follows) when it shuts down. */
export function followingNotices(
  server: KitServer,
  subscriptions: Array<{ unsubscribe(): void }>,
): KitServer {
  return {
    grpc: server.grpc,
    listen: (address) => server.listen(address),
    setServing: (serving) => server.setServing(serving),
    async shutdown(opts) {
      for (const sub of subscriptions) sub.unsubscribe();
      await server.shutdown(opts);
    },
  };
}
