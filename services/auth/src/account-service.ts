// Signup, login, refresh, logout and GetMe.
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AlreadyExistsError,
  loggerOf,
  NotFoundError,
  principalOf,
  UnauthenticatedError,
} from "@ensemble/kit";
import { BudgetScope, type AuthService } from "@ensemble/proto";
import {
  claim,
  isDuplicateKey,
  lastUsedTimes,
  release,
  touch,
  type InviteDoc,
  type UserDoc,
} from "./auth.model.js";
import { budgetMessage } from "./budget-service.js";
import {
  ADMIN,
  callerClaim,
  newId,
  revokeSessions,
  sessionTokens,
  startSession,
  tenantMessage,
  USER,
  userMessage,
  type AuthCore,
} from "./core.js";
import { clientAddress } from "./login-throttle.js";
import { checkPasswordPolicy, normaliseEmail, sha256 } from "./secrets.js";

/** The one answer for every failed login, so nobody learns which emails have accounts. */
const BAD_LOGIN = "wrong email or password";
const BAD_REFRESH = "refresh token is invalid, expired or revoked";
const BAD_INVITE = "invite is invalid, used, revoked or expired";

type AccountHandlers = Pick<
  ServiceImpl<typeof AuthService>,
  "signup" | "login" | "refresh" | "logout" | "getMe"
>;

