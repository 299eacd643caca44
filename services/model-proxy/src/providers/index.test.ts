// The client factory loads each provider's SDK only for the APIs the deployments speak, and every
// kind of client it makes answers through the real simulator (which speaks all three APIs).
import { create } from "@bufbuild/protobuf";
import { ChatRequestSchema, ChatRole } from "@ensemble/proto";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { providerClients } from "./index.js";
import type { Deployment, ProviderApi } from "./types.js";

let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0, tokensPerSecond: 0 } });
});
afterAll(async () => {
  await sim.close();
});

function deployment(api: ProviderApi): Deployment {
  return {
    name: `sim-${api}`,
    provider: "simulator",
    api,
    baseUrl: api === "openai" ? `${sim.url}/v1` : sim.url,
    apiKey: "sk-test-factory",
    weight: 1,
    timeoutMs: 5_000,
    simulated: true,
  };
}

const request = create(ChatRequestSchema, {
  model: "sim-fast",
  messages: [{ role: ChatRole.USER, content: [{ part: { case: "text", value: "Hello" } }] }],
  maxTokens: 8,
});

describe("providerClients", () => {
  it("makes a working client for each API the deployments speak", async () => {
    const apis: ProviderApi[] = ["openai", "anthropic", "google"];
    const clientFor = await providerClients(apis.map(deployment));
    for (const api of apis) {
      const result = await clientFor(deployment(api)).chat({
        model: "sim-fast",
        request,
        signal: new AbortController().signal,
      });
      const text = result.message.content.map((p) => (p.part.case === "text" ? p.part.value : ""));
      expect(text.join(""), api).toContain("[simulated sim-fast]");
    }
  });

  it("refuses, by name, a deployment whose SDK was not loaded", async () => {
    const clientFor = await providerClients([deployment("openai")]);
    expect(() => clientFor(deployment("google"))).toThrow(/sim-google: the Google SDK/);
    expect(() => clientFor(deployment("anthropic"))).toThrow(/sim-anthropic: the Anthropic SDK/);
  });
});
