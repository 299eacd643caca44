import { create } from "@bufbuild/protobuf";
import { RouteSchema, SearchHitSchema, type Route, type SearchHit } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { hasSemanticRoutes, vote } from "./semantic.js";

function route(id: string, tenantId: string, minSimilarity = 0): Route {
  return create(RouteSchema, {
    id,
    tenantId,
    enabled: true,
    examples: [`example of ${id}`],
    match: { minSimilarity },
    target: { target: { case: "model", value: "fast" } },
  });
}

function hit(routeId: string, score: number, scope = "tenant"): SearchHit {
  return create(SearchHitSchema, {
    documentId: `${scope}:${routeId}:v:${score}`,
    score,
    metadata: { route_id: routeId, scope, example: `${routeId} ${score}` },
  });
}

describe("semantic - the vote", () => {
  const routes = [route("billing", "t1"), route("it", "t1"), route("legal", "")];

  it("similarity-weighted: several close examples beat one slightly closer", () => {
    const d = vote([hit("it", 0.8), hit("billing", 0.75), hit("billing", 0.7)], routes, 0.5);
    expect(d.route?.id).toBe("billing");
    expect(d.matches.map((m) => m.similarity)).toEqual([0.75, 0.7]);
  });

  it("the winner's closest example must reach the threshold; the route's own one wins over the default", () => {
    const below = vote([hit("billing", 0.45), hit("billing", 0.44)], routes, 0.5);
    expect(below.route).toBeUndefined();
    expect(below.matches).toEqual([]);
    expect(below.nearMiss).toEqual({ routeId: "billing", similarity: 0.45, threshold: 0.5 });
    const strict = [route("billing", "t1", 0.9)];
    expect(vote([hit("billing", 0.8)], strict, 0.5).route).toBeUndefined();
    const lax = [route("billing", "t1", 0.3)];
    expect(vote([hit("billing", 0.4)], lax, 0.5).route?.id).toBe("billing");
  });

  it("hits count only for the route in effect: unknown, disabled, or a shadowed global copy count for nothing", () => {
    expect(vote([hit("gone", 0.9)], routes, 0.5).route).toBeUndefined();
    const disabled = route("billing", "t1");
    disabled.enabled = false;
    expect(vote([hit("billing", 0.9)], [disabled], 0.5).route).toBeUndefined();
    // A copy of global "legal" counts; a tenant-scoped hit for the global route does not.
    expect(vote([hit("legal", 0.9, "global")], routes, 0.5).route?.id).toBe("legal");
    expect(vote([hit("legal", 0.9, "tenant")], routes, 0.5).route).toBeUndefined();
    // The tenant shadows global "legal" with its own route: the global copies no longer vote.
    const shadowed = [route("legal", "t1")];
    expect(vote([hit("legal", 0.9, "global")], shadowed, 0.5).route).toBeUndefined();
  });

  it("only enabled routes with examples make a search worth it", () => {
    expect(hasSemanticRoutes(routes)).toBe(true);
    const plain = create(RouteSchema, { id: "p", enabled: true });
    expect(hasSemanticRoutes([plain])).toBe(false);
    const off = route("x", "t1");
    off.enabled = false;
    expect(hasSemanticRoutes([off, plain])).toBe(false);
  });
});
