// Metadata filters (MetadataFilter in the contract), compiled once per request into a predicate
// over a chunk's metadata. Evaluated in memory, next to the index: the same code decides which
// hits pass, which chunks an exact scan considers and which documents Delete-by-filter removes,
// so they can never disagree (and nothing depends on the MongoDB-wire server's query dialect).
import { toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { InvalidArgumentError } from "@ensemble/kit";
import type { FilterCondition, MetadataFilter } from "@ensemble/proto";

export type Predicate = (metadata: JsonObject) => boolean;

/**
 * Every value found at a dotted path. Arrays met on the way are walked element by element (so
 * "authors.name" reaches each author's name); an array at the end yields its elements and
 * itself, so eq/in match an element or the whole array.
 */
export function valuesAt(metadata: JsonObject, path: string): JsonValue[] {
  let current: JsonValue[] = [metadata];
  for (const key of path.split(".")) {
    const next: JsonValue[] = [];
    const visit = (v: JsonValue): void => {
      if (Array.isArray(v)) {
        for (const e of v) visit(e);
      } else if (v !== null && typeof v === "object" && Object.hasOwn(v, key)) {
        next.push(v[key]!);
      }
    };
    for (const v of current) visit(v);
    if (next.length === 0) return [];
    current = next;
  }
  const out: JsonValue[] = [];
  for (const v of current) {
    if (Array.isArray(v)) out.push(...v);
    out.push(v);
  }
  return out;
}

export function jsonEqual(a: JsonValue, b: JsonValue): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => jsonEqual(x, b[i]!));
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k]!, b[k]!));
}

function json(v: Value): JsonValue {
  return toJson(ValueSchema, v);
}

type Bound = { op: "gt" | "gte" | "lt" | "lte"; value: number | string };

function bound(op: Bound["op"], v: Value | undefined, field: string): Bound | undefined {
  if (v === undefined) return undefined;
  const value = json(v);
  if (typeof value !== "number" && typeof value !== "string") {
    throw new InvalidArgumentError(`range bound ${op} of ${field} must be a number or a string`, {
      field: "filter",
    });
  }
  return { op, value };
}

function inRange(v: JsonValue, bounds: Bound[]): boolean {
  return bounds.every((b) => {
    if (typeof v !== typeof b.value) return false;
    const x = v as number | string;
    switch (b.op) {
      case "gt":
        return x > b.value;
      case "gte":
        return x >= b.value;
      case "lt":
        return x < b.value;
      case "lte":
        return x <= b.value;
    }
  });
}

function condition(c: FilterCondition): Predicate {
  const field = c.field;
  switch (c.test.case) {
    case "eq": {
      const want = json(c.test.value);
      return (m) => valuesAt(m, field).some((v) => jsonEqual(v, want));
    }
    case "in": {
      const wants = c.test.value.values.map(json);
      return (m) => valuesAt(m, field).some((v) => wants.some((w) => jsonEqual(v, w)));
    }
    case "range": {
      const r = c.test.value;
      const bounds = [
        bound("gt", r.gt, field),
        bound("gte", r.gte, field),
        bound("lt", r.lt, field),
        bound("lte", r.lte, field),
      ].filter((b): b is Bound => b !== undefined);
      // Each element of an array is tested on its own: [1, 10] is not "between 4 and 6".
      return (m) => valuesAt(m, field).some((v) => !Array.isArray(v) && inRange(v, bounds));
    }
    case "exists": {
      const want = c.test.value;
      return (m) => valuesAt(m, field).length > 0 === want;
    }
    default:
      throw new InvalidArgumentError(`filter condition on ${field} has no test`, {
        field: "filter",
      });
  }
}

/** The filter as a predicate; undefined when it has no conditions (everything passes). */
export function compileFilter(filter: MetadataFilter | undefined): Predicate | undefined {
  if (filter === undefined || (filter.must.length === 0 && filter.mustNot.length === 0)) {
    return undefined;
  }
  const must = filter.must.map(condition);
  const mustNot = filter.mustNot.map(condition);
  return (m) => must.every((p) => p(m)) && !mustNot.some((p) => p(m));
}
