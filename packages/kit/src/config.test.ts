import { describe, expect, it } from "vitest";
import { z } from "zod";
import { baseEnv, ConfigError, loadConfig } from "./config.js";

const schema = z.object({
  ...baseEnv,
  REGISTRY_ADDR: z.string().min(1),
  PROVIDER_API_KEY: z.string().min(20),
  DB_PASSWORD: z.string().regex(/^[a-z]+$/),
});

const good = {
  JWKS_URL: "http://127.0.0.1:8080/.well-known/jwks.json",
  REGISTRY_ADDR: "127.0.0.1:50052",
  PROVIDER_API_KEY: "sk-0123456789abcdefghijkl",
  DB_PASSWORD: "letters",
};

function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error("expected a ConfigError");
}

describe("config", () => {
  it("config - defaults apply and numbers are coerced from strings", () => {
    const cfg = loadConfig(schema, { ...good, METRICS_PORT: "9152", SHUTDOWN_TIMEOUT_MS: "2500" });
    expect(cfg).toMatchObject({
      LOG_LEVEL: "info",
      NATS_URL: "nats://127.0.0.1:4222",
      MONGODB_URL: "mongodb://127.0.0.1:27017",
      JWT_ISSUER: "ensemble-auth",
      JWT_AUDIENCE: "ensemble",
      METRICS_PORT: 9152,
      METRICS_HOST: "127.0.0.1",
      SHUTDOWN_TIMEOUT_MS: 2500,
      REGISTRY_ADDR: "127.0.0.1:50052",
    });
    expect(cfg.OTEL_EXPORTER_OTLP_ENDPOINT).toBeUndefined();
    // 0 means "any free port", not "off".
    expect(loadConfig(schema, { ...good, METRICS_PORT: "0" }).METRICS_PORT).toBe(0);
    expect(loadConfig(schema, good).METRICS_PORT).toBeUndefined();
  });

  it("config - empty strings count as unset", () => {
    const cfg = loadConfig(schema, { ...good, LOG_LEVEL: "", METRICS_PORT: "" });
    expect(cfg.LOG_LEVEL).toBe("info");
    expect(cfg.METRICS_PORT).toBeUndefined();
  });

  it("config - every bad variable is listed, one per line, with what was expected", () => {
    const err = configErrorOf(() =>
      loadConfig(schema, {
        LOG_LEVEL: "loud",
        METRICS_PORT: "ninety",
        SHUTDOWN_TIMEOUT_MS: "-5",
        NATS_URL: "http://wrong-scheme",
        MONGODB_URL: "mongodb://admin:pa55word@db.internal/x?bad=1 space",
        JWKS_URL: "ftp://keys",
        PROVIDER_API_KEY: "sk-short-secret",
        DB_PASSWORD: "Hunter2!",
      }),
    );
    const lines = err.message.split("\n").slice(1);
    const byVar = (name: string) => lines.find((l) => l.trim().startsWith(`${name}:`));
    expect(byVar("LOG_LEVEL")).toMatch(/"info"/);
    expect(byVar("LOG_LEVEL")).toContain('"loud"');
    expect(byVar("METRICS_PORT")).toMatch(/number/);
    expect(byVar("SHUTDOWN_TIMEOUT_MS")).toBeDefined();
    expect(byVar("NATS_URL")).toMatch(/nats:\/\//);
    expect(byVar("MONGODB_URL")).toMatch(/mongodb:\/\//);
    expect(byVar("JWKS_URL")).toMatch(/http\(s\)|http:\/\//);
    expect(byVar("REGISTRY_ADDR")).toMatch(/required, not set/);
    expect(byVar("PROVIDER_API_KEY")).toMatch(/at least 20/);
    expect(byVar("DB_PASSWORD")).toBeDefined();
    expect(err.problems).toHaveLength(9);
    expect(lines).toHaveLength(9);
  });

  it("config - values of secret-named variables and URL credentials are never echoed", () => {
    const err = configErrorOf(() =>
      loadConfig(schema, {
        ...good,
        PROVIDER_API_KEY: "sk-short-secret",
        DB_PASSWORD: "Hunter2!",
        MONGODB_URL: "mongodb://admin:pa55word@db.internal/x y",
      }),
    );
    expect(err.message).not.toContain("sk-short-secret");
    expect(err.message).not.toContain("Hunter2");
    expect(err.message).not.toContain("pa55word");
    expect(err.message).toContain("PROVIDER_API_KEY");
    expect(err.message).toContain("DB_PASSWORD");
  });

  it("config - http, https and file JWKS URLs are accepted", () => {
    for (const url of ["https://auth/jwks.json", "file:///etc/ensemble/jwks.json"]) {
      expect(loadConfig(schema, { ...good, JWKS_URL: url }).JWKS_URL).toBe(url);
    }
  });
});
