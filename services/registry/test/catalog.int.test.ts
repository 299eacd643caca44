import { Code } from "@connectrpc/connect";
import {
  AddonGroup,
  Capability,
  HealthCheckResponse_ServingStatus,
  ModelRole,
  StepKind,
  type Model,
} from "@ensemble/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rejection, seedDir, startRegistry, type Harness } from "./harness.js";

const GLOBAL_MODELS = `
models:
  - id: global-fast
    provider: simulator
    providerModelId: sim-fast
    displayName: Global fast
    aliases: [fast]
    roles: [MODEL_ROLE_FAST]
    capabilities: [CAPABILITY_CHAT]
    contextWindow: 8192
    inputPricePerMtok: 0.1
    outputPricePerMtok: 0.2
    enabled: true
  - id: global-vision
    provider: openai
    providerModelId: gpt-4o
    aliases: [vision]
    roles: [MODEL_ROLE_IMAGE_ANALYSIS]
    capabilities: [CAPABILITY_CHAT, CAPABILITY_VISION]
    contextWindow: 128000
    inputPricePerMtok: 2.5
    outputPricePerMtok: 10
    enabled: true
`;

function model(id: string, init: Partial<Omit<Model, "$typeName">> = {}) {
  return {
    id,
    provider: "openai",
    providerModelId: `openai/${id}`,
    displayName: id,
    roles: [ModelRole.MEDIUM],
    capabilities: [Capability.CHAT],
    contextWindow: 32000,
    inputPricePerMtok: 1,
    outputPricePerMtok: 2,
    enabled: true,
    ...init,
  };
}

let h: Harness;
let seeds: { dir: string; remove(): Promise<void> };

beforeAll(async () => {
  h = await startRegistry();
  seeds = await seedDir({ "models.yaml": GLOBAL_MODELS });
  await h.seed(seeds.dir);
});

afterAll(async () => {
  await h?.close();
  await seeds?.remove();
});

