// The semantic response cache (CACHE_MODE_SEMANTIC): when no identical request is cached, a chat
// is answered from the cached answer to a *similar* one. Similar means: everything but the last
// user message is identical (model as asked, parameters, tools, the conversation before it: the
// request with that message's text blanked hashes to the same *partition*; one per user), and
// the meaning of that message is close, by the cosine similarity of its embedding to the cached one's (at least
// CACHE_SEMANTIC_MIN_SIMILARITY). A "Hi, what's the capital of France?" may then be answered with
// the answer to "What is the capital of France?" for the same system prompt and model, never with
// an answer given under another system prompt, model or earlier conversation, nor to another
// user (see splitLastUserText).
//
// Where things live: the answers themselves stay in the exact-match cache (cache.ts, NATS KV,
// its TTL); vector-search holds one vector document per cached answer, in a collection of the
// caller's own tenant (collectionFor, created on first use with the embedding's length), whose id is
// the answer's exact cache key and whose metadata is {partition, expiresAt}. A search asks for
// the nearest document in the partition that has not expired; its id leads to the answer (gone
// from KV = a miss). Expired documents are deleted per tenant at most once per SWEEP_EVERY_MS,
// by the replica that stores the next one.
//
// Like the exact cache, it is an optimisation and never fails a call: an embedding, search or
// store failure is a miss (logged at warn). The message is embedded once per call (one
// embedding call, billed to the caller like any other, with metadata purpose=semantic-cache);
// the same vector is stored when the answer is. Messages with images are not looked up (the text
// alone does not say what was asked).
import { clone } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { GrpcClient, Logger } from "@ensemble/kit";
import {
  ChatRequestSchema,
  ChatRole,
  DistanceMetric,
  type ChatRequest,
  type VectorSearchService,
} from "@ensemble/proto";
import { createHash } from "node:crypto";
import { cacheKey } from "./cache.js";

/**
 * The collection a tenant's cached questions live in (listed among its collections), one per
 * embedding model: vectors of two models are never compared, and changing CACHE_SEMANTIC_MODEL
 * (to one of another length, say) starts an empty cache instead of failing every lookup.
 */
export function collectionFor(model: string): string {
  const slug = model
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, "-")
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, "");
  // At most 128 characters, ending in a letter or digit like any collection id.
  return `ensemble.response-cache.${slug}`.slice(0, 128).replace(/[^a-z0-9]+$/, "");
}
const SWEEP_EVERY_MS = 3_600_000;
const CALL_TIMEOUT_MS = 5_000;

const stringValue = (value: string) => ({ kind: { case: "stringValue" as const, value } });
const numberValue = (value: number) => ({ kind: { case: "numberValue" as const, value } });

export interface SemanticProbe {
  /** The request without the last user message's text, hashed. */
  partition: string;
  /** That message's embedding, stored with the answer on a miss. */
  vector: number[];
  /** How close the nearest cached question of the partition is (undefined: none cached). */
  nearest?: number;
  /** The exact cache key of a similar enough request's answer, and how similar it is. */
  hit?: { key: string; similarity: number };
}

export interface SemanticCacheOptions {
  vectorSearch: GrpcClient<typeof VectorSearchService>;
  /** Catalog model id or alias the questions are embedded with. */
  model: string;
  minSimilarity: number;
  /** How long an entry is served (the exact cache's TTL: its answer is gone after it anyway). */
  ttlMs: number;
  logger: Logger;
  now?: () => number;
}

export class SemanticCache {
  readonly model: string;
  readonly #o: SemanticCacheOptions;
  readonly #collection: string;
  readonly #now: () => number;
  readonly #lastSweep = new Map<string, number>();

  constructor(opts: SemanticCacheOptions) {
    this.#o = opts;
    this.model = opts.model;
    this.#collection = collectionFor(opts.model);
    this.#now = opts.now ?? Date.now;
  }

