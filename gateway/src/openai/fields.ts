// Checks of OpenAI request bodies, with OpenAI's wording and the parameter path as `param`
// ("messages[0].content"). Hand-written instead of a schema library: a request is checked in
// one pass while it is mapped, which keeps the hot path to a few microseconds.
import { PromptCacheTtl } from "@ensemble/proto";
import { invalidRequest, type OpenAiError } from "./errors.js";

export type JsonObject = Record<string, unknown>;

export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return "a string";
    case "number":
      return Number.isInteger(value) ? "an integer" : "a decimal";
    case "boolean":
      return "a boolean";
    case "undefined":
      return "nothing";
    default:
      return "an object";
  }
}

export function wrongType(path: string, expected: string, value: unknown): OpenAiError {
  return invalidRequest(
    `Invalid type for '${path}': expected ${expected}, but got ${describe(value)} instead.`,
    path,
    "invalid_type",
  );
}

export function wrongValue(path: string, value: unknown, allowed: readonly string[]): OpenAiError {
  const list = allowed.map((a) => `'${a}'`).join(", ");
  return invalidRequest(
    `Invalid value for '${path}': ${JSON.stringify(value)}. Supported values are: ${list}.`,
    path,
    "invalid_value",
  );
}

export function missing(path: string): OpenAiError {
  return invalidRequest(
    `Missing required parameter: '${path}'.`,
    path,
    "missing_required_parameter",
  );
}

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** `value` as an object; absent (undefined) is a missing parameter, anything else a wrong type. */
export function objectAt(value: unknown, path: string): JsonObject {
  if (value === undefined) throw missing(path);
  if (!isObject(value)) throw wrongType(path, "an object", value);
  return value;
}

/** Refuses keys outside `allowed` (OpenAI answers 400 to unrecognized arguments too). */
export function onlyKeys(obj: JsonObject, allowed: ReadonlySet<string>, prefix: string): void {
  for (const key in obj) {
    if (!allowed.has(key)) {
      const path = prefix === "" ? key : `${prefix}.${key}`;
      throw invalidRequest(
        `Unrecognized request argument supplied: ${path}`,
        path,
        "unknown_parameter",
      );
    }
  }
}

const join = (prefix: string, key: string): string => (prefix === "" ? key : `${prefix}.${key}`);

/** An optional string (null counts as absent, as in OpenAI's API). */
export function optString(obj: JsonObject, key: string, prefix = ""): string | undefined {
  const value = obj[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw wrongType(join(prefix, key), "a string", value);
  return value;
}

export function reqString(obj: JsonObject, key: string, prefix = ""): string {
  const value = optString(obj, key, prefix);
  if (value === undefined) throw missing(join(prefix, key));
  return value;
}

export function optNumber(obj: JsonObject, key: string, prefix = ""): number | undefined {
  const value = obj[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw wrongType(join(prefix, key), "a number", value);
  }
  return value;
}

/** An optional integer within int32 (the contract's range rules are checked upstream). */
export function optInt32(obj: JsonObject, key: string, prefix = ""): number | undefined {
  const value = obj[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw wrongType(join(prefix, key), "an integer", value);
  }
  if (value < -2_147_483_648 || value > 2_147_483_647) {
    throw invalidRequest(
      `Invalid '${join(prefix, key)}': integer out of range.`,
      join(prefix, key),
      "integer_out_of_range",
    );
  }
  return value;
}

export function optBoolean(obj: JsonObject, key: string, prefix = ""): boolean | undefined {
  const value = obj[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") throw wrongType(join(prefix, key), "a boolean", value);
  return value;
}

/** One of `allowed`, or undefined when absent. */
export function optEnum<T extends string>(
  obj: JsonObject,
  key: string,
  allowed: readonly T[],
  prefix = "",
): T | undefined {
  const value = optString(obj, key, prefix);
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) {
    throw wrongValue(join(prefix, key), value, allowed);
  }
  return value as T;
}

/** An array of strings. */
export function stringArray(value: unknown, path: string): string[] {
  if (!Array.isArray(value)) throw wrongType(path, "an array of strings", value);
  for (let i = 0; i < value.length; i++) {
    if (typeof value[i] !== "string") throw wrongType(`${path}[${i}]`, "a string", value[i]);
  }
  return value as string[];
}

/**
 * The call's labels for the usage ledger: `metadata` (a string map) and `user` (as
 * `metadata.user` unless that is set); undefined when the body has neither.
 */
export function callLabels(body: JsonObject): Record<string, string> | undefined {
  let metadata: Record<string, string> | undefined;
  if (body["metadata"] !== undefined && body["metadata"] !== null) {
    metadata = stringMap(body["metadata"], "metadata");
  }
  // `safety_identifier` is OpenAI's newer name for `user`: the end user behind the call.
  const user = optString(body, "user") || optString(body, "safety_identifier");
  if (user !== undefined && user !== "" && metadata?.["user"] === undefined) {
    metadata = { ...metadata, user };
  }
  return metadata;
}

/** A string-to-string map (OpenAI `metadata`). */
export function stringMap(value: unknown, path: string): Record<string, string> {
  const obj = objectAt(value, path);
  for (const key in obj) {
    if (typeof obj[key] !== "string") throw wrongType(`${path}.${key}`, "a string", obj[key]);
  }
  return obj as Record<string, string>;
}

const CACHE_CONTROL_KEYS = new Set(["type", "ttl"]);
const CACHE_TTLS = {
  "5m": PromptCacheTtl.PROMPT_CACHE_TTL_5M,
  "1h": PromptCacheTtl.PROMPT_CACHE_TTL_1H,
};

/** A prompt-cache breakpoint as the contract's parts and tools carry it. */
export interface CacheMark {
  cacheBreakpoint: true;
  cacheTtl: PromptCacheTtl;
}

/**
 * A content block's, part's or tool's `cache_control`: Anthropic's prompt-caching breakpoint,
 * which LiteLLM also takes on OpenAI bodies. Checked as Anthropic checks it: `{"type":
 * "ephemeral"}` with an optional `ttl` of "5m" or "1h". The mark when it is there (null is
 * absent).
 */
export function cacheControl(obj: JsonObject, prefix: string): CacheMark | undefined {
  const value = obj["cache_control"];
  if (value === undefined || value === null) return undefined;
  const path = join(prefix, "cache_control");
  const control = objectAt(value, path);
  onlyKeys(control, CACHE_CONTROL_KEYS, path);
  const type = reqString(control, "type", path);
  if (type !== "ephemeral") throw wrongValue(`${path}.type`, type, ["ephemeral"]);
  const ttl = optEnum(control, "ttl", ["5m", "1h"], path);
  return {
    cacheBreakpoint: true,
    cacheTtl: ttl === undefined ? PromptCacheTtl.PROMPT_CACHE_TTL_UNSPECIFIED : CACHE_TTLS[ttl],
  };
}
