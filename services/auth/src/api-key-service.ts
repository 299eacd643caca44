// API keys: created with a name, scopes, an optional expiry and optional limits (models, a monthly
// budget; model-proxy enforces them), shown once, stored as a SHA-256 hash (a 238-bit random
// secret needs no slow hash), recognised by "ens_<public id>".
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  FailedPreconditionError,
  loggerOf,
  nextPageToken,
  NotFoundError,
  paging,
  PermissionDeniedError,
  principalOf,
  UnauthenticatedError,
  type Principal,
} from "@ensemble/kit";
import {
  ApiKeyScope,
  type ApiKeyLimits,
  type ApiKeySchema,
  type AuthService,
} from "@ensemble/proto";
import type { HandlerContext } from "@connectrpc/connect";
import type { QueryFilter } from "mongoose";
import { isDuplicateKey, lastUsedTimes, touch, type ApiKeyDoc } from "./auth.model.js";
import { ADMIN, apiKeyRoles, callerClaim, durationMs, ts, type AuthCore } from "./core.js";
import { apiKeyPublicId, newApiKey, sameDigest, sha256 } from "./secrets.js";

const BAD_KEY = "invalid API key";
/** lastUsedTime is written at most this often per key (not one write per exchange). */
const LAST_USED_RESOLUTION_MS = 60_000;

const SCOPE_NAMES = new Map<ApiKeyScope, string>([
  [ApiKeyScope.READ, "read"],
  [ApiKeyScope.WRITE, "write"],
  [ApiKeyScope.ADMIN, "admin"],
]);

function scopeEnums(names: string[]): ApiKeyScope[] {
  const out: ApiKeyScope[] = [];
  for (const [value, name] of SCOPE_NAMES) if (names.includes(name)) out.push(value);
  return out;
}

function apiKeyMessage(k: ApiKeyDoc, lastUsedTime?: Date): MessageInitShape<typeof ApiKeySchema> {
  return {
    id: k.id,
    tenantId: k.tenantId,
    userId: k.userId,
    name: k.name,
    prefix: `ens_${k.id}`,
    scopes: scopeEnums(k.scopes),
    createTime: ts(k.createTime),
    expireTime: ts(k.expireTime),
    lastUsedTime: ts(lastUsedTime),
    revokeTime: ts(k.revokeTime),
    previousSecretExpireTime:
      k.previousExpireTime !== undefined && k.previousExpireTime > new Date()
        ? ts(k.previousExpireTime)
        : undefined,
    rollTime: ts(k.rollTime),
    limits: {
      models: k.models ?? [],
      monthlyLimitUsd: k.monthlyLimitUsd,
      requestsPerMinute: k.requestsPerMinute,
      tokensPerMinute: k.tokensPerMinute,
    },
  };
}

/** The limits that are ceilings (unset = none, lower = tighter), as people read them. */
const CEILINGS = {
  monthlyLimitUsd: (n: number) => `a monthly limit of $${n.toFixed(2)}`,
  requestsPerMinute: (n: number) => `a limit of ${n} requests per minute`,
  tokensPerMinute: (n: number) => `a limit of ${n} tokens per minute`,
} as const;
type Ceiling = keyof typeof CEILINGS;
const CEILING_FIELDS = Object.keys(CEILINGS) as Ceiling[];

type KeyLimits = Pick<ApiKeyDoc, "models" | Ceiling>;

/** A key's limits as stored: only what is set. */
function stored(
  l: { models?: string[] | undefined } & Partial<Record<Ceiling, number | undefined>>,
) {
  const out: KeyLimits = {};
  if (l.models !== undefined && l.models.length > 0) out.models = [...l.models];
  for (const f of CEILING_FIELDS) {
    const v = l[f];
    if (v !== undefined) out[f] = v;
  }
  return out;
}

type ApiKeyHandlers = Pick<
  ServiceImpl<typeof AuthService>,
  | "createApiKey"
  | "listApiKeys"
  | "getApiKey"
  | "updateApiKey"
  | "rollApiKey"
  | "revokeApiKey"
  | "authenticateApiKey"
>;

