// The built service and the minting CLI as real processes: start-up from the environment, the
// dev-secret warning, the JWKS endpoint, a bootstrap credential used on IssueServiceToken,
// SIGTERM, and the refusal to start in production without a key-encryption secret.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { createClient } from "@ensemble/kit";
import { AuthService } from "@ensemble/proto";
import { freePort, mongoUrl, natsUrl, ServerProcess, uniqueName } from "@ensemble/testkit";
import { describe, expect, it } from "vitest";
import { email, jwtClaims, jwtHeader } from "./harness.js";

// The built files (vitest runs this test from source; `npx tsc -b` first).
const DIST_MAIN = fileURLToPath(new URL("../dist/src/main.js", import.meta.url));
const DIST_MINT = fileURLToPath(new URL("../dist/src/mint-service-token.js", import.meta.url));

const run = promisify(execFile);

describe("auth process", () => {
  it("process - starts from the environment, serves its JWKS, honours a minted bootstrap credential, exits 0 on SIGTERM", async () => {
    const [grpcPort, jwksPort] = [await freePort(), await freePort()];
    const address = `127.0.0.1:${grpcPort}`;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      NODE_ENV: "development",
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: uniqueName("authproc"),
      NATS_URL: natsUrl(),
      AUTH_ADDR: address,
      AUTH_JWKS_PORT: String(jwksPort),
      METRICS_PORT: "0",
      LOG_LEVEL: "info",
    };
    delete env.AUTH_KEY_ENCRYPTION_SECRET;
    delete env.JWKS_URL;
    const proc = new ServerProcess("auth", process.execPath, [DIST_MAIN], env);
    try {
      await proc.waitForLine(/"msg":"auth listening"/, 60_000);
      expect(proc.output(50)).toContain("AUTH_KEY_ENCRYPTION_SECRET is not set");

      const { stdout } = await run(
        process.execPath,
        [DIST_MINT, "--service", "gateway", "--ttl", "2d"],
        { env },
      );
      const token = stdout.trim();
      expect(token.split(".")).toHaveLength(3);
      expect(stdout.split("\n").filter((l) => l !== "")).toHaveLength(1);
      const claims = jwtClaims(token);
      expect(claims).toMatchObject({ typ: "service", svc: "gateway", sub: "gateway", tid: "" });
      const lifetime = (claims["exp"] as number) - (claims["iat"] as number);
      expect(Math.abs(lifetime - 2 * 86_400)).toBeLessThanOrEqual(1);

      const jwks = (await (
        await fetch(`http://127.0.0.1:${jwksPort}/.well-known/jwks.json`)
      ).json()) as { keys: { kid: string }[] };
      expect(jwks.keys.map((k) => k.kid)).toContain(jwtHeader(token).kid);

      const gateway = createClient(AuthService, address, { token: () => token });
      const issued = await gateway.issueServiceToken({ reason: "test" });
      expect(jwtClaims(issued.accessToken)).toMatchObject({ svc: "gateway", typ: "service" });

      const signed = await createClient(AuthService, address).signup({
        email: email("proc"),
        password: "Process password 1",
        tenant: { case: "tenantName", value: "proc" },
      });
      expect(signed.user?.roles.length).toBe(2);
      expect(proc.output(200)).not.toContain(token);
    } finally {
      const status = await proc.stop(20_000);
      expect(status.code).toBe(0);
    }
  });

  it("process - refuses to start in production without AUTH_KEY_ENCRYPTION_SECRET, naming it", async () => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      NODE_ENV: "production",
      MONGODB_URL: mongoUrl(),
      MONGODB_DB: uniqueName("authprod"),
    };
    delete env.AUTH_KEY_ENCRYPTION_SECRET;
    const err = (await run(process.execPath, [DIST_MAIN], { env }).then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: number; stderr?: string } | undefined;
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain("AUTH_KEY_ENCRYPTION_SECRET");
  });
});
