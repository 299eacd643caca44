// Service tokens, the JWKS and signing-key rotation.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { loggerOf, PermissionDeniedError, principalOf } from "@ensemble/kit";
import type { AuthService, SigningKeySchema } from "@ensemble/proto";
import { apiKeyRoles, durationMs, ts, type AuthCore } from "./core.js";
import type { KeyInfo } from "./signing-keys.js";

function signingKeyMessage(k: KeyInfo): MessageInitShape<typeof SigningKeySchema> {
  return {
    kid: k.kid,
    alg: k.alg,
    createTime: ts(k.createTime),
    retireTime: ts(k.retireTime),
    removeTime: ts(k.removeTime),
  };
}

type TokenHandlers = Pick<
  ServiceImpl<typeof AuthService>,
  "issueServiceToken" | "getJwks" | "rotateSigningKey"
>;

export function tokenHandlers(core: AuthCore): TokenHandlers {
  const { models } = core;
  return {
    async issueServiceToken(req, ctx) {
      const p = principalOf(ctx);
      // INTERNAL already guarantees a service token; svc is always the caller's own name.
      const svc = p.service ?? p.subject;
      const ttl = Math.min(
        durationMs(req.ttl) ?? core.settings.serviceTokenTtlMs,
        core.settings.serviceTokenMaxTtlMs,
      );
      const log = loggerOf(ctx);
      if (req.userId === "") {
        const token = await core.keys.sign(
          { sub: svc, tid: "", roles: [], typ: "service", svc },
          ttl,
        );
        log.info({ callerService: svc, reason: req.reason }, "service token issued");
        return { accessToken: token.token, expireTime: ts(token.expiresAt) };
      }
      const user = await models.users.findOne({ id: req.userId }).lean();
      // One answer for "no such user" and "another tenant's user": a caller bug must not probe.
      if (user === null || user.tenantId !== req.tenantId) {
        throw new PermissionDeniedError("the user does not belong to that tenant");
      }
      if (user.disabled) throw new PermissionDeniedError("the user is disabled");
      let claims: Record<string, unknown> = {};
      let roles = user.roles;
      if (req.apiKeyId !== "") {
        // Work started with an API key keeps acting as that key: model-proxy attributes its usage
        // to the key and applies the key's limits, and the roles are the key's (as when it was
        // exchanged). A revoked or expired key starts nothing more.
        const key = await models.apiKeys
          .findOne({ id: req.apiKeyId, tenantId: user.tenantId, userId: user.id })
          .lean();
        if (key === null)
          throw new PermissionDeniedError("the API key does not belong to that user");
        if (key.revokeTime !== undefined) {
          throw new PermissionDeniedError(
            "the API key this work was started with has been revoked",
          );
        }
        if (key.expireTime !== undefined && key.expireTime <= new Date()) {
          throw new PermissionDeniedError("the API key this work was started with has expired");
        }
        roles = apiKeyRoles(key, user);
        claims = { akid: key.id, scp: key.scopes };
      }
      const token = await core.keys.sign(
        { sub: user.id, tid: user.tenantId, roles, typ: "service", svc, ...claims },
        ttl,
      );
      log.info(
        {
          callerService: svc,
          actsForUserId: user.id,
          actsForTenantId: user.tenantId,
          ...(req.apiKeyId !== "" ? { apiKeyId: req.apiKeyId } : {}),
          reason: req.reason,
        },
        "service token issued",
      );
      return { accessToken: token.token, expireTime: ts(token.expiresAt) };
    },

    async getJwks() {
      return { keys: await core.keys.jwks() };
    },

    async rotateSigningKey(req, ctx) {
      const p = principalOf(ctx);
      const result = await core.keys.rotate(req.reason === "" ? "on demand" : req.reason);
      loggerOf(ctx).info(
        { callerService: p.service ?? p.subject, kid: result.current.kid, reason: req.reason },
        "signing key rotated",
      );
      return {
        current: signingKeyMessage(result.current),
        published: result.published.map(signingKeyMessage),
      };
    },
  };
}
