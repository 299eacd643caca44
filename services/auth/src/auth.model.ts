// MongoDB documents owned by auth. Every tenant-owned document carries `tenantId`; secrets
// (passwords, refresh tokens, invite tokens, API keys) are stored only as hashes, and signing
// private keys only encrypted. Writes are single-document atomic updates (FerretDB has no
// multi-document transactions), so every cross-document invariant below says how it holds.
import { Schema, type Connection, type Model } from "mongoose";

export interface TenantDoc {
  id: string;
  name: string;
  createTime: Date;
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
  lastLoginTime?: Date;
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
  lastUsedTime?: Date;
  revokeTime?: Date;
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

export interface SigningKeyDoc {
  kid: string;
  alg: string;
  /** Public JWK (kty, crv, x, y). */
  publicJwk: Record<string, string>;
  /** Private JWK encrypted with AES-256-GCM (see key-crypto.ts). */
  privateKey: { salt: Buffer; iv: Buffer; tag: Buffer; ciphertext: Buffer };
  createTime: Date;
  /** Stopped signing (a newer key exists). */
  retireTime?: Date;
  /** Latest `exp` of a long-lived token signed with it (bootstrap service credentials). */
  maxExpireTime?: Date;
  /** A replica claimed the scheduled rotation away from this key. */
  rotationClaimTime?: Date;
}

/** Failed-login counter for one account or one client address. */
export interface ThrottleDoc {
  /** "account:<sha256 of email>" or "address:<address>". */
  key: string;
  failures: number;
  windowStart: Date;
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
    lastLoginTime: { type: Date },
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
    lastUsedTime: { type: Date },
    revokeTime: { type: Date },
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
    retireTime: { type: Date },
    maxExpireTime: { type: Date },
    rotationClaimTime: { type: Date },
  },
  opts,
);
signingKeySchema.index({ createTime: -1 });

const throttleSchema = new Schema<ThrottleDoc>(
  {
    key: { type: String, required: true, unique: true },
    failures: { type: Number, required: true },
    windowStart: { type: Date, required: true },
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
    throttles: conn.model("LoginThrottle", throttleSchema, "login_throttles"),
    budgets: conn.model("Budget", budgetSchema, "budgets"),
  };
}

export type AuthModels = ReturnType<typeof authModels>;

/** Creates the declared indexes (every replica at start; idempotent). */
export async function ensureIndexes(models: AuthModels): Promise<void> {
  for (const model of Object.values(models) as Model<unknown>[]) await model.createIndexes();
}

/** True for a MongoDB duplicate-key error (E11000). */
export function isDuplicateKey(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 11000;
}
