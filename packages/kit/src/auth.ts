// Access-token verification (JWT against the auth service's JWKS) and the access policy that
// every enforcement point applies from the method's `access` option.
//
// Why the algorithm allow-list: a verifier that trusts the token's own `alg` header accepts
// `alg: none`, or an HS256 token "signed" with the public key bytes. Only asymmetric algorithms
// are accepted, so a token can only come from whoever holds a private key in the JWKS.
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { Access } from "@ensemble/proto";
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors as joseErrors,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
} from "jose";
import { PermissionDeniedError, UnauthenticatedError } from "./errors.js";

/** The verified caller of a call. */
export interface Principal {
  /** `sub`: the user id, or the service name for a pure service token. */
  subject: string;
  /** `tid`: the tenant every data access is scoped to. */
  tenantId: string;
  roles: string[];
  /** `typ`: "service" for service tokens (also when acting for a user). */
  kind: "user" | "service";
  /** `svc`: the calling service, for service tokens. */
  service?: string;
  /** `sid`: the login session. */
  sessionId?: string;
  /** `jti` */
  tokenId?: string;
  /** `akid`: the API key the token was exchanged for (usage is attributed to it). */
  apiKeyId?: string;
  /** `iat`, when present (whole seconds). */
  issuedAt?: Date;
  expiresAt: Date;
}

export interface TokenVerifier {
  /** Resolves the principal, or throws UnauthenticatedError (whose message never holds the token). */
  verify(token: string): Promise<Principal>;
}

export interface JwksVerifierOptions {
  /** http(s):// URL of a JWKS document, or a file:// URL of one on disk. */
  jwksUrl: string;
  /** Expected `iss`; default "ensemble-auth". */
  issuer?: string;
  /** Expected `aud`; default "ensemble". */
  audience?: string;
  /** Allowed clock skew for exp/nbf; default 5 s. */
  clockToleranceSec?: number;
  /** Minimum time between two JWKS reloads caused by an unknown `kid`; default 30 s. */
  refetchCooldownMs?: number;
}

export const DEFAULT_JWT_ISSUER = "ensemble-auth";
export const DEFAULT_JWT_AUDIENCE = "ensemble";
export const ALLOWED_JWT_ALGORITHMS = ["ES256", "RS256", "EdDSA"] as const;

/** Tokens are a few hundred bytes; anything huge is not ours and not worth parsing. */
const MAX_TOKEN_LENGTH = 16 * 1024;

/**
 * Verified tokens remembered per verifier. A caller sends the same token on every call until it
 * refreshes it, and the signature check (WebCrypto ECDSA/RSA, on the libuv thread pool) is by far
 * the most expensive step of a call; a token string is immutable and its check deterministic, so
 * a success can be reused until the token expires. Only successes are cached: every failure is
 * checked (and reported) afresh. An entry is also re-verified after VERIFIED_CACHE_TTL_MS, so a
 * key withdrawn from the JWKS stops being honoured after at most that long once the set reloads.
 */
const VERIFIED_CACHE_MAX_ENTRIES = 4096;
const VERIFIED_CACHE_TTL_MS = 60_000;

interface VerifiedToken {
  principal: Principal;
  /** `exp`, in seconds since the epoch. */
  exp: number;
  /** Date.now() after which the token is verified again. */
  recheckAt: number;
}

