// What every handler group shares: the models, the key store, the password hasher, the
// throttle, lifetimes, and the conversions from documents to contract messages.
import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import type { Logger, Notices } from "@ensemble/kit";
import { Role, type AuthTokensSchema, type TenantSchema, type UserSchema } from "@ensemble/proto";
import { decodeJwt } from "jose";
import type { AuthModels, TenantDoc, UserDoc } from "./auth.model.js";
import type { LoginThrottle } from "./login-throttle.js";
import { opaqueToken, sha256, type PasswordHasher } from "./secrets.js";
import type { KeyStore } from "./signing-keys.js";

export interface AuthSettings {
  accessTokenTtlMs: number;
  refreshTokenTtlMs: number;
  /** Short-lived service tokens: default and upper bound. */
  serviceTokenTtlMs: number;
  serviceTokenMaxTtlMs: number;
}

export interface AuthCore {
  models: AuthModels;
  keys: KeyStore;
  hasher: PasswordHasher;
  throttle: LoginThrottle;
  settings: AuthSettings;
  logger: Logger;
  /** Tells the replicas that cache keys, users, budgets and settings (gateway, model-proxy). */
  notices: Notices;
}

export const ADMIN = "admin";
export const USER = "user";

export function newId(prefix: string): string {
  return `${prefix}_${randomUUID().replace(/-/g, "")}`;
}

export function ts(date: Date | undefined) {
  return date === undefined ? undefined : timestampFromDate(date);
}

export function durationMs(d: Duration | undefined): number | undefined {
  if (d === undefined) return undefined;
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

export function rolesToEnum(roles: string[]): Role[] {
  return roles.includes(ADMIN) ? [Role.USER, Role.ADMIN] : [Role.USER];
}

export function userMessage(u: UserDoc, lastLoginTime?: Date): MessageInitShape<typeof UserSchema> {
  return {
    id: u.id,
    tenantId: u.tenantId,
    email: u.email,
    displayName: u.displayName,
    roles: rolesToEnum(u.roles),
    disabled: u.disabled,
    createTime: ts(u.createTime),
    updateTime: ts(u.updateTime),
    lastLoginTime: ts(lastLoginTime),
  };
}

export function tenantMessage(t: TenantDoc): MessageInitShape<typeof TenantSchema> {
  return { id: t.id, name: t.name, createTime: ts(t.createTime) };
}

/** An access token for a user (typ "user"). */
export async function userAccessToken(
  core: AuthCore,
  user: UserDoc,
  sessionId: string,
): Promise<{ token: string; expiresAt: Date }> {
  return core.keys.sign(
    { sub: user.id, tid: user.tenantId, roles: user.roles, typ: "user", sid: sessionId },
    core.settings.accessTokenTtlMs,
  );
}

/** A new refresh token of a session (its hash stored, the token returned once). */
export async function newRefreshToken(
  core: AuthCore,
  user: UserDoc,
  sessionId: string,
  parentHash?: string,
): Promise<{ token: string; expiresAt: Date }> {
  const token = opaqueToken();
  const now = new Date();
  const expiresAt = new Date(now.getTime() + core.settings.refreshTokenTtlMs);
  await core.models.refreshTokens.create({
    tokenHash: sha256(token),
    sessionId,
    tenantId: user.tenantId,
    userId: user.id,
    ...(parentHash !== undefined ? { parentHash } : {}),
    createTime: now,
    expireTime: expiresAt,
  });
  return { token, expiresAt };
}

/** A new login: a session (the refresh token family) with its first tokens. */
export async function startSession(
  core: AuthCore,
  user: UserDoc,
): Promise<MessageInitShape<typeof AuthTokensSchema>> {
  const sessionId = newId("ses");
  await core.models.sessions.create({
    id: sessionId,
    tenantId: user.tenantId,
    userId: user.id,
    createTime: new Date(),
  });
  return sessionTokens(core, user, sessionId);
}

export async function sessionTokens(
  core: AuthCore,
  user: UserDoc,
  sessionId: string,
  parentHash?: string,
): Promise<MessageInitShape<typeof AuthTokensSchema>> {
  const refresh = await newRefreshToken(core, user, sessionId, parentHash);
  const access = await userAccessToken(core, user, sessionId);
  return {
    accessToken: access.token,
    accessTokenExpireTime: ts(access.expiresAt),
    refreshToken: refresh.token,
    refreshTokenExpireTime: ts(refresh.expiresAt),
    tokenType: "Bearer",
  };
}

/**
 * Revokes sessions (and marks their refresh tokens). The session document is what Refresh
 * checks: nothing else ever writes it, so no concurrent update can undo a revocation.
 */
export async function revokeSessions(
  core: AuthCore,
  filter: { tenantId: string; userId: string; id?: string },
  reason: string,
): Promise<void> {
  const now = new Date();
  const sessionFilter = { ...filter, revokeTime: { $exists: false } };
  await core.models.sessions.updateMany(sessionFilter, {
    $set: { revokeTime: now, revokeReason: reason },
  });
  const tokenFilter =
    filter.id !== undefined
      ? { sessionId: filter.id, tenantId: filter.tenantId }
      : { tenantId: filter.tenantId, userId: filter.userId };
  await core.models.refreshTokens.updateMany(
    { ...tokenFilter, revokeTime: { $exists: false } },
    { $set: { revokeTime: now } },
  );
  // The sessions' access tokens stop working at every gateway now, not when they expire.
  if (filter.id !== undefined) await core.notices.publish("session", filter.tenantId, filter.id);
  else await core.notices.publish("user", filter.tenantId, filter.userId);
}

/**
 * A claim of the caller's token that the kit's Principal does not carry (`akid`, `scp`). The
 * kit verified the token before the handler ran, so decoding it again is safe.
 */
export function callerClaim(ctx: HandlerContext, name: string): unknown {
  const token = (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer\s+/i, "");
  try {
    return decodeJwt(token)[name];
  } catch {
    return undefined;
  }
}

/** The roles of a token acting as an API key: the owner's, limited by the key's scopes. */
export function apiKeyRoles(key: { scopes: string[] }, user: { roles: string[] }): string[] {
  return key.scopes.includes("admin") && user.roles.includes(ADMIN) ? [USER, ADMIN] : [USER];
}
