import { describe, expect, it } from "vitest";
import { createRootLogger } from "./logger.js";

function memoryLogger(level?: string) {
  const lines: string[] = [];
  const logger = createRootLogger({
    service: "unit",
    version: "1.2.3",
    ...(level === undefined ? {} : { level }),
    destination: { write: (s: string) => void lines.push(s) },
  });
  const parsed = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { logger, lines, parsed };
}

describe("logger", () => {
  it("logger - every line carries service, version and an ISO time", () => {
    const { logger, parsed } = memoryLogger();
    logger.info("hello");
    logger.child({ requestId: "r1" }).warn("child line");
    const [a, b] = parsed();
    expect(a).toMatchObject({ service: "unit", version: "1.2.3", level: "info", msg: "hello" });
    expect(b).toMatchObject({ service: "unit", version: "1.2.3", requestId: "r1", level: "warn" });
    expect(new Date(a?.["time"] as string).toISOString()).toBe(a?.["time"]);
  });

  it("logger - secrets are redacted at the top level, nested and in arrays", () => {
    const { logger, lines } = memoryLogger();
    const secrets = {
      password: "hunter2-top",
      token: "tok-top",
      apiKey: "ak-top",
      user: { password: "hunter2-nested", refreshToken: "rt-nested", name: "ada" },
      req: {
        headers: { authorization: "Bearer eyJ-auth-header", cookie: "sid=cookie-value" },
      },
      deep: { a: { b: { accessToken: "at-deep", secret: "s-deep", key: "k-deep" } } },
      list: [{ token: "tok-in-array" }],
      body: { creds: [{ apiKey: "ak-array-nested" }] },
    };
    logger.info(secrets, "login attempt");
    const out = lines.join("");
    for (const leaked of [
      "hunter2",
      "tok-top",
      "ak-top",
      "rt-nested",
      "eyJ-auth-header",
      "cookie-value",
      "at-deep",
      "s-deep",
      "k-deep",
      "tok-in-array",
      "ak-array-nested",
    ]) {
      expect(out).not.toContain(leaked);
    }
    const line = JSON.parse(lines[0] ?? "{}") as {
      password: string;
      user: { password: string; name: string };
      req: { headers: { authorization: string } };
    };
    expect(line.password).toBe("[Redacted]");
    expect(line.user.password).toBe("[Redacted]");
    expect(line.req.headers.authorization).toBe("[Redacted]");
    // Redaction is by field name only; ordinary fields survive.
    expect(line.user.name).toBe("ada");
  });

  it("logger - secrets in child bindings, error fields and interpolated objects are redacted", () => {
    const { logger, lines } = memoryLogger();
    const child = logger.child({ requestId: "r1", token: "tok-binding" });
    const err = Object.assign(new Error("boom"), { apiKey: "ak-on-error" });
    child.child({ creds: { password: "pw-grandchild" } }).error({ err }, "failed");
    logger.info("payload %o", { secret: "s-interpolated", id: "ok-1" });
    const logged = { user: { password: "pw-original" } };
    logger.info(logged, "not mutated");
    const out = lines.join("");
    for (const leaked of ["tok-binding", "ak-on-error", "pw-grandchild", "s-interpolated"]) {
      expect(out).not.toContain(leaked);
    }
    expect(out).toContain("r1");
    expect(out).toContain("ok-1");
    expect(out).toContain("boom");
    // What the caller passed in is left as it was.
    expect(logged.user.password).toBe("pw-original");
  });

  it("logger - the level option filters lines", () => {
    const { logger, lines } = memoryLogger("warn");
    logger.info("dropped");
    logger.error("kept");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("kept");
  });
});
