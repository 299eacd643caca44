// An admin's change applies to model-proxy's very next call: auth's and the registry's change
// notices (packages/kit notices, core NATS) drop what model-proxy cached, although its caches are
// left at their defaults here (BUDGET_CACHE_MS and CATALOG_TTL_MS, 30 s). auth, the registry and
// model-proxy as built processes, the LLM simulator as the provider.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  BudgetScope,
  Capability,
  ChatRole,
  ModelProxyService,
  PiiKind,
  RegistryService,
  type ChatRequestSchema,
} from "@ensemble/proto";
import { rejection, startServices, uniqueName, type Services } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

let sim: Simulator;
let services: Services;
let mp: GrpcClient<typeof ModelProxyService>;

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0 } });
  services = await startServices({ simulatorUrl: `${sim.url}/v1` });
  mp = createClient(ModelProxyService, services.modelProxy.address);
}, 240_000);

afterAll(async () => {
  await services?.stop();
  await sim?.close();
});

const chat = (model: string, text: string): MessageInitShape<typeof ChatRequestSchema> => ({
  model,
  maxTokens: 16,
  messages: [{ role: ChatRole.USER, content: [{ part: { case: "text", value: text } }] }],
});

describe("change notices", () => {
  it("notices - new guardrails, a budget and a disabled model apply to model-proxy's very next call, not when its caches expire", async () => {
    const authClient = createClient(AuthService, services.auth.address);
    const registry = createClient(RegistryService, services.registry.address);
    const res = await authClient.signup({
      email: `${uniqueName("notices")}@example.com`,
      password: "correct-Horse-battery-9",
    });
    const as = { headers: { authorization: `Bearer ${res.tokens?.accessToken ?? ""}` } };
    const mine = {
      id: "mine",
      provider: "simulator",
      providerModelId: "sim-fast",
      displayName: "mine",
      capabilities: [Capability.CHAT],
      contextWindow: 128_000,
      enabled: true,
    };
    await registry.upsertModel({ model: mine }, as);
    // Warm: the tenant's settings, budgets and its model are cached now.
    await mp.chat(chat("mine", "Write to bob@example.com"), as);
    await mp.chat(chat("mine", "Write to bob@example.com"), as);

    await authClient.updateTenantSettings(
      {
        settings: { guardrails: { blockPii: [PiiKind.EMAIL] } },
        updateMask: { paths: ["guardrails"] },
      },
      as,
    );
    const blocked = await rejection(mp.chat(chat("mine", "Write to bob@example.com"), as));
    expect(blocked.code).toBe(Code.InvalidArgument);
    expect(blocked.rawMessage).toContain("guardrails");

    await authClient.setBudget({ scope: BudgetScope.TENANT, monthlyLimitUsd: 0 }, as);
    const broke = await rejection(mp.chat(chat("mine", "Hello"), as));
    expect(broke.code).toBe(Code.ResourceExhausted);
    await authClient.setBudget({ scope: BudgetScope.TENANT }, as);
    await mp.chat(chat("mine", "Hello"), as);

    await registry.upsertModel({ model: { ...mine, enabled: false } }, as);
    const disabled = await rejection(mp.chat(chat("mine", "Hello"), as));
    expect(disabled.code).toBe(Code.FailedPrecondition);
    expect(disabled.rawMessage).toContain("disabled");
  });
});
