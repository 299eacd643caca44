// Semantic routing against real processes: auth, registry, model-proxy (the simulator's
// sim-embed: deterministic vectors where shared words mean closeness) and vector-search, the
// categorizer in-process through build(deps). Tokens are real: admins and a member sign up.
import { join } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createNotices,
  type GrpcClient,
  type KitServer,
  type NatsConnection,
} from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  CategorizerService,
  Category,
  Decider,
  JudgePolicy,
  ModelProxyService,
  RegistryService,
  Role,
  RouteSchema,
  VectorSearchService,
  type RouteMatchSchema,
} from "@ensemble/proto";
import {
  captureLogs,
  mongoUrl,
  natsUrl,
  repoRoot,
  signUpTwoTenants,
  startServices,
  TEST_PASSWORD,
  uniqueName,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import type { Connection } from "mongoose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelCatalog } from "../src/catalog.js";
import { GLOBAL_TENANT, RouteStore } from "../src/route-store.js";
import { loadRouteSeeds } from "../src/seed.js";
import { ROUTES_COLLECTION, SemanticRouter } from "../src/semantic.js";
import { build, type CategorizerServerDeps } from "../src/server.js";

const BILLING_EXAMPLES = [
  "I want a refund for my subscription",
  "Why was I charged twice this month?",
  "How do I get my money back for an order?",
  "My invoice shows the wrong amount",
  "Cancel my plan and stop billing my card",
];
/** Plain M text the features send to category-m; only the examples know it is billing. */
const PARAPHRASE = "I was charged twice for my subscription, can I get my money back?";

let sim: Simulator;
let services: Services<"vectorSearch">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let vectors: MeshProcess;
let mongo: Connection;
let nc: NatsConnection;
let routeStore: RouteStore;
let authClient: GrpcClient<typeof AuthService>;
let semanticServer: KitServer;
let offServer: KitServer;
let client: GrpcClient<typeof CategorizerService>;
let offClient: GrpcClient<typeof CategorizerService>;
let vs: GrpcClient<typeof VectorSearchService>;
let adminA: string;
let memberA: string;
let adminB: string;
const logs = captureLogs({ level: "info" });

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function classify(token: string, text: string, via = client) {
  const res = await via.classify({ text, judge: JudgePolicy.NEVER }, as(token));
  const c = res.classification;
  if (c === undefined) throw new Error("no classification");
  return c;
}

async function upsert(
  token: string,
  id: string,
  examples: string[],
  model: string,
  match?: MessageInitShape<typeof RouteMatchSchema>,
) {
  return client.upsertRoute(
    {
      route: {
        id,
        name: id,
        enabled: true,
        examples,
        target: { target: { case: "model", value: model } },
        ...(match !== undefined ? { match } : {}),
      },
    },
    as(token),
  );
}

/** The examples vector-search holds for a route in the caller's tenant (its nearest ones). */
async function storedExamples(token: string, routeId: string, text: string): Promise<string[]> {
  try {
    const res = await vs.search(
      {
        collectionId: ROUTES_COLLECTION,
        text,
        k: 50,
        filter: {
          must: [
            {
              field: "route_id",
              test: { case: "eq", value: { kind: { case: "stringValue", value: routeId } } },
            },
          ],
        },
      },
      as(token),
    );
    return res.hits.map((h) => {
      const example = h.metadata?.["example"];
      return typeof example === "string" ? example : "";
    });
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.NotFound) return [];
    throw err;
  }
}

