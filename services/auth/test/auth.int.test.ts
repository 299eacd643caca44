import { Code } from "@connectrpc/connect";
import { ApiKeyScope, BudgetScope, DefaultCache, PiiKind, Role } from "@ensemble/proto";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bytes } from "../src/secrets.js";
import {
  email,
  jwtClaims,
  jwtHeader,
  rawLogin,
  rejection,
  startAuth,
  type Harness,
} from "./harness.js";

let h: Harness;
/** Every password, token, refresh token, invite token and API key a test used or received. */
const secrets = new Set<string>();
const keep = <T extends string>(s: T): T => {
  secrets.add(s);
  return s;
};

/** JSON.stringify replacer for messages holding int64 (timestamps). */
const bigints = (_key: string, value: unknown) =>
  typeof value === "bigint" ? value.toString() : value;

const PASSWORD = "Correct horse 42 battery";

async function signup(prefix: string, tenantName?: string) {
  const mail = email(prefix);
  const password = keep(`${PASSWORD} ${prefix}`);
  const res = await h.client().signup({
    email: mail,
    password,
    displayName: prefix,
    tenant: { case: "tenantName", value: tenantName ?? `${prefix} inc` },
  });
  const tokens = res.tokens!;
  keep(tokens.accessToken);
  keep(tokens.refreshToken);
  return { email: mail, password, res, user: res.user!, tenant: res.tenant!, tokens };
}

beforeAll(async () => {
  h = await startAuth({ throttle: { maxFailuresPerAccount: 3, maxFailuresPerAddress: 6 } });
});

afterAll(async () => {
  await h?.close();
});