export function apiKeyHandlers(core: AuthCore): ApiKeyHandlers {
  const { models } = core;
  const isAdmin = (p: Principal) => p.roles.includes(ADMIN);

  /** The key `id` as `p` may see it: its own, or any of the tenant's for an admin. */
  function visible(p: Principal, id: string): QueryFilter<ApiKeyDoc> {
    const owned: QueryFilter<ApiKeyDoc> = { id, tenantId: p.tenantId };
    // Someone else's key of the same tenant is as invisible to a non-admin as another tenant's.
    if (!isAdmin(p)) owned.userId = p.subject;
    return owned;
  }

  /**
   * The limits a key made or changed by this caller gets. A caller using a key with limits may
   * only give keys limits at least as tight (else a limited key could mint an unlimited one);
   * when it asks for none, the new key inherits its own.
   */
  async function limitsFor(
    ctx: HandlerContext,
    requested: ApiKeyLimits | undefined,
  ): Promise<KeyLimits | undefined> {
    const p = principalOf(ctx);
    const wanted = requested === undefined ? undefined : stored(requested);
    if (p.apiKeyId === undefined) return wanted;
    const own = await models.apiKeys.findOne({ id: p.apiKeyId, tenantId: p.tenantId }).lean();
    if (own === null) throw new PermissionDeniedError("the API key of this call no longer exists");
    if (wanted === undefined) return stored(own);
    if (
      own.models !== undefined &&
      own.models.length > 0 &&
      !(wanted.models !== undefined && wanted.models.every((m) => own.models?.includes(m)))
    ) {
      throw new PermissionDeniedError(
        `this call's API key may only call ${own.models.join(", ")}, so the keys it makes or changes may only list models among those`,
      );
    }
    for (const f of CEILING_FIELDS) {
      const ceiling = own[f];
      const asked = wanted[f];
      if (ceiling !== undefined && !(asked !== undefined && asked <= ceiling)) {
        throw new PermissionDeniedError(
          `this call's API key has ${CEILINGS[f](ceiling)}, so the keys it makes or changes need a limit of at most that`,
        );
      }
    }
    return wanted;
  }

  return {
    async createApiKey(req, ctx) {
      const p = principalOf(ctx);
      const scopes =
        req.scopes.length === 0
          ? ["read", "write"]
          : req.scopes.map((s) => SCOPE_NAMES.get(s) ?? "read");
      if (scopes.includes("admin") && !isAdmin(p)) {
        throw new PermissionDeniedError("the ADMIN scope needs the admin role");
      }
      // A token exchanged from a key may only make keys that can do no more than that key.
      const callerScopes = callerClaim(ctx, "scp");
      if (
        Array.isArray(callerScopes) &&
        !scopes.every((s) => (callerScopes as unknown[]).includes(s))
      ) {
        throw new PermissionDeniedError("a key cannot create a key with scopes it does not have");
      }
      const limits = await limitsFor(ctx, req.limits);
      const ttl = durationMs(req.ttl);
      const now = new Date();
      for (let attempt = 0; ; attempt++) {
        const { publicId, key } = newApiKey();
        const doc: ApiKeyDoc = {
          id: publicId,
          tenantId: p.tenantId,
          userId: p.subject,
          name: req.name,
          secretHash: sha256(key),
          scopes,
          createTime: now,
          ...(ttl !== undefined ? { expireTime: new Date(now.getTime() + ttl) } : {}),
          ...limits,
        };
        try {
          await models.apiKeys.create(doc);
        } catch (err) {
          // 47-bit public ids rarely collide; draw another.
          if (isDuplicateKey(err) && attempt < 3) continue;
          throw err;
        }
        loggerOf(ctx).info({ apiKeyId: publicId, scopes }, "API key created");
        return { apiKey: apiKeyMessage(doc), secret: key };
      }
    },

    async listApiKeys(req, ctx) {
      const p = principalOf(ctx);
      const filter: QueryFilter<ApiKeyDoc> = { tenantId: p.tenantId };
      if (req.allUsers || (req.userId !== "" && req.userId !== p.subject)) {
        if (!isAdmin(p)) throw new PermissionDeniedError("other users' keys need the admin role");
        if (!req.allUsers) filter.userId = req.userId;
      } else {
        filter.userId = p.subject;
      }
      if (!req.includeRevoked) filter.revokeTime = { $exists: false };
      const { skip, limit } = paging(req.page);
      const keys = await models.apiKeys
        .find(filter)
        .sort({ createTime: -1, id: 1 })
        .skip(skip)
        .limit(limit + 1)
        .lean();
      const page = keys.slice(0, limit);
      const used = await lastUsedTimes(
        models,
        page.map((k) => `apikey:${k.id}`),
      );
      return {
        apiKeys: page.map((k) => apiKeyMessage(k, used.get(`apikey:${k.id}`))),
        page: { nextPageToken: nextPageToken(skip, limit, keys.length) },
      };
    },

    async getApiKey(req, ctx) {
      const p = principalOf(ctx);
      const key = await models.apiKeys.findOne(visible(p, req.id)).lean();
      if (key === null) throw new NotFoundError("API key not found");
      const used = await lastUsedTimes(models, [`apikey:${key.id}`]);
      return { apiKey: apiKeyMessage(key, used.get(`apikey:${key.id}`)) };
    },

    async updateApiKey(req, ctx) {
      const p = principalOf(ctx);
      const owned = visible(p, req.id);
      const key = await models.apiKeys.findOne(owned).lean();
      if (key === null) throw new NotFoundError("API key not found");
      if (key.revokeTime !== undefined) {
        throw new FailedPreconditionError("the API key is revoked; create a new one");
      }
      const $set: Partial<ApiKeyDoc> = {};
      const $unset: Record<string, 1> = {};
      if (req.name !== undefined) $set.name = req.name;
      if (req.limits !== undefined) {
        const limits = (await limitsFor(ctx, req.limits)) ?? {};
        for (const f of ["models", ...CEILING_FIELDS] as const) {
          if (limits[f] !== undefined) Object.assign($set, { [f]: limits[f] });
          else $unset[f] = 1;
        }
      }
      const update = {
        ...(Object.keys($set).length > 0 ? { $set } : {}),
        ...(Object.keys($unset).length > 0 ? { $unset } : {}),
      };
      if (Object.keys(update).length > 0) {
        const changed = await models.apiKeys.updateOne(
          { ...owned, revokeTime: { $exists: false } },
          update,
        );
        if (changed.matchedCount === 0) {
          throw new FailedPreconditionError("the API key is revoked; create a new one");
        }
      }
      const updated = await models.apiKeys.findOne(owned).lean();
      if (updated === null) throw new NotFoundError("API key not found");
      loggerOf(ctx).info(
        {
          apiKeyId: key.id,
          ownerId: key.userId,
          limits: stored(updated),
        },
        "API key updated",
      );
      await core.notices.publish("api-key", key.tenantId, key.id);
      const used = await lastUsedTimes(models, [`apikey:${key.id}`]);
      return { apiKey: apiKeyMessage(updated, used.get(`apikey:${key.id}`)) };
    },

    async rollApiKey(req, ctx) {
      const p = principalOf(ctx);
      const owned = visible(p, req.id);
      const key = await models.apiKeys.findOne(owned).lean();
      if (key === null) throw new NotFoundError("API key not found");
      const now = new Date();
      const graceMs = durationMs(req.previousValidFor) ?? 0;
      const { key: secret } = newApiKey(key.id);
      const set: Partial<ApiKeyDoc> = { secretHash: sha256(secret), rollTime: now };
      const unset: Record<string, 1> = {};
      if (graceMs > 0) {
        set.previousSecretHash = key.secretHash;
        set.previousExpireTime = new Date(now.getTime() + graceMs);
      } else {
        unset["previousSecretHash"] = 1;
        unset["previousExpireTime"] = 1;
      }
      // Conditional on the secret it replaces and on not being revoked: two rolls racing, or a
      // roll racing a revocation, leave one winner and never a live key the owner did not see.
      const res = await models.apiKeys.updateOne(
        { ...owned, secretHash: key.secretHash, revokeTime: { $exists: false } },
        { $set: set, ...(Object.keys(unset).length > 0 ? { $unset: unset } : {}) },
      );
      if (res.matchedCount === 0) {
        const current = await models.apiKeys.findOne(owned).lean();
        throw current?.revokeTime !== undefined
          ? new FailedPreconditionError("the API key is revoked; create a new one")
          : new FailedPreconditionError("the API key was rolled at the same time; try again");
      }
      const rolled = await models.apiKeys.findOne(owned).lean();
      if (rolled === null) throw new NotFoundError("API key not found");
      loggerOf(ctx).info(
        { apiKeyId: key.id, ownerId: key.userId, previousValidForMs: graceMs },
        "API key rolled",
      );
      await core.notices.publish("api-key", key.tenantId, key.id);
      const used = await lastUsedTimes(models, [`apikey:${key.id}`]);
      return { apiKey: apiKeyMessage(rolled, used.get(`apikey:${key.id}`)), secret };
    },

    async revokeApiKey(req, ctx) {
      const p = principalOf(ctx);
      const owned = visible(p, req.id);
      const key = await models.apiKeys.findOne(owned).lean();
      if (key === null) throw new NotFoundError("API key not found");
      await models.apiKeys.updateOne(
        { ...owned, revokeTime: { $exists: false } },
        { $set: { revokeTime: new Date() } },
      );
      const revoked = await models.apiKeys.findOne(owned).lean();
      if (revoked === null) throw new NotFoundError("API key not found");
      loggerOf(ctx).info({ apiKeyId: key.id, ownerId: key.userId }, "API key revoked");
      await core.notices.publish("api-key", key.tenantId, key.id);
      return { apiKey: apiKeyMessage(revoked) };
    },

    async authenticateApiKey(req, ctx) {
      const publicId = apiKeyPublicId(req.apiKey);
      if (publicId === undefined) throw new UnauthenticatedError(BAD_KEY);
      const key = await models.apiKeys.findOne({ id: publicId }).lean();
      const now = new Date();
      const digest = sha256(req.apiKey);
      const previousValid =
        key?.previousSecretHash !== undefined &&
        key.previousExpireTime !== undefined &&
        key.previousExpireTime > now &&
        sameDigest(key.previousSecretHash, digest);
      if (
        key === null ||
        !(sameDigest(key.secretHash, digest) || previousValid) ||
        key.revokeTime !== undefined ||
        (key.expireTime !== undefined && key.expireTime <= now)
      ) {
        throw new UnauthenticatedError(BAD_KEY);
      }
      const user = await models.users.findOne({ id: key.userId, tenantId: key.tenantId }).lean();
      if (user === null || user.disabled) throw new UnauthenticatedError(BAD_KEY);
      const roles = apiKeyRoles(key, user);
      let ttl = core.settings.accessTokenTtlMs;
      if (key.expireTime !== undefined)
        ttl = Math.min(ttl, key.expireTime.getTime() - now.getTime());
      // A token from the previous secret of a rolled key ends with that secret's grace.
      if (previousValid && !sameDigest(key.secretHash, digest)) {
        ttl = Math.min(ttl, key.previousExpireTime!.getTime() - now.getTime());
      }
      const access = await core.keys.sign(
        {
          sub: user.id,
          tid: user.tenantId,
          roles,
          typ: "user",
          akid: key.id,
          scp: key.scopes,
        },
        ttl,
      );
      // Kept off the key's document, so it can never overwrite a concurrent revocation.
      const lastUsed = (await lastUsedTimes(models, [`apikey:${key.id}`])).get(`apikey:${key.id}`);
      if (lastUsed === undefined || now.getTime() - lastUsed.getTime() > LAST_USED_RESOLUTION_MS) {
        await touch(models, `apikey:${key.id}`, now);
      }
      loggerOf(ctx).debug({ apiKeyId: key.id, userId: user.id }, "API key exchanged");
      return {
        accessToken: access.token,
        expireTime: ts(access.expiresAt),
        apiKeyId: key.id,
        userId: user.id,
        tenantId: user.tenantId,
        scopes: scopeEnums(key.scopes),
        roles,
      };
    },
  };
}
