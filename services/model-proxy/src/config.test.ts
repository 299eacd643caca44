import { ConfigError } from "@ensemble/kit";
import { describe, expect, it } from "vitest";
import { deploymentsFrom, loadModelProxyConfig } from "./config.js";

const base = {
  NATS_URL: "nats://127.0.0.1:4222",
  MONGODB_URL: "mongodb://127.0.0.1:27017",
  JWKS_URL: "http://127.0.0.1:9051/.well-known/jwks.json",
};

describe("model-proxy config", () => {
  it("deploymentsFrom - each provider variable makes one deployment; nothing set makes none", () => {
    expect(deploymentsFrom(loadModelProxyConfig(base), {})).toEqual([]);
    const env = {
      ...base,
      LLM_SIM_URL: "http://127.0.0.1:8090/v1",
      OPENAI_API_KEY: "sk-test",
      ANTHROPIC_API_KEY: "ant-test",
      GOOGLE_API_KEY: "g-test",
      OPENROUTER_API_KEY: "or-test",
    };
    const list = deploymentsFrom(loadModelProxyConfig(env), env);
    expect(list.map((d) => [d.name, d.provider, d.api])).toEqual([
      ["simulator", "simulator", "openai"],
      ["openai", "openai", "openai"],
      ["openrouter", "openrouter", "openai"],
      ["anthropic", "anthropic", "anthropic"],
      ["google", "google", "google"],
    ]);
    expect(list[0]).toMatchObject({
      simulated: true,
      baseUrl: "http://127.0.0.1:8090/v1",
      weight: 1,
    });
    expect(list[2]?.baseUrl).toBe("https://openrouter.ai/api/v1");
  });

  it("deploymentsFrom - MODEL_PROXY_DEPLOYMENTS adds deployments with weights, limits and keys from the environment", () => {
    const env = {
      ...base,
      GROQ_KEY: "gsk-secret",
      MODEL_PROXY_DEPLOYMENTS: JSON.stringify({
        deployments: [
          {
            name: "groq",
            provider: "groq",
            baseUrl: "https://api.groq.com/openai/v1",
            apiKeyEnv: "GROQ_KEY",
            rpm: 30,
            tpm: 6000,
            weight: 2,
          },
          {
            name: "ollama",
            provider: "ollama",
            baseUrl: "http://127.0.0.1:11434/v1",
            timeoutMs: 5000,
          },
        ],
      }),
    };
    const list = deploymentsFrom(loadModelProxyConfig(env), env);
    expect(list).toEqual([
      expect.objectContaining({
        name: "groq",
        apiKey: "gsk-secret",
        rpm: 30,
        tpm: 6000,
        weight: 2,
        api: "openai",
        simulated: false,
      }),
      expect.objectContaining({ name: "ollama", timeoutMs: 5000, weight: 1 }),
    ]);
    expect(list[1]).not.toHaveProperty("apiKey");
  });

  it("deploymentsFrom - a bad list fails with a message naming the problem, never the key", () => {
    const bad = (value: string, extra: Record<string, string> = {}) => {
      const env = { ...base, MODEL_PROXY_DEPLOYMENTS: value, ...extra };
      return () => deploymentsFrom(loadModelProxyConfig(env), env);
    };
    expect(bad('[{"name":"x"}]')).toThrow(ConfigError);
    expect(bad('[{"name":"x"}]')).toThrow(/provider/);
    expect(bad('[{"name":"x","provider":"x","apiKeyEnv":"MISSING_KEY"}]')).toThrow(
      /MISSING_KEY, which is not set/,
    );
    expect(bad("/no/such/file.yaml")).toThrow(/cannot read the file/);
    expect(bad("{not json")).toThrow(/not valid YAML\/JSON/);
    expect(bad('[{"name":"x","provider":"x","apiKey":"sk-leak","bogus":1}]')).toThrow(
      /bogus|Unrecognized/,
    );
    try {
      bad('[{"name":"x","provider":"x","apiKey":"sk-leak","weight":-1}]')();
    } catch (err) {
      expect(String(err)).not.toContain("sk-leak");
    }
  });

  it("BUDGET_ALERT_PERCENTS - 80 and 100 by default, a list of whole percents, off for none; anything else names the value", () => {
    expect(loadModelProxyConfig(base).BUDGET_ALERT_PERCENTS).toEqual([80, 100]);
    expect(
      loadModelProxyConfig({ ...base, BUDGET_ALERT_PERCENTS: "50, 90,90" }).BUDGET_ALERT_PERCENTS,
    ).toEqual([50, 90]);
    expect(
      loadModelProxyConfig({ ...base, BUDGET_ALERT_PERCENTS: "off" }).BUDGET_ALERT_PERCENTS,
    ).toEqual([]);
    expect(() => loadModelProxyConfig({ ...base, BUDGET_ALERT_PERCENTS: "80,150" })).toThrow(/150/);
    expect(() => loadModelProxyConfig({ ...base, BUDGET_ALERT_PERCENTS: "eighty" })).toThrow(
      ConfigError,
    );
  });
});