describe("auth accounts", () => {
  it("signup - creates a tenant with the user as admin; login and GetMe see the same user", async () => {
    const mail = email("alice");
    const password = keep("Alice's long passphrase 1");
    const signed = await h.client().signup({
      email: mail.toUpperCase(),
      password,
      tenant: { case: "tenantName", value: "Alice Co" },
    });
    keep(signed.tokens!.accessToken);
    keep(signed.tokens!.refreshToken);
    expect(signed.user?.email).toBe(mail);
    expect(signed.user?.roles).toEqual([Role.USER, Role.ADMIN]);
    expect(signed.tenant?.name).toBe("Alice Co");

    const login = await h.client().login({ email: mail, password });
    const access = keep(login.tokens!.accessToken);
    keep(login.tokens!.refreshToken);
    expect(login.tokens?.tokenType).toBe("Bearer");
    const claims = jwtClaims(access);
    expect(claims).toMatchObject({
      iss: "ensemble-auth",
      aud: "ensemble",
      sub: signed.user?.id,
      tid: signed.tenant?.id,
      roles: ["user", "admin"],
      typ: "user",
    });
    expect(typeof claims["jti"]).toBe("string");
    expect((claims["exp"] as number) - (claims["iat"] as number)).toBe(15 * 60);
    expect(jwtHeader(access)).toMatchObject({ alg: "ES256", kid: expect.any(String) as string });

    const me = await h.client(access).getMe({});
    expect(me.user?.id).toBe(signed.user?.id);
    expect(me.tenant?.id).toBe(signed.tenant?.id);
    expect(me.roles).toEqual(["user", "admin"]);
    expect(me.tenantBudget?.monthlyLimitUsd).toBeUndefined();
  });

  it("signup - refuses a weak password, naming the field, and a duplicate email", async () => {
    const mail = email("weak");
    for (const password of ["onlylowercaseletters", `${mail.split("@")[0]}X1`]) {
      keep(password);
      const err = await rejection(
        h.client().signup({ email: mail, password, tenant: { case: "tenantName", value: "x" } }),
      );
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/^password /);
      expect(err.rawMessage).not.toContain(password);
    }
    const first = await signup("dupe");
    const again = await rejection(
      h.client().signup({
        email: first.email.toUpperCase(),
        password: first.password,
        tenant: { case: "tenantName", value: "y" },
      }),
    );
    expect(again.code).toBe(Code.AlreadyExists);
  });

  it("invites - a user joins the admin's tenant once; the invite is single use and listed without its token", async () => {
    const admin = await signup("inviter");
    const adminClient = h.client(admin.tokens.accessToken);
    const invited = email("invitee");
    const { invite, token } = await adminClient.createInvite({ email: invited });
    keep(token);
    expect(invite?.role).toBe(Role.USER);

    const joined = await h.client().signup({
      email: invited,
      password: keep("Invitee password 123"),
      tenant: { case: "inviteToken", value: token },
    });
    keep(joined.tokens!.accessToken);
    keep(joined.tokens!.refreshToken);
    expect(joined.tenant?.id).toBe(admin.tenant.id);
    expect(joined.user?.roles).toEqual([Role.USER]);

    const reused = await rejection(
      h.client().signup({
        email: invited.replace("invitee", "other"),
        password: keep("Another password 123"),
        tenant: { case: "inviteToken", value: token },
      }),
    );
    expect(reused.code).toBe(Code.Unauthenticated);

    const listed = await adminClient.listInvites({ includeInactive: true });
    expect(listed.invites.map((i) => i.id)).toEqual([invite?.id]);
    expect(listed.invites[0]?.acceptedBy).toBe(joined.user?.id);
    expect(JSON.stringify(listed, bigints)).not.toContain(token);
    expect((await adminClient.listInvites({})).invites).toEqual([]);

    const revokedInvite = await adminClient.createInvite({});
    keep(revokedInvite.token);
    await adminClient.revokeInvite({ id: revokedInvite.invite!.id });
    const refused = await rejection(
      h.client().signup({
        email: email("late"),
        password: keep("Late comer password 1"),
        tenant: { case: "inviteToken", value: revokedInvite.token },
      }),
    );
    expect(refused.code).toBe(Code.Unauthenticated);
  });

  it("refresh - rotates: new tokens work, the spent refresh token is refused", async () => {
    const u = await signup("rotate");
    const first = await h.client().refresh({ refreshToken: u.tokens.refreshToken });
    keep(first.tokens!.accessToken);
    keep(first.tokens!.refreshToken);
    expect(first.tokens?.refreshToken).not.toBe(u.tokens.refreshToken);
    const me = await h.client(first.tokens!.accessToken).getMe({});
    expect(me.user?.id).toBe(u.user.id);
    const second = await h.client().refresh({ refreshToken: first.tokens!.refreshToken });
    keep(second.tokens!.accessToken);
    keep(second.tokens!.refreshToken);
    expect(second.tokens?.accessToken).not.toBe(first.tokens?.accessToken);
  });

  it("refresh - reusing a rotated refresh token revokes the family, the newest token too", async () => {
    const u = await signup("reuse");
    const rotated = await h.client().refresh({ refreshToken: u.tokens.refreshToken });
    const newest = keep(rotated.tokens!.refreshToken);
    keep(rotated.tokens!.accessToken);

    const reuse = await rejection(h.client().refresh({ refreshToken: u.tokens.refreshToken }));
    expect(reuse.code).toBe(Code.Unauthenticated);
    const after = await rejection(h.client().refresh({ refreshToken: newest }));
    expect(after.code).toBe(Code.Unauthenticated);

    // Another login of the same user is another family and keeps working.
    const other = await h.client().login({ email: u.email, password: u.password });
    keep(other.tokens!.accessToken);
    const next = await h.client().refresh({ refreshToken: keep(other.tokens!.refreshToken) });
    keep(next.tokens!.accessToken);
    keep(next.tokens!.refreshToken);
  });

  it("refresh - concurrent refreshes with one token: at most one succeeds and the reuse ends the family", async () => {
    const u = await signup("race");
    const results = await Promise.allSettled(
      Array.from({ length: 5 }, () => h.client().refresh({ refreshToken: u.tokens.refreshToken })),
    );
    // The others are reuses of a spent token, so the family is revoked; a winner that finished
    // before that holds a token of a revoked family.
    const won = results.flatMap((r) => (r.status === "fulfilled" ? [r.value.tokens!] : []));
    expect(won.length).toBeLessThanOrEqual(1);
    for (const t of won) {
      keep(t.accessToken);
      keep(t.refreshToken);
      expect((await rejection(h.client().refresh({ refreshToken: t.refreshToken }))).code).toBe(
        Code.Unauthenticated,
      );
    }
    const session = await h.models.sessions.findOne({ userId: u.user.id }).lean();
    expect(session?.revokeReason).toBe("refresh token reuse");
  });

  it("invites - of concurrent signups with one invite exactly one joins", async () => {
    const admin = await signup("raceinv");
    const { token } = await h.client(admin.tokens.accessToken).createInvite({});
    keep(token);
    const results = await Promise.allSettled(
      Array.from({ length: 4 }, (_, i) =>
        h.client().signup({
          email: email(`racer${i}`),
          password: keep(`Racer password ${i}!`),
          tenant: { case: "inviteToken", value: token },
        }),
      ),
    );
    const joined = results.filter((r) => r.status === "fulfilled");
    expect(joined).toHaveLength(1);
    const users = await h.client(admin.tokens.accessToken).listUsers({});
    expect(users.users).toHaveLength(2);
    for (const r of joined) {
      keep(r.value.tokens!.accessToken);
      keep(r.value.tokens!.refreshToken);
    }
  });

  it("list users - a query is a case-insensitive prefix; one with a NUL is INVALID_ARGUMENT", async () => {
    const admin = await signup("Prefix");
    const client = h.client(admin.tokens.accessToken);
    const found = await client.listUsers({ query: "PREFIX" });
    expect(found.users.map((u) => u.id)).toEqual([admin.user.id]);
    expect((await client.listUsers({ query: "zz-nobody" })).users).toEqual([]);
    // The query becomes a regular expression, which BSON cannot carry with a NUL in it.
    const err = await rejection(client.listUsers({ query: "pre\u0000fix" }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/^query: /);
  });

  it("logout - revokes the login's refresh tokens; logging out again succeeds", async () => {
    const u = await signup("logout");
    await h.client().logout({ refreshToken: u.tokens.refreshToken });
    const err = await rejection(h.client().refresh({ refreshToken: u.tokens.refreshToken }));
    expect(err.code).toBe(Code.Unauthenticated);
    await h.client().logout({ refreshToken: u.tokens.refreshToken });
  });

  it("login - wrong email and wrong password give the same answer in similar time", async () => {
    const u = await signup("enum");
    const timed = async (mail: string, password: string, address: string) => {
      const started = performance.now();
      const err = await rejection(
        h.client().login({ email: mail, password }, { headers: { "x-forwarded-for": address } }),
      );
      return { err, ms: performance.now() - started };
    };
    const wrongPassword: number[] = [];
    const wrongEmail: number[] = [];
    for (let i = 0; i < 2; i++) {
      const a = await timed(u.email, keep(`Wrong password ${i}x`), `10.1.0.${i}`);
      const b = await timed(email("nobody"), keep(`Wrong password ${i}y`), `10.2.0.${i}`);
      expect(a.err.code).toBe(Code.Unauthenticated);
      expect(b.err.code).toBe(Code.Unauthenticated);
      expect(b.err.rawMessage).toBe(a.err.rawMessage);
      wrongPassword.push(a.ms);
      wrongEmail.push(b.ms);
    }
    // A missing account still costs one argon2 verification (~25 ms here).
    expect(Math.min(...wrongEmail)).toBeGreaterThan(Math.min(...wrongPassword) * 0.5);
  });

  it("login - throttling stops a password-guessing loop, the right password included, with retry info", async () => {
    const u = await signup("guess");
    const results: Code[] = [];
    for (let i = 0; i < 6; i++) {
      const err = await rejection(
        h.client().login({ email: u.email, password: keep(`Guess number ${i}!`) }),
      );
      results.push(err.code as Code);
    }
    expect(results.slice(0, 3)).toEqual([
      Code.Unauthenticated,
      Code.Unauthenticated,
      Code.Unauthenticated,
    ]);
    expect(results.slice(3)).toEqual([
      Code.ResourceExhausted,
      Code.ResourceExhausted,
      Code.ResourceExhausted,
    ]);
    const right = await rawLogin(h.address, { email: u.email, password: u.password });
    expect(right.code).toBe(Code.ResourceExhausted);
    const retryAfterMs = Number(right.trailers.get("retry-after-ms")[0]);
    expect(retryAfterMs).toBeGreaterThan(14 * 60_000);
    expect(retryAfterMs).toBeLessThanOrEqual(15 * 60_000);
  });

  it("login - a burst of concurrent guesses gets no more password checks than the limit", async () => {
    const u = await signup("burst");
    const results = await Promise.allSettled(
      Array.from({ length: 10 }, (_, i) =>
        h.client().login({ email: u.email, password: keep(`Burst guess ${i}!x`) }),
      ),
    );
    const codes = results.map((r) =>
      r.status === "rejected" ? (r.reason as { code: Code }).code : 0,
    );
    expect(codes.filter((c) => c === Code.Unauthenticated).length).toBeLessThanOrEqual(3);
    expect(codes.filter((c) => c === Code.ResourceExhausted).length).toBeGreaterThanOrEqual(7);
  });

  it("login - throttling per client address stops guessing across many accounts", async () => {
    const address = "203.0.113.9";
    const codes: Code[] = [];
    for (let i = 0; i < 8; i++) {
      const err = await rejection(
        h
          .client()
          .login(
            { email: email("spray"), password: keep(`Spray password ${i}`) },
            { headers: { "x-forwarded-for": `198.51.100.1, ${address}` } },
          ),
      );
      codes.push(err.code as Code);
    }
    expect(codes.slice(0, 6).every((c) => c === Code.Unauthenticated)).toBe(true);
    expect(codes.slice(6)).toEqual([Code.ResourceExhausted, Code.ResourceExhausted]);
    // Another address is not affected.
    const u = await signup("sprayok");
    const ok = await h
      .client()
      .login(
        { email: u.email, password: u.password },
        { headers: { "x-forwarded-for": "203.0.113.10" } },
      );
    keep(ok.tokens!.accessToken);
    keep(ok.tokens!.refreshToken);
  });
});

