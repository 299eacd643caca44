// Handlers for the catalog: models, prompt addons and workflow templates.
// Reads are USER, writes ADMIN (declared in the contract and enforced by the kit before these run);
// the tenant always comes from the verified token, never from the request.
import type { DescEnum } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  loggerOf,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
  type Notices,
} from "@ensemble/kit";
import {
  AddonGroup,
  AddonGroupSchema,
  Capability,
  CapabilitySchema,
  ModelRole,
  ModelRoleSchema,
  ModelSchema,
  PromptAddonSchema,
  WorkflowTemplateSchema,
  type RegistryService,
  type WorkflowTemplate,
} from "@ensemble/proto";
import type { QueryFilter } from "mongoose";
import type { CatalogDoc, RegistryModels } from "./catalog.model.js";
import { CatalogStore, GLOBAL_TENANT, type CatalogKind } from "./catalog-store.js";
import { validateTemplate } from "@ensemble/workflow";

export interface Catalog {
  models: CatalogStore<typeof ModelSchema>;
  addons: CatalogStore<typeof PromptAddonSchema>;
  templates: CatalogStore<typeof WorkflowTemplateSchema>;
}

/** Full proto name of an enum value ("MODEL_ROLE_FAST"): what filter fields store. */
export function enumName(desc: DescEnum, value: number): string {
  return desc.values.find((v) => v.number === value)?.name ?? String(value);
}

export const modelKind: CatalogKind<typeof ModelSchema> = {
  noun: "model",
  schema: ModelSchema,
  filterFields: (m) => ({
    provider: m.provider,
    roles: m.roles.map((r) => enumName(ModelRoleSchema, r)),
    capabilities: m.capabilities.map((c) => enumName(CapabilitySchema, c)),
    aliases: m.aliases,
    enabled: m.enabled,
    tags: m.tags,
  }),
};

export const addonKind: CatalogKind<typeof PromptAddonSchema> = {
  noun: "addon",
  schema: PromptAddonSchema,
  filterFields: (a) => ({
    group: enumName(AddonGroupSchema, a.group),
    enabled: a.enabled,
    tags: a.tags,
  }),
};

export const templateKind: CatalogKind<typeof WorkflowTemplateSchema> = {
  noun: "template",
  schema: WorkflowTemplateSchema,
  filterFields: (t) => ({ tags: t.tags }),
};

export function createCatalog(models: RegistryModels): Catalog {
  return {
    models: new CatalogStore(modelKind, models.models),
    addons: new CatalogStore(addonKind, models.addons),
    templates: new CatalogStore(templateKind, models.templates),
  };
}

/** Throws INVALID_ARGUMENT for the first semantic problem of a template (and counts the rest). */
export function assertValidTemplate(template: WorkflowTemplate, prefix = "template"): void {
  const issues = validateTemplate(template, prefix);
  const [first, ...rest] = issues;
  if (first === undefined) return;
  const more =
    rest.length === 0 ? "" : `, and ${rest.length} more problem${rest.length > 1 ? "s" : ""}`;
  throw new InvalidArgumentError(`${first.message}${more}`, { field: first.field });
}

/** The tenant a write acts on. Global entries come only from the seed files. */
function writeTenant(ctx: HandlerContext): string {
  const { tenantId } = principalOf(ctx);
  if (tenantId === GLOBAL_TENANT) {
    throw new PermissionDeniedError(
      "the global catalog is managed by the seed files; writes need a token for a tenant",
    );
  }
  return tenantId;
}

async function deleteOwn(
  store: CatalogStore<
    typeof ModelSchema | typeof PromptAddonSchema | typeof WorkflowTemplateSchema
  >,
  ctx: HandlerContext,
  id: string,
): Promise<void> {
  const tenantId = writeTenant(ctx);
  if (await store.delete(tenantId, id)) {
    loggerOf(ctx).info({ [store.kind.noun]: id }, `${store.kind.noun} deleted`);
    return;
  }
  const visible = await store.find(tenantId, id);
  if (visible?.tenantId === GLOBAL_TENANT) {
    throw new FailedPreconditionError(
      `${store.kind.noun} "${id}" is a global catalog entry; a tenant cannot delete it, only override it with its own entry of the same id`,
    );
  }
  throw new NotFoundError(`${store.kind.noun} "${id}" not found`);
}

function tagFilter(tag: string): QueryFilter<CatalogDoc> {
  return tag === "" ? {} : { tags: tag };
}

type CatalogMethods =
  | "listModels"
  | "getModel"
  | "upsertModel"
  | "deleteModel"
  | "listAddons"
  | "getAddon"
  | "upsertAddon"
  | "deleteAddon"
  | "listTemplates"
  | "getTemplate"
  | "upsertTemplate"
  | "deleteTemplate";

