import { ConfigError } from "@ensemble/kit";
import { describe, expect, it } from "vitest";
import { loadRegistryConfig } from "./config.js";

describe("registry config", () => {
  it("config - defaults follow the platform's port plan and find the repository's seeds", () => {
    const config = loadRegistryConfig({ JWKS_URL: "http://127.0.0.1:50051/.well-known/jwks.json" });
    expect(config.REGISTRY_ADDR).toBe("127.0.0.1:50052");
    expect(config.METRICS_PORT).toBe(9152);
    expect(config.INSTANCE_TTL_MS).toBe(15_000);
    expect(config.INSTANCE_BUCKET).toBe("ensemble_instances");
    expect(config.REGISTRY_SEED_DIR).toMatch(/deploy[/\\]config$/);
  });

  it("config - every bad variable is named in one error", () => {
    let error: unknown;
    try {
      loadRegistryConfig({ REGISTRY_ADDR: "no-port", INSTANCE_TTL_MS: "10" });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const text = (error as ConfigError).message;
    expect(text).toContain("JWKS_URL");
    expect(text).toContain("REGISTRY_ADDR");
    expect(text).toContain("INSTANCE_TTL_MS");
  });
});
