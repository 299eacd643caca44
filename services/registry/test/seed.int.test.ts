import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SeedError } from "../src/seed.js";
import { seedDir, startRegistry, type Harness } from "./harness.js";

const REPO_SEEDS = fileURLToPath(new URL("../../../deploy/config", import.meta.url));

let h: Harness;

beforeAll(async () => {
  h = await startRegistry();
});

afterAll(async () => {
  await h?.close();
});

async function countGlobal(collection: string): Promise<number> {
  return h.mongo.collection(collection).countDocuments({ tenantId: "" });
}

describe("registry seeds", () => {
  it("seeds - the repository's seed files load, and loading them twice changes nothing", async () => {
    const first = await h.seed(REPO_SEEDS);
    const counts = Object.fromEntries(first.map((r) => [r.kind, r.created]));
    // What issue 2 asks the catalog to hold.
    expect(counts.models).toBeGreaterThanOrEqual(13);
    expect(counts.addons).toBe(50);
    expect(counts.templates).toBeGreaterThanOrEqual(3);
    const before = {
      models: await countGlobal("models"),
      addons: await countGlobal("addons"),
      templates: await countGlobal("templates"),
    };
    expect(before).toEqual({
      models: counts.models,
      addons: counts.addons,
      templates: counts.templates,
    });

    const second = await h.seed(REPO_SEEDS);
    for (const result of second) {
      expect(result).toMatchObject({ created: 0, updated: 0, removed: 0 });
    }
    expect({
      models: await countGlobal("models"),
      addons: await countGlobal("addons"),
      templates: await countGlobal("templates"),
    }).toEqual(before);

    // What a user sees through the API.
    const user = h.client(await h.userToken("seed-reader"));
    const templates = await user.listTemplates({});
    expect(templates.templates.map((t) => t.id)).toEqual(
      expect.arrayContaining(["research_report", "marketing_campaign", "code_project"]),
    );
    const all = await user.listAddons({ page: { pageSize: 500 } });
    expect(all.addons).toHaveLength(50);
    expect((await user.getModel({ id: "fast" })).model?.tenantId).toBe("");
  });

  it("seeds - changed seed text updates the entry, a removed entry is removed, a missing file changes nothing", async () => {
    const own = await startRegistry();
    const v1 = await seedDir({
      "addons.yaml": `
addons:
  - id: one
    name: One
    group: ADDON_GROUP_PERSONAL
    prompt: First text.
    enabled: true
  - id: two
    name: Two
    group: ADDON_GROUP_BUSINESS
    prompt: Second text.
    enabled: true
`,
    });
    const v2 = await seedDir({
      "addons.yaml": `
addons:
  - id: one
    name: One
    group: ADDON_GROUP_PERSONAL
    prompt: First text, revised.
    enabled: true
`,
    });
    try {
      expect((await own.seed(v1.dir)).find((r) => r.kind === "addons")).toMatchObject({
        created: 2,
      });
      const user = own.client(await own.userToken("t"));
      const before = (await user.getAddon({ id: "one" })).addon;

      const result = (await own.seed(v2.dir)).find((r) => r.kind === "addons");
      expect(result).toMatchObject({ created: 0, updated: 1, removed: 1 });
      const after = (await user.getAddon({ id: "one" })).addon;
      expect(after?.prompt).toBe("First text, revised.");
      expect(after?.createTime).toEqual(before?.createTime);
      expect((await user.listAddons({})).addons.map((a) => a.id)).toEqual(["one"]);
      // models.yaml is absent from both directories: the kind is left alone.
      expect((await own.seed(v2.dir)).find((r) => r.kind === "models")).toMatchObject({
        present: false,
      });
    } finally {
      await own.close();
      await v1.remove();
      await v2.remove();
    }
  });

  it("seeds - a typo or a broken template fails loudly, names the entry, and writes nothing", async () => {
    const own = await startRegistry();
    const bad = await seedDir({
      "models.yaml": `
models:
  - id: typo-model
    provider: openai
    providerModelId: gpt-x
    contextWindw: 1000
`,
      "addons.yaml": `
addons:
  - id: fine
    name: Fine
    group: ADDON_GROUP_PERSONAL
    prompt: Fine.
`,
      "templates.yaml": `
templates:
  - id: loop
    name: Loop
    outputStep: a
    steps:
      - { id: a, kind: STEP_KIND_LLM, model: fast, prompt: x, dependsOn: [b] }
      - { id: b, kind: STEP_KIND_LLM, model: fast, prompt: x, dependsOn: [a] }
`,
    });
    try {
      const err = await own.seed(bad.dir).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SeedError);
      const problems = (err as SeedError).problems;
      expect(
        problems.some((p) => p.startsWith("models.yaml: models[0]:") && p.includes("contextWindw")),
      ).toBe(true);
      expect(problems).toContain(
        "templates.yaml: templates[0].steps[0].depends_on: dependency cycle a -> b -> a",
      );
      // All files are checked before any is written.
      expect(await own.mongo.collection("addons").countDocuments({})).toBe(0);
    } finally {
      await own.close();
      await bad.remove();
    }
  });
});
