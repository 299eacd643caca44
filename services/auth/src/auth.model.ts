// MongoDB documents owned by auth. Every tenant-owned document carries `tenantId`; secrets
// (passwords, refresh tokens, invite tokens, API keys) are stored only as hashes, and signing
// private keys only encrypted.
//
// Concurrency without transactions, and on FerretDB: measured on FerretDB 1.24 (SQLite), a
// conditional updateOne/findOneAndUpdate is NOT atomic under concurrency (four concurrent
// "set if still unset" updates all report a match) and concurrent $inc lose increments, while
// an insert under a unique index is (exactly one of six concurrent inserts wins). So every
// "exactly once" decision here is an insert into `claims` (single-use refresh tokens and
// invites, the scheduled key rotation), counters are one inserted document per event (failed
// logins), frequently written timestamps live in their own documents (`last_used`) so they can
// never overwrite a security flag on the same document, and signing-key documents are never
// updated at all (a key's retirement is the creation of the next one).
import { Schema, type Connection, type Model } from "mongoose";

export interface TenantDoc {
  id: string;
  name: string;
  createTime: Date;
  /** TenantSettings (absent = defaults). */
  settings?: TenantSettingsDoc;
}

export interface TenantSettingsDoc {
  logCalls: boolean;
  /** DefaultCache as its enum number. */
  defaultCache: number;
  /** Guardrails (absent in documents written before they existed = none). */
  guardrails?: GuardrailsDoc;
  /** The semantic cache's threshold for the tenant (absent or 0 = model-proxy's default). */
  semanticCacheMinSimilarity?: number;
  updateTime: Date;
  updatedBy: string;
}

export interface GuardrailsDoc {
  /** PiiKind enum numbers. */
  redactPii: number[];
  blockPii: number[];
  blockedTerms: string[];
  blockedOutputTerms: string[];
}

export interface UserDoc {
  id: string;
  tenantId: string;
  /** Normalised (trimmed, lower-cased); unique across all tenants, since login takes only the email. */
  email: string;
  displayName: string;
  passwordHash: string;
  /** "user", plus "admin" for tenant admins. */
  roles: string[];
  disabled: boolean;
  createTime: Date;
  updateTime: Date;
}

/** One login: the family every rotated refresh token of that login belongs to (`sid` claim). */
export interface SessionDoc {
  id: string;
  tenantId: string;
  userId: string;
  createTime: Date;
  revokeTime?: Date;
  revokeReason?: string;
}

export interface RefreshTokenDoc {
  /** SHA-256 (hex) of the opaque token. */
  tokenHash: string;
  sessionId: string;
  tenantId: string;
  userId: string;
  /** The token this one replaced (the family's chain). */
  parentHash?: string;
  createTime: Date;
  expireTime: Date;
  /** Set when rotated; presenting it again revokes the session. */
  useTime?: Date;
  revokeTime?: Date;
}

export interface ApiKeyDoc {
  /** The public id inside the key (ens_<id>_<secret>), also the key's id. */
  id: string;
  tenantId: string;
  userId: string;
  name: string;
  /** SHA-256 (hex) of the whole key. */
  secretHash: string;
  scopes: string[];
  createTime: Date;
  expireTime?: Date;
  revokeTime?: Date;
  /** ApiKeyLimits.models: catalog ids or aliases; empty or absent = every model. */
  models?: string[];
  /** ApiKeyLimits.monthly_limit_usd; absent = none. */
  monthlyLimitUsd?: number;
  /** ApiKeyLimits.requests_per_minute; absent = none. */
  requestsPerMinute?: number;
  /** ApiKeyLimits.tokens_per_minute; absent = none. */
  tokensPerMinute?: number;
  /** After RollApiKey: the previous secret's hash, valid until previousExpireTime. */
  previousSecretHash?: string;
  previousExpireTime?: Date;
  rollTime?: Date;
}

export interface InviteDoc {
  id: string;
  tenantId: string;
  /** SHA-256 (hex) of the invite token. */
  tokenHash: string;
  email: string;
  role: string;
  createdBy: string;
  createTime: Date;
  expireTime: Date;
  acceptTime?: Date;
  acceptedBy?: string;
  revokeTime?: Date;
}

/** Never updated: a key stops signing when a newer one exists (the newest key signs). */
export interface SigningKeyDoc {
  kid: string;
  alg: string;
  /** Public JWK (kty, crv, x, y). */
  publicJwk: Record<string, string>;
  /** Private JWK encrypted with AES-256-GCM (see secrets.ts seal). */
  privateKey: { salt: Buffer; iv: Buffer; tag: Buffer; ciphertext: Buffer };
  createTime: Date;
}

