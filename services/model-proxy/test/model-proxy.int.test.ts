// model-proxy end to end against the real mesh: auth and the registry as built processes,
// model-proxy as built processes (two replicas for the rate limit), the LLM simulator as the
// provider at the HTTP boundary, real NATS and the MongoDB-wire server underneath. Conditions
// (failures, 429s, cut streams) are set on the simulator; tenant-owned catalog entries with
// their own provider names give each scenario its own deployments and breakers.
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  BudgetScope,
  CacheMode,
  Capability,
  DefaultCache,
  ChatRole,
  FinishReason,
  ModelProxyService,
  PiiKind,
  PromptCacheTtl,
  RegistryService,
  UsageDimension,
  UsageOperation,
  type ChatRequest,
  type StreamChatResponse,
} from "@ensemble/proto";
import {
  startAuthProcess,
  startModelProxyProcess,
  startRegistryProcess,
  uniqueName,
  type AuthProcess,
  type MeshProcess,
} from "@ensemble/testkit";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ChatRequestSchema } from "@ensemble/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

let auth: AuthProcess;
let registry: MeshProcess;
let sim: Simulator;
let flakySim: Simulator;
let proxy: MeshProcess;
const replicas: MeshProcess[] = [];
let mp: GrpcClient<typeof ModelProxyService>;

interface Account {
  token: string;
  userId: string;
  tenantId: string;
  headers: { authorization: string };
}

async function signup(label: string): Promise<Account> {
  const client = createClient(AuthService, auth.address);
  const res = await client.signup({
    email: `${uniqueName(label)}@example.com`,
    password: "correct-Horse-battery-9",
  });
  const token = res.tokens?.accessToken ?? "";
  return {
    token,
    userId: res.user?.id ?? "",
    tenantId: res.tenant?.id ?? "",
    headers: { authorization: `Bearer ${token}` },
  };
}

/** A tenant-owned catalog entry served by provider `provider` (a deployment of the proxy). */
async function addModel(
  who: Account,
  id: string,
  provider: string,
  providerModelId: string,
  fallbacks: string[] = [],
): Promise<void> {
  const reg = createClient(RegistryService, registry.address);
  await reg.upsertModel(
    {
      model: {
        id,
        provider,
        providerModelId,
        displayName: id,
        capabilities: [Capability.CHAT],
        contextWindow: 128_000,
        inputPricePerMtok: 1,
        outputPricePerMtok: 2,
        enabled: true,
        fallbacks,
      },
    },
    { headers: who.headers },
  );
}

function chat(
  model: string,
  text: string,
  extra: { maxTokens?: number; cache?: CacheMode } = {},
): MessageInitShape<typeof ChatRequestSchema> {
  return {
    model,
    messages: [{ role: ChatRole.USER, content: [{ part: { case: "text", value: text } }] }],
    ...extra,
  };
}

function textOf(message: ChatRequest["messages"][number] | undefined): string {
  return (message?.content ?? []).map((p) => (p.part.case === "text" ? p.part.value : "")).join("");
}

async function expectCode(p: Promise<unknown>, code: Code): Promise<ConnectError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  expect(Code[(err as ConnectError).code]).toBe(Code[code]);
  return err as ConnectError;
}

async function collect(stream: AsyncIterable<StreamChatResponse>): Promise<{
  events: StreamChatResponse[];
  error: unknown;
  times: number[];
}> {
  const events: StreamChatResponse[] = [];
  const times: number[] = [];
  try {
    for await (const e of stream) {
      events.push(e);
      times.push(performance.now());
    }
    return { events, error: undefined, times };
  } catch (error) {
    return { events, error, times };
  }
}

/** Waits until GetUsage shows `requests` requests (the ledger is written in batches). */
async function usageOnce(who: Account, model: string, requests: number) {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const usage = await mp.getUsage(
      {
        startTime: timestampFromMs(Date.now() - 3_600_000),
        endTime: timestampFromMs(Date.now() + 3_600_000),
        groupBy: [UsageDimension.MODEL],
        model,
      },
      { headers: who.headers },
    );
    if (Number(usage.totalRequests) >= requests || Date.now() > deadline) return usage;
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  [auth, sim, flakySim] = await Promise.all([
    startAuthProcess(),
    startSimulator({
      models: {
        // Falls back to sim-fast (catalog chain) because it always fails.
        "sim-medium": { fail: "500" },
        // One 429 asking for a 1 s wait, then fine.
        "sim-thinking": { fail: "429", failFirst: 1, retryAfterSec: 1, latencyMs: 0, ttftMs: 0 },
        // Streams half its answer, then the connection is cut.
        "sim-cut": { fail: "cut", tokensPerSecond: 0 },
        "sim-slow": { tokensPerSecond: 100 },
        "sim-limited": {},
      },
    }),
    startSimulator({ models: { "sim-flaky": {} } }),
  ]);
  registry = await startRegistryProcess({ jwksUrl: auth.jwksUrl });
  const mesh = {
    jwksUrl: auth.jwksUrl,
    authAddress: auth.address,
    registryAddress: registry.address,
    simulatorUrl: `${sim.url}/v1`,
  };
  const deployments = JSON.stringify([
    // "duo": the heavier deployment always fails; the light one answers.
    {
      name: "duo-bad",
      provider: "duo",
      baseUrl: `${sim.url}/v1`,
      apiKey: "k",
      weight: 100,
      headers: { "x-sim-fail": "500" },
    },
    { name: "duo-good", provider: "duo", baseUrl: `${sim.url}/v1`, apiKey: "k", weight: 1 },
    { name: "flaky", provider: "flaky", baseUrl: `${flakySim.url}/v1`, apiKey: "k" },
    { name: "limited", provider: "limited", baseUrl: `${sim.url}/v1`, apiKey: "k", rpm: 10 },
    // The simulator's Anthropic Messages API: no token log probabilities there.
    { name: "anthro", provider: "anthro", api: "anthropic", baseUrl: sim.url, apiKey: "k" },
  ]);
  const env = {
    MODEL_PROXY_DEPLOYMENTS: deployments,
    RETRY_BASE_DELAY_MS: "10",
    RETRY_MAX_DELAY_MS: "50",
    BREAKER_THRESHOLD: "3",
    BREAKER_HALF_OPEN_AFTER_MS: "1000",
    CATALOG_TTL_MS: "0",
  };
  const limitBucket = uniqueName("limits");
  const database = uniqueName("modelproxy");
  const spend = uniqueName("spend");
  proxy = await startModelProxyProcess({
    ...mesh,
    env,
    database,
    buckets: { rateLimit: limitBucket, spend },
  });
  replicas.push(
    await startModelProxyProcess({
      ...mesh,
      env,
      database,
      buckets: { rateLimit: limitBucket, spend },
    }),
  );
  mp = createClient(ModelProxyService, proxy.address);
});

