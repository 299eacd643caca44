// The local development token issuer, used until the auth service exists: one ES256 key kept in
// .data/dev-issuer/ (private JWK, mode 0600) and its public JWKS beside it (jwks.json), which the
// launcher hands to every service as JWKS_URL=file://…/jwks.json. Created on first use by the
// launcher or the token minter, whichever runs first.
import { randomUUID } from "node:crypto";
import { chmod, link, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { SignJWT, exportJWK, generateKeyPair, importJWK } from "jose";
import { ToolError, repoRoot } from "./tools.mjs";

export const DEFAULT_ISSUER = "ensemble-auth";
export const DEFAULT_AUDIENCE = "ensemble";

/** @param {NodeJS.ProcessEnv} [env] */
export function devIssuerDir(env = process.env) {
  return join(env.ENSEMBLE_DATA_DIR ?? join(repoRoot, ".data"), "dev-issuer");
}

/**
 * @typedef {{ dir: string; jwksPath: string; jwksUrl: string; kid: string; privateJwk: import("jose").JWK }} DevIssuer
 */

/**
 * Loads the dev issuer key, creating it (and jwks.json) when missing.
 * @param {{ dir?: string }} [opts]
 * @returns {Promise<DevIssuer>}
 */
export async function ensureDevIssuer(opts = {}) {
  const dir = opts.dir ?? devIssuerDir();
  const keyPath = join(dir, "private.jwk.json");
  const jwksPath = join(dir, "jwks.json");
  await mkdir(dir, { recursive: true, mode: 0o700 });

  let privateJwk = await readJwk(keyPath);
  if (!privateJwk) {
    const { privateKey } = await generateKeyPair("ES256", { extractable: true });
    const fresh = {
      ...(await exportJWK(privateKey)),
      kid: `dev-${randomUUID().slice(0, 8)}`,
      alg: "ES256",
      use: "sig",
    };
    // Write under a temporary name, then link: if the launcher and the minter race, one key wins
    // and both use it.
    const scratch = `${keyPath}.${process.pid}.tmp`;
    await writeFile(scratch, JSON.stringify(fresh, null, 2) + "\n", { mode: 0o600 });
    try {
      await link(scratch, keyPath);
    } catch (err) {
      if (/** @type {NodeJS.ErrnoException} */ (err).code !== "EEXIST") throw err;
    } finally {
      await rm(scratch, { force: true });
    }
    privateJwk = await readJwk(keyPath);
    if (!privateJwk) throw new ToolError(`could not create the dev issuer key in ${dir}`);
  }
  await chmod(keyPath, 0o600);

  // The JWKS is derived from the private key every time, so the two can never disagree.
  const { d: _d, ...publicJwk } = privateJwk;
  const jwks = JSON.stringify({ keys: [publicJwk] }, null, 2) + "\n";
  const current = await readFile(jwksPath, "utf8").catch(() => "");
  if (current !== jwks) await writeFile(jwksPath, jwks, { mode: 0o644 });

  const kid = privateJwk.kid;
  if (!kid) throw new ToolError(`${keyPath} has no kid: delete ${dir} to make a new dev issuer`);
  return { dir, jwksPath, jwksUrl: pathToFileURL(jwksPath).href, kid, privateJwk };
}

/**
 * @param {string} path
 * @returns {Promise<import("jose").JWK | undefined>}
 */
async function readJwk(path) {
  let text;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined;
  }
  try {
    /** @type {unknown} */
    const jwk = JSON.parse(text);
    if (typeof jwk !== "object" || jwk === null) throw new Error("not a JSON object");
    return /** @type {import("jose").JWK} */ (jwk);
  } catch (err) {
    throw new ToolError(`${path} is not valid JSON: delete it to make a new dev issuer key`, {
      cause: err,
    });
  }
}

/**
 * @typedef {object} DevTokenClaims
 * @property {string} tenant     tenant id (`tid`); "" for a pure service token
 * @property {string} [user]     user id (`sub`); for a service token without a user, sub is the service name
 * @property {string[]} [roles]  default ["user"]
 * @property {string} [service]  makes a service token (`typ` "service", `svc`)
 * @property {string} [session]  `sid`
 * @property {string} [ttl]      lifetime such as "15m", "1h", "7d" (default "1h")
 * @property {string} [issuer]   default $JWT_ISSUER or "ensemble-auth"
 * @property {string} [audience] default $JWT_AUDIENCE or "ensemble"
 */

/**
 * Signs an access token with the dev issuer key, with the claims every part of Ensemble agrees on.
 * @param {DevIssuer} issuer
 * @param {DevTokenClaims} claims
 */
export async function mintDevToken(issuer, claims) {
  const ttl = claims.ttl ?? "1h";
  if (!/^\d+\s*(s|m|h|d)$/.test(ttl))
    throw new ToolError(`bad ttl "${ttl}": use a number and s, m, h or d, e.g. 15m or 1h`);
  const subject = claims.user ?? claims.service;
  if (!subject) throw new ToolError("a token needs a user (--user) or a service (--service)");
  const key = await importJWK(issuer.privateJwk, "ES256");
  /** @type {import("jose").JWTPayload} */
  const payload = {
    tid: claims.tenant,
    roles: claims.roles ?? ["user"],
    typ: claims.service ? "service" : "user",
  };
  if (claims.service) payload.svc = claims.service;
  if (claims.session) payload.sid = claims.session;
  return new SignJWT(payload)
    .setProtectedHeader({ alg: "ES256", kid: issuer.kid, typ: "JWT" })
    .setIssuer(claims.issuer ?? process.env.JWT_ISSUER ?? DEFAULT_ISSUER)
    .setAudience(claims.audience ?? process.env.JWT_AUDIENCE ?? DEFAULT_AUDIENCE)
    .setSubject(subject)
    .setIssuedAt()
    .setNotBefore(Math.floor(Date.now() / 1000))
    .setExpirationTime(ttl)
    .setJti(randomUUID())
    .sign(key);
}
