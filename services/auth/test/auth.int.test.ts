import { Code } from "@connectrpc/connect";
import { ApiKeyScope, BudgetScope, Role } from "@ensemble/proto";
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

describe("auth admin and tenancy", () => {
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
