// The exact-match response cache: an answer is reused only for the same tenant and a request
// that is identical in everything that can change the answer. Entries live in one NATS KV bucket
// shared by every replica; the bucket's ttl is the cache TTL (JetStream drops entries at about
// that age), and an entry found older than the TTL is a miss too, so the TTL holds exactly
// whatever the server's expiry granularity (ages are measured against the server's clock).
//
// The cache is an optimisation, never a reason to fail a call: get failures are misses, set
// failures are logged at warn and swallowed, values larger than the server's max payload are
// not stored.
//
// Keys. `cacheKey` hashes (sha256, hex) the request's type name and its binary encoding with the
// fields that do not change the answer cleared: `cache` (the caller's cache mode),
// `attribution` (who the call is billed/attributed to), `metadata` (ledger labels) and `log`
// (whether the call log keeps it) on ChatRequest and EmbedRequest, wherever a request type has fields of those names. Everything
// else counts: the model as asked (an alias pointed elsewhere keeps serving the old model's
// answers until they expire), messages, sampling parameters, tools, fallbacks. Map entries are
// sorted first (JSON Schema Structs in tools and response formats arrive in any key order) and
// unknown fields are left out, so one request always gets one key. The KV key is
// `<sha256(tenant)>.<request hash>`: two tenants never share an entry, and no tenant id
// appears in the bucket.
import { createHash } from "node:crypto";
import {
  clone,
  isMessage,
  toBinary,
  type DescMessage,
  type JsonValue,
  type Message,
  type MessageShape,
} from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import type { Logger, NatsConnection } from "@ensemble/kit";
import { Kvm, type KV } from "@nats-io/kv";

export interface ResponseCache {
  /** The cached value, or undefined (missing, expired, or the cache unreachable). */
  get(tenantId: string, key: string): Promise<Uint8Array | undefined>;
  /** Best effort: never rejects. */
  set(tenantId: string, key: string, value: Uint8Array): Promise<void>;
}

export interface ResponseCacheOptions {
  /** The KV bucket shared by every replica. */
  bucket: string;
  /** How long an entry is served. */
  ttlMs: number;
  logger: Logger;
}

/** Fields that never change the answer: the cache mode, attribution, ledger labels, logging. */
export const CACHE_KEY_IGNORED_FIELDS: readonly string[] = [
  "cache",
  "attribution",
  "metadata",
  "log",
];

/** What KV adds to a value on the wire (subject, headers): kept free below max_payload. */
const PUBLISH_OVERHEAD = 4 * 1024;

/** sha256 (hex) of the request as far as it can change the answer. */
export function cacheKey<Desc extends DescMessage>(
  schema: Desc,
  request: MessageShape<Desc>,
): string {
  const copy = clone(schema, request);
  const r = reflect(schema, copy);
  for (const field of r.fields) {
    if (CACHE_KEY_IGNORED_FIELDS.includes(field.name)) r.clear(field);
  }
  sortMaps(schema, copy);
  const bytes = toBinary(schema, copy, { writeUnknownFields: false });
  return createHash("sha256").update(schema.typeName).update("\0").update(bytes).digest("hex");
}

/**
 * Rewrites every map in the message (recursively) with its keys in sorted order, and every JSON
 * object held in a Struct/Value field (protobuf-es json_types) the same way.
 */
function sortMaps(desc: DescMessage, message: Message): void {
  const record = message as unknown as Record<string, unknown>;
  for (const field of desc.fields) {
    if (field.oneof !== undefined) {
      const selected = record[field.oneof.localName] as { case?: string; value?: unknown };
      if (selected.case === field.localName && field.fieldKind === "message") {
        selected.value = sorted(field.message, selected.value);
      }
      continue;
    }
    const value = record[field.localName];
    switch (field.fieldKind) {
      case "message":
        record[field.localName] = sorted(field.message, value);
        break;
      case "list":
        if (field.listKind === "message" && Array.isArray(value)) {
          record[field.localName] = value.map((item: unknown) => sorted(field.message, item));
        }
        break;
      case "map": {
        const entries = Object.entries(value as Record<string, unknown>).sort(byKey);
        record[field.localName] = Object.fromEntries(
          field.mapKind === "message"
            ? entries.map(([k, v]) => [k, sorted(field.message, v)])
            : entries,
        );
        break;
      }
      default:
        break;
    }
  }
}

function sorted(desc: DescMessage, value: unknown): unknown {
  if (typeof value !== "object" || value === null) return value; // unset, or a wrapper's value
  if (isMessage(value)) {
    sortMaps(desc, value);
    return value;
  }
  return sortedJson(value as JsonValue);
}

function sortedJson(value: JsonValue): JsonValue {
  if (Array.isArray(value)) return value.map(sortedJson);
  if (typeof value !== "object" || value === null) return value;
  return Object.fromEntries(
    Object.entries(value)
      .sort(byKey)
      .map(([k, v]) => [k, sortedJson(v)]),
  );
}

function byKey([a]: [string, unknown], [b]: [string, unknown]): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function kvKey(tenantId: string, key: string): string {
  return `${createHash("sha256").update(tenantId).digest("hex")}.${key}`;
}

/** Opens (or creates) the cache's KV bucket. */
export async function openResponseCache(
  nc: NatsConnection,
  opts: ResponseCacheOptions,
): Promise<ResponseCache> {
  const kvm = new Kvm(nc);
  const kv = await kvm
    .create(opts.bucket, { history: 1, ttl: opts.ttlMs })
    .catch(() => kvm.open(opts.bucket));
  const status = await kv.status();
  if (status.ttl !== opts.ttlMs) {
    // Created by a replica with another CACHE_TTL_MS: entries expire by the bucket's ttl, and
    // this replica serves none older than its own.
    opts.logger.warn(
      { bucket: opts.bucket, bucketTtlMs: status.ttl, ttlMs: opts.ttlMs },
      "response cache bucket has another ttl than CACHE_TTL_MS",
    );
  }
  return new KvResponseCache(kv, nc, opts);
}

class KvResponseCache implements ResponseCache {
  readonly #kv: KV;
  readonly #nc: NatsConnection;
  readonly #ttlMs: number;
  readonly #logger: Logger;

  constructor(kv: KV, nc: NatsConnection, opts: ResponseCacheOptions) {
    this.#kv = kv;
    this.#nc = nc;
    this.#ttlMs = opts.ttlMs;
    this.#logger = opts.logger;
  }

  async get(tenantId: string, key: string): Promise<Uint8Array | undefined> {
    try {
      const entry = await this.#kv.get(kvKey(tenantId, key));
      if (entry === null || entry.operation !== "PUT") return undefined;
      if (Date.now() - entry.created.getTime() >= this.#ttlMs) return undefined;
      return entry.value;
    } catch (err) {
      this.#logger.warn({ err }, "response cache read failed; answering without it");
      return undefined;
    }
  }

  async set(tenantId: string, key: string, value: Uint8Array): Promise<void> {
    const maxPayload = this.#nc.info?.max_payload ?? 1024 * 1024;
    if (value.byteLength > maxPayload - PUBLISH_OVERHEAD) {
      this.#logger.debug(
        { bytes: value.byteLength, maxPayload },
        "response too large for the cache; not stored",
      );
      return;
    }
    try {
      await this.#kv.put(kvKey(tenantId, key), value);
    } catch (err) {
      this.#logger.warn({ err }, "response cache write failed; the answer is not cached");
    }
  }
}
