import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import {
  SignJWT,
  exportJWK,
  generateKeyPair,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from "jose";

/** A relative time: seconds (may be negative) or "30s", "5m", "1h", "2d", "-1h". */
export type RelativeTime = number | string;

export interface MintClaims {
  /** `sub`: the user id; default "user-1", or `svc` for a service token without a user. */
  sub?: string;
  /** `tid` */
  tenantId: string;
  /** default ["user"] */
  roles?: string[];
  /** default "service" when `svc` is set, else "user" */
  typ?: "user" | "service";
  svc?: string;
  sid?: string;
  /** default a random uuid */
  jti?: string;
  /** Lifetime from now; default "5m". Negative = already expired: `expiresIn: "-1m"`. */
  expiresIn?: RelativeTime;
  /** `nbf` relative to now; default 0 (now). In the future = not yet valid: `notBefore: "10m"`. */
  notBefore?: RelativeTime;
  /** `iat` relative to now; default 0. */
  issuedAt?: RelativeTime;
  /** Override `iss` (e.g. a wrong issuer); default the issuer's. */
  issuer?: string;
  /** Override `aud` (e.g. a wrong audience); default the issuer's. */
  audience?: string | string[];
  /** Header `kid`; e.g. "unknown" for a key id the JWKS does not have. Default the current key's. */
  kid?: string;
  /** "foreign": sign with a key that is not in the JWKS (under the normal kid): a bad signature. */
  signWith?: "issuer" | "foreign";
  /** Extra claims, merged last: override any claim, or remove one by setting it to undefined. */
  extra?: Record<string, unknown>;
}

export interface TestIssuer {
  /** http://127.0.0.1:<port>/.well-known/jwks.json */
  readonly jwksUrl: string;
  /** The current signing key's id. */
  readonly kid: string;
  readonly issuer: string;
  readonly audience: string;
  /** Signs an ES256 access token with the claims every part of Ensemble agrees on. */
  mint(claims: MintClaims): Promise<string>;
  /** Adds a new key to the JWKS and signs with it from now on (the old key stays published). Returns the new kid. */
  rotate(): Promise<string>;
  /** How many times the JWKS was fetched: assert that verifiers cache it. */
  jwksRequests(): number;
  close(): Promise<void>;
}

interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
}

async function newKey(): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair("ES256");
  const kid = `test-${randomUUID().slice(0, 8)}`;
  return {
    kid,
    privateKey,
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" },
  };
}

/** Parses a relative time into seconds. */
export function toSeconds(value: RelativeTime): number {
  if (typeof value === "number") return Math.trunc(value);
  const match = /^(-?\d+)\s*(s|m|h|d)$/.exec(value.trim());
  if (!match)
    throw new Error(`bad relative time "${value}": use seconds or e.g. "30s", "5m", "-1h", "2d"`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[match[2] as "s" | "m" | "h" | "d"];
  return Number(match[1]) * unit;
}

/**
 * A token issuer for tests: an ES256 key pair with a kid, its JWKS served over HTTP on 127.0.0.1,
 * and `mint()` for valid and deliberately broken tokens:
 *   expired            mint({ tenantId, expiresIn: "-1m" })
 *   not yet valid      mint({ tenantId, notBefore: "10m" })
 *   wrong iss / aud    mint({ tenantId, issuer: "someone-else" }) / mint({ tenantId, audience: "other" })
 *   unknown kid        mint({ tenantId, kid: "unknown" })
 *   bad signature      mint({ tenantId, signWith: "foreign" })
 *   missing claim      mint({ tenantId, extra: { tid: undefined } })
 */
export async function createTestIssuer(
  opts: { issuer?: string; audience?: string } = {},
): Promise<TestIssuer> {
  const issuer = opts.issuer ?? "ensemble-auth";
  const audience = opts.audience ?? "ensemble";
  const keys: SigningKey[] = [await newKey()];
  const foreign = await newKey();
  let requests = 0;

  const server = createServer((req, res) => {
    if (req.method === "GET" && req.url === "/.well-known/jwks.json") {
      requests += 1;
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
      res.end(JSON.stringify({ keys: keys.map((key) => key.publicJwk) }));
      return;
    }
    res.writeHead(404).end();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const current = (): SigningKey => keys[keys.length - 1] as SigningKey;

  return {
    jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    get kid() {
      return current().kid;
    },
    issuer,
    audience,
    async mint(claims) {
      const now = Math.floor(Date.now() / 1000);
      const typ = claims.typ ?? (claims.svc ? "service" : "user");
      const payload: JWTPayload = {
        iss: claims.issuer ?? issuer,
        aud: claims.audience ?? audience,
        sub: claims.sub ?? (typ === "service" && claims.svc ? claims.svc : "user-1"),
        tid: claims.tenantId,
        roles: claims.roles ?? ["user"],
        typ,
        iat: now + toSeconds(claims.issuedAt ?? 0),
        nbf: now + toSeconds(claims.notBefore ?? 0),
        exp: now + toSeconds(claims.expiresIn ?? "5m"),
        jti: claims.jti ?? randomUUID(),
      };
      if (claims.svc !== undefined) payload.svc = claims.svc;
      if (claims.sid !== undefined) payload.sid = claims.sid;
      for (const [name, value] of Object.entries(claims.extra ?? {})) {
        if (value === undefined) delete payload[name];
        else payload[name] = value;
      }
      const key = current();
      return new SignJWT(payload)
        .setProtectedHeader({ alg: "ES256", typ: "JWT", kid: claims.kid ?? key.kid })
        .sign(claims.signWith === "foreign" ? foreign.privateKey : key.privateKey);
    },
    async rotate() {
      keys.push(await newKey());
      return current().kid;
    },
    jwksRequests: () => requests,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) =>
        server.close((err) => (err ? reject(err) : resolve())),
      );
    },
  };
}
