import { ConfigError } from "@ensemble/kit";
import { describe, expect, it } from "vitest";
import { DEV_KEY_ENCRYPTION_SECRET, keyEncryptionSecret, loadAuthConfig } from "./config.js";

describe("auth config", () => {
  it("defaults - match the port plan and the agreed lifetimes", () => {
    const c = loadAuthConfig({});
    expect(c.AUTH_ADDR).toBe("127.0.0.1:50051");
    expect(c.METRICS_PORT).toBe(9151);
    expect(c.AUTH_JWKS_PORT).toBe(9051);
    expect(c.MONGODB_DB).toBe("ensemble_auth");
    expect(c.AUTH_ACCESS_TOKEN_TTL_MINUTES).toBe(15);
    expect(c.AUTH_REFRESH_TOKEN_TTL_DAYS).toBe(30);
    expect(c.JWKS_URL).toBeUndefined();
  });

  it("key secret - the dev default only outside production; production without one fails naming it", () => {
    expect(keyEncryptionSecret({ NODE_ENV: "development" })).toEqual({
      secret: DEV_KEY_ENCRYPTION_SECRET,
      isDevDefault: true,
    });
    expect(() => loadAuthConfig({ NODE_ENV: "production" })).toThrow(ConfigError);
    expect(() => loadAuthConfig({ NODE_ENV: "production" })).toThrow(/AUTH_KEY_ENCRYPTION_SECRET/);
    const secret = "s".repeat(40);
    const prod = loadAuthConfig({ NODE_ENV: "production", AUTH_KEY_ENCRYPTION_SECRET: secret });
    expect(keyEncryptionSecret(prod)).toEqual({ secret, isDevDefault: false });
  });

  it("bad values - every bad variable is named, a short secret's value is never repeated", () => {
    let message = "";
    try {
      loadAuthConfig({ AUTH_KEY_ENCRYPTION_SECRET: "tooshort-secret", AUTH_JWKS_PORT: "x" });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("AUTH_KEY_ENCRYPTION_SECRET");
    expect(message).toContain("AUTH_JWKS_PORT");
    expect(message).not.toContain("tooshort-secret");
  });
});
