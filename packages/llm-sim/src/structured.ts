// Structured output: what a model asked for JSON answers. `json_object` gets an object holding the
// simulated sentence; `json_schema` gets an instance of the schema, built deterministically from
// it (every property present, as strict mode requires; enums and consts take their first value;
// numbers their lower bound; arrays their minimum length, at least one item; strings say that
// they are simulated). The JSON Schema subset OpenAI's strict mode accepts, plus `$ref` into
// `$defs`/`definitions`, `anyOf`/`oneOf`/`allOf` (the first branch) and nullable type lists.

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Deeper than this (a recursive schema), an optional branch stops: null, [] or {}. */
const MAX_DEPTH = 6;

export function schemaInstance(schema: unknown, label: string): Json {
  const root = isRecord(schema) ? schema : {};
  const resolve = (s: Record<string, unknown>): Record<string, unknown> => {
    const ref = s["$ref"];
    if (typeof ref !== "string") return s;
    const m = /^#\/(\$defs|definitions)\/(.+)$/.exec(ref);
    const defs = m !== null ? root[m[1]!] : undefined;
    const target = m !== null && isRecord(defs) ? defs[m[2]!] : ref === "#" ? root : undefined;
    return isRecord(target) ? target : {};
  };
  const build = (raw: unknown, name: string, depth: number): Json => {
    if (!isRecord(raw)) return `${label} ${name}`.trim();
    const s = resolve(raw);
    if ("const" in s) return s["const"] as Json;
    if (Array.isArray(s["enum"]) && s["enum"].length > 0) return s["enum"][0] as Json;
    for (const key of ["anyOf", "oneOf", "allOf"]) {
      const branches: unknown[] = Array.isArray(s[key]) ? (s[key] as unknown[]) : [];
      if (branches.length > 0) {
        const chosen = branches.find((b) => !(isRecord(b) && b["type"] === "null")) ?? branches[0];
        return build(chosen, name, depth);
      }
    }
    const declared: unknown = s["type"];
    const type: unknown = Array.isArray(declared)
      ? ((declared as unknown[]).find((t) => t !== "null") ?? "null")
      : (declared ?? (isRecord(s["properties"]) ? "object" : "string"));
    switch (type) {
      case "object": {
        const out: Record<string, Json> = {};
        if (depth >= MAX_DEPTH) return out;
        const props = isRecord(s["properties"]) ? s["properties"] : {};
        for (const [key, sub] of Object.entries(props)) out[key] = build(sub, key, depth + 1);
        return out;
      }
      case "array": {
        const min = typeof s["minItems"] === "number" ? s["minItems"] : 1;
        if (depth >= MAX_DEPTH) return [];
        return Array.from({ length: Math.max(1, Math.min(min, 16)) }, () =>
          build(s["items"], name, depth + 1),
        );
      }
      case "integer":
      case "number": {
        const low = s["minimum"] ?? s["exclusiveMinimum"];
        const base = typeof low === "number" ? low : 0;
        const n = "exclusiveMinimum" in s && !("minimum" in s) ? base + 1 : base;
        return type === "integer" ? Math.ceil(n) : n;
      }
      case "boolean":
        return false;
      case "null":
        return null;
      default:
        return `${label} ${name}`.trim();
    }
  };
  return build(root, "", 0);
}

/**
 * The answer text for a response_format: undefined for text (the plain sentence), else JSON.
 * `sentence` is the simulated sentence, `label` what strings inside a schema instance start with.
 */
export function structuredAnswer(
  format: unknown,
  sentence: string,
  label: string,
): string | undefined {
  if (!isRecord(format)) return undefined;
  if (format["type"] === "json_object") return JSON.stringify({ answer: sentence });
  if (format["type"] === "json_schema") {
    const spec = isRecord(format["json_schema"]) ? format["json_schema"] : {};
    return JSON.stringify(schemaInstance(spec["schema"], label));
  }
  return undefined;
}

/** A tool call the request forces: the tool's name and its parameters' schema. */
export interface ForcedCall {
  name: string;
  schema: unknown;
}

/** A forced call's arguments: an instance of the tool's parameters (an object; `{}` without). */
export function toolInput(schema: unknown, label: string): Record<string, Json> {
  const v = schemaInstance(isRecord(schema) ? { type: "object", ...schema } : {}, label);
  return isRecord(v) ? v : {};
}
