// Change notices between replicas. A service that changes something other replicas cache (an API
// key, a user, a tenant's settings or budgets, a catalog entry, webhook endpoints) tells them on
// NATS once the change is stored, and waits for the server to have passed the notice on before
// it answers; every replica holding a copy drops it on receipt, synchronously, so its next call
// reads the change. Payload: ChangeNotice (events.proto) on `<root>.<kind>`.
//
// Most notices only invalidate caches: they are core NATS, not stored, and one that is lost (NATS
// down, a replica reconnecting) costs at most the cache's TTL. The notices that end credentials
// (`user`, `session`: the gateway refuses the tokens they name) are also stored, in a JetStream
// stream kept for REVOCATION_MEMORY_MS, and published with an acknowledgement: a gateway replica
// that starts later (a rolling deploy, a scale-out) or was disconnected when one went out reads
// them from the stream (`replay`), so a logged-out token is not accepted again by a new replica.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ChangeNoticeSchema, type ChangeNotice } from "@ensemble/proto";
import {
  DeliverPolicy,
  jetstream,
  type ConsumerMessages,
  type StreamInfo,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./logger.js";
import { ensureStream, jetstreamManager } from "./nats.js";
import type { KitServer } from "./server.js";

export type NoticeKind =
  "api-key" | "user" | "session" | "tenant" | "catalog" | "routes" | "webhooks";

export const NOTICE_ROOT = "ensemble.notices";

/** The kinds that end credentials: stored as well as sent, and replayed by `replay`. */
export const STORED_NOTICE_KINDS: readonly NoticeKind[] = ["user", "session"];

/**
 * How long stored notices are kept, and how long the gateway remembers what they revoked: the
 * longest access token auth issues (a token issued before a notice this old has expired).
 */
export const REVOCATION_MEMORY_MS = 24 * 3_600_000;

/** The stream holding the stored kinds under `root` ("ENSEMBLE_NOTICES_STORED" by default). */
export function storedNoticesStream(root = NOTICE_ROOT): string {
  return `${root.toUpperCase().replace(/[^A-Z0-9]+/g, "_")}_STORED`;
}

export interface Notices {
  /**
   * Tells every replica that `kind` changed for `tenantId` (and `id`). Resolves once NATS has
   * passed it on; never throws (a failure is logged: the receivers' TTLs still bound it).
   */
  publish(kind: NoticeKind, tenantId: string, id?: string): Promise<void>;
  /** Calls `fn` for every notice of `kind`, as it arrives. */
  subscribe(kind: NoticeKind, fn: (notice: ChangeNotice) => void): { unsubscribe(): void };
  /**
   * Calls `fn` for every stored notice of `kinds` (see STORED_NOTICE_KINDS) of the last
   * REVOCATION_MEMORY_MS, in order, then for each new one as it is stored, across reconnects
   * (an ordered consumer resumes where it was). `ready` resolves once the notices stored before
   * the call were all passed to `fn`. While the stream cannot be read (NATS or JetStream down)
   * it tries again every second.
   */
  replay(
    kinds: readonly NoticeKind[],
    fn: (kind: NoticeKind, notice: ChangeNotice) => void,
  ): { ready: Promise<void>; unsubscribe(): void };
}

/** Longest a change waits for NATS to confirm its notice (it is disconnected meanwhile). */
const FLUSH_TIMEOUT_MS = 1_000;

export function createNotices(nc: NatsConnection, logger: Logger, root = NOTICE_ROOT): Notices {
  const log = logger.child({ component: "notices" });
  const js = jetstream(nc, { timeout: FLUSH_TIMEOUT_MS });
  const streamName = storedNoticesStream(root);
  /** The stream, created (or its limits updated) once per process, on first use. */
  let stream: Promise<StreamInfo> | undefined;
  const ensureStored = () => {
    stream ??= jetstreamManager(nc, { timeoutMs: FLUSH_TIMEOUT_MS })
      .then((jsm) =>
        ensureStream(jsm, {
          name: streamName,
          subjects: STORED_NOTICE_KINDS.map((k) => `${root}.${k}`),
          max_age: REVOCATION_MEMORY_MS * 1_000_000,
          // Bounded whatever happens (a logout storm): the oldest go first, and the gateway
          // remembers at most 100 000 revocations anyway.
          max_msgs: 1_000_000,
        }),
      )
      .catch((err: unknown) => {
        stream = undefined; // the next use tries again
        throw err;
      });
    return stream;
  };
  return {
    async publish(kind, tenantId, id = "") {
      const subject = `${root}.${kind}`;
      const data = toBinary(
        ChangeNoticeSchema,
        create(ChangeNoticeSchema, { tenantId, id, time: timestampNow() }),
      );
      if (STORED_NOTICE_KINDS.includes(kind)) {
        try {
          // Stored before the change answers (the acknowledgement); live subscribers get it
          // as they get any message on the subject.
          await bounded(
            ensureStored().then(() => js.publish(subject, data)),
            2 * FLUSH_TIMEOUT_MS,
          );
          return;
        } catch (err) {
          log.warn(
            { err, kind, tenantId },
            "could not store a revocation notice: replicas that start later will not know it (the tokens' expiry is the bound); telling the connected ones",
          );
        }
      }
      try {
        nc.publish(subject, data);
        // Bounded: on a half-open connection the flush would wait for NATS's stale-connection
        // detection (tens of seconds), and the change must not.
        await bounded(nc.flush(), FLUSH_TIMEOUT_MS);
      } catch (err) {
        log.warn(
          { err, kind, tenantId },
          "could not tell the other replicas about a change; their caches expire it instead",
        );
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
    replay(kinds, fn) {
      let stopped = false;
      let messages: ConsumerMessages | undefined;
      let caughtUp!: () => void;
      const ready = new Promise<void>((resolve) => (caughtUp = resolve));
      const kindOf = new Map(kinds.map((k) => [`${root}.${k}`, k]));
      const follow = async (): Promise<void> => {
        const info = await ensureStored();
        // Everything the stream holds is within REVOCATION_MEMORY_MS (its max age).
        const { last_seq: lastAtStart, messages: heldAtStart } = info.state;
        if (heldAtStart === 0) caughtUp();
        const consumer = await js.consumers.get(streamName, {
          filter_subjects: [...kindOf.keys()],
          deliver_policy: DeliverPolicy.All,
        });
        messages = await consumer.consume();
        if (stopped) messages.stop();
        for await (const m of messages) {
          const kind = kindOf.get(m.subject);
          if (kind !== undefined) {
            try {
              fn(kind, fromBinary(ChangeNoticeSchema, m.data));
            } catch (e) {
              log.warn({ err: e, kind }, "an unreadable stored notice; ignored");
            }
          }
          if (m.seq >= lastAtStart || m.info.pending === 0) caughtUp();
        }
      };
      void (async () => {
        while (!stopped) {
          try {
            await follow();
          } catch (err) {
            if (stopped) break;
            log.warn(
              { err, stream: streamName },
              "cannot read the stored notices yet; trying again in a second",
            );
            await new Promise((r) => setTimeout(r, 1_000));
          }
        }
      })();
      return {
        ready,
        unsubscribe() {
          stopped = true;
          messages?.stop();
        },
      };
    },
  };
}

/** `work`, or an error once `ms` passed without it settling. */
async function bounded<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`NATS did not confirm within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
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
