import { create } from "@bufbuild/protobuf";
import { Category, Modality, RouteSchema, type Route } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import {
  isRuleRoute,
  kindAllowed,
  mergeRoutes,
  routeMatches,
  type RouteSignals,
} from "./routes.js";

function route(
  id: string,
  priority: number,
  match: Parameters<typeof create<typeof RouteSchema>>[1] extends infer I
    ? I extends { match?: infer M }
      ? M
      : never
    : never,
  model = "fast",
): Route {
  return create(RouteSchema, {
    id,
    priority,
    match,
    target: { target: { case: "model", value: model } },
    enabled: true,
  });
}

const signals = (over: Partial<RouteSignals> = {}): RouteSignals => ({
  category: Category.M,
  modalities: [Modality.TEXT],
  domainTags: [],
  text: "hello there",
  estimatedTokens: 100,
  ...over,
});

describe("routes - matching", () => {
  it("category, modality and tags must all hold", () => {
    const r = route("r", 1, {
      categories: [Category.H],
      modalities: [Modality.CODE],
      domainTags: ["devops"],
    });
    expect(
      routeMatches(
        r,
        signals({ category: Category.H, modalities: [Modality.CODE], domainTags: ["devops"] }),
      ),
    ).toBe(true);
    expect(routeMatches(r, signals({ category: Category.H, modalities: [Modality.CODE] }))).toBe(
      false,
    );
    expect(
      routeMatches(
        r,
        signals({ category: Category.M, modalities: [Modality.CODE], domainTags: ["devops"] }),
      ),
    ).toBe(false);
  });

  it("keywords match whole words, case-insensitively, phrases included", () => {
    const r = route("k", 1, { keywords: ["second opinion", "c++"] });
    expect(routeMatches(r, signals({ text: "I'd like a Second  Opinion on this" }))).toBe(true);
    expect(routeMatches(r, signals({ text: "is C++ faster" }))).toBe(true);
    expect(routeMatches(r, signals({ text: "secondopinion" }))).toBe(false);
  });

  it("token bounds", () => {
    const r = route("t", 1, { minEstimatedTokens: 1000n, maxEstimatedTokens: 2000n });
    expect(routeMatches(r, signals({ estimatedTokens: 999 }))).toBe(false);
    expect(routeMatches(r, signals({ estimatedTokens: 1500 }))).toBe(true);
    expect(routeMatches(r, signals({ estimatedTokens: 2001 }))).toBe(false);
  });

  it("a disabled route never matches; a route with only examples never matches without semantic routing", () => {
    const off = route("off", 1, {});
    off.enabled = false;
    expect(routeMatches(off, signals())).toBe(false);
    const semantic = route("sem", 1, {});
    semantic.examples = ["book me a flight"];
    expect(routeMatches(semantic, signals())).toBe(false);
  });

  it("with semantic routing a route with examples matches only when it won the vote, and its other conditions still apply", () => {
    const sem = route("sem", 1, {});
    sem.examples = ["book me a flight"];
    expect(routeMatches(sem, signals(), { winner: "sem" })).toBe(true);
    expect(routeMatches(sem, signals(), { winner: "other" })).toBe(false);
    expect(routeMatches(sem, signals(), { winner: undefined })).toBe(false);
    const onlyL = route("sem-l", 1, { categories: [Category.L] });
    onlyL.examples = ["book me a flight"];
    expect(routeMatches(onlyL, signals(), { winner: "sem-l" })).toBe(false);
    expect(routeMatches(onlyL, signals({ category: Category.L }), { winner: "sem-l" })).toBe(true);
    // Routes without examples are unaffected by the vote.
    expect(routeMatches(route("plain", 1, {}), signals(), { winner: "sem" })).toBe(true);
  });

  it("rule routes are the ones with explicit signals", () => {
    expect(isRuleRoute(route("a", 1, { categories: [Category.L] }))).toBe(false);
    expect(isRuleRoute(route("b", 1, { keywords: ["x"] }))).toBe(true);
  });
});

describe("routes - merging and kinds", () => {
  it("a tenant route shadows the global route with its id; order is priority then id", () => {
    const merged = mergeRoutes(
      [route("b", 5, {}), route("a", 5, {}), route("c", 1, {})],
      [route("c", 9, {}, "thinking")],
    );
    expect(merged.map((r) => r.id)).toEqual(["c", "a", "b"]);
    expect(merged[0]?.target?.target.value).toBe("thinking");
  });

  it("no filter allows every kind; a filter allows only what it names", () => {
    expect(kindAllowed("template", undefined)).toBe(true);
    expect(kindAllowed("template", { model: true, template: false, compare: false } as never)).toBe(
      false,
    );
    expect(kindAllowed("model", { model: true, template: false, compare: false } as never)).toBe(
      true,
    );
  });
});
