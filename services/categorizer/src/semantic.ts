// Semantic routing: a route's example utterances live in vector-search, one collection per
// tenant (CATEGORIZER collection id below), one document per example with the route's id in its
// metadata. Classify searches the request's text once, the nearest examples vote for their
// routes (similarity-weighted), and the winner must be at least as similar as the route's
// `min_similarity` (or the service default) at its closest example.
//
// Tokens: vector-search scopes everything by the caller's tenant, so every call is made with the
// caller's own token, as registry and model-proxy are: an admin's UpsertRoute creates the
// collection (ADMIN) and embeds the examples (billed to the tenant), a user's Classify searches
// it (USER; a service acting for a user qualifies too).
//
// Global routes (tenant ""): there is no token that reaches a collection of tenant "", so their
// examples are copied into the tenant's own collection (metadata scope "global") whenever an
// admin of that tenant writes a route. A tenant whose admin never wrote a route has no copy; for
// it a global route with examples is judged on its other conditions, as without vector-search.
import { createHash, randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { GrpcClient, Logger } from "@ensemble/kit";
import {
  DistanceMetric,
  ChunkStrategy,
  type Route,
  type SearchHit,
  type VectorSearchService,
} from "@ensemble/proto";

/** The collection each tenant's route examples live in. */
export const ROUTES_COLLECTION = "categorizer-routes";

/** How much of a long request is embedded: its start carries the intent. */
const MAX_QUERY_CHARS = 8_000;

export interface SemanticOptions {
  /** Catalog model id or alias that embeds examples and queries. */
  embeddingModel: string;
  /** The embedding model's vector length (the collection is created with it). */
  dimensions: number;
  /** Nearest examples asked for per Classify. */
  k: number;
  /** Similarity the best route's closest example needs when the route sets none. */
  minSimilarity: number;
  /** Deadline of one Search (the hot path); writes get a longer one. */
  searchTimeoutMs: number;
  /** How long a tenant without a collection is not searched again. */
  missingTtlMs: number;
  now?: () => number;
}

export interface SemanticMatchResult {
  routeId: string;
  example: string;
  similarity: number;
}

export interface SemanticDecision {
  /** The winning route, when its closest example reaches its threshold. */
  route: Route | undefined;
  /** The winner's nearest examples (best first); empty without a winner. */
  matches: SemanticMatchResult[];
  /** The best candidate that fell short: route id, similarity and the threshold it missed. */
  nearMiss?: { routeId: string; similarity: number; threshold: number };
}

const auth = (token: string, timeoutMs: number) => ({
  headers: { authorization: `Bearer ${token}` },
  timeoutMs,
});

const str = (v: string) => ({ kind: { case: "stringValue" as const, value: v } });

/** True when semantic routing has something to do for these routes (the routes in effect). */
export function hasSemanticRoutes(routes: readonly Route[]): boolean {
  return routes.some((r) => r.enabled && r.examples.length > 0);
}

/**
 * The vote, pure: hits belong to the route in effect with their route id (a copy of a global
 * route that the tenant shadows, or one no longer in effect, counts for nothing); each route's
 * score is the sum of its hits' similarities; among the routes whose closest example reaches
 * their threshold, the highest score wins.
 */
export function vote(
  hits: readonly SearchHit[],
  routes: readonly Route[],
  defaultMin: number,
): SemanticDecision {
  const inEffect = new Map(
    routes.filter((r) => r.enabled && r.examples.length > 0).map((r) => [r.id, r]),
  );
  const tally = new Map<string, { route: Route; score: number; matches: SemanticMatchResult[] }>();
  for (const hit of hits) {
    const routeId = hit.metadata?.["route_id"];
    const scope = hit.metadata?.["scope"];
    if (typeof routeId !== "string") continue;
    const route = inEffect.get(routeId);
    if (route === undefined) continue;
    if ((scope === "global") !== (route.tenantId === "")) continue;
    const similarity = Math.max(0, Math.min(1, hit.score));
    const example = hit.metadata?.["example"];
    const entry = tally.get(routeId) ?? { route, score: 0, matches: [] };
    entry.score += similarity;
    entry.matches.push({
      routeId,
      example: typeof example === "string" ? example : hit.text,
      similarity,
    });
    tally.set(routeId, entry);
  }
  let best: { route: Route; score: number; matches: SemanticMatchResult[] } | undefined;
  let nearMiss: SemanticDecision["nearMiss"];
  for (const entry of tally.values()) {
    const top = entry.matches[0]?.similarity ?? 0;
    const threshold = entry.route.match?.minSimilarity || defaultMin;
    if (top < threshold) {
      if (nearMiss === undefined || top > nearMiss.similarity) {
        nearMiss = { routeId: entry.route.id, similarity: top, threshold };
      }
      continue;
    }
    if (best === undefined || entry.score > best.score) best = entry;
  }
  return best === undefined
    ? { route: undefined, matches: [], ...(nearMiss !== undefined ? { nearMiss } : {}) }
    : { route: best.route, matches: best.matches };
}

export class SemanticRouter {
  readonly #vs: GrpcClient<typeof VectorSearchService>;
  readonly #opts: SemanticOptions;
  readonly #logger: Logger;
  readonly #now: () => number;
  // tenant -> until when it is known to have no collection (no Search is sent meanwhile).
  readonly #missing = new Map<string, number>();
  // tenant -> fingerprint of the global examples last copied into its collection (this replica).
  readonly #globalsCopied = new Map<string, string>();

  constructor(vs: GrpcClient<typeof VectorSearchService>, opts: SemanticOptions, logger: Logger) {
    this.#vs = vs;
    this.#opts = opts;
    this.#logger = logger;
    this.#now = opts.now ?? Date.now;
  }

  /** Forgets that the tenant had no examples collection (its routes changed elsewhere). */
  forget(tenantId: string): void {
    this.#missing.delete(tenantId);
  }

  get defaultMinSimilarity(): number {
    return this.#opts.minSimilarity;
  }

  /**
   * The nearest examples' vote for the request, or undefined when the tenant has no collection.
   * Errors propagate (the caller falls back to the features and says why).
   */
  async decide(
    tenantId: string,
    text: string,
    routes: readonly Route[],
    token: string,
  ): Promise<SemanticDecision | undefined> {
    const until = this.#missing.get(tenantId);
    if (until !== undefined) {
      if (until > this.#now()) return undefined;
      this.#missing.delete(tenantId);
    }
    let hits: SearchHit[];
    try {
      const res = await this.#vs.search(
        {
          collectionId: ROUTES_COLLECTION,
          text: text.length > MAX_QUERY_CHARS ? text.slice(0, MAX_QUERY_CHARS) : text,
          k: this.#opts.k,
        },
        auth(token, this.#opts.searchTimeoutMs),
      );
      hits = res.hits;
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.NotFound) {
        if (this.#missing.size > 10_000) this.#missing.clear();
        this.#missing.set(tenantId, this.#now() + this.#opts.missingTtlMs);
        return undefined;
      }
      throw err;
    }
    return vote(hits, routes, this.#opts.minSimilarity);
  }

  /**
   * Replaces the examples of a tenant route: the new ones are written under a fresh version, then
   * every other version of the route is deleted, so a search sees the old or the new set (or
   * briefly both), never none.
   */
  async putRoute(tenantId: string, route: Route, token: string): Promise<void> {
    if (route.examples.length === 0) {
      await this.removeRoute(route.id, token);
      return;
    }
    await this.#ensureCollection(tenantId, token);
    const version = randomUUID();
    await this.#write(route.id, "tenant", version, route.examples, token);
    await this.#deleteOtherVersions(route.id, "tenant", version, token);
  }

  /** Deletes a tenant route's examples (nothing to do when the tenant has no collection). */
  async removeRoute(routeId: string, token: string): Promise<void> {
    try {
      await this.#vs.delete(
        {
          collectionId: ROUTES_COLLECTION,
          filter: {
            must: [
              { field: "route_id", test: { case: "eq", value: str(routeId) } },
              { field: "scope", test: { case: "eq", value: str("tenant") } },
            ],
          },
        },
        auth(token, 30_000),
      );
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.NotFound) return;
      throw err;
    }
  }

  /**
   * Copies the global routes' examples into the tenant's collection (when they changed since
   * this replica last copied them), removing copies of global routes no longer there.
   */
  async copyGlobals(tenantId: string, globals: readonly Route[], token: string): Promise<void> {
    const withExamples = globals.filter((r) => r.examples.length > 0);
    const fingerprint = createHash("sha256")
      .update(JSON.stringify(withExamples.map((r) => [r.id, r.examples])))
      .digest("hex")
      .slice(0, 32);
    if (this.#globalsCopied.get(tenantId) === fingerprint) return;
    if (withExamples.length > 0) {
      await this.#ensureCollection(tenantId, token);
      for (const r of withExamples) {
        await this.#write(r.id, "global", fingerprint, r.examples, token);
      }
    }
    try {
      await this.#vs.delete(
        {
          collectionId: ROUTES_COLLECTION,
          filter: {
            must: [{ field: "scope", test: { case: "eq", value: str("global") } }],
            mustNot: [{ field: "version", test: { case: "eq", value: str(fingerprint) } }],
          },
        },
        auth(token, 30_000),
      );
    } catch (err) {
      if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
    }
    if (this.#globalsCopied.size > 10_000) this.#globalsCopied.clear();
    this.#globalsCopied.set(tenantId, fingerprint);
  }

  async #ensureCollection(tenantId: string, token: string): Promise<void> {
    try {
      await this.#vs.getCollection({ collectionId: ROUTES_COLLECTION }, auth(token, 10_000));
    } catch (err) {
      if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
      try {
        await this.#vs.createCollection(
          {
            collection: {
              id: ROUTES_COLLECTION,
              description: "Example utterances of the categorizer's semantic routes",
              dimensions: this.#opts.dimensions,
              metric: DistanceMetric.COSINE,
              embeddingModel: this.#opts.embeddingModel,
              // One example, one vector: an utterance is short and split it would vote twice.
              chunking: { strategy: ChunkStrategy.NONE },
            },
          },
          auth(token, 30_000),
        );
        this.#logger.info(
          { tenantId, collection: ROUTES_COLLECTION, model: this.#opts.embeddingModel },
          "semantic routes collection created",
        );
      } catch (createErr) {
        if (!(createErr instanceof ConnectError && createErr.code === Code.AlreadyExists)) {
          throw createErr;
        }
      }
    }
    this.#missing.delete(tenantId);
  }

  async #write(
    routeId: string,
    scope: "tenant" | "global",
    version: string,
    examples: readonly string[],
    token: string,
  ): Promise<void> {
    await this.#vs.upsert(
      {
        collectionId: ROUTES_COLLECTION,
        documents: examples.map((example, i) => ({
          id: `${scope}:${routeId}:${version}:${i}`,
          text: example,
          metadata: { route_id: routeId, scope, version, example },
        })),
      },
      auth(token, 60_000),
    );
  }

  async #deleteOtherVersions(
    routeId: string,
    scope: "tenant" | "global",
    version: string,
    token: string,
  ): Promise<void> {
    await this.#vs.delete(
      {
        collectionId: ROUTES_COLLECTION,
        filter: {
          must: [
            { field: "route_id", test: { case: "eq", value: str(routeId) } },
            { field: "scope", test: { case: "eq", value: str(scope) } },
          ],
          mustNot: [{ field: "version", test: { case: "eq", value: str(version) } }],
        },
      },
      auth(token, 30_000),
    );
  }
}