beforeAll(async () => {
  sim = await startSimulator();
  services = await startServices({ simulatorUrl: `${sim.url}/v1`, vectorSearch: {} });
  ({ auth, registry, modelProxy: proxy, vectorSearch: vectors } = services);
  vs = createClient(VectorSearchService, vectors.address);

  mongo = await connectMongo({
    url: mongoUrl(),
    dbName: uniqueName("categorizer"),
    logger: logs.logger,
  });
  nc = await connectNats({ url: natsUrl(), name: "categorizer-test", logger: logs.logger });
  const routes = await RouteStore.open(mongo, { cacheTtlMs: 60_000 });
  routeStore = routes;
  await loadRouteSeeds(join(repoRoot, "deploy/config/routes.yaml"), routes, logs.logger);
  const deps: CategorizerServerDeps = {
    version: "test",
    logger: logs.logger,
    verifier: createJwksVerifier({ jwksUrl: auth.jwksUrl }),
    routes,
    catalog: new ModelCatalog(createClient(RegistryService, registry.address), { ttlMs: 30_000 }),
    modelProxy: createClient(ModelProxyService, proxy.address),
    judge: { model: undefined, threshold: 0.6, weight: 0.6, timeoutMs: 10_000 },
    exactCountMargin: 0.25,
    notices: createNotices(nc, logs.logger),
  };
  semanticServer = build({
    ...deps,
    semantic: new SemanticRouter(
      vs,
      {
        embeddingModel: "sim-embed",
        dimensions: 1536,
        k: 8,
        minSimilarity: 0.5,
        searchTimeoutMs: 5_000,
        missingTtlMs: 60_000,
      },
      logs.logger,
    ),
  });
  // Same database, no vector-search: what a categorizer without VECTOR_SEARCH_ADDR does.
  offServer = build(deps);
  client = createClient(
    CategorizerService,
    `127.0.0.1:${await semanticServer.listen("127.0.0.1:0")}`,
  );
  offClient = createClient(
    CategorizerService,
    `127.0.0.1:${await offServer.listen("127.0.0.1:0")}`,
  );

  authClient = createClient(AuthService, auth.address);
  ({ adminA, memberA, adminB } = await signUpTwoTenants(authClient, "semantic", Role.USER));
}, 240_000);

afterAll(async () => {
  await semanticServer?.shutdown({ timeoutMs: 2_000 });
  await offServer?.shutdown({ timeoutMs: 2_000 });
  await mongo?.dropDatabase().catch(() => undefined);
  if (mongo !== undefined) await closeMongo(mongo);
  await nc?.drain();
  await services?.stop();
  await sim?.close();
});

