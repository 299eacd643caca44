// Seeds: the global catalog (tenant "") comes from YAML files in the seed directory
// (deploy/config by default). Each file holds one list in the protobuf JSON mapping:
//
//   models.yaml     models:    [ensemble.registry.v1.Model, ...]
//   addons.yaml     addons:    [ensemble.registry.v1.PromptAddon, ...]
//   templates.yaml  templates: [ensemble.registry.v1.WorkflowTemplate, ...]
//
// Every entry is decoded with fromJson (an unknown field or enum name fails loudly), checked
// against the contract's protovalidate rules and, for templates, the step-graph rules. All
// files are checked before anything is written, so a bad file never half-applies.
//
// Loading is idempotent and declarative: each entry is upserted by id (unchanged entries are
// not rewritten, so update_time means "the seed text changed"), and global entries whose id is
// no longer in a present file are removed. A missing file leaves its kind untouched. Several
// replicas may load at once: every write is a single-document upsert on the unique index.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  fromJson,
  toBinary,
  type DescMessage,
  type JsonValue,
  type MessageShape,
} from "@bufbuild/protobuf";
import { validateMessage, type Logger } from "@ensemble/kit";
import { parse } from "yaml";
import type { Catalog } from "./catalog-service.js";
import { GLOBAL_TENANT, type CatalogStore } from "./catalog-store.js";
import { validateTemplate } from "@ensemble/workflow";
import { WorkflowTemplateSchema, type WorkflowTemplate } from "@ensemble/proto";

export class SeedError extends Error {
  override name = "SeedError";
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid seed data:\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.problems = problems;
  }
}

export interface SeedResult {
  kind: "models" | "addons" | "templates";
  file: string;
  /** False when the file does not exist (nothing was changed for this kind). */
  present: boolean;
  created: number;
  updated: number;
  unchanged: number;
  removed: number;
}

interface SeedSpec<Desc extends DescMessage> {
  kind: SeedResult["kind"];
  file: string;
  store: CatalogStore<Desc>;
}

interface ParsedSeed<Desc extends DescMessage> {
  spec: SeedSpec<Desc>;
  path: string;
  present: boolean;
  entries: Array<MessageShape<Desc> & { id: string }>;
}

/** Loads every seed file in `dir` into the global catalog. Throws SeedError listing all problems. */
export async function loadSeeds(
  dir: string,
  catalog: Catalog,
  logger: Logger,
): Promise<SeedResult[]> {
  const specs = [
    { kind: "models", file: "models.yaml", store: catalog.models },
    { kind: "addons", file: "addons.yaml", store: catalog.addons },
    { kind: "templates", file: "templates.yaml", store: catalog.templates },
  ] as const;
  const problems: string[] = [];
  const parsed = [
    await parseSeed(dir, specs[0], problems),
    await parseSeed(dir, specs[1], problems),
    await parseSeed(dir, specs[2], problems),
  ];
  if (problems.length > 0) throw new SeedError(problems);

  const results: SeedResult[] = [];
  for (const seed of parsed) {
    const result = await applySeed(seed);
    results.push(result);
    if (!result.present) {
      logger.warn(
        { file: seed.path },
        "seed file not found; left this part of the catalog as it is",
      );
    } else {
      logger.info({ ...result, file: seed.path }, "seed loaded");
    }
  }
  return results;
}

async function parseSeed<Desc extends DescMessage>(
  dir: string,
  spec: SeedSpec<Desc>,
  problems: string[],
): Promise<ParsedSeed<Desc>> {
  const path = join(dir, spec.file);
  const out: ParsedSeed<Desc> = { spec, path, present: false, entries: [] };
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return out;
    throw err;
  }
  out.present = true;
  let doc: unknown;
  try {
    doc = parse(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    problems.push(`${spec.file}: not valid YAML: ${(err as Error).message}`);
    return out;
  }
  if (doc === null || doc === undefined) return out; // an empty file is an empty list
  if (typeof doc !== "object" || Array.isArray(doc)) {
    problems.push(`${spec.file}: expected a mapping with the key "${spec.kind}"`);
    return out;
  }
  for (const key of Object.keys(doc)) {
    if (key !== spec.kind)
      problems.push(`${spec.file}: unknown top-level key "${key}" (expected "${spec.kind}")`);
  }
  const list = (doc as Record<string, unknown>)[spec.kind] ?? [];
  if (!Array.isArray(list)) {
    problems.push(`${spec.file}: "${spec.kind}" must be a list`);
    return out;
  }
  const seen = new Map<string, number>();
  list.forEach((item: unknown, i) => {
    const at = `${spec.file}: ${spec.kind}[${i}]`;
    let message: MessageShape<Desc> & { id: string };
    try {
      message = fromJson(spec.store.kind.schema, item as JsonValue) as MessageShape<Desc> & {
        id: string;
      };
    } catch (err) {
      problems.push(`${at}: ${(err as Error).message}`);
      return;
    }
    // Output-only fields are the registry's to set.
    const outputOnly = message as { tenantId?: string; createTime?: unknown; updateTime?: unknown };
    outputOnly.tenantId = "";
    delete outputOnly.createTime;
    delete outputOnly.updateTime;
    const label = `${at} (id "${message.id}")`;
    const invalid = validateMessage(spec.store.kind.schema, message);
    if (invalid !== undefined) problems.push(`${label}: ${invalid.rawMessage}`);
    if (spec.store.kind.schema.typeName === WorkflowTemplateSchema.typeName) {
      for (const issue of validateTemplate(
        message as unknown as WorkflowTemplate,
        spec.kind + `[${i}]`,
      )) {
        problems.push(`${spec.file}: ${issue.message}`);
      }
    }
    const first = seen.get(message.id);
    if (first !== undefined) {
      problems.push(`${label}: duplicate id (also ${spec.kind}[${first}])`);
      return;
    }
    seen.set(message.id, i);
    out.entries.push(message);
  });
  return out;
}

async function applySeed(seed: ParsedSeed<DescMessage>): Promise<SeedResult> {
  const { spec } = seed;
  const result: SeedResult = {
    kind: spec.kind,
    file: spec.file,
    present: seed.present,
    created: 0,
    updated: 0,
    unchanged: 0,
    removed: 0,
  };
  if (!seed.present) return result;
  const store = spec.store;
  const existing = new Map(
    (await store.ownEntries(GLOBAL_TENANT)).map((e) => [e.id, Buffer.from(e.payload)]),
  );
  for (const entry of seed.entries) {
    const before = existing.get(entry.id);
    // Stored payloads carry no tenant or timestamps; compare like with like.
    if (before !== undefined && before.equals(toBinary(store.kind.schema, entry))) {
      result.unchanged++;
      continue;
    }
    const { created } = await store.upsert(GLOBAL_TENANT, entry);
    if (created) result.created++;
    else result.updated++;
  }
  const wanted = new Set(seed.entries.map((e) => e.id));
  result.removed = await store.deleteMany(
    GLOBAL_TENANT,
    [...existing.keys()].filter((id) => !wanted.has(id)),
  );
  return result;
}
