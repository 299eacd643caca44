import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { Access } from "@ensemble/proto";
import { thrown } from "@ensemble/testkit";
import {
  exportJWK,
  exportSPKI,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkAccess, createJwksVerifier, type Principal } from "./auth.js";
import { PermissionDeniedError, UnauthenticatedError } from "./errors.js";

const ISSUER = "ensemble-auth";
const AUDIENCE = "ensemble";

interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function newKey(kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" };
  return { kid, privateKey, publicKey, jwk };
}

const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
const decodePayload = (part: string | undefined) =>
  JSON.parse(Buffer.from(part ?? "", "base64url").toString()) as Record<string, unknown>;

interface MintOptions {
  key?: SigningKey;
  claims?: JWTPayload & Record<string, unknown>;
  issuer?: string;
  audience?: string;
  expiresIn?: string | number;
  notBefore?: string | number;
}

let key: SigningKey;
let jwks: { keys: JWK[] };
let fetches = 0;
let jwksServer: Server;
let jwksUrl: string;

async function mint(opts: MintOptions = {}): Promise<string> {
  const k = opts.key ?? key;
  const jwt = new SignJWT({
    tid: "t1",
    roles: ["user"],
    typ: "user",
    sid: "s1",
    ...opts.claims,
  })
    .setProtectedHeader({ alg: "ES256", kid: k.kid })
    .setSubject(opts.claims?.sub ?? "u1")
    .setIssuer(opts.issuer ?? ISSUER)
    .setAudience(opts.audience ?? AUDIENCE)
    .setIssuedAt()
    .setJti("jti-1")
    .setExpirationTime(opts.expiresIn ?? "5m");
  if (opts.notBefore !== undefined) jwt.setNotBefore(opts.notBefore);
  return jwt.sign(k.privateKey);
}