/** A long-lived token (bootstrap service credential) signed with a key: keeps it published. */
export interface KeyHoldDoc {
  kid: string;
  expireTime: Date;
}

/** An "exactly once" decision: whoever inserts the key first has it. */
export interface ClaimDoc {
  key: string;
  createTime: Date;
}

/** One failed login, counted per account ("account:<sha256 of email>") and per address. */
export interface LoginFailureDoc {
  key: string;
  time: Date;
}

/** Last use of something ("login:<user id>", "apikey:<key id>"), kept off its main document. */
export interface LastUsedDoc {
  key: string;
  time: Date;
}

export interface BudgetDoc {
  tenantId: string;
  /** "tenant" | "user" */
  scope: string;
  /** "" for the tenant budget. */
  userId: string;
  monthlyLimitUsd?: number;
  updateTime: Date;
  updatedBy: string;
}

// id: false: no `id` virtual on documents that have no id of their own (ours are explicit paths).
const opts = { versionKey: false, strict: "throw", id: false } as const;

const tenantSchema = new Schema<TenantDoc>(
  {
    id: { type: String, required: true, unique: true },
    name: { type: String, required: true },
    createTime: { type: Date, required: true },
    settings: {
      type: new Schema<TenantSettingsDoc>(
        {
          logCalls: { type: Boolean, required: true },
          defaultCache: { type: Number, required: true },
          semanticCacheMinSimilarity: { type: Number },
          guardrails: {
            type: new Schema<GuardrailsDoc>(
              {
                redactPii: { type: [Number], default: [] },
                blockPii: { type: [Number], default: [] },
                blockedTerms: { type: [String], default: [] },
                blockedOutputTerms: { type: [String], default: [] },
              },
              { _id: false },
            ),
          },
          updateTime: { type: Date, required: true },
          updatedBy: { type: String, required: true },
        },
        { _id: false },
      ),
    },
  },
  opts,
);

const userSchema = new Schema<UserDoc>(
  {
    id: { type: String, required: true, unique: true },
    tenantId: { type: String, required: true },
    email: { type: String, required: true, unique: true },
    displayName: { type: String, default: "" },
    passwordHash: { type: String, required: true },
    roles: { type: [String], required: true },
    disabled: { type: Boolean, default: false },
    createTime: { type: Date, required: true },
    updateTime: { type: Date, required: true },
  },
  opts,
);
// ListUsers: the tenant's users by email.
userSchema.index({ tenantId: 1, email: 1 });

const sessionSchema = new Schema<SessionDoc>(
  {
    id: { type: String, required: true, unique: true },
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    createTime: { type: Date, required: true },
    revokeTime: { type: Date },
    revokeReason: { type: String },
  },
  opts,
);
sessionSchema.index({ tenantId: 1, userId: 1 });

const refreshTokenSchema = new Schema<RefreshTokenDoc>(
  {
    tokenHash: { type: String, required: true, unique: true },
    sessionId: { type: String, required: true },
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    parentHash: { type: String },
    createTime: { type: Date, required: true },
    expireTime: { type: Date, required: true },
    useTime: { type: Date },
    revokeTime: { type: Date },
  },
  opts,
);
refreshTokenSchema.index({ sessionId: 1 });

const apiKeySchema = new Schema<ApiKeyDoc>(
  {
    id: { type: String, required: true, unique: true },
    tenantId: { type: String, required: true },
    userId: { type: String, required: true },
    name: { type: String, required: true },
    secretHash: { type: String, required: true },
    scopes: { type: [String], required: true },
    createTime: { type: Date, required: true },
    expireTime: { type: Date },
    revokeTime: { type: Date },
    models: { type: [String], default: undefined },
    monthlyLimitUsd: { type: Number },
    requestsPerMinute: { type: Number },
    tokensPerMinute: { type: Number },
    previousSecretHash: { type: String },
    previousExpireTime: { type: Date },
    rollTime: { type: Date },
  },
  opts,
);
apiKeySchema.index({ tenantId: 1, userId: 1, createTime: -1 });

const inviteSchema = new Schema<InviteDoc>(
  {
    id: { type: String, required: true, unique: true },
    tenantId: { type: String, required: true },
    tokenHash: { type: String, required: true, unique: true },
    email: { type: String, default: "" },
    role: { type: String, required: true },
    createdBy: { type: String, required: true },
    createTime: { type: Date, required: true },
    expireTime: { type: Date, required: true },
    acceptTime: { type: Date },
    acceptedBy: { type: String },
    revokeTime: { type: Date },
  },
  opts,
);
inviteSchema.index({ tenantId: 1, createTime: -1 });

