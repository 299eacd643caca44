import { ConfigError } from "@ensemble/kit";
import { describe, expect, it } from "vitest";
import { loadGatewayConfig } from "./config.js";
import { configuredUpstreams, UPSTREAMS } from "./services.js";

const base = { JWKS_URL: "http://127.0.0.1:9051/.well-known/jwks.json" };

describe("gateway config", () => {
  it("defaults - port 8080 on loopback, a bounded rate limit, a short API key cache", () => {
    const c = loadGatewayConfig(base);
    expect(c.GATEWAY_PORT).toBe(8080);
    expect(c.GATEWAY_HOST).toBe("127.0.0.1");
    expect(c.GATEWAY_CORS_ORIGINS).toEqual([]);
    expect(c.GATEWAY_API_KEY_CACHE_MS).toBeLessThanOrEqual(30_000);
    expect(c.GATEWAY_RATE_LIMIT_BURST).toBeGreaterThan(0);
  });

  it("cors - a comma-separated list of origins; '*' is refused unless NODE_ENV=development", () => {
    expect(
      loadGatewayConfig({ ...base, GATEWAY_CORS_ORIGINS: "https://a.example, https://b.example" })
        .GATEWAY_CORS_ORIGINS,
    ).toEqual(["https://a.example", "https://b.example"]);
    expect(() => loadGatewayConfig({ ...base, GATEWAY_CORS_ORIGINS: "*" })).toThrow(ConfigError);
    expect(
      loadGatewayConfig({ ...base, GATEWAY_CORS_ORIGINS: "*", NODE_ENV: "development" })
        .GATEWAY_CORS_ORIGINS,
    ).toEqual(["*"]);
  });

  it("bad values - every bad variable is named at once, and the service token is never echoed", () => {
    let error: unknown;
    try {
      loadGatewayConfig({ GATEWAY_PORT: "99999", AUTH_ADDR: "nope", SERVICE_TOKEN: "" });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as ConfigError).message;
    expect(message).toContain("JWKS_URL");
    expect(message).toContain("GATEWAY_PORT");
    expect(message).toContain("AUTH_ADDR");
  });

  it("upstreams - only services whose address is set are routed", () => {
    const c = loadGatewayConfig({ ...base, REGISTRY_ADDR: "127.0.0.1:50052" });
    expect(configuredUpstreams(c).map((u) => u.name)).toEqual(["registry"]);
  });

  it("upstreams - every routed service's address variable is read (none dropped by the schema)", () => {
    for (const row of UPSTREAMS) {
      const c = loadGatewayConfig({ ...base, [row.addrVar]: "127.0.0.1:50099" });
      expect(configuredUpstreams(c).map((u) => u.name)).toEqual([row.name]);
    }
    expect(UPSTREAMS.map((r) => r.name)).toContain("vector-search");
  });

  it("upstreams - MODEL_PROXY_ADDR routes ModelProxyService; a bad address is named", () => {
    const c = loadGatewayConfig({ ...base, MODEL_PROXY_ADDR: "127.0.0.1:50055" });
    const upstreams = configuredUpstreams(c);
    expect(upstreams.map((u) => u.name)).toEqual(["model-proxy"]);
    expect(upstreams[0]?.services.map((s) => s.typeName)).toEqual([
      "ensemble.modelproxy.v1.ModelProxyService",
    ]);
    expect(() => loadGatewayConfig({ ...base, MODEL_PROXY_ADDR: "nope" })).toThrow(
      /MODEL_PROXY_ADDR/,
    );
  });
});
