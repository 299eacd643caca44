// End to end through a running mesh (auth and registry as built processes, the gateway in
// front), driven by clients nobody here wrote: `buf curl` in each protocol, and plain fetch.
// signup -> login -> GetMe -> create an API key -> call with the key -> revoke it -> refused.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { AuthService, RegistryService } from "@ensemble/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  repoRoot,
  startAuthProcess,
  startGateway,
  startRegistryProcess,
  type AuthProcess,
  type RegistryProcess,
  type TestGateway,
} from "./harness.js";

const execFileAsync = promisify(execFile);
const BUF = join(repoRoot, "node_modules/.bin/buf");
const PASSWORD = "correct-Horse-battery-9";

let auth: AuthProcess;
let registry: RegistryProcess;
let gw: TestGateway;
let schemaDir: string;
let schema: string;

beforeAll(async () => {
  auth = await startAuthProcess();
  // The registry trusts auth's JWKS, as under npm start.
  registry = await startRegistryProcess({ jwksUrl: auth.jwksUrl });
  gw = await startGateway({
    jwksUrl: auth.jwksUrl,
    serviceToken: await auth.mintServiceToken("gateway"),
    upstreams: [
      { name: "auth", services: [AuthService], address: auth.address },
      { name: "registry", services: [RegistryService], address: registry.address },
    ],
  });
  schemaDir = await mkdtemp(join(tmpdir(), "gw-schema-"));
  schema = join(schemaDir, "image.binpb");
  await execFileAsync(BUF, ["build", "-o", schema], { cwd: repoRoot });
}, 180_000);

afterAll(async () => {
  await gw?.close();
  await registry?.stop();
  await auth?.stop();
  if (schemaDir !== undefined) await rm(schemaDir, { recursive: true, force: true });
});

type Protocol = "connect" | "grpc" | "grpcweb";

interface CurlResult {
  ok: boolean;
  body: Record<string, unknown>;
  stderr: string;
}

/** One call with buf curl; the error (if any) is buf's JSON on stderr. */
async function bufCurl(
  protocol: Protocol,
  method: string,
  data: unknown,
  headers: Record<string, string> = {},
): Promise<CurlResult> {
  const args = ["curl", "--schema", schema, "--protocol", protocol, "-d", JSON.stringify(data)];
  if (protocol === "grpc") args.push("--http2-prior-knowledge");
  for (const [k, v] of Object.entries(headers)) args.push("-H", `${k}: ${v}`);
  args.push(`${gw.url}/${method}`);
  try {
    const { stdout, stderr } = await execFileAsync(BUF, args, { timeout: 30_000 });
    return { ok: true, body: JSON.parse(stdout || "{}") as Record<string, unknown>, stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(e.stderr ?? "") as Record<string, unknown>;
    } catch {
      body = { raw: e.stderr };
    }
    return { ok: false, body, stderr: e.stderr ?? "" };
  }
}

const A = AuthService.typeName;