const signingKeySchema = new Schema<SigningKeyDoc>(
  {
    kid: { type: String, required: true, unique: true },
    alg: { type: String, required: true },
    publicJwk: { type: Schema.Types.Mixed, required: true },
    privateKey: {
      salt: { type: Buffer, required: true },
      iv: { type: Buffer, required: true },
      tag: { type: Buffer, required: true },
      ciphertext: { type: Buffer, required: true },
    },
    createTime: { type: Date, required: true },
  },
  opts,
);
signingKeySchema.index({ createTime: -1 });

const keyHoldSchema = new Schema<KeyHoldDoc>(
  {
    kid: { type: String, required: true },
    expireTime: { type: Date, required: true },
  },
  opts,
);
keyHoldSchema.index({ kid: 1, expireTime: -1 });

const claimSchema = new Schema<ClaimDoc>(
  {
    key: { type: String, required: true, unique: true },
    createTime: { type: Date, required: true },
  },
  opts,
);

const loginFailureSchema = new Schema<LoginFailureDoc>(
  {
    key: { type: String, required: true },
    time: { type: Date, required: true },
  },
  opts,
);
loginFailureSchema.index({ key: 1, time: 1 });

const lastUsedSchema = new Schema<LastUsedDoc>(
  {
    key: { type: String, required: true, unique: true },
    time: { type: Date, required: true },
  },
  opts,
);

const budgetSchema = new Schema<BudgetDoc>(
  {
    tenantId: { type: String, required: true },
    scope: { type: String, required: true },
    // Not `required`: "" is the tenant budget and mongoose rejects "" for required strings.
    userId: { type: String, default: "" },
    monthlyLimitUsd: { type: Number },
    updateTime: { type: Date, required: true },
    updatedBy: { type: String, default: "" },
  },
  opts,
);
budgetSchema.index({ tenantId: 1, scope: 1, userId: 1 }, { unique: true });

export function authModels(conn: Connection) {
  return {
    tenants: conn.model("Tenant", tenantSchema, "tenants"),
    users: conn.model("User", userSchema, "users"),
    sessions: conn.model("Session", sessionSchema, "sessions"),
    refreshTokens: conn.model("RefreshToken", refreshTokenSchema, "refresh_tokens"),
    apiKeys: conn.model("ApiKey", apiKeySchema, "api_keys"),
    invites: conn.model("Invite", inviteSchema, "invites"),
    signingKeys: conn.model("SigningKey", signingKeySchema, "signing_keys"),
    keyHolds: conn.model("KeyHold", keyHoldSchema, "signing_key_holds"),
    claims: conn.model("Claim", claimSchema, "claims"),
    loginFailures: conn.model("LoginFailure", loginFailureSchema, "login_failures"),
    lastUsed: conn.model("LastUsed", lastUsedSchema, "last_used"),
    budgets: conn.model("Budget", budgetSchema, "budgets"),
  };
}

export type AuthModels = ReturnType<typeof authModels>;

/** Creates the declared indexes (every replica at start; idempotent). */
export async function ensureIndexes(models: AuthModels): Promise<void> {
  for (const model of Object.values(models) as Model<unknown>[]) await model.createIndexes();
}

/** True when this caller is the first to claim `key` (an insert under a unique index). */
export async function claim(models: AuthModels, key: string): Promise<boolean> {
  try {
    await models.claims.create({ key, createTime: new Date() });
    return true;
  } catch (err) {
    if (isDuplicateKey(err)) return false;
    throw err;
  }
}

/** Gives a claim back (an operation that claimed and then failed). */
export async function release(models: AuthModels, key: string): Promise<void> {
  await models.claims.deleteOne({ key });
}

/** Records a last-use time in its own document (see the note at the top). */
export async function touch(models: AuthModels, key: string, time: Date): Promise<void> {
  try {
    await models.lastUsed.updateOne({ key }, { $set: { time } }, { upsert: true });
  } catch (err) {
    // Two first uses raced on the upsert; either time is right.
    if (!isDuplicateKey(err)) throw err;
  }
}

/** Last-use times of many keys at once. */
export async function lastUsedTimes(
  models: AuthModels,
  keys: string[],
): Promise<Map<string, Date>> {
  if (keys.length === 0) return new Map();
  const docs = await models.lastUsed.find({ key: { $in: keys } }).lean();
  return new Map(docs.map((d) => [d.key, d.time]));
}

/** True for a MongoDB duplicate-key error (E11000). */
export function isDuplicateKey(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 11000;
}