describe("auth API keys", () => {
  it("api keys - create, authenticate, list without the secret, revoke, refused", async () => {
    const u = await signup("keys");
    const user = h.client(u.tokens.accessToken);
    const created = await user.createApiKey({ name: "ci", scopes: [ApiKeyScope.READ] });
    const key = keep(created.secret);
    expect(key).toMatch(/^ens_[0-9A-Za-z]{8}_[0-9A-Za-z]{32,}$/);
    expect(key.startsWith(created.apiKey!.prefix)).toBe(true);

    const gateway = h.client(await h.serviceToken("gateway"));
    const exchanged = await gateway.authenticateApiKey({ apiKey: key });
    keep(exchanged.accessToken);
    expect(exchanged).toMatchObject({
      apiKeyId: created.apiKey?.id,
      userId: u.user.id,
      tenantId: u.tenant.id,
      roles: ["user"],
      scopes: [ApiKeyScope.READ],
    });
    expect(jwtClaims(exchanged.accessToken)).toMatchObject({
      sub: u.user.id,
      tid: u.tenant.id,
      typ: "user",
      akid: created.apiKey?.id,
      scp: ["read"],
      roles: ["user"],
    });
    const me = await h.client(exchanged.accessToken).getMe({});
    expect(me.apiKeyId).toBe(created.apiKey?.id);
    // A READ key's token cannot make itself a WRITE key.
    const escalate = await rejection(
      h.client(exchanged.accessToken).createApiKey({ name: "more", scopes: [ApiKeyScope.WRITE] }),
    );
    expect(escalate.code).toBe(Code.PermissionDenied);

    const listed = await user.listApiKeys({});
    expect(listed.apiKeys.map((k) => k.id)).toEqual([created.apiKey?.id]);
    expect(listed.apiKeys[0]?.lastUsedTime).toBeDefined();
    expect(JSON.stringify(listed, bigints)).not.toContain(key.slice(13));

    await user.revokeApiKey({ id: created.apiKey!.id });
    const refused = await rejection(gateway.authenticateApiKey({ apiKey: key }));
    expect(refused.code).toBe(Code.Unauthenticated);
    expect(refused.rawMessage).not.toContain(key);
    expect((await user.listApiKeys({})).apiKeys).toEqual([]);
    expect((await user.listApiKeys({ includeRevoked: true })).apiKeys[0]?.revokeTime).toBeDefined();

    const forged = await rejection(
      gateway.authenticateApiKey({ apiKey: `${created.apiKey!.prefix}_${"A".repeat(40)}` }),
    );
    expect(forged.code).toBe(Code.Unauthenticated);
  });

  it("api keys - a user token cannot call the INTERNAL exchange, nor ask for the ADMIN scope without the role", async () => {
    const admin = await signup("scopeadmin");
    const invite = await h.client(admin.tokens.accessToken).createInvite({});
    keep(invite.token);
    const member = await h.client().signup({
      email: email("member"),
      password: keep("Member password 1234"),
      tenant: { case: "inviteToken", value: invite.token },
    });
    const memberToken = keep(member.tokens!.accessToken);
    keep(member.tokens!.refreshToken);
    const denied = await rejection(
      h.client(memberToken).createApiKey({ name: "x", scopes: [ApiKeyScope.ADMIN] }),
    );
    expect(denied.code).toBe(Code.PermissionDenied);
    const internal = await rejection(
      h.client(memberToken).authenticateApiKey({ apiKey: "ens_aaaaaaaa_" + "b".repeat(40) }),
    );
    expect(internal.code).toBe(Code.PermissionDenied);
  });
});