/** Makes a verifier that checks signature, algorithm, issuer, audience and time claims. */
export function createJwksVerifier(opts: JwksVerifierOptions): TokenVerifier {
  const issuer = opts.issuer ?? DEFAULT_JWT_ISSUER;
  const audience = opts.audience ?? DEFAULT_JWT_AUDIENCE;
  const clockTolerance = opts.clockToleranceSec ?? 5;
  const cooldownMs = opts.refetchCooldownMs ?? 30_000;
  const url = new URL(opts.jwksUrl);
  let getKey: JWTVerifyGetKey;
  if (url.protocol === "http:" || url.protocol === "https:") {
    // jose caches the set, refetches when it is older than cacheMaxAge, and on an unknown kid
    // refetches only when the cooldown since the last fetch has passed.
    getKey = createRemoteJWKSet(url, {
      cooldownDuration: cooldownMs,
      cacheMaxAge: 10 * 60_000,
      timeoutDuration: 5_000,
    });
  } else if (url.protocol === "file:") {
    getKey = fileJwks(fileURLToPath(url), cooldownMs);
  } else {
    throw new Error(`JWKS_URL must be an http(s):// or file:// URL, got ${url.protocol}`);
  }

  // Insertion order is recency order: a hit is moved to the end, the oldest entry evicted first.
  const verified = new Map<string, VerifiedToken>();

  return {
    async verify(token: string): Promise<Principal> {
      if (typeof token !== "string" || token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
        throw new UnauthenticatedError("malformed token");
      }
      const now = Date.now();
      const hit = verified.get(token);
      if (hit !== undefined) {
        verified.delete(token);
        // The same test as jose's: expired once exp <= now - tolerance (whole seconds).
        if (hit.exp > Math.floor(now / 1000) - clockTolerance && now < hit.recheckAt) {
          verified.set(token, hit);
          return copyPrincipal(hit.principal);
        }
        // Expired or due for a recheck: verify it again below, which also gives the right error.
      }
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, getKey, {
          algorithms: [...ALLOWED_JWT_ALGORITHMS],
          issuer,
          audience,
          clockTolerance,
          requiredClaims: ["exp", "sub"],
        }));
      } catch (err) {
        throw toUnauthenticated(err);
      }
      const principal = principalFromClaims(payload);
      if (verified.size >= VERIFIED_CACHE_MAX_ENTRIES) {
        const oldest = verified.keys().next();
        if (oldest.done !== true) verified.delete(oldest.value);
      }
      verified.set(token, {
        principal: copyPrincipal(principal),
        exp: principal.expiresAt.getTime() / 1000,
        recheckAt: now + VERIFIED_CACHE_TTL_MS,
      });
      return principal;
    },
  };
}

/** Callers get their own copy, so nothing they change can leak into the cache. */
function copyPrincipal(p: Principal): Principal {
  return {
    ...p,
    roles: [...p.roles],
    expiresAt: new Date(p.expiresAt.getTime()),
    ...(p.issuedAt !== undefined ? { issuedAt: new Date(p.issuedAt.getTime()) } : {}),
  };
}

/** A JWKS read from disk; re-read on an unknown kid, at most once per cooldown. */
function fileJwks(path: string, cooldownMs: number): JWTVerifyGetKey {
  let current: { set: JWTVerifyGetKey; loadedAt: number } | undefined;
  let loading: Promise<{ set: JWTVerifyGetKey; loadedAt: number }> | undefined;

  const load = () => {
    loading ??= (async () => {
      try {
        const text = await readFile(path, "utf8");
        const set = createLocalJWKSet(JSON.parse(text) as Parameters<typeof createLocalJWKSet>[0]);
        current = { set, loadedAt: Date.now() };
        return current;
      } finally {
        loading = undefined;
      }
    })();
    return loading;
  };

  return async (header, token) => {
    const keys = current ?? (await load());
    try {
      return await keys.set(header, token);
    } catch (err) {
      if (err instanceof joseErrors.JWKSNoMatchingKey && Date.now() - keys.loadedAt >= cooldownMs) {
        const fresh = await load();
        return fresh.set(header, token);
      }
      throw err;
    }
  };
}

