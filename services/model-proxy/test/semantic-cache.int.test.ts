// CACHE_MODE_SEMANTIC end to end: auth, the registry, vector-search and model-proxy as built
// processes, the LLM simulator as the chat and embedding provider (its embeddings are bags of
// words: the same words in another case or order are ~identical, "France" vs "Germany" ~0.86),
// real NATS KV for the answers and the MongoDB-wire server under vector-search.
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  CacheMode,
  ChatRole,
  ModelProxyService,
  UsageDimension,
  VectorSearchService,
  type ChatRequestSchema,
  type ChatResponse,
} from "@ensemble/proto";
import {
  freePort,
  startAuthProcess,
  startModelProxyProcess,
  startRegistryProcess,
  startVectorSearchProcess,
  uniqueName,
  type AuthProcess,
  type MeshProcess,
} from "@ensemble/testkit";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

let auth: AuthProcess;
let registry: MeshProcess;
let vectors: MeshProcess;
let proxy: MeshProcess;
let sim: Simulator;
let vectorAddress: string;
let mp: GrpcClient<typeof ModelProxyService>;

async function signup(label: string): Promise<{ authorization: string }> {
  const res = await createClient(AuthService, auth.address).signup({
    email: `${uniqueName(label)}@example.com`,
    password: "correct-Horse-battery-9",
  });
  return { authorization: `Bearer ${res.tokens?.accessToken ?? ""}` };
}

function ask(
  text: string,
  cache: CacheMode,
  system = "You are terse.",
): MessageInitShape<typeof ChatRequestSchema> {
  return {
    model: "sim-fast",
    cache,
    messages: [
      { role: ChatRole.SYSTEM, content: [{ part: { case: "text", value: system } }] },
      { role: ChatRole.USER, content: [{ part: { case: "text", value: text } }] },
    ],
  };
}

const answerOf = (res: ChatResponse) =>
  (res.message?.content ?? []).map((p) => (p.part.case === "text" ? p.part.value : "")).join("");

beforeAll(async () => {
  [auth, sim] = await Promise.all([startAuthProcess(), startSimulator({})]);
  registry = await startRegistryProcess({ jwksUrl: auth.jwksUrl });
  // model-proxy and vector-search each call the other: vector-search's port is chosen first.
  vectorAddress = `127.0.0.1:${await freePort()}`;
  proxy = await startModelProxyProcess({
    jwksUrl: auth.jwksUrl,
    authAddress: auth.address,
    registryAddress: registry.address,
    simulatorUrl: `${sim.url}/v1`,
    env: {
      VECTOR_SEARCH_ADDR: vectorAddress,
      CACHE_SEMANTIC_MODEL: "sim-embed",
      CACHE_SEMANTIC_MIN_SIMILARITY: "0.95",
    },
  });
  vectors = await startVectorSearchProcess({
    jwksUrl: auth.jwksUrl,
    modelProxyAddress: proxy.address,
    env: { VECTOR_SEARCH_ADDR: vectorAddress },
  });
  mp = createClient(ModelProxyService, proxy.address);
}, 240_000);

afterAll(async () => {
  await Promise.all([proxy?.stop(), vectors?.stop()]);
  await Promise.all([registry?.stop(), auth?.stop(), sim?.close()]);
});