describe("gateway end to end", () => {
  it.each(["connect", "grpc", "grpcweb"] as const)(
    "buf curl %s - signup, login, GetMe, API key created, used, revoked and then refused",
    async (protocol) => {
      const email = `e2e-${protocol}-${Date.now()}@example.com`;
      const signup = await bufCurl(protocol, `${A}/Signup`, {
        email,
        password: PASSWORD,
        tenantName: `tenant ${protocol}`,
      });
      expect(signup.ok, signup.stderr).toBe(true);

      const login = await bufCurl(protocol, `${A}/Login`, { email, password: PASSWORD });
      expect(login.ok, login.stderr).toBe(true);
      const tokens = login.body["tokens"] as { accessToken: string };
      const bearer = { authorization: `Bearer ${tokens.accessToken}` };

      const me = await bufCurl(protocol, `${A}/GetMe`, {}, bearer);
      expect(me.ok, me.stderr).toBe(true);
      expect((me.body["user"] as { email: string }).email).toBe(email);

      const created = await bufCurl(protocol, `${A}/CreateApiKey`, { name: "ci" }, bearer);
      expect(created.ok, created.stderr).toBe(true);
      const secret = created.body["secret"] as string;
      const keyId = (created.body["apiKey"] as { id: string }).id;
      expect(secret.startsWith("ens_")).toBe(true);

      const withKey = await bufCurl(
        protocol,
        `${A}/GetMe`,
        {},
        { authorization: `Bearer ${secret}` },
      );
      expect(withKey.ok, withKey.stderr).toBe(true);
      expect(withKey.body["apiKeyId"]).toBe(keyId);
      const viaHeader = await bufCurl(
        protocol,
        `${RegistryService.typeName}/ListModels`,
        {},
        { "x-api-key": secret },
      );
      expect(viaHeader.ok, viaHeader.stderr).toBe(true);

      const revoked = await bufCurl(protocol, `${A}/RevokeApiKey`, { id: keyId }, bearer);
      expect(revoked.ok, revoked.stderr).toBe(true);

      const refused = await bufCurl(
        protocol,
        `${A}/GetMe`,
        {},
        { authorization: `Bearer ${secret}` },
      );
      expect(refused.ok).toBe(false);
      expect(refused.body["code"]).toBe("unauthenticated");
      expect(refused.stderr).not.toContain(secret);
    },
    60_000,
  );

  it("fetch json - the same flow with plain JSON POSTs, and INTERNAL auth methods do not exist", async () => {
    const post = async (method: string, body: unknown, headers: Record<string, string> = {}) => {
      const res = await fetch(`${gw.url}/${A}/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    const email = `e2e-fetch-${Date.now()}@example.com`;
    expect((await post("Signup", { email, password: PASSWORD })).status).toBe(200);
    const login = await post("Login", { email, password: PASSWORD });
    const access = (login.body["tokens"] as { accessToken: string }).accessToken;
    const bearer = { authorization: `Bearer ${access}` };
    const me = await post("GetMe", {}, bearer);
    expect(me.status).toBe(200);
    const created = await post("CreateApiKey", { name: "fetch" }, bearer);
    const secret = created.body["secret"] as string;
    expect((await post("GetMe", {}, { "x-api-key": secret })).status).toBe(200);
    for (const internal of ["AuthenticateApiKey", "IssueServiceToken", "RotateSigningKey"]) {
      expect((await post(internal, {}, bearer)).status).toBe(404);
    }
    await post("RevokeApiKey", { id: (created.body["apiKey"] as { id: string }).id }, bearer);
    const refused = await post("GetMe", {}, { "x-api-key": secret });
    expect(refused.status).toBe(401);

    const jwks = (await (await fetch(`${gw.url}/.well-known/jwks.json`)).json()) as {
      keys: unknown[];
    };
    expect(jwks.keys.length).toBeGreaterThan(0);
    const health = (await (await fetch(`${gw.url}/health`)).json()) as {
      services: Record<string, string>;
    };
    expect(health.services).toEqual({ auth: "SERVING", registry: "SERVING" });
  });

  it("revocation across replicas - another replica refuses a revoked key at once (auth's change notice), though its cache would keep it 30 s", async () => {
    const other = await startGateway({
      jwksUrl: auth.jwksUrl,
      serviceToken: await auth.mintServiceToken("gateway"),
      upstreams: [{ name: "auth", services: [AuthService], address: auth.address }],
    });
    try {
      const call = async (
        url: string,
        method: string,
        body: unknown,
        headers: Record<string, string>,
      ) =>
        fetch(`${url}/${A}/${method}`, {
          method: "POST",
          headers: { "content-type": "application/json", ...headers },
          body: JSON.stringify(body),
        });
      const email = `e2e-revoke-${Date.now()}@example.com`;
      const signup = (await (
        await call(gw.url, "Signup", { email, password: PASSWORD }, {})
      ).json()) as {
        tokens: { accessToken: string };
      };
      const bearer = { authorization: `Bearer ${signup.tokens.accessToken}` };
      const created = (await (
        await call(gw.url, "CreateApiKey", { name: "r" }, bearer)
      ).json()) as {
        secret: string;
        apiKey: { id: string };
      };
      const key = { "x-api-key": created.secret };
      expect((await call(other.url, "GetMe", {}, key)).status).toBe(200); // cached on `other`
      expect((await call(gw.url, "RevokeApiKey", { id: created.apiKey.id }, bearer)).status).toBe(
        200,
      );
      expect((await call(gw.url, "GetMe", {}, key)).status).toBe(401); // the revoking replica
      expect((await call(other.url, "GetMe", {}, key)).status).toBe(401); // and the other one
    } finally {
      await other.close();
    }
  });

  it("token revocation - every replica refuses at once the access token of a session that logged out, and a user's earlier tokens once their role or state changes; so does a replica started later", async () => {
    const other = await startGateway({
      jwksUrl: auth.jwksUrl,
      serviceToken: await auth.mintServiceToken("gateway"),
      upstreams: [{ name: "auth", services: [AuthService], address: auth.address }],
    });
    try {
      const call = async (url: string, method: string, body: unknown, token?: string) => {
        const res = await fetch(`${url}/${A}/${method}`, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}),
          },
          body: JSON.stringify(body),
        });
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      };
      type Tokens = { accessToken: string; refreshToken: string };
      const tokensOf = (r: { body: Record<string, unknown> }) => r.body["tokens"] as Tokens;
      // iat has whole seconds: a change refuses tokens issued in an earlier second.
      const nextSecond = () => new Promise((r) => setTimeout(r, 1_100));
      const stamp = Date.now();
      const admin = tokensOf(
        await call(gw.url, "Signup", {
          email: `e2e-rev-admin-${stamp}@example.com`,
          password: PASSWORD,
        }),
      );
      const invite = (await call(gw.url, "CreateInvite", {}, admin.accessToken)).body["token"];
      const email = `e2e-rev-member-${stamp}@example.com`;
      const signup = await call(gw.url, "Signup", {
        email,
        password: PASSWORD,
        inviteToken: invite,
      });
      const memberId = (signup.body["user"] as { id: string }).id;
      const first = tokensOf(signup);
      const second = tokensOf(await call(gw.url, "Login", { email, password: PASSWORD }));
      for (const url of [gw.url, other.url]) {
        expect((await call(url, "GetMe", {}, first.accessToken)).status).toBe(200);
      }

      // Logout of one session: its access token stops at once; the other session's works.
      expect((await call(gw.url, "Logout", { refreshToken: first.refreshToken })).status).toBe(200);
      const refused = await call(other.url, "GetMe", {}, first.accessToken);
      expect(refused.status).toBe(401);
      expect(refused.body["message"]).toMatch(/revoked/);
      expect((await call(other.url, "GetMe", {}, second.accessToken)).status).toBe(200);

      // Made an admin: the token with the old roles stops; a refreshed one has the new role.
      await nextSecond();
      expect(
        (
          await call(
            gw.url,
            "SetUserRole",
            { userId: memberId, role: "ROLE_ADMIN" },
            admin.accessToken,
          )
        ).status,
      ).toBe(200);
      expect((await call(other.url, "GetMe", {}, second.accessToken)).status).toBe(401);
      const promoted = tokensOf(
        await call(gw.url, "Refresh", { refreshToken: second.refreshToken }),
      );
      expect((await call(other.url, "ListUsers", {}, promoted.accessToken)).status).toBe(200);

      // Demoted again: the admin token stops working everywhere, not in 15 minutes.
      await nextSecond();
      expect(
        (
          await call(
            other.url,
            "SetUserRole",
            { userId: memberId, role: "ROLE_USER" },
            admin.accessToken,
          )
        ).status,
      ).toBe(200);
      for (const url of [gw.url, other.url]) {
        expect((await call(url, "ListUsers", {}, promoted.accessToken)).status).toBe(401);
      }
      const demoted = tokensOf(
        await call(gw.url, "Refresh", { refreshToken: promoted.refreshToken }),
      );
      expect((await call(other.url, "ListUsers", {}, demoted.accessToken)).status).toBe(403);
      expect((await call(other.url, "GetMe", {}, demoted.accessToken)).status).toBe(200);

      // Disabled: refused at once, and the session cannot be refreshed.
      await nextSecond();
      expect(
        (
          await call(
            gw.url,
            "SetUserDisabled",
            { userId: memberId, disabled: true },
            admin.accessToken,
          )
        ).status,
      ).toBe(200);
      for (const url of [gw.url, other.url]) {
        expect((await call(url, "GetMe", {}, demoted.accessToken)).status).toBe(401);
      }
      expect((await call(gw.url, "Refresh", { refreshToken: demoted.refreshToken })).status).toBe(
        401,
      );
      // The admin's own token was never touched.
      expect((await call(other.url, "ListUsers", {}, admin.accessToken)).status).toBe(200);

      // A replica started after all this (a rolling deploy, a scale-out) knows it too: the
      // revocations are stored, not only sent to the replicas connected at the time.
      const late = await startGateway({
        jwksUrl: auth.jwksUrl,
        serviceToken: await auth.mintServiceToken("gateway"),
        upstreams: [{ name: "auth", services: [AuthService], address: auth.address }],
      });
      try {
        for (const token of [first.accessToken, second.accessToken, demoted.accessToken]) {
          const r = await call(late.url, "GetMe", {}, token);
          expect(r.status).toBe(401);
          expect(r.body["message"]).toMatch(/revoked/);
        }
        expect((await call(late.url, "GetMe", {}, admin.accessToken)).status).toBe(200);
      } finally {
        await late.close();
      }
    } finally {
      await other.close();
    }
  });
});
