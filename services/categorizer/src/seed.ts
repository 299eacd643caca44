// The global routes (tenant "") come from one YAML file (deploy/config/routes.yaml by default):
//
//   routes: [ensemble.categorizer.v1.Route in the protobuf JSON mapping, ...]
//
// Every entry is decoded with fromJson (an unknown field or enum name fails loudly) and checked
// against the contract's protovalidate rules before anything is written, so a bad file never
// half-applies. Loading is idempotent and declarative: entries are upserted by id (unchanged
// ones are not rewritten), and global routes no longer in the file are removed. Several replicas
// may load at once: every write is a single-document upsert on the unique index.
import { readFile } from "node:fs/promises";
import { equals, fromBinary, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { validateMessage, type Logger } from "@ensemble/kit";
import { RouteSchema, type Route } from "@ensemble/proto";
import { parse } from "yaml";
import { GLOBAL_TENANT, type RouteStore } from "./route-store.js";

export class SeedError extends Error {
  override name = "SeedError";
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid routes file:\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.problems = problems;
  }
}

/** Parses and checks the file; throws SeedError listing every problem. */
export function parseRoutes(text: string, file: string): Route[] {
  const problems: string[] = [];
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (err) {
    throw new SeedError([
      `${file}: not valid YAML (${err instanceof Error ? err.message : String(err)})`,
    ]);
  }
  const list = (doc as { routes?: unknown } | null)?.routes;
  if (!Array.isArray(list)) throw new SeedError([`${file}: expected a top-level "routes:" list`]);
  const routes: Route[] = [];
  const seen = new Set<string>();
  list.forEach((entry, i) => {
    const where = `${file}: routes[${i}]`;
    let route: Route;
    try {
      route = fromJson(RouteSchema, entry as JsonValue);
    } catch (err) {
      problems.push(`${where}: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    const invalid = validateMessage(RouteSchema, route);
    if (invalid !== undefined) problems.push(`${where} (${route.id}): ${invalid.rawMessage}`);
    if (seen.has(route.id)) problems.push(`${where}: duplicate id ${route.id}`);
    seen.add(route.id);
    routes.push(route);
  });
  if (problems.length > 0) throw new SeedError(problems);
  return routes;
}

export interface SeedResult {
  present: boolean;
  written: number;
  unchanged: number;
  removed: number;
}

/** Loads the file into the global routes. A missing file leaves them untouched. */
export async function loadRouteSeeds(
  file: string,
  store: RouteStore,
  logger: Logger,
): Promise<SeedResult> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      logger.warn({ file }, "no routes file: global routes unchanged");
      return { present: false, written: 0, unchanged: 0, removed: 0 };
    }
    throw err;
  }
  const routes = parseRoutes(text, file);
  const existing = await store.globalIds();
  let written = 0;
  let unchanged = 0;
  for (const route of routes) {
    const before = existing.get(route.id);
    if (before !== undefined && equals(RouteSchema, fromBinaryRoute(before), route)) {
      unchanged++;
    } else {
      await store.upsert(GLOBAL_TENANT, route);
      written++;
    }
    existing.delete(route.id);
  }
  for (const id of existing.keys()) await store.delete(GLOBAL_TENANT, id);
  const result = { present: true, written, unchanged, removed: existing.size };
  logger.info({ file, ...result }, "global routes loaded");
  return result;
}

/** The stored message as the seed wrote it (no tenant, no timestamps). */
function fromBinaryRoute(payload: Uint8Array): Route {
  return fromBinary(RouteSchema, payload);
}