describe("auth API key limits", () => {
  /** A user who joins `admin`'s tenant through an invite (role USER). */
  async function member(admin: Awaited<ReturnType<typeof signup>>, prefix: string) {
    const invite = await h.client(admin.tokens.accessToken).createInvite({});
    keep(invite.token);
    const joined = await h.client().signup({
      email: email(prefix),
      password: keep(`${PASSWORD} ${prefix}`),
      tenant: { case: "inviteToken", value: invite.token },
    });
    keep(joined.tokens!.refreshToken);
    return { user: joined.user!, token: keep(joined.tokens!.accessToken) };
  }

  /** The access token a key's secret is exchanged for (what the gateway does per request). */
  async function exchange(secret: string): Promise<string> {
    const gateway = h.client(await h.serviceToken("gateway"));
    return keep((await gateway.authenticateApiKey({ apiKey: keep(secret) })).accessToken);
  }

  it("roll - a new secret keeps the key's id and limits; the old one works for its grace only, or stops at once", async () => {
    const u = await signup("roll");
    const user = h.client(u.tokens.accessToken);
    const made = await user.createApiKey({
      name: "rotating",
      limits: { models: ["sim-fast"], requestsPerMinute: 5 },
    });
    const oldSecret = keep(made.secret);
    const gateway = h.client(await h.serviceToken("gateway"));

    const rolled = await user.rollApiKey({
      id: made.apiKey!.id,
      previousValidFor: { seconds: 60n },
    });
    const newSecret = keep(rolled.secret);
    expect(newSecret).not.toBe(oldSecret);
    expect(newSecret.startsWith(`ens_${made.apiKey!.id}_`)).toBe(true);
    expect(rolled.apiKey?.id).toBe(made.apiKey!.id);
    expect(rolled.apiKey?.limits).toMatchObject({ models: ["sim-fast"], requestsPerMinute: 5 });
    expect(rolled.apiKey?.previousSecretExpireTime).toBeDefined();
    expect(rolled.apiKey?.rollTime).toBeDefined();
    // Both work during the grace; the old one's token ends with the grace.
    const viaNew = await gateway.authenticateApiKey({ apiKey: newSecret });
    keep(viaNew.accessToken);
    const viaOld = await gateway.authenticateApiKey({ apiKey: oldSecret });
    keep(viaOld.accessToken);
    expect(viaOld.apiKeyId).toBe(made.apiKey!.id);
    const oldExp = Number(decodeJwt(viaOld.accessToken).exp);
    expect(oldExp * 1000).toBeLessThanOrEqual(Date.now() + 61_000);

    // Rolled again without a grace: every earlier secret stops at once.
    const again = await user.rollApiKey({ id: made.apiKey!.id });
    const newest = keep(again.secret);
    expect(again.apiKey?.previousSecretExpireTime).toBeUndefined();
    for (const stale of [oldSecret, newSecret]) {
      const err = await rejection(gateway.authenticateApiKey({ apiKey: stale }));
      expect(err.code).toBe(Code.Unauthenticated);
    }
    keep((await gateway.authenticateApiKey({ apiKey: newest })).accessToken);

    // Another user cannot roll it; a revoked key cannot be rolled.
    const other = await signup("rollother");
    const theirs = await rejection(
      h.client(other.tokens.accessToken).rollApiKey({ id: made.apiKey!.id }),
    );
    expect(theirs.code).toBe(Code.NotFound);
    await user.revokeApiKey({ id: made.apiKey!.id });
    const revoked = await rejection(user.rollApiKey({ id: made.apiKey!.id }));
    expect(revoked.code).toBe(Code.FailedPrecondition);
    const tooLong = await rejection(
      user.rollApiKey({ id: made.apiKey!.id, previousValidFor: { seconds: 8n * 86_400n } }),
    );
    expect(tooLong.code).toBe(Code.InvalidArgument);
  });

  it("limits - a key created with limits shows them in CreateApiKey, GetApiKey and ListApiKeys", async () => {
    const u = await signup("limits");
    const user = h.client(u.tokens.accessToken);
    const limits = { models: ["sim-fast", "fast"], monthlyLimitUsd: 12.5 };
    const created = await user.createApiKey({ name: "limited", limits });
    keep(created.secret);
    expect(created.apiKey?.limits).toMatchObject(limits);

    const got = await user.getApiKey({ id: created.apiKey!.id });
    expect(got.apiKey?.id).toBe(created.apiKey?.id);
    expect(got.apiKey?.name).toBe("limited");
    expect(got.apiKey?.limits).toMatchObject(limits);
    expect(JSON.stringify(got, bigints)).not.toContain(created.secret.slice(13));

    const plain = await user.createApiKey({ name: "plain" });
    keep(plain.secret);
    expect(plain.apiKey?.limits?.models ?? []).toEqual([]);
    expect(plain.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();

    const listed = await user.listApiKeys({});
    const byId = new Map(listed.apiKeys.map((k) => [k.id, k]));
    expect(byId.get(created.apiKey!.id)?.limits).toMatchObject(limits);
    expect(byId.get(plain.apiKey!.id)?.limits?.models ?? []).toEqual([]);
    expect(byId.get(plain.apiKey!.id)?.limits?.monthlyLimitUsd).toBeUndefined();
  });

  it("limits - GetApiKey: another user's key is NOT_FOUND to a member and visible to an admin; another tenant's is NOT_FOUND", async () => {
    const admin = await signup("getadmin");
    const m = await member(admin, "getmember");
    const adminKey = await h.client(admin.tokens.accessToken).createApiKey({ name: "admin's" });
    keep(adminKey.secret);
    const memberKey = await h
      .client(m.token)
      .createApiKey({ name: "member's", limits: { monthlyLimitUsd: 3 } });
    keep(memberKey.secret);

    expect((await h.client(m.token).getApiKey({ id: memberKey.apiKey!.id })).apiKey?.name).toBe(
      "member's",
    );
    const hidden = await rejection(h.client(m.token).getApiKey({ id: adminKey.apiKey!.id }));
    expect(hidden.code).toBe(Code.NotFound);
    const seen = await h.client(admin.tokens.accessToken).getApiKey({ id: memberKey.apiKey!.id });
    expect(seen.apiKey?.userId).toBe(m.user.id);
    expect(seen.apiKey?.limits?.monthlyLimitUsd).toBe(3);

    const other = await signup("getother");
    const crossed = await rejection(
      h.client(other.tokens.accessToken).getApiKey({ id: memberKey.apiKey!.id }),
    );
    expect(crossed.code).toBe(Code.NotFound);
    expect(crossed.rawMessage).toBe(hidden.rawMessage);
    const missing = await rejection(
      h.client(admin.tokens.accessToken).getApiKey({ id: "nosuchkey" }),
    );
    expect(missing.code).toBe(Code.NotFound);
  });

  it("limits - UpdateApiKey renames, replaces the limits as a whole, removes them with an empty message; a revoked key is FAILED_PRECONDITION", async () => {
    const u = await signup("update");
    const user = h.client(u.tokens.accessToken);
    const created = await user.createApiKey({
      name: "before",
      limits: { models: ["sim-fast"], monthlyLimitUsd: 5 },
    });
    keep(created.secret);
    const id = created.apiKey!.id;

    const renamed = await user.updateApiKey({ id, name: "after" });
    expect(renamed.apiKey?.name).toBe("after");
    // Only the name was given: the limits stay.
    expect(renamed.apiKey?.limits).toMatchObject({ models: ["sim-fast"], monthlyLimitUsd: 5 });

    const replaced = await user.updateApiKey({ id, limits: { models: ["sim-medium"] } });
    expect(replaced.apiKey?.name).toBe("after");
    expect(replaced.apiKey?.limits?.models).toEqual(["sim-medium"]);
    // Replaced as a whole: the monthly limit not given is gone.
    expect(replaced.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();
    const read = await user.getApiKey({ id });
    expect(read.apiKey?.limits?.models).toEqual(["sim-medium"]);
    expect(read.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();

    const capped = await user.updateApiKey({ id, limits: { monthlyLimitUsd: 0 } });
    expect(capped.apiKey?.limits?.models).toEqual([]);
    expect(capped.apiKey?.limits?.monthlyLimitUsd).toBe(0);

    const removed = await user.updateApiKey({ id, limits: {} });
    expect(removed.apiKey?.limits?.models ?? []).toEqual([]);
    expect(removed.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();
    const stored = await h.models.apiKeys.findOne({ id }).lean();
    expect(stored?.models).toBeUndefined();
    expect(stored?.monthlyLimitUsd).toBeUndefined();

    // A tenant admin may update a member's key; another member may not even see it.
    const m = await member(u, "updmember");
    const memberKey = await h.client(m.token).createApiKey({ name: "theirs" });
    keep(memberKey.secret);
    const byAdmin = await user.updateApiKey({
      id: memberKey.apiKey!.id,
      limits: { monthlyLimitUsd: 1 },
    });
    expect(byAdmin.apiKey?.limits?.monthlyLimitUsd).toBe(1);
    const byMember = await rejection(h.client(m.token).updateApiKey({ id, name: "stolen" }));
    expect(byMember.code).toBe(Code.NotFound);
    const other = await signup("updother");
    const crossed = await rejection(
      h.client(other.tokens.accessToken).updateApiKey({ id, name: "stolen" }),
    );
    expect(crossed.code).toBe(Code.NotFound);
    expect((await user.getApiKey({ id })).apiKey?.name).toBe("after");

    await user.revokeApiKey({ id });
    const revoked = await rejection(user.updateApiKey({ id, limits: { monthlyLimitUsd: 1 } }));
    expect(revoked.code).toBe(Code.FailedPrecondition);
    const revokedRename = await rejection(user.updateApiKey({ id, name: "again" }));
    expect(revokedRename.code).toBe(Code.FailedPrecondition);
    // GetApiKey still shows a revoked key, unchanged.
    const after = await user.getApiKey({ id });
    expect(after.apiKey?.revokeTime).toBeDefined();
    expect(after.apiKey?.name).toBe("after");
  });

  it("limits - a negative monthly limit or duplicate models are INVALID_ARGUMENT, on create and on update", async () => {
    const u = await signup("badlimits");
    const user = h.client(u.tokens.accessToken);
    const key = await user.createApiKey({ name: "ok" });
    keep(key.secret);
    const id = key.apiKey!.id;
    for (const call of [
      () => user.createApiKey({ name: "neg", limits: { monthlyLimitUsd: -1 } }),
      () => user.createApiKey({ name: "dup", limits: { models: ["sim-fast", "sim-fast"] } }),
      () => user.createApiKey({ name: "empty", limits: { models: [""] } }),
      () => user.updateApiKey({ id, limits: { monthlyLimitUsd: -0.01 } }),
      () => user.updateApiKey({ id, limits: { models: ["a", "b", "a"] } }),
    ]) {
      const err = await rejection(call());
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/limits\./);
    }
    expect((await user.listApiKeys({})).apiKeys.map((k) => k.id)).toEqual([id]);
    const unchanged = await user.getApiKey({ id });
    expect(unchanged.apiKey?.limits?.models ?? []).toEqual([]);
    expect(unchanged.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();
  });

  it("limits - a limited key's token cannot make or change keys wider than itself; a key it makes without limits inherits them", async () => {
    const u = await signup("narrow");
    const user = h.client(u.tokens.accessToken);
    const parent = await user.createApiKey({
      name: "parent",
      limits: { models: ["sim-fast", "sim-medium"], monthlyLimitUsd: 10, requestsPerMinute: 60 },
    });
    const viaKey = h.client(await exchange(parent.secret));

    for (const limits of [
      {},
      { models: ["sim-fast"] },
      { monthlyLimitUsd: 5 },
      { models: ["sim-fast", "sim-large"], monthlyLimitUsd: 5 },
      { models: ["sim-fast"], monthlyLimitUsd: 10.01 },
      { models: ["sim-fast"], monthlyLimitUsd: 10 },
      { models: ["sim-fast"], monthlyLimitUsd: 10, requestsPerMinute: 61 },
    ]) {
      const err = await rejection(viaKey.createApiKey({ name: "wider", limits }));
      expect(err.code).toBe(Code.PermissionDenied);
    }
    const narrower = await viaKey.createApiKey({
      name: "narrower",
      limits: {
        models: ["sim-fast"],
        monthlyLimitUsd: 10,
        requestsPerMinute: 60,
        tokensPerMinute: 9,
      },
    });
    keep(narrower.secret);
    expect(narrower.apiKey?.limits).toMatchObject({
      models: ["sim-fast"],
      monthlyLimitUsd: 10,
      requestsPerMinute: 60,
      tokensPerMinute: 9,
    });

    const inherited = await viaKey.createApiKey({ name: "child" });
    keep(inherited.secret);
    expect(inherited.apiKey?.limits).toMatchObject({
      models: ["sim-fast", "sim-medium"],
      monthlyLimitUsd: 10,
      requestsPerMinute: 60,
    });
    expect((await user.getApiKey({ id: inherited.apiKey!.id })).apiKey?.limits).toMatchObject({
      models: ["sim-fast", "sim-medium"],
      monthlyLimitUsd: 10,
    });

    // Nor can it lift the limits of a key through UpdateApiKey, its own included.
    for (const id of [parent.apiKey!.id, inherited.apiKey!.id]) {
      const lifted = await rejection(viaKey.updateApiKey({ id, limits: {} }));
      expect(lifted.code).toBe(Code.PermissionDenied);
    }
    const tightened = await viaKey.updateApiKey({
      id: inherited.apiKey!.id,
      limits: { models: ["sim-medium"], monthlyLimitUsd: 1, requestsPerMinute: 6 },
    });
    expect(tightened.apiKey?.limits).toMatchObject({ models: ["sim-medium"], monthlyLimitUsd: 1 });
    expect((await user.getApiKey({ id: parent.apiKey!.id })).apiKey?.limits).toMatchObject({
      models: ["sim-fast", "sim-medium"],
      monthlyLimitUsd: 10,
    });

    // The owner's own login is not limited by any key.
    const unlimited = await user.createApiKey({ name: "free", limits: {} });
    keep(unlimited.secret);
    expect(unlimited.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();
    // And an unlimited key's token makes keys without limits.
    const free = await h.client(await exchange(unlimited.secret)).createApiKey({ name: "f2" });
    keep(free.secret);
    expect(free.apiKey?.limits?.models ?? []).toEqual([]);
    expect(free.apiKey?.limits?.monthlyLimitUsd).toBeUndefined();
  });

  it("service tokens - with api_key_id the token acts as the key: akid and scp claims, roles limited by the key's scopes", async () => {
    const admin = await signup("svckey");
    const adminClient = h.client(admin.tokens.accessToken);
    const plainKey = await adminClient.createApiKey({ name: "no admin" });
    keep(plainKey.secret);
    const adminKey = await adminClient.createApiKey({
      name: "admin",
      scopes: [ApiKeyScope.READ, ApiKeyScope.WRITE, ApiKeyScope.ADMIN],
    });
    keep(adminKey.secret);
    const engine = h.client(await h.serviceToken("workflow-engine"));

    const acting = await engine.issueServiceToken({
      userId: admin.user.id,
      tenantId: admin.tenant.id,
      apiKeyId: plainKey.apiKey!.id,
      reason: "run:1",
    });
    keep(acting.accessToken);
    expect(decodeJwt(acting.accessToken)).toMatchObject({
      typ: "service",
      svc: "workflow-engine",
      sub: admin.user.id,
      tid: admin.tenant.id,
      akid: plainKey.apiKey?.id,
      scp: ["read", "write"],
      roles: ["user"],
    });
    const me = await h.client(acting.accessToken).getMe({});
    expect(me.apiKeyId).toBe(plainKey.apiKey?.id);
    expect(me.roles).toEqual(["user"]);
    // Acting as a key without ADMIN, the admin's own powers are gone.
    const listUsers = await rejection(h.client(acting.accessToken).listUsers({}));
    expect(listUsers.code).toBe(Code.PermissionDenied);

    const withAdmin = await engine.issueServiceToken({
      userId: admin.user.id,
      tenantId: admin.tenant.id,
      apiKeyId: adminKey.apiKey!.id,
    });
    keep(withAdmin.accessToken);
    expect(decodeJwt(withAdmin.accessToken)).toMatchObject({
      akid: adminKey.apiKey?.id,
      roles: ["user", "admin"],
    });

    // Without api_key_id: the user's own roles, no key.
    const asUser = await engine.issueServiceToken({
      userId: admin.user.id,
      tenantId: admin.tenant.id,
    });
    keep(asUser.accessToken);
    const userClaims = decodeJwt(asUser.accessToken);
    expect(userClaims["roles"]).toEqual(["user", "admin"]);
    expect(userClaims["akid"]).toBeUndefined();
  });

  it("service tokens - api_key_id of another user or tenant, a revoked or expired key, or without user_id is refused", async () => {
    const admin = await signup("svcrefuse");
    const m = await member(admin, "svcrefusem");
    const memberKey = await h.client(m.token).createApiKey({ name: "member's" });
    keep(memberKey.secret);
    const other = await signup("svcrefuseo");
    const otherKey = await h.client(other.tokens.accessToken).createApiKey({ name: "other's" });
    keep(otherKey.secret);
    const engine = h.client(await h.serviceToken("workflow-engine"));
    const forAdmin = { userId: admin.user.id, tenantId: admin.tenant.id };

    // Even a tenant admin's token may not act as a member's key.
    for (const apiKeyId of [memberKey.apiKey!.id, otherKey.apiKey!.id, "nosuchkey"]) {
      const err = await rejection(engine.issueServiceToken({ ...forAdmin, apiKeyId }));
      expect(err.code).toBe(Code.PermissionDenied);
    }
    const crossTenant = await rejection(
      engine.issueServiceToken({
        userId: other.user.id,
        tenantId: admin.tenant.id,
        apiKeyId: otherKey.apiKey!.id,
      }),
    );
    expect(crossTenant.code).toBe(Code.PermissionDenied);

    const mine = await h.client(admin.tokens.accessToken).createApiKey({ name: "soon revoked" });
    keep(mine.secret);
    keep((await engine.issueServiceToken({ ...forAdmin, apiKeyId: mine.apiKey!.id })).accessToken);
    await h.client(admin.tokens.accessToken).revokeApiKey({ id: mine.apiKey!.id });
    const revoked = await rejection(
      engine.issueServiceToken({ ...forAdmin, apiKeyId: mine.apiKey!.id }),
    );
    expect(revoked.code).toBe(Code.PermissionDenied);

    const expiring = await h
      .client(admin.tokens.accessToken)
      .createApiKey({ name: "expiring", ttl: { seconds: 60n } });
    keep(expiring.secret);
    await h.models.apiKeys.updateOne(
      { id: expiring.apiKey!.id },
      { $set: { expireTime: new Date(Date.now() - 1_000) } },
    );
    const expired = await rejection(
      engine.issueServiceToken({ ...forAdmin, apiKeyId: expiring.apiKey!.id }),
    );
    expect(expired.code).toBe(Code.PermissionDenied);

    const noUser = await rejection(engine.issueServiceToken({ apiKeyId: mine.apiKey!.id }));
    expect(noUser.code).toBe(Code.InvalidArgument);
    const noUserButTenant = await rejection(
      engine.issueServiceToken({ tenantId: admin.tenant.id, apiKeyId: mine.apiKey!.id }),
    );
    expect(noUserButTenant.code).toBe(Code.InvalidArgument);
  });
});

describe("auth admin and tenancy", () => {
  it("tenant settings - defaults until an admin sets them; members read but cannot change them; other tenants are untouched", async () => {
    const admin = await signup("settingsadmin");
    const adminClient = h.client(admin.tokens.accessToken);
    const before = await adminClient.getTenantSettings({});
    expect(before.settings).toMatchObject({
      logCalls: false,
      defaultCache: DefaultCache.UNSPECIFIED,
      updatedBy: "",
    });
    const set = await adminClient.updateTenantSettings({
      settings: { logCalls: true, defaultCache: DefaultCache.SEMANTIC },
    });
    expect(set.settings).toMatchObject({
      logCalls: true,
      defaultCache: DefaultCache.SEMANTIC,
      updatedBy: admin.user.id,
    });
    expect(set.settings?.updateTime).toBeDefined();

    const invite = await adminClient.createInvite({});
    keep(invite.token);
    const member = await h.client().signup({
      email: email("settingsmember"),
      password: keep("Member password 12"),
      tenant: { case: "inviteToken", value: invite.token },
    });
    keep(member.tokens!.refreshToken);
    const memberClient = h.client(keep(member.tokens!.accessToken));
    expect((await memberClient.getTenantSettings({})).settings?.logCalls).toBe(true);
    const refused = await rejection(
      memberClient.updateTenantSettings({ settings: { logCalls: false } }),
    );
    expect(refused.code).toBe(Code.PermissionDenied);
    const invalid = await rejection(
      adminClient.updateTenantSettings({ settings: { defaultCache: 9 as DefaultCache } }),
    );
    expect(invalid.code).toBe(Code.InvalidArgument);

    const other = await signup("settingsother");
    const theirs = await h.client(other.tokens.accessToken).getTenantSettings({});
    expect(theirs.settings).toMatchObject({
      logCalls: false,
      defaultCache: DefaultCache.UNSPECIFIED,
    });
  });

  it("guardrails - stored tidied, kept when another field changes under an update mask, validated", async () => {
    const admin = await signup("guardadmin");
    const client = h.client(admin.tokens.accessToken);
    const set = await client.updateTenantSettings({
      settings: {
        guardrails: {
          redactPii: [PiiKind.EMAIL, PiiKind.PHONE],
          blockPii: [PiiKind.SECRET],
          blockedTerms: ["  Project   Falcon ", "project falcon", "acme-internal"],
          blockedOutputTerms: ["confidential"],
        },
      },
      updateMask: { paths: ["guardrails"] },
    });
    expect(set.settings?.guardrails).toMatchObject({
      redactPii: [PiiKind.EMAIL, PiiKind.PHONE],
      blockPii: [PiiKind.SECRET],
      blockedTerms: ["Project Falcon", "acme-internal"],
      blockedOutputTerms: ["confidential"],
    });
    // Changing the cache alone keeps the guardrails; without a mask everything is replaced.
    await client.updateTenantSettings({
      settings: { defaultCache: DefaultCache.EXACT },
      updateMask: { paths: ["default_cache"] },
    });
    const read = (await client.getTenantSettings({})).settings;
    expect(read?.defaultCache).toBe(DefaultCache.EXACT);
    expect(read?.guardrails?.blockedTerms).toEqual(["Project Falcon", "acme-internal"]);
    await client.updateTenantSettings({ settings: { logCalls: true } });
    const replaced = (await client.getTenantSettings({})).settings;
    expect(replaced).toMatchObject({ logCalls: true, defaultCache: DefaultCache.UNSPECIFIED });
    expect(replaced?.guardrails?.blockedTerms).toEqual([]);

    for (const bad of [
      { settings: { guardrails: { blockedTerms: ["   "] } } },
      { settings: { guardrails: { redactPii: [0 as PiiKind] } } },
      { settings: { guardrails: { blockedOutputTerms: ["x".repeat(101)] } } },
      { settings: {}, updateMask: { paths: ["guardrails.blocked_terms"] } },
    ]) {
      const err = await rejection(client.updateTenantSettings(bad));
      expect(err.code).toBe(Code.InvalidArgument);
    }
    const bad = await rejection(
      client.updateTenantSettings({ settings: {}, updateMask: { paths: ["budget"] } }),
    );
    expect(bad.rawMessage).toContain('unknown path "budget"');
  });

  it("admin - a user token on an ADMIN method is PERMISSION_DENIED", async () => {
    const admin = await signup("roleadmin");
    const invite = await h.client(admin.tokens.accessToken).createInvite({});
    keep(invite.token);
    const member = await h.client().signup({
      email: email("plain"),
      password: keep("Plain user password 1"),
      tenant: { case: "inviteToken", value: invite.token },
    });
    keep(member.tokens!.refreshToken);
    const client = h.client(keep(member.tokens!.accessToken));
    // One call at a time: calls started together and awaited in turn leave the later ones'
    // rejections unhandled until their turn (vitest reports those as errors).
    for (const call of [
      () => client.listUsers({}),
      () => client.setUserRole({ userId: admin.user.id, role: Role.USER }),
      () => client.setUserDisabled({ userId: admin.user.id, disabled: true }),
      () => client.createInvite({}),
      () => client.setBudget({ scope: BudgetScope.TENANT, monthlyLimitUsd: 1 }),
    ]) {
      expect((await rejection(call())).code).toBe(Code.PermissionDenied);
    }
    const last = await rejection(
      h.client(admin.tokens.accessToken).setUserRole({ userId: admin.user.id, role: Role.USER }),
    );
    expect(last.code).toBe(Code.FailedPrecondition);
  });

  it("admin - a disabled user cannot log in, refresh, use API keys or be acted for; re-enabled can log in", async () => {
    const admin = await signup("disabler");
    const adminClient = h.client(admin.tokens.accessToken);
    const invite = await adminClient.createInvite({});
    keep(invite.token);
    const password = keep("Soon disabled pass 1");
    const member = await h.client().signup({
      email: email("disabled"),
      password,
      tenant: { case: "inviteToken", value: invite.token },
    });
    const memberAccess = keep(member.tokens!.accessToken);
    const memberRefresh = keep(member.tokens!.refreshToken);
    const key = keep((await h.client(memberAccess).createApiKey({ name: "before" })).secret);

    const disabled = await adminClient.setUserDisabled({ userId: member.user!.id, disabled: true });
    expect(disabled.user?.disabled).toBe(true);

    const login = await rejection(h.client().login({ email: member.user!.email, password }));
    expect(login.code).toBe(Code.Unauthenticated);
    const refresh = await rejection(h.client().refresh({ refreshToken: memberRefresh }));
    expect(refresh.code).toBe(Code.Unauthenticated);
    const gateway = h.client(await h.serviceToken("gateway"));
    expect((await rejection(gateway.authenticateApiKey({ apiKey: key }))).code).toBe(
      Code.Unauthenticated,
    );
    const acting = await rejection(
      gateway.issueServiceToken({ userId: member.user!.id, tenantId: admin.tenant.id }),
    );
    expect(acting.code).toBe(Code.PermissionDenied);
    // No refresh token of theirs survives: none can be minted into an access token later.
    expect(
      await h.models.refreshTokens.countDocuments({
        userId: member.user!.id,
        revokeTime: { $exists: false },
      }),
    ).toBe(0);

    await adminClient.setUserDisabled({ userId: member.user!.id, disabled: false });
    const back = await h.client().login({ email: member.user!.email, password });
    keep(back.tokens!.accessToken);
    keep(back.tokens!.refreshToken);
  });

  it("tenancy - tenant A cannot list or revoke tenant B's keys or users", async () => {
    const a = await signup("tenanta");
    const b = await signup("tenantb");
    const aClient = h.client(a.tokens.accessToken);
    const bClient = h.client(b.tokens.accessToken);
    const bKey = await bClient.createApiKey({ name: "b's key" });
    keep(bKey.secret);
    await aClient.createApiKey({ name: "a's key" }).then((r) => keep(r.secret));

    const aKeys = await aClient.listApiKeys({ allUsers: true });
    expect(aKeys.apiKeys.map((k) => k.tenantId)).toEqual([a.tenant.id]);
    const otherUser = await aClient.listApiKeys({ userId: b.user.id });
    expect(otherUser.apiKeys).toEqual([]);
    expect((await rejection(aClient.revokeApiKey({ id: bKey.apiKey!.id }))).code).toBe(
      Code.NotFound,
    );
    const users = await aClient.listUsers({});
    expect(users.users.map((u) => u.id)).toEqual([a.user.id]);
    expect(
      (await rejection(aClient.setUserDisabled({ userId: b.user.id, disabled: true }))).code,
    ).toBe(Code.NotFound);
    expect(
      (
        await rejection(
          aClient.setBudget({ scope: BudgetScope.USER, userId: b.user.id, monthlyLimitUsd: 1 }),
        )
      ).code,
    ).toBe(Code.NotFound);

    const gateway = h.client(await h.serviceToken("gateway"));
    const stillThere = await gateway.authenticateApiKey({ apiKey: bKey.secret });
    keep(stillThere.accessToken);
    expect(stillThere.tenantId).toBe(b.tenant.id);
  });

  it("budgets - an admin sets tenant and user limits; users read them in GetMe", async () => {
    const admin = await signup("budget");
    const client = h.client(admin.tokens.accessToken);
    await client.setBudget({ scope: BudgetScope.TENANT, monthlyLimitUsd: 250 });
    await client.setBudget({ scope: BudgetScope.USER, userId: admin.user.id, monthlyLimitUsd: 20 });
    const me = await client.getMe({});
    expect(me.tenantBudget?.monthlyLimitUsd).toBe(250);
    expect(me.userBudget?.monthlyLimitUsd).toBe(20);
    expect(me.userBudget?.updatedBy).toBe(admin.user.id);
    await client.setBudget({ scope: BudgetScope.TENANT });
    const got = await client.getBudget({ scope: BudgetScope.TENANT });
    expect(got.budget?.monthlyLimitUsd).toBeUndefined();
  });
});

describe("auth tokens and keys", () => {
  it("service tokens - a service acts for a user of the right tenant only; svc is always the caller", async () => {
    const u = await signup("svcuser");
    const engine = h.client(await h.serviceToken("workflow-engine"));
    const acting = await engine.issueServiceToken({
      userId: u.user.id,
      tenantId: u.tenant.id,
      reason: "run:1",
    });
    keep(acting.accessToken);
    expect(jwtClaims(acting.accessToken)).toMatchObject({
      typ: "service",
      svc: "workflow-engine",
      sub: u.user.id,
      tid: u.tenant.id,
    });
    const me = await h.client(acting.accessToken).getMe({});
    expect(me.user?.id).toBe(u.user.id);

    const other = await signup("svcother");
    const crossed = await rejection(
      engine.issueServiceToken({ userId: u.user.id, tenantId: other.tenant.id }),
    );
    expect(crossed.code).toBe(Code.PermissionDenied);
    const pure = await engine.issueServiceToken({});
    keep(pure.accessToken);
    expect(jwtClaims(pure.accessToken)).toMatchObject({ sub: "workflow-engine", tid: "" });
    const byUser = await rejection(h.client(u.tokens.accessToken).issueServiceToken({}));
    expect(byUser.code).toBe(Code.PermissionDenied);
  });

  it("signing keys - rotation: old tokens stay valid, new tokens use the new kid, both in the JWKS", async () => {
    const u = await signup("rotation");
    const oldKid = jwtHeader(u.tokens.accessToken).kid;
    const ops = h.client(await h.serviceToken("ops"));
    const rotated = await ops.rotateSigningKey({ reason: "test" });
    expect(rotated.current?.kid).not.toBe(oldKid);
    const old = rotated.published.find((k) => k.kid === oldKid);
    expect(old?.retireTime).toBeDefined();
    expect(old?.removeTime).toBeDefined();

    const fresh = await h.client().login({ email: u.email, password: u.password });
    keep(fresh.tokens!.accessToken);
    keep(fresh.tokens!.refreshToken);
    expect(jwtHeader(fresh.tokens!.accessToken).kid).toBe(rotated.current?.kid);
    expect((await h.client(u.tokens.accessToken).getMe({})).user?.id).toBe(u.user.id);
    expect((await h.client(fresh.tokens!.accessToken).getMe({})).user?.id).toBe(u.user.id);

    const jwks = await h.client().getJwks({});
    expect(jwks.keys.map((k) => k.kid)).toEqual(
      expect.arrayContaining([oldKid, rotated.current?.kid]),
    );
    const http = await fetch(h.jwksUrl);
    expect(http.headers.get("cache-control")).toMatch(/max-age=60/);
    const body = (await http.json()) as { keys: { kid: string; kty: string; d?: string }[] };
    expect(body.keys.map((k) => k.kid).sort()).toEqual(jwks.keys.map((k) => k.kid).sort());
    expect(body.keys.every((k) => k.kty === "EC" && k.d === undefined)).toBe(true);
    const userRotate = await rejection(h.client(u.tokens.accessToken).rotateSigningKey({}));
    expect(userRotate.code).toBe(Code.PermissionDenied);
  });

  it("signing keys - private keys are stored encrypted, never as JWK text", async () => {
    const docs = await h.models.signingKeys.find({}).lean();
    expect(docs.length).toBeGreaterThan(0);
    for (const d of docs) {
      expect(JSON.stringify(d)).not.toMatch(/"d"\s*:/);
      expect(bytes(d.privateKey.ciphertext).length).toBeGreaterThan(32);
    }
  });

  it("logs - none of the passwords, tokens, refresh tokens or API keys appear in any log line", () => {
    const text = h.logs.text();
    expect(h.logs.lines().length).toBeGreaterThan(20);
    expect(secrets.size).toBeGreaterThan(40);
    const leaked = [...secrets].filter((s) => text.includes(s));
    expect(leaked).toEqual([]);
  });
});