export function accountHandlers(core: AuthCore): AccountHandlers {
  const { models } = core;

  /** Claims an invite for this email (single use: one insert into `claims` wins). */
  async function claimInvite(token: string, email: string, userId: string): Promise<InviteDoc> {
    const now = new Date();
    const invite = await models.invites.findOne({ tokenHash: sha256(token) }).lean();
    if (
      invite === null ||
      (invite.email !== "" && invite.email !== email) ||
      invite.acceptTime !== undefined ||
      invite.revokeTime !== undefined ||
      invite.expireTime <= now
    ) {
      throw new UnauthenticatedError(BAD_INVITE);
    }
    if (!(await claim(models, `invite:${invite.id}`))) throw new UnauthenticatedError(BAD_INVITE);
    await models.invites.updateOne(
      { id: invite.id },
      { $set: { acceptTime: now, acceptedBy: userId } },
    );
    return { ...invite, acceptTime: now, acceptedBy: userId };
  }

  return {
    async signup(req, ctx) {
      const email = normaliseEmail(req.email);
      checkPasswordPolicy(req.password, email);
      if ((await models.users.exists({ email })) !== null) {
        throw new AlreadyExistsError("an account with this email already exists");
      }
      const now = new Date();
      const userId = newId("usr");
      let tenantId: string;
      let roles: string[];
      let createdTenant = false;
      let invite: InviteDoc | undefined;
      if (req.tenant.case === "inviteToken") {
        invite = await claimInvite(req.tenant.value, email, userId);
        tenantId = invite.tenantId;
        roles = invite.role === ADMIN ? [USER, ADMIN] : [USER];
      } else {
        tenantId = newId("ten");
        roles = [USER, ADMIN];
        const name =
          req.tenant.case === "tenantName" ? req.tenant.value : (email.split("@")[1] ?? email);
        await models.tenants.create({ id: tenantId, name, createTime: now });
        createdTenant = true;
      }
      const passwordHash = await core.hasher.hash(req.password);
      let user: UserDoc;
      try {
        const created = await models.users.create({
          id: userId,
          tenantId,
          email,
          displayName: req.displayName,
          passwordHash,
          roles,
          disabled: false,
          createTime: now,
          updateTime: now,
        });
        user = created.toObject();
        await touch(models, `login:${userId}`, now);
      } catch (err) {
        // No transactions: undo what this signup created or claimed, then report.
        if (createdTenant) await models.tenants.deleteOne({ id: tenantId });
        if (invite !== undefined) {
          await models.invites.updateOne(
            { id: invite.id },
            { $unset: { acceptTime: 1, acceptedBy: 1 } },
          );
          await release(models, `invite:${invite.id}`);
        }
        if (isDuplicateKey(err)) {
          throw new AlreadyExistsError("an account with this email already exists");
        }
        throw err;
      }
      const tenant = await models.tenants.findOne({ id: tenantId }).lean();
      if (tenant === null) throw new NotFoundError("tenant not found");
      loggerOf(ctx).info(
        { userId, tenantId, joinedByInvite: invite?.id ?? null },
        createdTenant ? "signup with a new tenant" : "signup by invite",
      );
      return {
        user: userMessage(user, now),
        tenant: tenantMessage(tenant),
        tokens: await startSession(core, user),
      };
    },

    async login(req, ctx) {
      const email = normaliseEmail(req.email);
      const address = clientAddress(ctx.requestHeader);
      const attempt = await core.throttle.begin(email, address);
      const user = await models.users.findOne({ email }).lean();
      // Same work whether or not the account exists: always one argon2 verification.
      let ok: boolean;
      if (user === null) {
        await core.hasher.verifyDummy(req.password);
        ok = false;
      } else {
        ok = await core.hasher.verify(user.passwordHash, req.password);
      }
      if (!ok || user === null || user.disabled) {
        await attempt.failed();
        loggerOf(ctx).info(
          { userId: user?.id ?? null, disabled: user?.disabled ?? null },
          "login refused",
        );
        throw new UnauthenticatedError(BAD_LOGIN);
      }
      await attempt.succeeded();
      const now = new Date();
      await touch(models, `login:${user.id}`, now);
      const tenant = await models.tenants.findOne({ id: user.tenantId }).lean();
      if (tenant === null) throw new NotFoundError("tenant not found");
      loggerOf(ctx).info({ userId: user.id, tenantId: user.tenantId }, "login");
      return {
        user: userMessage(user, now),
        tenant: tenantMessage(tenant),
        tokens: await startSession(core, user),
      };
    },

    async refresh(req, ctx) {
      const hash = sha256(req.refreshToken);
      const now = new Date();
      const known = await models.refreshTokens.findOne({ tokenHash: hash }).lean();
      if (known === null || known.revokeTime !== undefined || known.expireTime <= now) {
        throw new UnauthenticatedError(BAD_REFRESH);
      }
      // Spend the token: of two uses of the same token, exactly one inserts the claim.
      if (!(await claim(models, `refresh:${hash}`))) {
        // A spent token came back: it was stolen or leaked. End the whole login.
        await revokeSessions(
          core,
          { tenantId: known.tenantId, userId: known.userId, id: known.sessionId },
          "refresh token reuse",
        );
        loggerOf(ctx).warn(
          { userId: known.userId, tenantId: known.tenantId, sessionId: known.sessionId },
          "refresh token reused; session revoked",
        );
        throw new UnauthenticatedError(BAD_REFRESH);
      }
      await models.refreshTokens.updateOne({ tokenHash: hash }, { $set: { useTime: now } });
      const [session, user] = await Promise.all([
        models.sessions.findOne({ id: known.sessionId, tenantId: known.tenantId }).lean(),
        models.users.findOne({ id: known.userId, tenantId: known.tenantId }).lean(),
      ]);
      if (session === null || session.revokeTime !== undefined || user === null || user.disabled) {
        throw new UnauthenticatedError(BAD_REFRESH);
      }
      const tokens = await sessionTokens(core, user, session.id, hash);
      // A reuse (or a disable) that raced with this refresh revoked the session after the check
      // above; the token just made would escape it, so check again and withdraw it.
      const after = await models.sessions.findOne({ id: session.id }).lean();
      if (after === null || after.revokeTime !== undefined) {
        await revokeSessions(
          core,
          { tenantId: user.tenantId, userId: user.id, id: session.id },
          after?.revokeReason ?? "revoked",
        );
        throw new UnauthenticatedError(BAD_REFRESH);
      }
      return { tokens };
    },

    async logout(req, ctx) {
      const known = await models.refreshTokens
        .findOne({ tokenHash: sha256(req.refreshToken) })
        .lean();
      // Idempotent, and an unknown token says nothing about which tokens exist.
      if (known === null) return {};
      await revokeSessions(
        core,
        {
          tenantId: known.tenantId,
          userId: known.userId,
          ...(req.allSessions ? {} : { id: known.sessionId }),
        },
        "logout",
      );
      loggerOf(ctx).info(
        { userId: known.userId, tenantId: known.tenantId, allSessions: req.allSessions },
        "logout",
      );
      return {};
    },

    async getMe(_req, ctx) {
      const p = principalOf(ctx);
      const [user, tenant, budgets, lastLogin] = await Promise.all([
        models.users.findOne({ id: p.subject, tenantId: p.tenantId }).lean(),
        models.tenants.findOne({ id: p.tenantId }).lean(),
        models.budgets
          .find({
            tenantId: p.tenantId,
            $or: [{ scope: "tenant" }, { scope: "user", userId: p.subject }],
          })
          .lean(),
        lastUsedTimes(models, [`login:${p.subject}`]),
      ]);
      if (user === null || tenant === null) throw new NotFoundError("user not found");
      const tenantBudget = budgets.find((b) => b.scope === "tenant");
      const userBudget = budgets.find((b) => b.scope === "user");
      return {
        user: userMessage(user, lastLogin.get(`login:${p.subject}`)),
        tenant: tenantMessage(tenant),
        roles: [...p.roles],
        tenantBudget: budgetMessage(BudgetScope.TENANT, p.tenantId, "", tenantBudget),
        userBudget: budgetMessage(BudgetScope.USER, p.tenantId, p.subject, userBudget),
        apiKeyId: (() => {
          const akid = callerClaim(ctx, "akid");
          return typeof akid === "string" ? akid : "";
        })(),
      };
    },
  };
}