describe("registry catalog", () => {
  it("health - reports SERVING for the server and the registry service", async () => {
    const health = h.health();
    expect((await health.check({ service: "" })).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    expect((await health.check({ service: "ensemble.registry.v1.RegistryService" })).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
  });

  it("models - admin creates, reads, updates, lists and deletes a tenant model", async () => {
    const admin = h.client(await h.adminToken("crud"));
    const created = await admin.upsertModel({ model: model("my-model", { aliases: ["house"] }) });
    expect(created.created).toBe(true);
    expect(created.model?.tenantId).toBe("crud");
    expect(created.model?.createTime).toBeDefined();

    const got = await admin.getModel({ id: "my-model" });
    expect(got.model?.providerModelId).toBe("openai/my-model");
    expect((await admin.getModel({ id: "house" })).model?.id).toBe("my-model");

    const updated = await admin.upsertModel({ model: model("my-model", { contextWindow: 64000 }) });
    expect(updated.created).toBe(false);
    expect(updated.model?.contextWindow).toBe(64000);
    expect(updated.model?.createTime).toEqual(created.model?.createTime);

    const listed = await admin.listModels({});
    expect(listed.models.map((m) => m.id)).toEqual(["global-fast", "global-vision", "my-model"]);

    await admin.deleteModel({ id: "my-model" });
    expect((await rejection(admin.getModel({ id: "my-model" }))).code).toBe(Code.NotFound);
    expect((await rejection(admin.deleteModel({ id: "my-model" }))).code).toBe(Code.NotFound);
  });

  it("models - list filters by capability, role, provider and enabled, and pages", async () => {
    const tenant = "filters";
    const admin = h.client(await h.adminToken(tenant));
    await admin.upsertModel({
      model: model("disabled-one", { enabled: false, provider: "anthropic" }),
    });
    const user = h.client(await h.userToken(tenant));

    const vision = await user.listModels({ capability: Capability.VISION });
    expect(vision.models.map((m) => m.id)).toEqual(["global-vision"]);
    const fast = await user.listModels({ role: ModelRole.FAST });
    expect(fast.models.map((m) => m.id)).toEqual(["global-fast"]);
    const anthropic = await user.listModels({ provider: "anthropic" });
    expect(anthropic.models.map((m) => m.id)).toEqual(["disabled-one"]);
    const enabled = await user.listModels({ enabled: true });
    expect(enabled.models.map((m) => m.id)).toEqual(["global-fast", "global-vision"]);

    const first = await user.listModels({ page: { pageSize: 2 } });
    expect(first.models.map((m) => m.id)).toEqual(["disabled-one", "global-fast"]);
    expect(first.page?.nextPageToken).not.toBe("");
    const second = await user.listModels({
      page: { pageSize: 2, pageToken: first.page?.nextPageToken ?? "" },
    });
    expect(second.models.map((m) => m.id)).toEqual(["global-vision"]);
    expect(second.page?.nextPageToken).toBe("");

    const bad = await rejection(user.listModels({ page: { pageToken: "not-a-token" } }));
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.rawMessage).toContain("page.page_token");
  });

  it("validation - a bad model is refused with INVALID_ARGUMENT naming the field", async () => {
    const admin = h.client(await h.adminToken("validation"));
    const err = await rejection(
      admin.upsertModel({ model: model("bad-price", { inputPricePerMtok: -1 }) }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/^model\.input_price_per_mtok: /);

    const badId = await rejection(admin.upsertModel({ model: model("Not A Slug") }));
    expect(badId.code).toBe(Code.InvalidArgument);
    expect(badId.rawMessage).toMatch(/^model\.id: /);

    const noWindow = await rejection(
      admin.upsertModel({ model: model("no-window", { contextWindow: 0 }) }),
    );
    expect(noWindow.rawMessage).toMatch(/^model\.context_window: /);
    expect((await rejection(admin.getModel({ id: "bad-price" }))).code).toBe(Code.NotFound);
  });

  it("access - a user token is refused on every write with PERMISSION_DENIED", async () => {
    const user = h.client(await h.userToken("access"));
    const err = await rejection(user.upsertModel({ model: model("sneaky") }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect((await rejection(user.deleteModel({ id: "global-fast" }))).code).toBe(
      Code.PermissionDenied,
    );
    expect(
      (
        await rejection(
          user.upsertAddon({
            addon: { id: "x", name: "x", group: AddonGroup.PERSONAL, prompt: "p" },
          }),
        )
      ).code,
    ).toBe(Code.PermissionDenied);
    // Nothing was written.
    const admin = h.client(await h.adminToken("access"));
    expect((await rejection(admin.getModel({ id: "sneaky" }))).code).toBe(Code.NotFound);
  });

  it("access - a call without a token is refused with UNAUTHENTICATED", async () => {
    const anonymous = h.client();
    expect((await rejection(anonymous.listModels({}))).code).toBe(Code.Unauthenticated);
    expect((await rejection(anonymous.upsertModel({ model: model("anon") }))).code).toBe(
      Code.Unauthenticated,
    );
  });

  it("access - an expired or foreign-signed token is refused with UNAUTHENTICATED", async () => {
    const expired = await h.issuer.mint({ tenantId: "a", expiresIn: "-1m" });
    expect((await rejection(h.client(expired).listModels({}))).code).toBe(Code.Unauthenticated);
    const forged = await h.issuer.mint({ tenantId: "a", roles: ["admin"], signWith: "foreign" });
    expect((await rejection(h.client(forged).upsertModel({ model: model("forged") }))).code).toBe(
      Code.Unauthenticated,
    );
  });

  it("tenants - tenant B never sees tenant A's entries; both see the global ones", async () => {
    const adminA = h.client(await h.adminToken("tenant-a"));
    await adminA.upsertModel({ model: model("a-private") });
    await adminA.upsertAddon({
      addon: {
        id: "a-addon",
        name: "A",
        group: AddonGroup.BUSINESS,
        prompt: "Be brief.",
        enabled: true,
      },
    });

    const userB = h.client(await h.userToken("tenant-b"));
    expect((await userB.listModels({})).models.map((m) => m.id)).toEqual([
      "global-fast",
      "global-vision",
    ]);
    expect((await rejection(userB.getModel({ id: "a-private" }))).code).toBe(Code.NotFound);
    expect((await userB.listAddons({})).addons.map((a) => a.id)).not.toContain("a-addon");
    expect((await rejection(userB.getAddon({ id: "a-addon" }))).code).toBe(Code.NotFound);

    // B's admin cannot delete A's entry either: it only ever acts on B's own entries.
    const adminB = h.client(await h.adminToken("tenant-b"));
    expect((await rejection(adminB.deleteModel({ id: "a-private" }))).code).toBe(Code.NotFound);
    const userA = h.client(await h.userToken("tenant-a"));
    expect((await userA.getModel({ id: "a-private" })).model?.tenantId).toBe("tenant-a");
    expect((await userA.listModels({})).models.map((m) => m.id)).toEqual([
      "a-private",
      "global-fast",
      "global-vision",
    ]);
  });

  it("tenants - a tenant's write to a global id creates its own override; deleting it restores the global", async () => {
    const admin = h.client(await h.adminToken("override"));
    const { model: override, created } = await admin.upsertModel({
      model: model("global-fast", { provider: "simulator", enabled: false, aliases: ["fast"] }),
    });
    expect(created).toBe(true);
    expect(override?.tenantId).toBe("override");

    const user = h.client(await h.userToken("override"));
    expect((await user.getModel({ id: "global-fast" })).model?.enabled).toBe(false);
    // Shadowing comes before filters: the disabled override hides the enabled global entry.
    expect((await user.listModels({ enabled: true })).models.map((m) => m.id)).toEqual([
      "global-vision",
    ]);
    // Other tenants still see the global entry.
    const other = h.client(await h.userToken("someone-else"));
    expect((await other.getModel({ id: "global-fast" })).model?.enabled).toBe(true);

    await admin.deleteModel({ id: "global-fast" });
    const restored = (await user.getModel({ id: "global-fast" })).model;
    expect(restored?.tenantId).toBe("");
    expect(restored?.enabled).toBe(true);
    // A global entry itself cannot be deleted by a tenant.
    const err = await rejection(admin.deleteModel({ id: "global-fast" }));
    expect(err.code).toBe(Code.FailedPrecondition);
  });

  it("models - an alias resolves to the tenant's own model before a global one", async () => {
    const admin = h.client(await h.adminToken("alias"));
    expect((await admin.getModel({ id: "fast" })).model?.id).toBe("global-fast");
    await admin.upsertModel({ model: model("house-fast", { aliases: ["fast"] }) });
    expect((await admin.getModel({ id: "fast" })).model?.id).toBe("house-fast");
  });

  it("addons - CRUD and group filter", async () => {
    const admin = h.client(await h.adminToken("addons"));
    const addon = {
      id: "concise",
      name: "Concise",
      group: AddonGroup.PROFESSIONAL,
      description: "Short answers",
      prompt: "Answer in at most three sentences.",
      tags: ["style"],
      enabled: true,
    };
    expect((await admin.upsertAddon({ addon })).created).toBe(true);
    expect((await admin.getAddon({ id: "concise" })).addon?.prompt).toBe(addon.prompt);
    expect(
      (await admin.upsertAddon({ addon: { ...addon, prompt: "One sentence." } })).created,
    ).toBe(false);
    expect((await admin.getAddon({ id: "concise" })).addon?.prompt).toBe("One sentence.");
    expect(
      (await admin.listAddons({ group: AddonGroup.PROFESSIONAL })).addons.map((a) => a.id),
    ).toEqual(["concise"]);
    expect((await admin.listAddons({ group: AddonGroup.MARKETING })).addons).toEqual([]);
    expect((await admin.listAddons({ tag: "style" })).addons.map((a) => a.id)).toEqual(["concise"]);
    const noGroup = await rejection(
      admin.upsertAddon({ addon: { ...addon, group: AddonGroup.UNSPECIFIED } }),
    );
    expect(noGroup.rawMessage).toMatch(/^addon\.group: /);
    await admin.deleteAddon({ id: "concise" });
    expect((await rejection(admin.getAddon({ id: "concise" }))).code).toBe(Code.NotFound);
  });

  it("templates - CRUD of a valid step graph", async () => {
    const admin = h.client(await h.adminToken("templates"));
    const template = {
      id: "two-step",
      name: "Two steps",
      version: 1,
      inputs: [{ name: "tone", defaultValue: "neutral" }],
      steps: [
        {
          id: "draft",
          kind: StepKind.LLM,
          model: "fast",
          prompt: "{{input}} in a {{vars.tone}} tone",
        },
        {
          id: "polish",
          kind: StepKind.LLM,
          model: "medium",
          dependsOn: ["draft"],
          prompt: "{{steps.draft.output}}",
        },
      ],
      outputStep: "polish",
    };
    expect((await admin.upsertTemplate({ template })).created).toBe(true);
    const got = (await admin.getTemplate({ id: "two-step" })).template;
    expect(got?.steps.map((s) => s.id)).toEqual(["draft", "polish"]);
    expect(got?.steps[1]?.dependsOn).toEqual(["draft"]);
    expect((await admin.listTemplates({})).templates.map((t) => t.id)).toEqual(["two-step"]);
    await admin.deleteTemplate({ id: "two-step" });
    expect((await admin.listTemplates({})).templates).toEqual([]);
  });

  it("templates - graph errors are INVALID_ARGUMENT naming the field, and nothing is stored", async () => {
    const admin = h.client(await h.adminToken("bad-templates"));
    const base = {
      id: "broken",
      name: "Broken",
      steps: [
        { id: "plan", kind: StepKind.LLM, model: "fast", prompt: "{{input}}" },
        { id: "outline", kind: StepKind.LLM, model: "fast", prompt: "{{input}}" },
        {
          id: "review",
          kind: StepKind.LLM,
          model: "fast",
          prompt: "{{input}}",
          dependsOn: ["draft"],
        },
      ],
      outputStep: "review",
    };
    const unknownDep = await rejection(admin.upsertTemplate({ template: base }));
    expect(unknownDep.code).toBe(Code.InvalidArgument);
    expect(unknownDep.rawMessage).toBe('template.steps[2].depends_on[0]: unknown step "draft"');

    const cycle = await rejection(
      admin.upsertTemplate({
        template: {
          ...base,
          steps: [
            { id: "a", kind: StepKind.LLM, model: "fast", prompt: "x", dependsOn: ["b"] },
            { id: "b", kind: StepKind.LLM, model: "fast", prompt: "x", dependsOn: ["a"] },
          ],
          outputStep: "b",
        },
      }),
    );
    expect(cycle.rawMessage).toContain("dependency cycle a -> b -> a");

    const notUpstream = await rejection(
      admin.upsertTemplate({
        template: {
          ...base,
          steps: [
            { id: "a", kind: StepKind.LLM, model: "fast", prompt: "x" },
            { id: "b", kind: StepKind.LLM, model: "fast", prompt: "{{steps.a.output}}" },
          ],
          outputStep: "b",
        },
      }),
    );
    expect(notUpstream.rawMessage).toMatch(
      /^template\.steps\[1\]\.prompt: \{\{steps\.a\.output\}\} refers to step "a"/,
    );

    const noOutput = await rejection(
      admin.upsertTemplate({
        template: { ...base, steps: base.steps.slice(0, 2), outputStep: "final" },
      }),
    );
    expect(noOutput.rawMessage).toBe('template.output_step: unknown step "final"');

    const duplicate = await rejection(
      admin.upsertTemplate({
        template: { ...base, steps: [base.steps[0]!, base.steps[0]!], outputStep: "plan" },
      }),
    );
    expect(duplicate.rawMessage).toBe(
      'template.steps[1].id: duplicate step id "plan" (also steps[0])',
    );

    expect((await rejection(admin.getTemplate({ id: "broken" }))).code).toBe(Code.NotFound);
  });
});
