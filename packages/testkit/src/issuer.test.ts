import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestIssuer, toSeconds, type TestIssuer } from "./issuer.js";

describe("createTestIssuer", () => {
  let issuer: TestIssuer;
  beforeAll(async () => {
    issuer = await createTestIssuer();
  });
  afterAll(async () => {
    await issuer.close();
  });

  const verify = (token: string, opts: { issuer?: string; audience?: string } = {}) =>
    jwtVerify(token, createRemoteJWKSet(new URL(issuer.jwksUrl)), {
      issuer: opts.issuer ?? "ensemble-auth",
      audience: opts.audience ?? "ensemble",
      algorithms: ["ES256"],
    });

  it("createTestIssuer - a minted token verifies against the served JWKS with the agreed claims", async () => {
    expect(issuer.jwksUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\.well-known\/jwks\.json$/);
    const token = await issuer.mint({
      tenantId: "acme",
      sub: "alice",
      roles: ["user", "admin"],
      sid: "s1",
    });
    const { payload, protectedHeader } = await verify(token);
    expect(protectedHeader).toMatchObject({ alg: "ES256", kid: issuer.kid });
    expect(payload).toMatchObject({
      iss: "ensemble-auth",
      aud: "ensemble",
      sub: "alice",
      tid: "acme",
      roles: ["user", "admin"],
      typ: "user",
      sid: "s1",
    });
    expect(typeof payload.jti).toBe("string");
    expect(payload.exp! - payload.iat!).toBe(300);
    expect(issuer.jwksRequests()).toBeGreaterThan(0);
  });

  it("createTestIssuer - service tokens carry typ service and svc, acting for a user or for themselves", async () => {
    const forUser = await verify(
      await issuer.mint({ tenantId: "acme", sub: "alice", svc: "workflow-engine" }),
    );
    expect(forUser.payload).toMatchObject({
      typ: "service",
      svc: "workflow-engine",
      sub: "alice",
      tid: "acme",
    });
    const own = await verify(await issuer.mint({ tenantId: "", svc: "categorizer", roles: [] }));
    expect(own.payload).toMatchObject({ typ: "service", svc: "categorizer", sub: "categorizer" });
  });

  it("createTestIssuer - forged tokens fail verification for the reason they were forged", async () => {
    await expect(verify(await issuer.mint({ tenantId: "t", expiresIn: "-1m" }))).rejects.toThrow(
      /"exp" claim/,
    );
    await expect(verify(await issuer.mint({ tenantId: "t", notBefore: "10m" }))).rejects.toThrow(
      /"nbf" claim/,
    );
    await expect(
      verify(await issuer.mint({ tenantId: "t", issuer: "someone-else" })),
    ).rejects.toThrow(/"iss" claim/);
    await expect(verify(await issuer.mint({ tenantId: "t", audience: "other" }))).rejects.toThrow(
      /"aud" claim/,
    );
    await expect(verify(await issuer.mint({ tenantId: "t", kid: "unknown" }))).rejects.toThrow(
      /no applicable key/i,
    );
    await expect(verify(await issuer.mint({ tenantId: "t", signWith: "foreign" }))).rejects.toThrow(
      /signature verification failed/,
    );
    const noTenant = await verify(await issuer.mint({ tenantId: "t", extra: { tid: undefined } }));
    expect(noTenant.payload).not.toHaveProperty("tid");
  });

  it("createTestIssuer - rotate() publishes a new key and signs with it; old tokens still verify", async () => {
    const before = await issuer.mint({ tenantId: "t" });
    const oldKid = issuer.kid;
    const newKid = await issuer.rotate();
    expect(newKid).not.toBe(oldKid);
    const after = await issuer.mint({ tenantId: "t" });
    expect(decodeProtectedHeader(after).kid).toBe(newKid);
    await verify(after);
    await verify(before);
  });

  it("toSeconds - reads seconds and unit strings, rejects nonsense", () => {
    expect(toSeconds(90)).toBe(90);
    expect(toSeconds("-1m")).toBe(-60);
    expect(toSeconds("2h")).toBe(7200);
    expect(() => toSeconds("soon")).toThrow(/bad relative time/);
  });
});
