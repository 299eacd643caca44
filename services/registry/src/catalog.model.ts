// MongoDB documents of the catalog (models, prompt addons, workflow templates) and of plugin
// registrations. Each document holds the protobuf message in binary (`payload`: lossless, and
// unknown fields survive a rolling upgrade) plus the few fields that queries filter on, copied
// out of the message on every write. `tenantId` is "" for global (seeded) entries.
import mongoose, { Schema, type Connection, type Model } from "mongoose";

export interface CatalogDoc {
  tenantId: string;
  id: string;
  payload: Buffer;
  createTime: Date;
  updateTime: Date;
  // Filter fields (only some kinds use each).
  provider?: string;
  roles?: string[];
  capabilities?: string[];
  aliases?: string[];
  group?: string;
  enabled?: boolean;
  tags?: string[];
}

export interface PluginDoc {
  tenantId: string;
  id: string;
  payload: Buffer;
  ttlMs: number;
  createTime: Date;
  lastHeartbeat: Date;
  /** lastHeartbeat + ttlMs: the registration is dead after this instant. */
  expireAt: Date;
}

function catalogSchema(extra: mongoose.SchemaDefinition): Schema<CatalogDoc> {
  const schema = new Schema<CatalogDoc>(
    {
      // Not `required`: mongoose rejects "" for required strings, and "" is the global tenant.
      tenantId: { type: String, default: "" },
      id: { type: String, required: true },
      payload: { type: Buffer, required: true },
      createTime: { type: Date, required: true },
      updateTime: { type: Date, required: true },
      tags: { type: [String], default: undefined },
      ...extra,
    },
    { versionKey: false, strict: "throw" },
  );
  // One entry per id per tenant; also the order every List pages in.
  schema.index({ tenantId: 1, id: 1 }, { unique: true });
  return schema;
}

const modelSchema = catalogSchema({
  provider: { type: String },
  roles: { type: [String], default: undefined },
  capabilities: { type: [String], default: undefined },
  aliases: { type: [String], default: undefined },
  enabled: { type: Boolean },
});
// GetModel resolves an alias when no id matches.
modelSchema.index({ tenantId: 1, aliases: 1 });

const addonSchema = catalogSchema({
  group: { type: String },
  enabled: { type: Boolean },
});
addonSchema.index({ tenantId: 1, group: 1 });

const templateSchema = catalogSchema({});

const pluginSchema = new Schema<PluginDoc>(
  {
    tenantId: { type: String, default: "" },
    id: { type: String, required: true },
    payload: { type: Buffer, required: true },
    ttlMs: { type: Number, required: true },
    createTime: { type: Date, required: true },
    lastHeartbeat: { type: Date, required: true },
    expireAt: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);
pluginSchema.index({ tenantId: 1, id: 1 }, { unique: true });
// The sweeper deletes by expiry. (Not a TTL index: MongoDB-wire servers differ in TTL support,
// and reads must hide expired plugins at once anyway, not within the TTL monitor's minute.)
pluginSchema.index({ expireAt: 1 });

export interface RegistryModels {
  models: Model<CatalogDoc>;
  addons: Model<CatalogDoc>;
  templates: Model<CatalogDoc>;
  plugins: Model<PluginDoc>;
}

function bind<T>(conn: Connection, name: string, schema: Schema<T>, collection: string): Model<T> {
  // A connection keeps its compiled models; building twice on one connection reuses them.
  const existing = conn.models[name] as Model<T> | undefined;
  return existing ?? conn.model<T>(name, schema, collection);
}

/** The registry's mongoose models on `conn` (no I/O). */
export function registryModels(conn: Connection): RegistryModels {
  return {
    models: bind(conn, "Model", modelSchema, "models"),
    addons: bind(conn, "PromptAddon", addonSchema, "addons"),
    templates: bind(conn, "WorkflowTemplate", templateSchema, "templates"),
    plugins: bind(conn, "PluginRegistration", pluginSchema, "plugins"),
  };
}

/**
 * Creates the declared indexes and waits for them. Call before serving or seeding: the unique
 * index is what keeps concurrent upserts (several replicas) from creating duplicates.
 */
export async function ensureIndexes(models: RegistryModels): Promise<void> {
  await Promise.all([
    models.models.init(),
    models.addons.init(),
    models.templates.init(),
    models.plugins.init(),
  ]);
}