afterAll(async () => {
  await Promise.all([proxy?.stop(), ...replicas.map((r) => r.stop())]);
  await Promise.all([registry?.stop(), auth?.stop(), sim?.close(), flakySim?.close()]);
});

describe("model-proxy", () => {
  it("Chat - answers from the simulator with usage, cost at catalog prices, and who served it", async () => {
    const alice = await signup("alice");
    const res = await mp.chat(chat("sim-fast", "What is a monad?"), { headers: alice.headers });
    expect(textOf(res.message)).toContain("[simulated sim-fast]");
    expect(res.servedBy).toMatchObject({
      model: "sim-fast",
      provider: "simulator",
      deployment: "simulator",
      simulated: true,
      attempts: 1,
    });
    const usage = res.usage!;
    expect(Number(usage.inputTokens)).toBeGreaterThan(0);
    expect(Number(usage.outputTokens)).toBeGreaterThan(0);
    // sim-fast: 0.1 $/M input, 0.4 $/M output
    expect(usage.costUsd).toBeCloseTo(
      (Number(usage.inputTokens) * 0.1 + Number(usage.outputTokens) * 0.4) / 1e6,
      12,
    );
    expect(res.finishReason).toBe(FinishReason.STOP);
  });

  it("logprobs - the answer's tokens with their log probabilities, unary and streamed, adding up to the text; refused without logprobs or where the API gives none", async () => {
    const who = await signup("logprobs");
    const ask = { ...chat("sim-fast", "Name a colour"), logprobs: true, topLogprobs: 2 };
    const res = await mp.chat(ask, { headers: who.headers });
    const text = textOf(res.message);
    expect(res.logprobs.map((t) => t.token).join("")).toBe(text);
    for (const t of res.logprobs) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(new TextDecoder().decode(t.bytes)).toBe(t.token);
      expect(t.topLogprobs).toHaveLength(2);
      expect(t.topLogprobs[0]?.token).toBe(t.token);
    }
    // Not asked: none (and the same text).
    const plain = await mp.chat(chat("sim-fast", "Name a colour"), { headers: who.headers });
    expect(textOf(plain.message)).toBe(text);
    expect(plain.logprobs).toEqual([]);

    const { events, error } = await collect(mp.streamChat({ chat: ask }, { headers: who.headers }));
    expect(error).toBeUndefined();
    let streamed = "";
    let tokens = "";
    for (const e of events) {
      if (e.event.case !== "delta") continue;
      streamed += e.event.value.content;
      tokens += e.event.value.logprobs.map((t) => t.token).join("");
    }
    expect(streamed).toBe(text);
    expect(tokens).toBe(text);

    const noLogprobs = await expectCode(
      mp.chat({ ...chat("sim-fast", "x"), topLogprobs: 2 }, { headers: who.headers }),
      Code.InvalidArgument,
    );
    expect(noLogprobs.rawMessage).toContain("top_logprobs");
    await addModel(who, "anthro-fast", "anthro", "sim-fast");
    const anthropic = await expectCode(
      mp.chat({ ...chat("anthro-fast", "x"), logprobs: true }, { headers: who.headers }),
      Code.InvalidArgument,
    );
    expect(anthropic.rawMessage).toMatch(
      /anthro \(the anthropic API\) gives no token log probabilities/,
    );
    // The same model without logprobs answers (the deployment works).
    const viaAnthropic = await mp.chat(chat("anthro-fast", "x"), { headers: who.headers });
    expect(textOf(viaAnthropic.message)).toContain("[simulated sim-fast]");
  });

  it("Chat - bad requests: auto, unknown model, an image for a text-only model", async () => {
    const bob = await signup("bob");
    await expectCode(mp.chat(chat("auto", "hi"), { headers: bob.headers }), Code.InvalidArgument);
    await expectCode(mp.chat(chat("no-such-model", "hi"), { headers: bob.headers }), Code.NotFound);
    const image = {
      model: "sim-fast",
      messages: [
        {
          role: ChatRole.USER,
          content: [
            {
              part: {
                case: "image" as const,
                value: { source: { case: "url" as const, value: "https://example.com/a.png" } },
              },
            },
          ],
        },
      ],
    };
    const err = await expectCode(mp.chat(image, { headers: bob.headers }), Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/image/);
    await expectCode(mp.chat(chat("sim-fast", "hi")), Code.Unauthenticated);
  });

  it("Chat - an image reaches a vision model", async () => {
    const carol = await signup("carol");
    const res = await mp.chat(
      {
        model: "sim-vision",
        messages: [
          {
            role: ChatRole.USER,
            content: [
              { part: { case: "text", value: "What is in this picture?" } },
              {
                part: {
                  case: "image",
                  value: {
                    source: { case: "data", value: new Uint8Array([137, 80, 78, 71]) },
                    mimeType: "image/png",
                  },
                },
              },
            ],
          },
        ],
      },
      { headers: carol.headers },
    );
    expect(textOf(res.message)).toMatch(/image/i);
    expect(Number(res.usage?.inputTokens)).toBeGreaterThanOrEqual(85);
  });

  it("fallback - a failing deployment is passed over for a healthy one of the same provider", async () => {
    const dave = await signup("dave");
    await addModel(dave, "duo-chat", "duo", "sim-fast");
    for (let i = 0; i < 4; i++) {
      const res = await mp.chat(chat("duo-chat", `question ${i}`), { headers: dave.headers });
      expect(res.servedBy?.deployment).toBe("duo-good");
      expect(textOf(res.message)).toContain("[simulated sim-fast]");
    }
  });

  it("fallback - a failing model falls back along the catalog chain, streaming included (before the first token)", async () => {
    const erin = await signup("erin");
    const before = sim.requests("sim-medium");
    const res = await mp.chat(chat("sim-medium", "fall back please"), { headers: erin.headers });
    expect(res.servedBy).toMatchObject({
      model: "sim-fast",
      requestedModel: "sim-medium",
      fallbacksTried: ["sim-medium"],
    });
    expect(sim.requests("sim-medium") - before).toBe(3); // RETRY_MAX_ATTEMPTS on the one deployment

    const { events, error } = await collect(
      mp.streamChat({ chat: chat("sim-medium", "stream it") }, { headers: erin.headers }),
    );
    expect(error).toBeUndefined();
    expect(events[0]?.event.case).toBe("start");
    const start = events[0]?.event.value as { servedBy?: { model: string } };
    expect(start.servedBy?.model).toBe("sim-fast");
    expect(events.at(-1)?.event.case).toBe("end");
  });

  it("breaker - opens after repeated failures, half-opens after the pause, closes again", async () => {
    const frank = await signup("frank");
    await addModel(frank, "flaky-chat", "flaky", "sim-flaky");
    flakySim.configure("sim-flaky", { fail: "500" });
    // 3 consecutive failures (one call = 3 attempts) open the breaker.
    await expectCode(
      mp.chat(chat("flaky-chat", "one"), { headers: frank.headers }),
      Code.Unavailable,
    );
    const seen = flakySim.requests("sim-flaky");
    expect(seen).toBe(3);
    // Open: calls fail fast without reaching the provider.
    const err = await expectCode(
      mp.chat(chat("flaky-chat", "two"), { headers: frank.headers }),
      Code.Unavailable,
    );
    expect(err.rawMessage).toMatch(/circuit open/);
    expect(flakySim.requests("sim-flaky")).toBe(seen);
    // The provider heals; after the half-open pause one trial call goes through and closes it.
    flakySim.configure("sim-flaky", { fail: undefined });
    await new Promise((r) => setTimeout(r, 1_100));
    const res = await mp.chat(chat("flaky-chat", "three"), { headers: frank.headers });
    expect(res.servedBy?.deployment).toBe("flaky");
    expect(flakySim.requests("sim-flaky")).toBe(seen + 1);
    await mp.chat(chat("flaky-chat", "four"), { headers: frank.headers });
    expect(flakySim.requests("sim-flaky")).toBe(seen + 2);
  });

  it("retry - a 429 with Retry-After is waited out and the call succeeds", async () => {
    const gina = await signup("gina");
    const started = performance.now();
    const res = await mp.chat(chat("sim-thinking", "think"), { headers: gina.headers });
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    expect(res.servedBy).toMatchObject({ model: "sim-thinking", attempts: 2 });
    expect(sim.requests("sim-thinking")).toBe(2);
  });

  it("stream - deltas arrive before the end, and a stream cut mid-way reaches the client as an error", async () => {
    const hank = await signup("hank");
    const ok = await collect(
      mp.streamChat(
        {
          chat: chat("sim-fast", "tell me a long story about streams and rivers", {
            maxTokens: 40,
          }),
        },
        { headers: hank.headers },
      ),
    );
    expect(ok.error).toBeUndefined();
    expect(ok.events.filter((e) => e.event.case === "delta").length).toBeGreaterThan(1);

    await addModel(hank, "cut-chat", "simulator", "sim-cut");
    const cut = await collect(
      mp.streamChat(
        { chat: chat("cut-chat", "a long answer that will be cut off halfway through") },
        { headers: hank.headers },
      ),
    );
    expect(cut.events[0]?.event.case).toBe("start");
    expect(cut.events.some((e) => e.event.case === "delta")).toBe(true);
    expect(cut.events.some((e) => e.event.case === "end")).toBe(false);
    expect(cut.error).toBeInstanceOf(ConnectError);
    expect((cut.error as ConnectError).code).toBe(Code.Unavailable);
  });

  it("budget - a tenant over its limit is refused before any provider call", async () => {
    const ivan = await signup("ivan");
    const authClient = createClient(AuthService, auth.address);
    await authClient.setBudget(
      { scope: BudgetScope.TENANT, monthlyLimitUsd: 0 },
      { headers: ivan.headers },
    );
    const before = sim.requests();
    const err = await expectCode(
      mp.chat(chat("sim-fast", "hello"), { headers: ivan.headers }),
      Code.ResourceExhausted,
    );
    expect(err.rawMessage).toMatch(/budget|limit/i);
    expect(err.rawMessage).not.toContain(ivan.token);
    expect(sim.requests()).toBe(before);
  });

  it("budget - a user's spend reaches the limit, then calls are refused", async () => {
    const judy = await signup("judy");
    const authClient = createClient(AuthService, auth.address);
    // One sim-fast call costs ~1e-5 $; allow about two.
    await authClient.setBudget(
      { scope: BudgetScope.USER, userId: judy.userId, monthlyLimitUsd: 0.00002 },
      { headers: judy.headers },
    );
    let refused: ConnectError | undefined;
    for (let i = 0; i < 50 && refused === undefined; i++) {
      try {
        await mp.chat(
          chat("sim-fast", `question number ${i} with a few more words to cost something`),
          { headers: judy.headers },
        );
      } catch (err) {
        refused = err as ConnectError;
      }
    }
    expect(refused?.code).toBe(Code.ResourceExhausted);
  });

  it("ledger - streamed usage is recorded exactly once with the right cost", async () => {
    const kate = await signup("kate");
    await addModel(kate, "slow-chat", "simulator", "sim-slow");
    const { events, error } = await collect(
      mp.streamChat({ chat: chat("slow-chat", "count my tokens") }, { headers: kate.headers }),
    );
    expect(error).toBeUndefined();
    const end = events.at(-1)?.event;
    expect(end?.case).toBe("end");
    const usage = (
      end?.value as { usage?: { inputTokens: bigint; outputTokens: bigint; costUsd: number } }
    ).usage!;
    // slow-chat: 1 $/M input, 2 $/M output
    expect(usage.costUsd).toBeCloseTo(
      (Number(usage.inputTokens) * 1 + Number(usage.outputTokens) * 2) / 1e6,
      12,
    );
    const report = await usageOnce(kate, "slow-chat", 1);
    expect(Number(report.totalRequests)).toBe(1);
    expect(report.total?.inputTokens).toBe(usage.inputTokens);
    expect(report.total?.outputTokens).toBe(usage.outputTokens);
    expect(report.total?.costUsd).toBeCloseTo(usage.costUsd, 12);
    // Still exactly one a moment later (no second write from the stream's end).
    await new Promise((r) => setTimeout(r, 600));
    expect(Number((await usageOnce(kate, "slow-chat", 1)).totalRequests)).toBe(1);
  });

  it("cache - an identical request is answered from the tenant's cache at zero cost", async () => {
    const leo = await signup("leo");
    const request = chat("sim-fast", "cache me if you can", { cache: CacheMode.USE });
    const first = await mp.chat(request, { headers: leo.headers });
    expect(first.servedBy?.cacheHit).toBe(false);
    const before = sim.requests("sim-fast");
    const second = await mp.chat(request, { headers: leo.headers });
    expect(second.servedBy?.cacheHit).toBe(true);
    expect(second.usage?.costUsd).toBe(0);
    expect(textOf(second.message)).toBe(textOf(first.message));
    expect(sim.requests("sim-fast")).toBe(before);
    // Another tenant asking the same thing does not get leo's entry.
    const mia = await signup("mia");
    const theirs = await mp.chat(request, { headers: mia.headers });
    expect(theirs.servedBy?.cacheHit).toBe(false);
  });

  it("cache - a streamed answer with tool calls is cached whole and replayed with them, streamed or not", async () => {
    const lou = await signup("lou");
    const request: MessageInitShape<typeof ChatRequestSchema> = {
      model: "sim-fast",
      cache: CacheMode.USE,
      messages: [
        {
          role: ChatRole.USER,
          content: [{ part: { case: "text", value: "what is the weather in Paris?" } }],
        },
      ],
      tools: [
        {
          name: "get_weather",
          parameters: { type: "object", properties: { city: { type: "string" } } },
        },
      ],
      toolChoice: { choice: { case: "function", value: "get_weather" } },
    };
    const first = await collect(mp.streamChat({ chat: request }, { headers: lou.headers }));
    expect(first.error).toBeUndefined();
    const streamedCalls = first.events.flatMap((e) =>
      e.event.case === "delta" ? e.event.value.toolCalls : [],
    );
    expect(streamedCalls.some((c) => c.name === "get_weather")).toBe(true);
    const args = streamedCalls.map((c) => c.arguments).join("");

    // Stored after the stream ended: the unary hit carries the call whole.
    const until = Date.now() + 5_000;
    let unary = await mp.chat(request, { headers: lou.headers });
    while (unary.servedBy?.cacheHit !== true && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      unary = await mp.chat(request, { headers: lou.headers });
    }
    expect(unary.servedBy?.cacheHit).toBe(true);
    expect(unary.message?.toolCalls).toEqual([
      expect.objectContaining({ name: "get_weather", arguments: args }),
    ]);
    const replay = await collect(mp.streamChat({ chat: request }, { headers: lou.headers }));
    const replayed = replay.events.flatMap((e) =>
      e.event.case === "delta" ? e.event.value.toolCalls : [],
    );
    expect(replayed).toEqual([
      expect.objectContaining({ index: 0, name: "get_weather", arguments: args }),
    ]);
  });

  it("rate limit - 10 requests per minute hold across two model-proxy replicas", async () => {
    const ned = await signup("ned");
    await addModel(ned, "limited-chat", "limited", "sim-limited");
    const clients = [mp, createClient(ModelProxyService, replicas[0]!.address)];
    const results = await Promise.allSettled(
      Array.from({ length: 30 }, (_, i) =>
        clients[i % 2]!.chat(chat("limited-chat", `q${i}`), { headers: ned.headers }),
      ),
    );
    const ok = results.filter((r) => r.status === "fulfilled").length;
    const refused = results.filter(
      (r) =>
        r.status === "rejected" &&
        r.reason instanceof ConnectError &&
        r.reason.code === Code.ResourceExhausted,
    ).length;
    expect(ok).toBeLessThanOrEqual(10);
    expect(ok).toBeGreaterThanOrEqual(5);
    expect(ok + refused).toBe(30);
    expect(sim.requests("sim-limited")).toBe(ok);
  });

  it("API key limits - a key calls only its models (its own fallbacks too), lists only those, stops at its own budget, and dies with its revocation", async () => {
    const lena = await signup("lena");
    const authClient = createClient(AuthService, auth.address);
    const gateway = { authorization: `Bearer ${await auth.mintServiceToken("gateway")}` };
    const keyWith = async (limits: { models?: string[]; monthlyLimitUsd?: number }) => {
      const made = await authClient.createApiKey(
        { name: "ci-bot", limits },
        { headers: lena.headers },
      );
      const exchanged = await authClient.authenticateApiKey(
        { apiKey: made.secret },
        { headers: gateway },
      );
      return {
        id: made.apiKey?.id ?? "",
        headers: { authorization: `Bearer ${exchanged.accessToken}` },
      };
    };

    // "fast" resolves to sim-fast here (no OpenAI deployment): either name is allowed.
    const narrow = await keyWith({ models: ["fast", "sim-embed"] });
    for (const model of ["fast", "sim-fast"]) {
      const res = await mp.chat(chat(model, "hello"), { headers: narrow.headers });
      expect(res.servedBy?.model).toBe("sim-fast");
    }
    const before = sim.requests();
    const denied = await expectCode(
      mp.chat(chat("sim-code", "hello"), { headers: narrow.headers }),
      Code.PermissionDenied,
    );
    expect(denied.rawMessage).toBe(
      'model: API key "ci-bot" may not call sim-code; it may call fast, sim-embed',
    );
    const viaFallback = await expectCode(
      mp.chat(
        { ...chat("fast", "hello"), fallbackModels: ["sim-code"] },
        { headers: narrow.headers },
      ),
      Code.PermissionDenied,
    );
    expect(viaFallback.rawMessage).toMatch(/^fallback_models\[0\]: .*may not call sim-code/);
    await expectCode(
      mp.generateImage({ model: "sim-image", prompt: "a fox" }, { headers: narrow.headers }),
      Code.PermissionDenied,
    );
    expect(sim.requests()).toBe(before); // refused before any provider call
    const embedded = await mp.embed(
      { model: "sim-embed", inputs: ["allowed"] },
      { headers: narrow.headers },
    );
    expect(embedded.embeddings).toHaveLength(1);
    const listed = await mp.listCallableModels({}, { headers: narrow.headers });
    expect(listed.models.map((m) => m.id).sort()).toEqual(["sim-embed", "sim-fast"]);
    expect(
      Object.values(listed.aliases).every((id) => ["sim-embed", "sim-fast"].includes(id)),
    ).toBe(true);
    // The owner's own login is not limited by the key.
    await mp.chat(chat("sim-code", "hello"), { headers: lena.headers });

    const broke = await keyWith({ monthlyLimitUsd: 0 });
    const exhausted = await expectCode(
      mp.chat(chat("sim-fast", "hello"), { headers: broke.headers }),
      Code.ResourceExhausted,
    );
    expect(exhausted.rawMessage).toMatch(
      /^monthly budget exceeded: API key "ci-bot"'s limit for \d{4}-\d{2} is \$0 and/,
    );

    // Usage made with a key is counted against it: a key allowed $0.00002 runs out.
    const small = await keyWith({ monthlyLimitUsd: 0.00002 });
    let refused: ConnectError | undefined;
    for (let i = 0; i < 50 && refused === undefined; i++) {
      await mp
        .chat(chat("sim-fast", `question number ${i} with a few more words to cost something`), {
          headers: small.headers,
        })
        .catch((err: unknown) => {
          refused = err as ConnectError;
        });
    }
    expect(refused?.code).toBe(Code.ResourceExhausted);
    expect(refused?.rawMessage).toContain('API key "ci-bot"');
    await mp.chat(chat("sim-fast", "the owner is not out of budget"), { headers: lena.headers });

    // Revoked: the token exchanged before still verifies, but model-proxy asks auth about the key
    // (once its cached answer is older than BUDGET_CACHE_MS; a new key here has none cached).
    const revoked = await keyWith({});
    await authClient.revokeApiKey({ id: revoked.id }, { headers: lena.headers });
    const dead = await expectCode(
      mp.chat(chat("sim-fast", "hello"), { headers: revoked.headers }),
      Code.PermissionDenied,
    );
    expect(dead.rawMessage).toBe('API key "ci-bot" has been revoked');
  });

  it("API key limits - a key's own requests per minute hold across two replicas; a call bigger than its tokens per minute is refused at once", async () => {
    const mia = await signup("mia");
    const authClient = createClient(AuthService, auth.address);
    const gateway = { authorization: `Bearer ${await auth.mintServiceToken("gateway")}` };
    const made = await authClient.createApiKey(
      { name: "cron", limits: { requestsPerMinute: 3, tokensPerMinute: 5_000 } },
      { headers: mia.headers },
    );
    const exchanged = await authClient.authenticateApiKey(
      { apiKey: made.secret },
      { headers: gateway },
    );
    const headers = { authorization: `Bearer ${exchanged.accessToken}` };
    const other = createClient(ModelProxyService, replicas[0]!.address);
    const outcomes: string[] = [];
    for (let i = 0; i < 6; i++) {
      const client = i % 2 === 0 ? mp : other;
      const err = await client
        .chat(chat("sim-fast", `tick ${i}`, { maxTokens: 16 }), { headers })
        .then(
          () => undefined,
          (e: unknown) => e as ConnectError,
        );
      outcomes.push(err === undefined ? "ok" : Code[err.code]);
      if (err !== undefined) {
        expect(err.rawMessage).toBe(
          'rate limit exceeded: API key "cron" allows 3 requests per minute',
        );
      }
    }
    expect(outcomes).toEqual([
      "ok",
      "ok",
      "ok",
      "ResourceExhausted",
      "ResourceExhausted",
      "ResourceExhausted",
    ]);
    // The owner's own login is not limited by the key.
    await mp.chat(chat("sim-fast", "still fine"), { headers: mia.headers });

    const big = await authClient.createApiKey(
      { name: "small", limits: { tokensPerMinute: 100 } },
      { headers: mia.headers },
    );
    const bigToken = await authClient.authenticateApiKey(
      { apiKey: big.secret },
      { headers: gateway },
    );
    const tooBig = await expectCode(
      mp.chat(chat("sim-fast", "hello", { maxTokens: 1_000 }), {
        headers: { authorization: `Bearer ${bigToken.accessToken}` },
      }),
      Code.ResourceExhausted,
    );
    expect(tooBig.rawMessage).toMatch(
      /^API key "small" allows 100 tokens per minute and this call alone needs about \d+ tokens$/,
    );
  });

  it("call log - a chat that asks to be logged can be read back whole (streamed and cut ones too); others are not kept; another tenant sees none", async () => {
    const nia = await signup("nia");
    const logged = await mp.chat(
      { ...chat("sim-fast", "Remember the code word pineapple"), log: true },
      { headers: nia.headers },
    );
    const unlogged = await mp.chat(chat("sim-fast", "not for the log"), { headers: nia.headers });
    let streamedText = "";
    let streamedId = "";
    for await (const e of mp.streamChat(
      { chat: { ...chat("sim-fast", "stream this one"), log: true } },
      { headers: nia.headers },
    )) {
      if (e.event.case === "start") streamedId = e.event.value.id;
      if (e.event.case === "delta") streamedText += e.event.value.content;
    }
    await addModel(nia, "nia-cut", "simulator", "sim-cut");
    const cut = await collect(
      mp.streamChat(
        { chat: { ...chat("nia-cut", "cut me off"), log: true } },
        { headers: nia.headers },
      ),
    );
    expect(cut.error).toBeInstanceOf(ConnectError);

    // Written after the answers, off their path: wait for all three.
    const until = Date.now() + 10_000;
    let list = await mp.listCallLogs({}, { headers: nia.headers });
    while (list.calls.length < 3 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      list = await mp.listCallLogs({}, { headers: nia.headers });
    }
    expect(list.calls.map((c) => c.status)).toEqual(["Unavailable", "OK", "OK"]);
    expect(list.calls.map((c) => c.id)).not.toContain(unlogged.id);
    const first = list.calls[2]!;
    expect(first).toMatchObject({
      id: logged.id,
      requestedModel: "sim-fast",
      model: "sim-fast",
      streaming: false,
      questionPreview: "Remember the code word pineapple",
    });
    expect(first.answerPreview).toContain("pineapple");
    expect(first.costUsd).toBe(logged.usage?.costUsd);

    const whole = await mp.getCallLog({ id: logged.id }, { headers: nia.headers });
    expect(textOf(whole.call?.request?.messages[0])).toBe("Remember the code word pineapple");
    expect(whole.call?.response?.message).toEqual(logged.message);
    const streamed = await mp.getCallLog({ id: streamedId }, { headers: nia.headers });
    expect(streamed.call?.summary?.streaming).toBe(true);
    expect(textOf(streamed.call?.response?.message)).toBe(streamedText);
    const failed = await mp.listCallLogs({ errorsOnly: true }, { headers: nia.headers });
    expect(failed.calls).toHaveLength(1);
    const cutLog = await mp.getCallLog({ id: failed.calls[0]!.id }, { headers: nia.headers });
    expect(cutLog.call?.error).toBe("the stream from nia-cut failed after it started");
    expect(textOf(cutLog.call?.response?.message).length).toBeGreaterThan(0); // what was streamed
    await expectCode(mp.getCallLog({ id: unlogged.id }, { headers: nia.headers }), Code.NotFound);

    const oscar = await signup("oscar");
    await expectCode(mp.getCallLog({ id: logged.id }, { headers: oscar.headers }), Code.NotFound);
    const theirs = await mp.listCallLogs({ allUsers: true }, { headers: oscar.headers });
    expect(theirs.calls).toEqual([]);
  });

  it("tenant settings - an admin's defaults apply to every call of the tenant: calls logged, identical calls cached; a call can still opt out", async () => {
    const pat = await signup("pat");
    const authClient = createClient(AuthService, auth.address);
    await authClient.updateTenantSettings(
      { settings: { logCalls: true, defaultCache: DefaultCache.EXACT } },
      { headers: pat.headers },
    );
    const first = await mp.chat(chat("sim-fast", "tenant defaults"), { headers: pat.headers });
    const second = await mp.chat(chat("sim-fast", "tenant defaults"), { headers: pat.headers });
    expect(first.servedBy?.cacheHit).toBe(false);
    expect(second.servedBy?.cacheHit).toBe(true);
    const bypass = await mp.chat(chat("sim-fast", "tenant defaults", { cache: CacheMode.BYPASS }), {
      headers: pat.headers,
    });
    expect(bypass.servedBy?.cacheHit).toBe(false);
    // Logged without asking: all three.
    const until = Date.now() + 10_000;
    let list = await mp.listCallLogs({}, { headers: pat.headers });
    while (list.calls.length < 3 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      list = await mp.listCallLogs({}, { headers: pat.headers });
    }
    expect(list.calls.map((c) => c.id).sort()).toEqual([first.id, second.id, bypass.id].sort());
    // Another tenant keeps the deployment's defaults: nothing cached, nothing logged.
    const quinn = await signup("quinn");
    await mp.chat(chat("sim-fast", "tenant defaults"), { headers: quinn.headers });
    const again = await mp.chat(chat("sim-fast", "tenant defaults"), { headers: quinn.headers });
    expect(again.servedBy?.cacheHit).toBe(false);
    expect((await mp.listCallLogs({}, { headers: quinn.headers })).calls).toEqual([]);
  });

  it("guardrails - PII redacted before the provider, secrets and blocked terms refused, answers with a blocked term withheld (streamed too, no part sent)", async () => {
    const gia = await signup("gia");
    await createClient(AuthService, auth.address).updateTenantSettings(
      {
        settings: {
          logCalls: true,
          guardrails: {
            redactPii: [PiiKind.EMAIL, PiiKind.CREDIT_CARD],
            blockPii: [PiiKind.SECRET],
            blockedTerms: ["Project Falcon"],
            blockedOutputTerms: ["pineapple"],
          },
        },
      },
      { headers: gia.headers },
    );
    const opts = { headers: gia.headers };
    // The simulator repeats the prompt: what it was sent shows in its answer.
    const redacted = await mp.chat(
      chat("sim-fast", "Mail jane.doe@example.com, card 4111 1111 1111 1111, thanks"),
      opts,
    );
    const said = textOf(redacted.message);
    expect(said).toContain("Mail [EMAIL], card [CREDIT_CARD], thanks");
    expect(said).not.toContain("jane.doe");
    expect(said).not.toContain("4111");
    const secret = await expectCode(
      mp.chat(chat("sim-fast", "use key sk-proj-abcdefghijklmnopqrstuvwxyz0123 please"), opts),
      Code.InvalidArgument,
    );
    expect(secret.rawMessage).toBe(
      "blocked by the tenant's guardrails: the last user message (messages[0].content[0]) contains an API key or secret, which may not be sent to a model provider",
    );
    const refused = await collect(
      mp.streamChat({ chat: chat("sim-fast", "status of PROJECT   falcon?") }, opts),
    );
    expect(refused.events).toEqual([]);
    const term = ConnectError.from(refused.error);
    expect(Code[term.code]).toBe("InvalidArgument");
    expect(term.rawMessage).toContain('contains the blocked term "PROJECT   falcon"');

    // Answers: withheld whole (unary), or cut before the term (stream) with nothing of it sent.
    const unary = await mp.chat(chat("sim-fast", "I like pineapple a lot"), opts);
    expect(unary.finishReason).toBe(FinishReason.CONTENT_FILTER);
    expect(textOf(unary.message)).toBe("");
    const streamed = await collect(
      mp.streamChat({ chat: chat("sim-fast", "I like pineapple a lot") }, opts),
    );
    expect(streamed.error).toBeUndefined();
    let sent = "";
    for (const e of streamed.events) if (e.event.case === "delta") sent += e.event.value.content;
    expect(sent).toContain('You said: "I like ');
    expect(sent.toLowerCase()).not.toContain("pine");
    const end = streamed.events.at(-1)?.event;
    expect(end?.case === "end" && end.value.finishReason).toBe(FinishReason.CONTENT_FILTER);
    // Whole words only: "pineapples" is not the blocked term; the stream sends all of it.
    const plural = await collect(
      mp.streamChat({ chat: chat("sim-fast", "I like pineapples a lot") }, opts),
    );
    let all = "";
    for (const e of plural.events) if (e.event.case === "delta") all += e.event.value.content;
    const whole = await mp.chat(chat("sim-fast", "I like pineapples a lot"), opts);
    expect(all).toBe(textOf(whole.message));
    expect(whole.finishReason).toBe(FinishReason.STOP);
    // Log probabilities go out with their tokens' text, as the guard lets the text out.
    const withLogprobs = await collect(
      mp.streamChat(
        { chat: { ...chat("sim-fast", "I like pineapples a lot"), logprobs: true } },
        opts,
      ),
    );
    let shown = "";
    let tokens = "";
    for (const e of withLogprobs.events) {
      if (e.event.case !== "delta") continue;
      shown += e.event.value.content;
      tokens += e.event.value.logprobs.map((t) => t.token).join("");
      expect(shown.startsWith(tokens)).toBe(true);
    }
    expect(shown).toBe(all);
    expect(tokens).toBe(all);

    // Embeddings are of the redacted text: the same vector another tenant gets for it.
    const [mine, plain] = await Promise.all([
      mp.embed({ model: "sim-embed", inputs: ["write to jane.doe@example.com"] }, opts),
      mp.embed({ model: "sim-embed", inputs: ["write to [EMAIL]"] }, opts),
    ]);
    expect(mine.embeddings[0]?.values).toEqual(plain.embeddings[0]?.values);

    // The call log keeps what the provider was sent, and why an answer was withheld.
    const deadline = Date.now() + 10_000;
    let logs = await mp.listCallLogs({}, opts);
    while (logs.calls.length < 5 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      logs = await mp.listCallLogs({}, opts);
    }
    const logged = await mp.getCallLog({ id: redacted.id }, opts);
    expect(textOf(logged.call?.request?.messages[0])).toBe(
      "Mail [EMAIL], card [CREDIT_CARD], thanks",
    );
    const held = await mp.getCallLog({ id: unary.id }, opts);
    expect(held.call?.error).toBe(
      'answer withheld by the tenant\'s guardrails: it contained the blocked term "pineapple"',
    );

    // Another tenant has no guardrails.
    const hal = await signup("hal");
    const free = await mp.chat(chat("sim-fast", "Mail jane.doe@example.com"), {
      headers: hal.headers,
    });
    expect(textOf(free.message)).toContain("jane.doe@example.com");
  });

  it("guardrails - a blocked output term in the reasoning or in a tool call withholds the answer, unary and streamed, and no part of it is sent", async () => {
    const ida = await signup("ida");
    await createClient(AuthService, auth.address).updateTenantSettings(
      { settings: { guardrails: { blockedOutputTerms: ["thinking", "destination"] } } },
      { headers: ida.headers },
    );
    const opts = { headers: ida.headers };
    const sent = (events: StreamChatResponse[]) => {
      let text = "";
      let reasoning = "";
      let args = "";
      for (const e of events) {
        if (e.event.case !== "delta") continue;
        text += e.event.value.content;
        reasoning += e.event.value.reasoning;
        for (const t of e.event.value.toolCalls) args += t.name + t.arguments;
      }
      return { text, reasoning, args, end: events.at(-1)?.event };
    };
    // The simulator reasons ("[simulated reasoning, low effort] Thinking about: ...") when asked
    // for an effort; its answer itself has no blocked term.
    const thinking = { ...chat("sim-fast", "What is two plus two?"), reasoningEffort: "low" };
    const unary = await mp.chat(thinking, opts);
    expect(unary.finishReason).toBe(FinishReason.CONTENT_FILTER);
    expect(unary.reasoning).toBe("");
    expect(textOf(unary.message)).toBe("");
    const streamed = sent((await collect(mp.streamChat({ chat: thinking }, opts))).events);
    expect(streamed.reasoning.toLowerCase()).not.toContain("think");
    expect(streamed.end?.case === "end" && streamed.end.value.finishReason).toBe(
      FinishReason.CONTENT_FILTER,
    );
    // Without the effort there is no reasoning, and the answer passes.
    const plain = await mp.chat(chat("sim-fast", "What is two plus two?"), opts);
    expect(plain.finishReason).toBe(FinishReason.STOP);

    // A forced tool call whose arguments hold a blocked term ({"destination": "... destination"}).
    const booking: MessageInitShape<typeof ChatRequestSchema> = {
      model: "sim-fast",
      messages: [
        { role: ChatRole.USER, content: [{ part: { case: "text", value: "Book me a trip" } }] },
      ],
      tools: [
        {
          name: "book_trip",
          parameters: { type: "object", properties: { destination: { type: "string" } } },
        },
      ],
      toolChoice: { choice: { case: "function" as const, value: "book_trip" } },
    };
    const call = await mp.chat(booking, opts);
    expect(call.finishReason).toBe(FinishReason.CONTENT_FILTER);
    expect(call.message?.toolCalls ?? []).toEqual([]);
    const streamedCall = sent((await collect(mp.streamChat({ chat: booking }, opts))).events);
    expect(streamedCall.args).toBe("");
    expect(streamedCall.end?.case === "end" && streamedCall.end.value.finishReason).toBe(
      FinishReason.CONTENT_FILTER,
    );
    // Another tenant gets the call, streamed whole.
    const jon = await signup("jon");
    const free = sent(
      (await collect(mp.streamChat({ chat: booking }, { headers: jon.headers }))).events,
    );
    expect(free.args).toContain("book_trip");
    expect(free.args).toContain("destination");
    const freeThinking = await mp.chat(thinking, { headers: jon.headers });
    expect(freeThinking.reasoning).toContain("Thinking about");
  });

  it("Embed, CountTokens and GenerateImage", async () => {
    const olga = await signup("olga");
    const emb = await mp.embed(
      {
        model: "sim-embed",
        inputs: ["red apples", "green apples", "quantum physics"],
        dimensions: 64,
        metadata: { team: "fruit" },
      },
      { headers: olga.headers },
    );
    expect(emb.embeddings.map((e) => e.values.length)).toEqual([64, 64, 64]);
    expect(emb.dimensions).toBe(64);
    const count = await mp.countTokens(
      { model: "gpt-4o-mini", text: "Hello, world!" },
      { headers: olga.headers },
    );
    expect(count).toMatchObject({
      tokens: 4n,
      exact: true,
      tokenizer: "o200k_base",
      contextWindow: 128000,
    });
    const estimate = await mp.countTokens(
      { model: "sim-fast", text: "Hello, world!" },
      { headers: olga.headers },
    );
    expect(estimate.exact).toBe(false);
    const img = await mp.generateImage(
      { model: "sim-image", prompt: "a red square", size: "64x64", metadata: { team: "fruit" } },
      { headers: olga.headers },
    );
    expect(img.images).toHaveLength(1);
    expect(Buffer.from(img.images[0]!.data.subarray(1, 4)).toString()).toBe("PNG");
    // Both calls carry their labels to the ledger.
    const deadline = Date.now() + 15_000;
    let labelled: Array<[UsageOperation, number]> = [];
    for (;;) {
      const usage = await mp.getUsage(
        {
          startTime: timestampFromMs(Date.now() - 3_600_000),
          endTime: timestampFromMs(Date.now() + 3_600_000),
          groupBy: [UsageDimension.OPERATION],
          metadata: { team: "fruit" },
        },
        { headers: olga.headers },
      );
      labelled = usage.buckets.map((b) => [b.operation, Number(b.requests)]);
      if (Number(usage.totalRequests) >= 2 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(labelled).toEqual([
      [UsageOperation.EMBED, 1],
      [UsageOperation.IMAGE, 1],
    ]);
  });
  it("prompt caching - cached and cache-written input is billed at the model's cache prices: automatic on the OpenAI API, at breakpoints on Anthropic's; GetUsage sums them", async () => {
    const pat = await signup("pat");
    const opts = { headers: pat.headers };
    const reg = createClient(RegistryService, registry.address);
    await reg.upsertModel(
      {
        model: {
          id: "anthro-cache",
          provider: "anthro",
          providerModelId: "sim-fast",
          displayName: "anthro-cache",
          capabilities: [Capability.CHAT],
          contextWindow: 128_000,
          inputPricePerMtok: 1,
          outputPricePerMtok: 2,
          cachedInputPricePerMtok: 0.1,
          cacheWritePricePerMtok: 1.25,
          cacheWrite1hPricePerMtok: 2,
          enabled: true,
        },
      },
      opts,
    );
    // Long enough for the providers' 1,024-token minimum; unique so no earlier call warmed it.
    const long = (tag: string) =>
      `${uniqueName(tag)} ` + Array.from({ length: 1300 }, (_, i) => `word${i % 97}`).join(" ");
    const n = (v: bigint | undefined) => Number(v ?? 0n);

    // OpenAI API (sim-fast: 0.1 input, 0.025 cached, 0.4 output): the repeat is cached by
    // itself, in 128-token steps from 1,024.
    const question = chat("sim-fast", long("openai"));
    const first = (await mp.chat(question, opts)).usage!;
    expect(n(first.cachedInputTokens)).toBe(0);
    const prompt = n(first.inputTokens);
    expect(prompt).toBeGreaterThan(1_200);
    expect(first.costUsd).toBeCloseTo((prompt * 0.1 + n(first.outputTokens) * 0.4) / 1e6, 12);
    const { events } = await collect(mp.streamChat({ chat: question }, opts));
    const end = events.at(-1)?.event;
    const again = (end?.case === "end" ? end.value.usage : undefined)!;
    const cached = 1_024 + 128 * Math.floor((prompt - 1_024) / 128);
    expect(n(again.cachedInputTokens)).toBe(cached);
    expect(n(again.inputTokens)).toBe(prompt);
    expect(again.costUsd).toBeCloseTo(
      ((prompt - cached) * 0.1 + cached * 0.025 + n(again.outputTokens) * 0.4) / 1e6,
      12,
    );

    // Anthropic API: only a marked prefix is cached, written (1.25) first, then read (0.1).
    const marked = {
      model: "anthro-cache",
      messages: [
        {
          role: ChatRole.SYSTEM,
          content: [
            { part: { case: "text" as const, value: long("policy") }, cacheBreakpoint: true },
          ],
        },
        {
          role: ChatRole.USER,
          content: [{ part: { case: "text" as const, value: "Summarise." } }],
        },
      ],
    };
    const write = (await mp.chat(marked, opts)).usage!;
    const prefix = n(write.cacheWriteInputTokens);
    expect(prefix).toBeGreaterThan(1_200);
    expect(n(write.cachedInputTokens)).toBe(0);
    const total = n(write.inputTokens);
    expect(total).toBeGreaterThan(prefix);
    expect(write.costUsd).toBeCloseTo(
      ((total - prefix) * 1 + prefix * 1.25 + n(write.outputTokens) * 2) / 1e6,
      12,
    );
    const read = (await mp.chat(marked, opts)).usage!;
    expect([n(read.cachedInputTokens), n(read.cacheWriteInputTokens), n(read.inputTokens)]).toEqual(
      [prefix, 0, total],
    );
    expect(read.costUsd).toBeCloseTo(
      ((total - prefix) * 1 + prefix * 0.1 + n(read.outputTokens) * 2) / 1e6,
      12,
    );
    // Kept for an hour: written at the one-hour price.
    const hour = (
      await mp.chat(
        {
          ...marked,
          messages: [
            {
              role: ChatRole.SYSTEM,
              content: [
                {
                  part: { case: "text" as const, value: long("hour") },
                  cacheBreakpoint: true,
                  cacheTtl: PromptCacheTtl.PROMPT_CACHE_TTL_1H,
                },
              ],
            },
            marked.messages[1]!,
          ],
        },
        opts,
      )
    ).usage!;
    const hourPrefix = n(hour.cacheWriteInputTokens);
    expect(hourPrefix).toBeGreaterThan(1_200);
    expect(hour.costUsd).toBeCloseTo(
      ((n(hour.inputTokens) - hourPrefix) * 1 + hourPrefix * 2 + n(hour.outputTokens) * 2) / 1e6,
      12,
    );
    // Unmarked, Anthropic caches nothing: the same full price twice.
    const unmarked = chat("anthro-cache", long("unmarked"));
    for (let i = 0; i < 2; i++) {
      const u = (await mp.chat(unmarked, opts)).usage!;
      expect([n(u.cachedInputTokens), n(u.cacheWriteInputTokens)]).toEqual([0, 0]);
    }

    // The ledger: GetUsage per model sums the counts and the costs as billed.
    const byModel = () =>
      mp.getUsage(
        {
          startTime: timestampFromMs(Date.now() - 3_600_000),
          endTime: timestampFromMs(Date.now() + 3_600_000),
          groupBy: [UsageDimension.MODEL],
        },
        opts,
      );
    const deadline = Date.now() + 15_000;
    let report = await byModel();
    while (Number(report.totalRequests) < 7 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      report = await byModel();
    }
    const bucket = (model: string) => report.buckets.find((b) => b.model === model)?.usage;
    expect(n(bucket("sim-fast")?.cachedInputTokens)).toBe(cached);
    expect(bucket("sim-fast")?.costUsd).toBeCloseTo(first.costUsd + again.costUsd, 12);
    expect(n(bucket("anthro-cache")?.cachedInputTokens)).toBe(prefix);
    expect(n(bucket("anthro-cache")?.cacheWriteInputTokens)).toBe(prefix + hourPrefix);
    expect(n(report.total?.cachedInputTokens)).toBe(cached + prefix);
  });
});