/** Waits until the question asked last is findable (the answer is stored after it is sent). */
async function stored(headers: { authorization: string }, documents: number): Promise<void> {
  const client = createClient(VectorSearchService, vectorAddress);
  const until = Date.now() + 10_000;
  for (;;) {
    const stats = await client
      .stats({ collectionId: "ensemble.response-cache.sim-embed" }, { headers })
      .catch((err: unknown) => {
        if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
        throw err;
      });
    if (Number(stats?.documents ?? 0) >= documents) return;
    if (Date.now() > until) throw new Error(`the cache holds fewer than ${documents} questions`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("semantic response cache", () => {
  it("semantic - a similar question is answered from the cache at zero cost; another question, system prompt, mode, user or tenant is not", async () => {
    const ann = await signup("ann");
    const first = await mp.chat(ask("What is the capital of France?", CacheMode.SEMANTIC), {
      headers: ann,
    });
    expect(first.servedBy?.cacheHit).toBe(false);
    expect(first.usage?.costUsd).toBeGreaterThan(0);
    await stored(ann, 1);

    const chats = () => sim.requests("sim-fast");
    const before = chats();
    const similar = await mp.chat(ask("what is the CAPITAL of france", CacheMode.SEMANTIC), {
      headers: ann,
    });
    expect(chats()).toBe(before); // no chat call reached the provider
    expect(answerOf(similar)).toBe(answerOf(first));
    expect(similar.servedBy).toMatchObject({ cacheHit: true, model: "sim-fast" });
    expect(similar.servedBy?.cacheSimilarity).toBeGreaterThanOrEqual(0.95);
    expect(similar.servedBy?.cacheSimilarity).toBeLessThanOrEqual(1);
    expect(similar.usage?.costUsd).toBe(0);
    expect(similar.id).not.toBe(first.id);

    // Streamed, the hit is one delta with the same text.
    let streamed = "";
    let streamedHit = false;
    for await (const e of mp.streamChat(
      { chat: ask("WHAT is the capital of France", CacheMode.SEMANTIC) },
      { headers: ann },
    )) {
      if (e.event.case === "start") streamedHit = e.event.value.servedBy?.cacheHit ?? false;
      if (e.event.case === "delta") streamed += e.event.value.content;
    }
    expect(streamedHit).toBe(true);
    expect(streamed).toBe(answerOf(first));
    expect(chats()).toBe(before);

    // Close in words, not in meaning (0.86 here): asked.
    const germany = await mp.chat(ask("What is the capital of Germany?", CacheMode.SEMANTIC), {
      headers: ann,
    });
    expect(germany.servedBy?.cacheHit).toBe(false);
    expect(answerOf(germany)).toContain("Germany");
    // Another system prompt is another conversation.
    const pirate = await mp.chat(
      ask("what is the capital of france", CacheMode.SEMANTIC, "Answer like a pirate."),
      { headers: ann },
    );
    expect(pirate.servedBy?.cacheHit).toBe(false);
    // The exact cache alone does not take a similar question.
    const exact = await mp.chat(ask("what is the capital of FRANCE", CacheMode.USE), {
      headers: ann,
    });
    expect(exact.servedBy?.cacheHit).toBe(false);
    // Nor does another user of the same tenant: similar questions can differ in what makes an
    // answer someone's own, so the semantic cache is per user (the exact one is per tenant).
    const auth1 = createClient(AuthService, auth.address);
    const { token: invite } = await auth1.createInvite({}, { headers: ann });
    const joined = await auth1.signup({
      email: `${uniqueName("dee")}@example.com`,
      password: "correct-Horse-battery-9",
      tenant: { case: "inviteToken", value: invite },
    });
    const dee = { authorization: `Bearer ${joined.tokens?.accessToken ?? ""}` };
    const colleague = await mp.chat(ask("what is the capital of france", CacheMode.SEMANTIC), {
      headers: dee,
    });
    expect(colleague.servedBy?.cacheHit).toBe(false);
    // Another tenant never sees this tenant's answers.
    const bob = await signup("bob");
    const other = await mp.chat(ask("What is the capital of France?", CacheMode.SEMANTIC), {
      headers: bob,
    });
    expect(other.servedBy?.cacheHit).toBe(false);
    expect(chats()).toBe(before + 5);

    // What an operator tunes the threshold by: lookups by result, and how close the nearest
    // cached question was (the Germany miss included).
    const port = /"metricsPort":(\d+)/.exec(proxy.output())?.[1];
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const value = (line: string) =>
      Number(
        metrics
          .split("\n")
          .find((l) => l.startsWith(line))
          ?.split(" ")
          .pop() ?? "0",
      );
    expect(value('ensemble_model_proxy_cache_lookups_total{kind="semantic",result="hit"}')).toBe(2);
    expect(
      value('ensemble_model_proxy_cache_lookups_total{kind="semantic",result="miss"}'),
    ).toBeGreaterThanOrEqual(3);
    expect(
      value('ensemble_model_proxy_semantic_cache_similarity_bucket{le="0.9"}'),
    ).toBeGreaterThanOrEqual(1);

    // Each of ann's five semantic lookups embedded its question once, billed as an embedding
    // call (the USE call embedded nothing).
    const until = Date.now() + 10_000;
    for (;;) {
      const usage = await mp.getUsage(
        {
          startTime: timestampFromMs(Date.now() - 3_600_000),
          endTime: timestampFromMs(Date.now() + 3_600_000),
          groupBy: [UsageDimension.MODEL],
          model: "sim-embed",
        },
        { headers: ann },
      );
      if (Number(usage.totalRequests) === 5 || Date.now() > until) {
        expect(Number(usage.totalRequests)).toBe(5);
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  it("semantic - a tenant's own threshold: looser answers a question close in words from the cache, back to the default it does not; a nonsense threshold is refused", async () => {
    const bo = await signup("bo");
    const admin = createClient(AuthService, auth.address);
    const threshold = (value: number) =>
      admin.updateTenantSettings(
        {
          settings: { semanticCacheMinSimilarity: value },
          updateMask: { paths: ["semantic_cache_min_similarity"] },
        },
        { headers: bo },
      );
    const france = await mp.chat(ask("What is the capital of France?", CacheMode.SEMANTIC), {
      headers: bo,
    });
    await stored(bo, 1);
    const germany = () =>
      mp.chat(ask("What is the capital of Germany?", CacheMode.SEMANTIC), { headers: bo });

    // 0.8: "Germany" (0.86 to the cached question) is close enough for this tenant.
    expect((await threshold(0.8)).settings?.semanticCacheMinSimilarity).toBe(0.8);
    const loose = await germany();
    expect(loose.servedBy?.cacheHit).toBe(true);
    expect(loose.servedBy?.cacheSimilarity).toBeLessThan(0.95);
    expect(answerOf(loose)).toBe(answerOf(france));

    // Back to the service's 0.95: asked again.
    await threshold(0);
    const strict = await germany();
    expect(strict.servedBy?.cacheHit).toBe(false);
    expect(answerOf(strict)).toContain("Germany");

    const refused = await threshold(0.3).then(
      () => undefined,
      (err: unknown) => ConnectError.from(err),
    );
    expect(refused?.code).toBe(Code.InvalidArgument);
    expect(refused?.rawMessage).toContain("settings.semantic_cache_min_similarity");
  });

  it("semantic - with vector-search down a semantic call is still answered (a miss), never failed", async () => {
    const cy = await signup("cy");
    await vectors.stop();
    const res = await mp.chat(ask("Is the semantic cache optional?", CacheMode.SEMANTIC), {
      headers: cy,
    });
    expect(res.servedBy?.cacheHit).toBe(false);
    expect(answerOf(res)).toContain("semantic cache");
    expect(proxy.output()).toMatch(/semantic cache lookup failed; a miss/);
  });
});