  /**
   * The nearest cached request close enough to `req`, or a probe without a hit (to `remember` the
   * answer by). Undefined when `req` cannot be looked up (no text in its last user message, or it
   * has images) or the lookup failed. `embed` embeds a text with `model` for the caller (billed
   * to them) and rejects on failure. `minSimilarity`: the tenant's threshold (default: the
   * service's).
   */
  async lookup(
    tenantId: string,
    userId: string,
    req: ChatRequest,
    token: string,
    signal: AbortSignal,
    embed: (text: string) => Promise<number[]>,
    minSimilarity = this.#o.minSimilarity,
  ): Promise<SemanticProbe | undefined> {
    const split = splitLastUserText(req, userId);
    if (split === undefined) return undefined;
    try {
      const vector = await embed(split.text);
      const probe: SemanticProbe = { partition: split.partition, vector };
      const res = await this.#o.vectorSearch
        .search(
          {
            collectionId: this.#collection,
            vector,
            // The nearest one whatever its score: its similarity is worth knowing (a metric to
            // tune the threshold by) even when it is not close enough.
            k: 1,
            filter: {
              must: [
                { field: "partition", test: { case: "eq", value: stringValue(split.partition) } },
                {
                  field: "expiresAt",
                  test: { case: "range", value: { gt: numberValue(this.#now()) } },
                },
              ],
            },
          },
          this.#call(token, signal),
        )
        .catch((err: unknown) => {
          // No collection yet: nothing was ever cached for this tenant.
          if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
          throw err;
        });
      const best = res?.hits[0];
      if (best !== undefined) {
        probe.nearest = best.score;
        if (best.score >= minSimilarity) {
          probe.hit = { key: best.documentId, similarity: best.score };
        }
      }
      return probe;
    } catch (err) {
      if (signal.aborted) throw err;
      this.#o.logger.warn({ err, tenantId }, "semantic cache lookup failed; a miss");
      return undefined;
    }
  }

  /** Stores `probe`'s vector as the question `key` (an exact cache key) answers. Never rejects. */
  async remember(tenantId: string, probe: SemanticProbe, key: string, token: string) {
    const now = this.#now();
    const upsert = () =>
      this.#o.vectorSearch.upsert(
        {
          collectionId: this.#collection,
          documents: [
            {
              id: key,
              vector: probe.vector,
              metadata: { partition: probe.partition, expiresAt: now + this.#o.ttlMs },
            },
          ],
        },
        this.#call(token),
      );
    try {
      try {
        await upsert();
      } catch (err) {
        if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
        await this.#createCollection(probe.vector.length, token);
        await upsert();
      }
      await this.#sweep(tenantId, token, now);
    } catch (err) {
      this.#o.logger.warn({ err, tenantId }, "semantic cache entry not stored");
    }
  }

  async #createCollection(dimensions: number, token: string): Promise<void> {
    try {
      await this.#o.vectorSearch.createCollection(
        {
          collection: {
            id: this.#collection,
            description:
              "model-proxy's semantic response cache: one vector per cached question (managed by model-proxy; deleting it only empties the cache)",
            dimensions,
            metric: DistanceMetric.COSINE,
          },
        },
        this.#call(token),
      );
    } catch (err) {
      // Another call or replica created it first.
      if (!(err instanceof ConnectError && err.code === Code.AlreadyExists)) throw err;
    }
  }

  /** Deletes the tenant's expired entries, at most once per SWEEP_EVERY_MS on this replica. */
  async #sweep(tenantId: string, token: string, now: number): Promise<void> {
    const last = this.#lastSweep.get(tenantId);
    if (last !== undefined && now - last < SWEEP_EVERY_MS) return;
    this.#lastSweep.set(tenantId, now);
    if (this.#lastSweep.size > 100_000) this.#lastSweep.clear();
    await this.#o.vectorSearch.delete(
      {
        collectionId: this.#collection,
        filter: {
          must: [{ field: "expiresAt", test: { case: "range", value: { lte: numberValue(now) } } }],
        },
      },
      this.#call(token),
    );
  }

  #call(token: string, signal?: AbortSignal) {
    return {
      headers: { authorization: `Bearer ${token}` },
      timeoutMs: CALL_TIMEOUT_MS,
      ...(signal !== undefined ? { signal } : {}),
    };
  }
}

/**
 * The text of `req`'s last message when it is the user's (text only), and the hash of everything
 * else that can change the answer, as cacheKey (cache.ts) hashes it, with the user's id.
 *
 * Per user, unlike the exact cache (tenant-wide): an identical request cannot tell users apart,
 * but two *similar* ones can differ in exactly what makes an answer someone's own ("my order
 * 1234" vs "my order 1235" are 0.95+ apart), so one user's answer is never given to another. Undefined when there is nothing to compare.
 */
export function splitLastUserText(
  req: ChatRequest,
  userId: string,
): { text: string; partition: string } | undefined {
  const last = req.messages.at(-1);
  if (last === undefined || last.role !== ChatRole.USER) return undefined;
  if (last.content.some((p) => p.part.case !== "text")) return undefined;
  const text = last.content.map((p) => (p.part.case === "text" ? p.part.value : "")).join("");
  if (text.trim() === "") return undefined;
  const rest = clone(ChatRequestSchema, req);
  rest.messages[rest.messages.length - 1]!.content = [];
  const partition = createHash("sha256")
    .update(userId)
    .update("\0")
    .update(cacheKey(ChatRequestSchema, rest))
    .digest("hex");
  return { text, partition };
}
