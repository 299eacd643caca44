// Tenant administration: users (list, role, disable) and invites. Every query is scoped to the
// admin's tenant from the verified token.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  FailedPreconditionError,
  loggerOf,
  nextPageToken,
  NotFoundError,
  paging,
  principalOf,
} from "@ensemble/kit";
import { Role, type AuthService, type InviteSchema } from "@ensemble/proto";
import type { QueryFilter } from "mongoose";
import { claim, lastUsedTimes, type InviteDoc, type UserDoc } from "./auth.model.js";
import {
  ADMIN,
  durationMs,
  newId,
  revokeSessions,
  ts,
  USER,
  userMessage,
  type AuthCore,
} from "./core.js";
import { normaliseEmail, opaqueToken, sha256 } from "./secrets.js";

const DEFAULT_INVITE_TTL_MS = 7 * 24 * 3600_000;

function inviteMessage(i: InviteDoc): MessageInitShape<typeof InviteSchema> {
  return {
    id: i.id,
    tenantId: i.tenantId,
    email: i.email,
    role: i.role === ADMIN ? Role.ADMIN : Role.USER,
    createdBy: i.createdBy,
    createTime: ts(i.createTime),
    expireTime: ts(i.expireTime),
    acceptTime: ts(i.acceptTime),
    acceptedBy: i.acceptedBy ?? "",
    revokeTime: ts(i.revokeTime),
  };
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

type AdminHandlers = Pick<
  ServiceImpl<typeof AuthService>,
  "listUsers" | "setUserRole" | "setUserDisabled" | "createInvite" | "listInvites" | "revokeInvite"
>;

export function adminHandlers(core: AuthCore): AdminHandlers {
  const { models } = core;

  async function userInTenant(tenantId: string, id: string): Promise<UserDoc> {
    const user = await models.users.findOne({ id, tenantId }).lean();
    if (user === null) throw new NotFoundError("user not found");
    return user;
  }

  return {
    async listUsers(req, ctx) {
      const p = principalOf(ctx);
      const filter: QueryFilter<UserDoc> = { tenantId: p.tenantId };
      if (!req.includeDisabled) filter.disabled = false;
      if (req.role === Role.ADMIN) filter.roles = ADMIN;
      if (req.query !== "") {
        const prefix = new RegExp(`^${escapeRegex(req.query.trim())}`, "i");
        filter.$or = [{ email: prefix }, { displayName: prefix }];
      }
      const { skip, limit } = paging(req.page);
      const users = await models.users
        .find(filter)
        .sort({ email: 1 })
        .skip(skip)
        .limit(limit + 1)
        .lean();
      const page = users.slice(0, limit);
      const logins = await lastUsedTimes(
        models,
        page.map((u) => `login:${u.id}`),
      );
      return {
        users: page.map((u) => userMessage(u, logins.get(`login:${u.id}`))),
        page: { nextPageToken: nextPageToken(skip, limit, users.length) },
      };
    },

    // SetUserRole and SetUserDisabled rewrite the user document; two admins changing the same
    // user in the same instant may lose one change on FerretDB (last writer wins). Nothing
    // else writes user documents, so a disable is never undone by a login or a key use.
    async setUserRole(req, ctx) {
      const p = principalOf(ctx);
      const user = await userInTenant(p.tenantId, req.userId);
      const roles = req.role === Role.ADMIN ? [USER, ADMIN] : [USER];
      const now = new Date();
      await models.users.updateOne(
        { id: user.id, tenantId: p.tenantId },
        { $set: { roles, updateTime: now } },
      );
      if (req.role !== Role.ADMIN && user.roles.includes(ADMIN)) {
        // No transactions: demote, then count; if that left the tenant without an admin (also
        // when two demotions raced), undo this one.
        const admins = await models.users.countDocuments({
          tenantId: p.tenantId,
          roles: ADMIN,
          disabled: false,
        });
        if (admins === 0) {
          await models.users.updateOne(
            { id: user.id, tenantId: p.tenantId },
            { $set: { roles: user.roles, updateTime: now } },
          );
          throw new FailedPreconditionError("the tenant's last admin cannot be demoted");
        }
      }
      loggerOf(ctx).info({ targetUserId: user.id, roles }, "user role set");
      await core.notices.publish("user", p.tenantId, user.id);
      return { user: userMessage({ ...user, roles, updateTime: now }) };
    },

    async setUserDisabled(req, ctx) {
      const p = principalOf(ctx);
      if (req.userId === p.subject && req.disabled) {
        throw new FailedPreconditionError("an admin cannot disable themselves");
      }
      const user = await userInTenant(p.tenantId, req.userId);
      const now = new Date();
      await models.users.updateOne(
        { id: user.id, tenantId: p.tenantId },
        { $set: { disabled: req.disabled, updateTime: now } },
      );
      loggerOf(ctx).info({ targetUserId: user.id, disabled: req.disabled }, "user disabled set");
      // Either way the user's cached API key exchanges go; disabling also ends every session
      // (revokeSessions sends the same `user` notice, with its tokens' cutoff).
      if (req.disabled) {
        await revokeSessions(core, { tenantId: p.tenantId, userId: user.id }, "user disabled");
      } else {
        await core.notices.publish("user", p.tenantId, user.id);
      }
      return { user: userMessage({ ...user, disabled: req.disabled, updateTime: now }) };
    },

    async createInvite(req, ctx) {
      const p = principalOf(ctx);
      const token = opaqueToken();
      const now = new Date();
      const doc: InviteDoc = {
        id: newId("inv"),
        tenantId: p.tenantId,
        tokenHash: sha256(token),
        email: req.email === "" ? "" : normaliseEmail(req.email),
        role: req.role === Role.ADMIN ? ADMIN : USER,
        createdBy: p.subject,
        createTime: now,
        expireTime: new Date(now.getTime() + (durationMs(req.ttl) ?? DEFAULT_INVITE_TTL_MS)),
      };
      await models.invites.create(doc);
      loggerOf(ctx).info({ inviteId: doc.id, role: doc.role }, "invite created");
      return { invite: inviteMessage(doc), token };
    },

    async listInvites(req, ctx) {
      const p = principalOf(ctx);
      const filter: QueryFilter<InviteDoc> = { tenantId: p.tenantId };
      if (!req.includeInactive) {
        filter.acceptTime = { $exists: false };
        filter.revokeTime = { $exists: false };
        filter.expireTime = { $gt: new Date() };
      }
      const { skip, limit } = paging(req.page);
      const invites = await models.invites
        .find(filter)
        .sort({ createTime: -1, id: 1 })
        .skip(skip)
        .limit(limit + 1)
        .lean();
      return {
        invites: invites.slice(0, limit).map(inviteMessage),
        page: { nextPageToken: nextPageToken(skip, limit, invites.length) },
      };
    },

    async revokeInvite(req, ctx) {
      const p = principalOf(ctx);
      const invite = await models.invites.findOne({ id: req.id, tenantId: p.tenantId }).lean();
      if (invite === null) throw new NotFoundError("invite not found");
      if (invite.acceptTime !== undefined) {
        throw new FailedPreconditionError("the invite has already been used");
      }
      // Accepting and revoking claim the same key, so exactly one of them happens; revoking
      // twice keeps the first revoke time.
      if (invite.revokeTime === undefined) {
        if (!(await claim(models, `invite:${invite.id}`))) {
          throw new FailedPreconditionError("the invite has already been used");
        }
        await models.invites.updateOne(
          { id: req.id, tenantId: p.tenantId },
          { $set: { revokeTime: new Date() } },
        );
      }
      const revoked = await models.invites.findOne({ id: req.id, tenantId: p.tenantId }).lean();
      if (revoked === null) throw new NotFoundError("invite not found");
      loggerOf(ctx).info({ inviteId: revoked.id }, "invite revoked");
      return { invite: inviteMessage(revoked) };
    },
  };
}
