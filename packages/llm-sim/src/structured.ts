// Structured output: what a model asked for JSON answers. `json_object` gets an object holding the
// simulated sentence; `json_schema` gets an instance of the schema, built deterministically from
// it (every property present, as strict mode requires; enums and consts take their first value;
// numbers their lower bound, else 0, within their upper bound; arrays their minimum length, at
// least one item unless maxItems is 0; strings say that they are simulated, or are a sample of
// their `format`, fitted to minLength / maxLength), so a client that validates the answer
// against its schema (the openai SDK's zod parse()) accepts it. The JSON Schema subset OpenAI's
// strict mode accepts, plus `$ref` into `$defs`/`definitions`, `anyOf`/`oneOf`/`allOf` (the
// first branch) and nullable type lists; `pattern` is not followed.

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
        if (depth >= MAX_DEPTH) return [];
        const min = typeof s["minItems"] === "number" ? s["minItems"] : 1;
        const max = typeof s["maxItems"] === "number" ? s["maxItems"] : 16;
        return Array.from({ length: Math.max(0, Math.min(Math.max(1, min), max, 16)) }, () =>
          build(s["items"], name, depth + 1),
        );
      }
      case "integer":
      case "number":
        return numberIn(s, type === "integer");
      case "boolean":
        return false;
      case "null":
        return null;
      default:
        return stringFor(s, `${label} ${name}`.trim());
    }
  };
  return build(root, "", 0);
}

/** The lower bound (exclusive ones stepped over), else 0, kept under the upper bound. */
function numberIn(s: Record<string, unknown>, integer: boolean): number {
  const num = (key: string): number | undefined =>
    typeof s[key] === "number" ? s[key] : undefined;
  const min = num("minimum");
  const exMin = num("exclusiveMinimum");
  const max = num("maximum");
  const exMax = num("exclusiveMaximum");
  let n = min ?? (exMin !== undefined ? exMin + (integer ? 1 : 0.5) : 0);
  if (max !== undefined && n > max) n = max;
  if (exMax !== undefined && n >= exMax) n = exMax - (integer ? 1 : 0.5);
  return integer ? Math.ceil(n) : n;
}

/** Sample values for the string formats structured output uses most (validators check them). */
const FORMATS: Record<string, string> = {
  email: "simulated@example.com",
  uri: "https://example.com/simulated",
  url: "https://example.com/simulated",
  uuid: "00000000-0000-4000-8000-000000000000",
  "date-time": "2000-01-01T00:00:00Z",
  date: "2000-01-01",
  time: "00:00:00Z",
  duration: "PT1S",
  ipv4: "192.0.2.1",
  ipv6: "2001:db8::1",
  hostname: "example.com",
};

/** The text (or the format's sample), fitted to minLength / maxLength. */
function stringFor(s: Record<string, unknown>, text: string): string {
  const format = typeof s["format"] === "string" ? FORMATS[s["format"]] : undefined;
  let out = format ?? text;
  const min = typeof s["minLength"] === "number" ? s["minLength"] : 0;
  const max = typeof s["maxLength"] === "number" ? s["maxLength"] : undefined;
  if (out.length < min) out = out.padEnd(min, ".");
  if (max !== undefined && out.length > max) out = out.slice(0, max);
  return out;
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