/** Short, token-free reasons; the JOSE error is kept as cause only where it helps operators. */
function toUnauthenticated(err: unknown): UnauthenticatedError {
  if (err instanceof joseErrors.JWTExpired) return new UnauthenticatedError("token expired");
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case "nbf":
        return new UnauthenticatedError("token not yet valid");
      case "iss":
        return new UnauthenticatedError("wrong issuer");
      case "aud":
        return new UnauthenticatedError("wrong audience");
      case "iat":
        return new UnauthenticatedError("token issued in the future");
      default:
        return new UnauthenticatedError(`invalid token claim ${err.claim}`);
    }
  }
  if (err instanceof joseErrors.JWKSNoMatchingKey) {
    return new UnauthenticatedError("unknown signing key");
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
    return new UnauthenticatedError("invalid signature");
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed || err instanceof joseErrors.JOSENotSupported) {
    return new UnauthenticatedError("signing algorithm not allowed");
  }
  if (
    err instanceof joseErrors.JWKSTimeout ||
    err instanceof joseErrors.JWKSInvalid ||
    (err instanceof Error && !(err instanceof joseErrors.JOSEError))
  ) {
    // The key set could not be fetched or read: the caller's token may be fine, so say so.
    return new UnauthenticatedError("signing keys unavailable", { cause: err });
  }
  return new UnauthenticatedError("malformed token");
}

function principalFromClaims(p: JWTPayload): Principal {
  const claims = p as JWTPayload & Record<string, unknown>;
  const bad = (claim: string) => new UnauthenticatedError(`invalid token claim ${claim}`);
  const subject = claims.sub;
  if (typeof subject !== "string" || subject === "") throw bad("sub");
  const tenantId = claims["tid"];
  if (typeof tenantId !== "string") throw bad("tid");
  const typ = claims["typ"];
  if (typ !== "user" && typ !== "service") throw bad("typ");
  const rolesClaim = claims["roles"] ?? [];
  if (!Array.isArray(rolesClaim) || !rolesClaim.every((r) => typeof r === "string")) {
    throw bad("roles");
  }
  if (typeof claims.exp !== "number") throw bad("exp");
  const principal: Principal = {
    subject,
    tenantId,
    roles: [...rolesClaim],
    kind: typ,
    expiresAt: new Date(claims.exp * 1000),
  };
  const svc = claims["svc"];
  if (svc !== undefined && typeof svc !== "string") throw bad("svc");
  if (typ === "service") {
    // A pure service token may carry only `sub`; then the subject is the service.
    principal.service = svc ?? subject;
  } else if (svc !== undefined) {
    principal.service = svc;
  }
  const sid = claims["sid"];
  if (typeof sid === "string") principal.sessionId = sid;
  if (typeof claims.jti === "string") principal.tokenId = claims.jti;
  if (typeof claims.iat === "number") principal.issuedAt = new Date(claims.iat * 1000);
  const akid = claims["akid"];
  if (typeof akid === "string" && akid !== "") principal.apiKeyId = akid;
  return principal;
}

/** True for a service token that carries a user (sub is the user, svc the service). */
export function actsForUser(principal: Principal): boolean {
  return principal.kind === "service" && principal.subject !== principal.service;
}

/**
 * The access policy of a method (from its `access` option):
 * PUBLIC nothing; USER a user token or a service acting for a user; ADMIN a token with the
 * "admin" role; INTERNAL (and UNSPECIFIED, and any unknown value) a service token.
 * Throws UnauthenticatedError without a principal, PermissionDeniedError when it does not qualify.
 */
export function checkAccess(access: Access, principal: Principal | undefined): void {
  if (access === Access.PUBLIC) return;
  if (principal === undefined) throw new UnauthenticatedError("missing access token");
  switch (access) {
    case Access.USER:
      if (principal.kind === "user" || actsForUser(principal)) return;
      throw new PermissionDeniedError("this method needs a user (or a service acting for one)");
    case Access.ADMIN:
      if (principal.roles.includes("admin")) return;
      throw new PermissionDeniedError("this method needs the admin role");
    default:
      if (principal.kind === "service") return;
      throw new PermissionDeniedError("this method is internal (service tokens only)");
  }
}