describe("semantic routing", () => {
  it("semantic - a route's examples catch a paraphrase the rules miss; decided SEMANTIC with the matches", async () => {
    const before = await classify(memberA, PARAPHRASE);
    expect(before.routeId).toBe("category-m");

    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium");

    // A member's token searches the tenant's collection; the category still comes from features.
    const c = await classify(memberA, PARAPHRASE);
    expect(c.routeId).toBe("billing-support");
    expect(c.route?.target).toEqual({ case: "model", value: "sim-medium" });
    expect(c.decidedBy).toBe(Decider.SEMANTIC);
    expect(c.category).toBe(Category.M);
    expect(c.semanticMatches.length).toBeGreaterThan(0);
    const top = c.semanticMatches[0];
    expect(top?.routeId).toBe("billing-support");
    expect(BILLING_EXAMPLES).toContain(top?.example);
    expect(top?.similarity).toBeGreaterThanOrEqual(0.5);
    expect(c.reasons.join("\n")).toMatch(/semantic route billing-support/);

    // Without vector-search the same stored route (examples only) never matches.
    const off = await classify(memberA, PARAPHRASE, offClient);
    expect(off.routeId).toBe("category-m");
    expect(off.decidedBy).toBe(Decider.FEATURES);
  });

  it("semantic - below the threshold the features decide, with no matches reported", async () => {
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium");
    const far = await classify(memberA, "What's the capital of Peru?");
    expect(far.routeId).toBe("category-m");
    expect(far.decidedBy).toBe(Decider.FEATURES);
    expect(far.semanticMatches).toEqual([]);

    // The route's own min_similarity overrides the service default.
    const strict: MessageInitShape<typeof RouteMatchSchema> = { minSimilarity: 0.95 };
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium", strict);
    const c = await classify(memberA, PARAPHRASE);
    expect(c.routeId).toBe("category-m");
    expect(c.decidedBy).toBe(Decider.FEATURES);
    expect(c.semanticMatches).toEqual([]);
    expect(c.reasons.join("\n")).toMatch(/route billing-support .*below its threshold 0\.95/);
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium");
  });

  it("semantic - explicit conditions still apply to a route with examples", async () => {
    const match: MessageInitShape<typeof RouteMatchSchema> = { categories: [Category.L] };
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium", match);
    const c = await classify(memberA, PARAPHRASE);
    expect(c.routeId).toBe("category-m");
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium");
    expect((await classify(memberA, PARAPHRASE)).routeId).toBe("billing-support");
  });

  it("semantic - tenant B never gets tenant A's examples", async () => {
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium");
    // B has no semantic route at all: nothing is searched.
    const none = await classify(adminB, PARAPHRASE);
    expect(none.routeId).toBe("category-m");
    expect(none.semanticMatches).toEqual([]);

    // B's own semantic route: its search only sees B's collection.
    await upsert(
      adminB,
      "it-helpdesk",
      ["I forgot my password", "The VPN keeps dropping"],
      "sim-fast",
    );
    const b = await classify(adminB, PARAPHRASE);
    expect(b.routeId).toBe("category-m");
    for (const m of b.semanticMatches) expect(BILLING_EXAMPLES).not.toContain(m.example);
    expect(await storedExamples(adminB, "billing-support", PARAPHRASE)).toEqual([]);
    expect((await classify(adminB, "I forgot my password, please help")).routeId).toBe(
      "it-helpdesk",
    );
  });

  it("semantic - changed examples replace the old ones, deleting the route removes them", async () => {
    await upsert(adminA, "billing-support", BILLING_EXAMPLES, "sim-medium");
    expect((await storedExamples(adminA, "billing-support", PARAPHRASE)).sort()).toEqual(
      [...BILLING_EXAMPLES].sort(),
    );

    await upsert(adminA, "billing-support", ["Where is my invoice for March?"], "sim-medium");
    expect(await storedExamples(adminA, "billing-support", PARAPHRASE)).toEqual([
      "Where is my invoice for March?",
    ]);
    expect((await classify(memberA, PARAPHRASE)).routeId).toBe("category-m");

    await client.deleteRoute({ id: "billing-support" }, as(adminA));
    expect(await storedExamples(adminA, "billing-support", PARAPHRASE)).toEqual([]);
    const c = await classify(memberA, "Where is my invoice for March?");
    expect(c.routeId).not.toBe("billing-support");
    expect(c.semanticMatches).toEqual([]);
  });

  it("semantic - a global route's examples reach a tenant once its admin writes a route; a tenant route shadowing it silences them", async () => {
    const travel = "Book me a flight to Lisbon and a hotel near the airport";
    await routeStore.upsert(
      GLOBAL_TENANT,
      create(RouteSchema, {
        id: "global-travel",
        enabled: true,
        examples: ["Book a flight and a hotel for my trip", "Find me a cheap flight to Paris"],
        target: { target: { case: "model", value: "sim-thinking" } },
      }),
    );
    try {
      const c = await authClient.signup({
        email: `sem-admin-c-${Date.now()}@example.com`,
        password: TEST_PASSWORD,
        tenant: { case: "tenantName", value: "semantic C" },
      });
      const adminC = c.tokens?.accessToken ?? "";
      // No collection for C yet: the global route is judged without its examples.
      expect((await classify(adminC, travel)).routeId).toBe("category-m");

      await client.upsertRoute(
        {
          route: {
            id: "unrelated",
            enabled: true,
            match: { keywords: ["zzzz"] },
            target: { target: { case: "model", value: "sim-fast" } },
          },
        },
        as(adminC),
      );
      const routed = await classify(adminC, travel);
      expect(routed.routeId).toBe("global-travel");
      expect(routed.decidedBy).toBe(Decider.SEMANTIC);
      expect(routed.semanticMatches[0]?.example).toBe("Book a flight and a hotel for my trip");

      // C's own route with the id shadows the global one; the copied examples no longer vote.
      await client.upsertRoute(
        {
          route: {
            id: "global-travel",
            enabled: true,
            match: { keywords: ["zzzz"] },
            target: { target: { case: "model", value: "sim-fast" } },
          },
        },
        as(adminC),
      );
      const shadowed = await classify(adminC, travel);
      expect(shadowed.routeId).toBe("category-m");
      expect(shadowed.semanticMatches).toEqual([]);
    } finally {
      await routeStore.delete(GLOBAL_TENANT, "global-travel");
    }
  });
});