/**
 * `notices`: a model entry changed (upserted or deleted) is announced to the replicas that cache
 * the catalog (model-proxy), before the call answers.
 */
export function catalogHandlers(
  catalog: Catalog,
  notices: Notices,
): Pick<ServiceImpl<typeof RegistryService>, CatalogMethods> {
  return {
    async listModels(req, ctx) {
      const filter: QueryFilter<CatalogDoc> = { ...tagFilter(req.tag) };
      if (req.capability !== Capability.UNSPECIFIED)
        filter.capabilities = enumName(CapabilitySchema, req.capability);
      if (req.role !== ModelRole.UNSPECIFIED) filter.roles = enumName(ModelRoleSchema, req.role);
      if (req.provider !== "") filter.provider = req.provider;
      if (req.enabled !== undefined) filter.enabled = req.enabled;
      const page = await catalog.models.list(principalOf(ctx).tenantId, filter, pageOf(req.page));
      return { models: page.items, page: { nextPageToken: page.nextPageToken } };
    },

    async getModel(req, ctx) {
      const tenantId = principalOf(ctx).tenantId;
      const byId = await catalog.models.find(tenantId, req.id);
      if (byId !== undefined) return { model: byId };
      // An alias: the tenant's own models win over global ones, enabled over disabled.
      const candidates = await catalog.models.findAll(tenantId, { aliases: req.id });
      const rank = (m: (typeof candidates)[number]): number =>
        (m.tenantId === tenantId ? 0 : 2) + (m.enabled ? 0 : 1);
      const best = candidates.sort((a, b) => rank(a) - rank(b))[0];
      if (best === undefined)
        throw new NotFoundError(`model "${req.id}" not found (by id or alias)`);
      return { model: best };
    },

    async upsertModel(req, ctx) {
      const tenantId = writeTenant(ctx);
      const model = required(req.model, "model");
      const { item, created } = await catalog.models.upsert(tenantId, model);
      loggerOf(ctx).info({ model: item.id, created }, "model upserted");
      await notices.publish("catalog", tenantId, item.id);
      return { model: item, created };
    },

    async deleteModel(req, ctx) {
      await deleteOwn(catalog.models, ctx, req.id);
      await notices.publish("catalog", writeTenant(ctx), req.id);
      return {};
    },

    async listAddons(req, ctx) {
      const filter: QueryFilter<CatalogDoc> = { ...tagFilter(req.tag) };
      if (req.group !== AddonGroup.UNSPECIFIED)
        filter.group = enumName(AddonGroupSchema, req.group);
      if (req.enabled !== undefined) filter.enabled = req.enabled;
      const page = await catalog.addons.list(principalOf(ctx).tenantId, filter, pageOf(req.page));
      return { addons: page.items, page: { nextPageToken: page.nextPageToken } };
    },

    async getAddon(req, ctx) {
      return { addon: await catalog.addons.get(principalOf(ctx).tenantId, req.id) };
    },

    async upsertAddon(req, ctx) {
      const tenantId = writeTenant(ctx);
      const addon = required(req.addon, "addon");
      const { item, created } = await catalog.addons.upsert(tenantId, addon);
      loggerOf(ctx).info({ addon: item.id, created }, "addon upserted");
      return { addon: item, created };
    },

    async deleteAddon(req, ctx) {
      await deleteOwn(catalog.addons, ctx, req.id);
      return {};
    },

    async listTemplates(req, ctx) {
      const page = await catalog.templates.list(
        principalOf(ctx).tenantId,
        tagFilter(req.tag),
        pageOf(req.page),
      );
      return { templates: page.items, page: { nextPageToken: page.nextPageToken } };
    },

    async getTemplate(req, ctx) {
      return { template: await catalog.templates.get(principalOf(ctx).tenantId, req.id) };
    },

    async upsertTemplate(req, ctx) {
      const tenantId = writeTenant(ctx);
      const template = required(req.template, "template");
      assertValidTemplate(template);
      const { item, created } = await catalog.templates.upsert(tenantId, template);
      loggerOf(ctx).info({ template: item.id, created }, "template upserted");
      return { template: item, created };
    },

    async deleteTemplate(req, ctx) {
      await deleteOwn(catalog.templates, ctx, req.id);
      return {};
    },
  };
}

export function pageOf(page: { pageSize: number; pageToken: string } | undefined): {
  pageSize: number;
  pageToken: string;
} {
  return { pageSize: page?.pageSize ?? 0, pageToken: page?.pageToken ?? "" };
}

/** protovalidate already requires these; the check narrows the type. */
function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new InvalidArgumentError(`${field}: value is required`, { field });
  return value;
}