beforeAll(async () => {
  key = await newKey("k1");
  jwks = { keys: [key.jwk] };
  jwksServer = createServer((_req, res) => {
    fetches++;
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(jwks));
  });
  await new Promise<void>((r) => jwksServer.listen(0, "127.0.0.1", r));
  jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`;
});

afterAll(async () => {
  jwksServer.closeAllConnections();
  await new Promise((r) => jwksServer.close(r));
});

const failureOf = (p: Promise<unknown>) => thrown(p, UnauthenticatedError);

describe("auth verifier", () => {
  const cases: Array<{ name: string; token: () => Promise<string>; reason: string }> = [
    {
      name: "alg none",
      token: () => {
        const now = Math.floor(Date.now() / 1000);
        const claims = { sub: "u1", tid: "t1", typ: "user", roles: ["admin"], iss: ISSUER };
        return Promise.resolve(
          `${b64url({ alg: "none", kid: "k1" })}.${b64url({ ...claims, aud: AUDIENCE, exp: now + 300 })}.`,
        );
      },
      reason: "signing algorithm not allowed",
    },
    {
      name: "HS256 signed with the public key bytes",
      token: async () => {
        const pem = await exportSPKI(key.publicKey);
        return new SignJWT({ tid: "t1", typ: "service", roles: ["admin"] })
          .setProtectedHeader({ alg: "HS256", kid: "k1" })
          .setSubject("u1")
          .setIssuer(ISSUER)
          .setAudience(AUDIENCE)
          .setExpirationTime("5m")
          .sign(new TextEncoder().encode(pem));
      },
      reason: "signing algorithm not allowed",
    },
    { name: "expired", token: () => mint({ expiresIn: "-1m" }), reason: "token expired" },
    {
      name: "not yet valid",
      token: () => mint({ notBefore: "10m", expiresIn: "20m" }),
      reason: "token not yet valid",
    },
    { name: "wrong issuer", token: () => mint({ issuer: "someone-else" }), reason: "wrong issuer" },
    {
      name: "wrong audience",
      token: () => mint({ audience: "other-app" }),
      reason: "wrong audience",
    },
    {
      name: "unknown kid",
      token: async () => mint({ key: await newKey("not-in-jwks") }),
      reason: "unknown signing key",
    },
    {
      name: "tampered payload",
      token: async () => {
        const [h, p, s] = (await mint()).split(".");
        const claims = JSON.parse(Buffer.from(p ?? "", "base64url").toString()) as JWTPayload;
        return `${h}.${b64url({ ...claims, roles: ["admin"] })}.${s}`;
      },
      reason: "invalid signature",
    },
    {
      name: "signed by a key that claims a known kid",
      token: async () => mint({ key: { ...(await newKey("x")), kid: "k1" } }),
      reason: "invalid signature",
    },
    { name: "garbage", token: () => Promise.resolve("not.a.jwt"), reason: "malformed token" },
    { name: "empty", token: () => Promise.resolve(""), reason: "malformed token" },
    {
      name: "missing tenant claim",
      token: () => mint({ claims: { tid: undefined } }),
      reason: "invalid token claim tid",
    },
  ];

  for (const c of cases) {
    it(`auth - rejects ${c.name} with "${c.reason}"`, async () => {
      const verifier = createJwksVerifier({ jwksUrl });
      const token = await c.token();
      const err = await failureOf(verifier.verify(token));
      expect(err.message).toBe(c.reason);
      if (token !== "") expect(err.message).not.toContain(token.slice(0, 20));
    });
  }

  it("auth - a good user token becomes a user principal", async () => {
    const verifier = createJwksVerifier({ jwksUrl });
    const principal = await verifier.verify(await mint());
    expect(principal).toMatchObject({
      subject: "u1",
      tenantId: "t1",
      roles: ["user"],
      kind: "user",
      sessionId: "s1",
      tokenId: "jti-1",
    });
    expect(principal.service).toBeUndefined();
    expect(principal.expiresAt.getTime()).toBeGreaterThan(Date.now());
    expect(principal.expiresAt.getTime()).toBeLessThanOrEqual(Date.now() + 5 * 60_000);
  });

  it("auth - a service token becomes a service principal (pure and acting for a user)", async () => {
    const verifier = createJwksVerifier({ jwksUrl });
    const pure = await verifier.verify(
      await mint({
        claims: { sub: "workflow-engine", typ: "service", svc: "workflow-engine", tid: "" },
      }),
    );
    expect(pure).toMatchObject({
      subject: "workflow-engine",
      kind: "service",
      service: "workflow-engine",
    });
    const acting = await verifier.verify(
      await mint({ claims: { sub: "u9", typ: "service", svc: "workflow-engine", tid: "t9" } }),
    );
    expect(acting).toMatchObject({
      subject: "u9",
      tenantId: "t9",
      kind: "service",
      service: "workflow-engine",
    });
  });

  it("auth - a verified token is reused until it expires, then is refused as expired", async () => {
    const verifier = createJwksVerifier({ jwksUrl, clockToleranceSec: 0 });
    // At least a full second of life: with "+ 1" a token minted at x.999 s was already expired
    // by the first verify (seen once on CI).
    const exp = Math.floor(Date.now() / 1000) + 2;
    const token = await mint({ expiresIn: exp });
    const first = await verifier.verify(token);
    // A caller changing its principal must not change what the next call with the token gets.
    first.roles.push("admin");
    const second = await verifier.verify(token);
    expect(second.roles).toEqual(["user"]);
    expect(second.expiresAt.getTime()).toBe(exp * 1000);
    await new Promise((r) => setTimeout(r, exp * 1000 - Date.now() + 50));
    expect((await failureOf(verifier.verify(token))).message).toBe("token expired");
    // A tampered copy of a token that verified before is still checked on its own.
    const [h, p, sig] = (await mint()).split(".");
    await verifier.verify(`${h}.${p}.${sig}`);
    const forged = `${h}.${b64url({ ...decodePayload(p), roles: ["admin"] })}.${sig}`;
    expect((await failureOf(verifier.verify(forged))).message).toBe("invalid signature");
  });

  it("auth - issuer and audience are configurable", async () => {
    const verifier = createJwksVerifier({ jwksUrl, issuer: "other-iss", audience: "other-aud" });
    const ok = await verifier.verify(await mint({ issuer: "other-iss", audience: "other-aud" }));
    expect(ok.subject).toBe("u1");
    expect((await failureOf(verifier.verify(await mint()))).message).toBe("wrong issuer");
  });

  it("auth - JWKS is cached and an unknown kid refetches at most once per cooldown", async () => {
    const verifier = createJwksVerifier({ jwksUrl });
    const before = fetches;
    for (let i = 0; i < 5; i++) await verifier.verify(await mint());
    expect(fetches - before).toBe(1);
    // A new key appears at the issuer right after our fetch: within the cooldown the verifier
    // does not hammer the JWKS endpoint, it answers "unknown signing key".
    const rotated = await newKey("k2");
    jwks = { keys: [key.jwk, rotated.jwk] };
    try {
      for (let i = 0; i < 3; i++) {
        const err = await failureOf(verifier.verify(await mint({ key: rotated })));
        expect(err.message).toBe("unknown signing key");
      }
      expect(fetches - before).toBe(1);
    } finally {
      jwks = { keys: [key.jwk] };
    }
  });

  it("auth - an unknown kid refetches the JWKS once the cooldown has passed (key rotation)", async () => {
    const verifier = createJwksVerifier({ jwksUrl, refetchCooldownMs: 100 });
    await verifier.verify(await mint());
    const rotated = await newKey("k3");
    jwks = { keys: [key.jwk, rotated.jwk] };
    try {
      await new Promise((r) => setTimeout(r, 150));
      const principal = await verifier.verify(await mint({ key: rotated }));
      expect(principal.subject).toBe("u1");
    } finally {
      jwks = { keys: [key.jwk] };
    }
  });

  it("auth - a file:// JWKS works and is re-read for a new kid", async () => {
    const dir = await mkdtemp(join(tmpdir(), "kit-jwks-"));
    try {
      const file = join(dir, "jwks.json");
      await writeFile(file, JSON.stringify({ keys: [key.jwk] }));
      const verifier = createJwksVerifier({
        jwksUrl: pathToFileURL(file).href,
        refetchCooldownMs: 0,
      });
      expect((await verifier.verify(await mint())).subject).toBe("u1");
      const rotated = await newKey("k-file");
      const rotatedToken = await mint({ key: rotated });
      expect((await failureOf(verifier.verify(rotatedToken))).message).toBe("unknown signing key");
      await writeFile(file, JSON.stringify({ keys: [key.jwk, rotated.jwk] }));
      expect((await verifier.verify(rotatedToken)).subject).toBe("u1");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("auth - an unreachable JWKS is reported without the token", async () => {
    const verifier = createJwksVerifier({ jwksUrl: "http://127.0.0.1:1/jwks.json" });
    const token = await mint();
    const err = await failureOf(verifier.verify(token));
    expect(err.message).toBe("signing keys unavailable");
    expect(err.message).not.toContain(token);
  });
});

describe("auth checkAccess", () => {
  const exp = new Date(Date.now() + 60_000);
  const principals: Record<string, Principal | undefined> = {
    none: undefined,
    user: { subject: "u1", tenantId: "t1", roles: ["user"], kind: "user", expiresAt: exp },
    admin: {
      subject: "u2",
      tenantId: "t1",
      roles: ["user", "admin"],
      kind: "user",
      expiresAt: exp,
    },
    service: {
      subject: "registry",
      tenantId: "",
      roles: [],
      kind: "service",
      service: "registry",
      expiresAt: exp,
    },
    serviceForUser: {
      subject: "u1",
      tenantId: "t1",
      roles: ["user"],
      kind: "service",
      service: "workflow-engine",
      expiresAt: exp,
    },
  };
  type Outcome = "ok" | "unauthenticated" | "denied";
  const table: Array<[Access, Record<keyof typeof principals, Outcome>]> = [
    [Access.PUBLIC, { none: "ok", user: "ok", admin: "ok", service: "ok", serviceForUser: "ok" }],
    [
      Access.USER,
      { none: "unauthenticated", user: "ok", admin: "ok", service: "denied", serviceForUser: "ok" },
    ],
    [
      Access.ADMIN,
      {
        none: "unauthenticated",
        user: "denied",
        admin: "ok",
        service: "denied",
        serviceForUser: "denied",
      },
    ],
    [
      Access.INTERNAL,
      {
        none: "unauthenticated",
        user: "denied",
        admin: "denied",
        service: "ok",
        serviceForUser: "ok",
      },
    ],
    [
      Access.UNSPECIFIED,
      {
        none: "unauthenticated",
        user: "denied",
        admin: "denied",
        service: "ok",
        serviceForUser: "ok",
      },
    ],
  ];
  for (const [access, expected] of table) {
    for (const [who, outcome] of Object.entries(expected)) {
      it(`auth - ${Access[access]} with ${who} is ${outcome}`, () => {
        const run = () => checkAccess(access, principals[who]);
        if (outcome === "ok") expect(run).not.toThrow();
        else if (outcome === "unauthenticated") expect(run).toThrow(UnauthenticatedError);
        else expect(run).toThrow(PermissionDeniedError);
      });
    }
  }
});
