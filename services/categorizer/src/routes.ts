// Route evaluation, pure: which routes are in effect for a tenant (its own over the global ones,
// by id), in which order (priority descending, then id), and whether a route's conditions hold
// for a request's signals. The service adds what needs I/O (model capabilities, context windows).
import type { Category, Modality, Route, RouteKindFilter, RouteTarget } from "@ensemble/proto";

export interface RouteSignals {
  category: Category;
  modalities: readonly Modality[];
  domainTags: readonly string[];
  text: string;
  /** Input plus output tokens. */
  estimatedTokens: number;
}

export type RouteKind = "model" | "template" | "compare";

/** Evaluation order: priority descending, ties by id. */
export function sortRoutes(routes: Route[]): Route[] {
  return routes.sort((a, b) => b.priority - a.priority || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** The routes in effect: a tenant route shadows the global route with its id. */
export function mergeRoutes(global: readonly Route[], tenant: readonly Route[]): Route[] {
  const own = new Set(tenant.map((r) => r.id));
  return sortRoutes([...tenant, ...global.filter((r) => !own.has(r.id))]);
}

export function kindOf(target: RouteTarget | undefined): RouteKind | undefined {
  switch (target?.target.case) {
    case "model":
      return "model";
    case "templateId":
      return "template";
    case "compare":
      return "compare";
    default:
      return undefined;
  }
}

/** All false (or no filter) = every kind allowed. */
export function kindAllowed(kind: RouteKind, filter: RouteKindFilter | undefined): boolean {
  if (filter === undefined || (!filter.model && !filter.template && !filter.compare)) return true;
  return kind === "model" ? filter.model : kind === "template" ? filter.template : filter.compare;
}

/**
 * True when the route decides on explicit signals (modality, domain tags, keywords) rather than
 * on the category alone: its decision is reported as DECIDER_RULE.
 */
export function isRuleRoute(route: Route): boolean {
  const m = route.match;
  return (
    m !== undefined && (m.modalities.length > 0 || m.domainTags.length > 0 || m.keywords.length > 0)
  );
}

/** A route that decides on the category (and token bounds) alone. */
export function isCategoryOnlyRoute(route: Route): boolean {
  return !isRuleRoute(route) && route.examples.length === 0;
}

function hasConditions(route: Route): boolean {
  const m = route.match;
  return (
    m !== undefined &&
    (m.categories.length > 0 ||
      m.modalities.length > 0 ||
      m.domainTags.length > 0 ||
      m.keywords.length > 0 ||
      m.minEstimatedTokens > 0n ||
      m.maxEstimatedTokens > 0n)
  );
}

const keywordPatterns = new WeakMap<Route, RegExp | null>();

/** One case-insensitive regex per route: any keyword, as whole words. */
function keywordPattern(route: Route): RegExp | null {
  let re = keywordPatterns.get(route);
  if (re === undefined) {
    const words = route.match?.keywords ?? [];
    re =
      words.length === 0
        ? null
        : new RegExp(
            words
              .map((w) => {
                const escaped = w
                  .trim()
                  .replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
                  .replace(/\s+/g, "\\s+");
                const start = /^\w/.test(w.trim()) ? "\\b" : "";
                const end = /\w$/.test(w.trim()) ? "\\b" : "";
                return `${start}${escaped}${end}`;
              })
              .join("|"),
            "i",
          );
    keywordPatterns.set(route, re);
  }
  return re;
}

/**
 * Whether every set condition of the route holds. A route with examples (semantic routing) also
 * needs the semantic vote: with semantic routing on (`semantic` given), it matches only when it
 * won the vote and its other conditions hold. With semantic routing off it is judged on its other
 * conditions, and a route that has examples but no other condition never matches (rather than
 * matching everything).
 */
export function routeMatches(
  route: Route,
  s: RouteSignals,
  semantic?: { winner: string | undefined },
): boolean {
  if (!route.enabled) return false;
  const byExamples = semantic !== undefined && route.examples.length > 0;
  if (byExamples && semantic.winner !== route.id) return false;
  const m = route.match;
  if (m === undefined || !hasConditions(route)) return byExamples || route.examples.length === 0;
  if (m.categories.length > 0 && !m.categories.includes(s.category)) return false;
  if (m.modalities.length > 0 && !m.modalities.some((x) => s.modalities.includes(x))) return false;
  if (m.domainTags.length > 0) {
    const tags = m.domainTags.map((t) => t.toLowerCase());
    if (!s.domainTags.some((t) => tags.includes(t))) return false;
  }
  if (m.minEstimatedTokens > 0n && BigInt(s.estimatedTokens) < m.minEstimatedTokens) return false;
  if (m.maxEstimatedTokens > 0n && BigInt(s.estimatedTokens) > m.maxEstimatedTokens) return false;
  const re = keywordPattern(route);
  if (re !== null && !re.test(s.text.length > 64_000 ? s.text.slice(0, 64_000) : s.text))
    return false;
  return true;
}
