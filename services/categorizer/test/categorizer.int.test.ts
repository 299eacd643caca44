// The categorizer against the real mesh: auth, registry (seeded from deploy/config) and
// model-proxy as built processes, the LLM simulator as the only provider, and the categorizer
// in-process through build(deps) with its own database on the test kit's MongoDB-wire server.
// Tokens are real: users sign up through auth.
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
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
  Modality,
  ModelProxyService,
  RegistryService,
  Role,
  type ClassifyRequest,
} from "@ensemble/proto";
import {
  captureLogs,
  mongoUrl,
  natsUrl,
  rejection,
  repoRoot,
  signUpTwoTenants,
  startServices,
  uniqueName,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import type { Connection } from "mongoose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelCatalog } from "../src/catalog.js";
import { RouteStore } from "../src/route-store.js";
import { loadRouteSeeds } from "../src/seed.js";
import { build, type CategorizerServerDeps } from "../src/server.js";

let sim: Simulator;
let services: Services;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let mongo: Connection;
let nc: NatsConnection;
let withJudge: KitServer;
let withoutJudge: KitServer;
let judged: GrpcClient<typeof CategorizerService>;
let plain: GrpcClient<typeof CategorizerService>;
let adminA: string;
let memberA: string;
let adminB: string;

type Req = Parameters<GrpcClient<typeof CategorizerService>["classify"]>[0];
const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function classify(token: string, req: Req, client = plain) {
  const res = await client.classify({ judge: JudgePolicy.NEVER, ...req }, as(token));
  const c = res.classification;
  if (c === undefined) throw new Error("no classification");
  return c;
}

beforeAll(async () => {
  sim = await startSimulator();
  services = await startServices({ simulatorUrl: `${sim.url}/v1` });
  ({ auth, registry, modelProxy: proxy } = services);

  const logger = captureLogs({ level: "warn" }).logger;
  mongo = await connectMongo({ url: mongoUrl(), dbName: uniqueName("categorizer"), logger });
  nc = await connectNats({ url: natsUrl(), name: "categorizer-test", logger });
  const routes = await RouteStore.open(mongo, { cacheTtlMs: 60_000 });
  await loadRouteSeeds(join(repoRoot, "deploy/config/routes.yaml"), routes, logger);
  const deps: CategorizerServerDeps = {
    version: "test",
    logger,
    verifier: createJwksVerifier({ jwksUrl: auth.jwksUrl }),
    routes,
    catalog: new ModelCatalog(createClient(RegistryService, registry.address), { ttlMs: 30_000 }),
    modelProxy: createClient(ModelProxyService, proxy.address),
    judge: { model: undefined, threshold: 0.6, weight: 0.6, timeoutMs: 10_000 },
    exactCountMargin: 0.25,
    notices: createNotices(nc, logger),
  };
  withoutJudge = build(deps);
  withJudge = build({ ...deps, judge: { ...deps.judge, model: "sim-fast" } });
  plain = createClient(CategorizerService, `127.0.0.1:${await withoutJudge.listen("127.0.0.1:0")}`);
  judged = createClient(CategorizerService, `127.0.0.1:${await withJudge.listen("127.0.0.1:0")}`);

  const authClient = createClient(AuthService, auth.address);
  ({ adminA, memberA, adminB } = await signUpTwoTenants(authClient, "categorizer", Role.USER));
}, 240_000);

afterAll(async () => {
  await withJudge?.shutdown({ timeoutMs: 2_000 });
  await withoutJudge?.shutdown({ timeoutMs: 2_000 });
  await mongo?.dropDatabase().catch(() => undefined);
  if (mongo !== undefined) await closeMongo(mongo);
  await nc?.drain();
  await services?.stop();
  await sim?.close();
});

describe("categorizer - categories and modalities go where the routes say", () => {
  const cases: Array<{
    name: string;
    req: Partial<ClassifyRequest>;
    category: Category;
    modality: Modality;
    routeId: string;
    target: { case: "model" | "templateId"; value: string };
  }> = [
    {
      name: "M text -> fast",
      req: { text: "What's the capital of Peru?" },
      category: Category.M,
      modality: Modality.TEXT,
      routeId: "category-m",
      target: { case: "model", value: "fast" },
    },
    {
      name: "L text -> thinking",
      req: {
        text: "Prove that there is no largest prime, and derive a bound on the gap between consecutive primes.",
      },
      category: Category.L,
      modality: Modality.TEXT,
      routeId: "category-l",
      target: { case: "model", value: "thinking" },
    },
    {
      name: "H marketing -> marketing_campaign",
      req: {
        text: "We're launching our oat-milk brand: write a press release, a landing page, five social media posts and an email sequence, then review everything for tone.",
      },
      category: Category.H,
      modality: Modality.TEXT,
      routeId: "marketing-campaign",
      target: { case: "templateId", value: "marketing_campaign" },
    },
    {
      name: "H report -> research_report",
      req: {
        text: "Research the evidence on four-day work weeks, compare the main studies, draft a report with an executive summary and sources, then review it for gaps.",
      },
      category: Category.H,
      modality: Modality.TEXT,
      routeId: "category-h",
      target: { case: "templateId", value: "research_report" },
    },
    {
      name: "H code -> code_project",
      req: {
        text: "Build a URL shortener from scratch: a Go backend with PostgreSQL, a React frontend, unit tests, a Dockerfile and a README.",
      },
      category: Category.H,
      modality: Modality.CODE,
      routeId: "code-project",
      target: { case: "templateId", value: "code_project" },
    },
    {
      name: "M code -> code",
      req: { text: "Write a Python function that reverses the words of a sentence." },
      category: Category.M,
      modality: Modality.CODE,
      routeId: "code",
      target: { case: "model", value: "code" },
    },
    {
      name: "image input -> vision",
      req: { text: "What breed is this dog?", attachmentMimeTypes: ["image/jpeg"] },
      category: Category.M,
      modality: Modality.IMAGE_INPUT,
      routeId: "image-input",
      target: { case: "model", value: "vision" },
    },
    {
      name: "image generation -> image",
      req: { text: "Generate an image of a lighthouse in a storm, oil painting style." },
      category: Category.M,
      modality: Modality.IMAGE_GENERATION,
      routeId: "image-generation",
      target: { case: "model", value: "image" },
    },
    {
      name: "video -> video",
      req: { text: "Make a short video of a paper boat drifting down a rainy street." },
      category: Category.M,
      modality: Modality.VIDEO,
      routeId: "video-generation",
      target: { case: "model", value: "video" },
    },
  ];

  for (const c of cases) {
    it(`classify - ${c.name}`, async () => {
      const got = await classify(memberA, c.req as Req);
      expect(Category[got.category]).toBe(Category[c.category]);
      expect(Modality[got.modality]).toBe(Modality[c.modality]);
      expect(got.routeId).toBe(c.routeId);
      expect(got.route?.target).toEqual(c.target);
      expect(got.confidence).toBeGreaterThan(0.34);
      expect(got.reasons.length).toBeGreaterThan(1);
      expect(got.reasons.join("\n")).toContain(`route ${c.routeId}`);
      expect(got.estimatedInputTokens).toBeGreaterThan(0n);
      expect(got.decisionTime).toBeDefined();
    });
  }

  it("classify - modality routes report a rule decision, category defaults the features", async () => {
    const image = await classify(memberA, {
      text: "Describe this photo.",
      attachmentMimeTypes: ["image/png"],
    });
    expect(image.decidedBy).toBe(Decider.RULE);
    const plainText = await classify(memberA, { text: "Who wrote Dracula?" });
    expect(plainText.decidedBy).toBe(Decider.FEATURES);
  });

  it("classify - chat_only passes over the image and video models: a chat gets a model that answers in text", async () => {
    for (const text of [
      "Generate an image of a lighthouse in a storm, oil painting style.",
      "Make a short video of a paper boat drifting down a rainy street.",
    ]) {
      const got = await classify(memberA, { text, allowedKinds: { model: true }, chatOnly: true });
      expect(got.route?.target).toEqual({ case: "model", value: "fast" });
      expect(got.reasons.join("\n")).toMatch(
        /route (image|video)-generation skipped: model \S+ cannot chat/,
      );
      expect(got.estimatedOutputTokens).toBeGreaterThan(0n);
    }
  });

  it("classify - a caller that accepts only models gets a model for a multi-part request", async () => {
    const got = await classify(memberA, {
      text: "Research the evidence on four-day work weeks, compare the main studies, draft a report with an executive summary and sources, then review it for gaps.",
      allowedKinds: { model: true },
    });
    expect(got.category).toBe(Category.H);
    expect(got.route?.target).toEqual({ case: "model", value: "medium" });
    expect(got.routeId).toBe("category-h-model");
  });

  it("classify - without a token the call is refused", async () => {
    const err = await rejection(plain.classify({ text: "hello" }));
    expect(err.code).toBe(Code.Unauthenticated);
  });
});

describe("categorizer - routes per tenant", () => {
  const question = "What's the tallest mountain in Africa?";

  it("an admin's route change is followed by Classify in that tenant only, and deleting it restores the global route", async () => {
    expect((await classify(memberA, { text: question })).route?.target).toEqual({
      case: "model",
      value: "fast",
    });

    const upserted = await plain.upsertRoute(
      {
        route: {
          id: "category-m",
          name: "Simple questions on the medium model",
          priority: 0,
          match: { categories: [Category.M] },
          target: { target: { case: "model", value: "medium" } },
          enabled: true,
        },
      },
      as(adminA),
    );
    expect(upserted.route?.tenantId).not.toBe("");

    const a = await classify(memberA, { text: question });
    expect(a.route?.target).toEqual({ case: "model", value: "medium" });
    expect(a.routeId).toBe("category-m");
    const b = await classify(adminB, { text: question });
    expect(b.route?.target).toEqual({ case: "model", value: "fast" });

    const listed = await plain.listRoutes({}, as(memberA));
    const mine = listed.routes.filter((r) => r.id === "category-m");
    expect(mine).toHaveLength(1); // the tenant's shadows the global one
    expect(mine[0]?.target?.target.value).toBe("medium");
    const listedB = await plain.listRoutes({}, as(adminB));
    expect(listedB.routes.find((r) => r.id === "category-m")?.tenantId).toBe("");

    await plain.deleteRoute({ id: "category-m" }, as(adminA));
    expect((await classify(memberA, { text: question })).route?.target).toEqual({
      case: "model",
      value: "fast",
    });
  });

  it("a keyword route of a tenant wins over the category and is reported as a rule", async () => {
    await plain.upsertRoute(
      {
        route: {
          id: "legal-desk",
          priority: 300,
          match: { keywords: ["indemnity clause"] },
          target: { target: { case: "model", value: "thinking" } },
          enabled: true,
        },
      },
      as(adminB),
    );
    const got = await classify(adminB, { text: "What is an indemnity clause?" });
    expect(got.routeId).toBe("legal-desk");
    expect(got.decidedBy).toBe(Decider.RULE);
    expect((await classify(memberA, { text: "What is an indemnity clause?" })).routeId).toBe(
      "category-m",
    );
  });

  it("replicas - a route changed through one replica decides the very next Classify on another, though its cache would keep the old routes a minute", async () => {
    // Another replica: its own route cache (60 s) and catalog cache, the same database.
    const logger = captureLogs({ level: "silent" }).logger;
    const replica = build({
      version: "test",
      logger,
      verifier: createJwksVerifier({ jwksUrl: auth.jwksUrl }),
      routes: await RouteStore.open(mongo, { cacheTtlMs: 60_000 }),
      catalog: new ModelCatalog(createClient(RegistryService, registry.address), { ttlMs: 30_000 }),
      modelProxy: createClient(ModelProxyService, proxy.address),
      judge: { model: undefined, threshold: 0.6, weight: 0.6, timeoutMs: 10_000 },
      exactCountMargin: 0,
      notices: createNotices(nc, logger),
    });
    try {
      const other = createClient(
        CategorizerService,
        `127.0.0.1:${await replica.listen("127.0.0.1:0")}`,
      );
      const text = "Please review the escrow schedule for me.";
      expect((await classify(adminA, { text }, other)).routeId).not.toBe("escrow-desk");
      await plain.upsertRoute(
        {
          route: {
            id: "escrow-desk",
            priority: 400,
            match: { keywords: ["escrow schedule"] },
            target: { target: { case: "model", value: "thinking" } },
            enabled: true,
          },
        },
        as(adminA),
      );
      expect((await classify(adminA, { text }, other)).routeId).toBe("escrow-desk");
      await plain.deleteRoute({ id: "escrow-desk" }, as(adminA));
      expect((await classify(adminA, { text }, other)).routeId).not.toBe("escrow-desk");
    } finally {
      await replica.shutdown({ timeoutMs: 2_000 });
    }
  });

  it("a non-admin cannot change routes (PERMISSION_DENIED), nor can anyone point one at a model the catalog lacks", async () => {
    const route = {
      id: "mine",
      match: { categories: [Category.M] },
      target: { target: { case: "model" as const, value: "fast" } },
      enabled: true,
    };
    expect((await rejection(plain.upsertRoute({ route }, as(memberA)))).code).toBe(
      Code.PermissionDenied,
    );
    expect((await rejection(plain.deleteRoute({ id: "category-m" }, as(memberA)))).code).toBe(
      Code.PermissionDenied,
    );

    const unknown = await rejection(
      plain.upsertRoute(
        { route: { ...route, target: { target: { case: "model", value: "no-such-model" } } } },
        as(adminA),
      ),
    );
    expect(unknown.code).toBe(Code.InvalidArgument);
    expect(unknown.rawMessage).toContain("no-such-model");

    const global = await rejection(plain.deleteRoute({ id: "category-l" }, as(adminA)));
    expect(global.code).toBe(Code.NotFound);
    expect(global.rawMessage).toContain("global route");
  });

  it("GetRoute returns the route in effect; an unknown id is NOT_FOUND", async () => {
    const got = await plain.getRoute({ id: "image-input" }, as(memberA));
    expect(got.route?.target?.target).toEqual({ case: "model", value: "vision" });
    expect((await rejection(plain.getRoute({ id: "nope" }, as(memberA)))).code).toBe(Code.NotFound);
  });
});

describe("categorizer - context windows", () => {
  const hard = "Prove that every planar graph is five-colourable, rigorously.";

  it("a request too large for the route's model is upgraded to a larger-context model of the same role", async () => {
    // thinking = o4-mini (200k); the conversation context pushes it past that.
    const got = await classify(memberA, { text: hard, contextTokens: 300_000n });
    expect(got.category).toBe(Category.L);
    expect(got.upgradedForContext).toBe(true);
    expect(got.route?.target.case).toBe("model");
    expect(got.route?.target.value).not.toBe("thinking");
    expect(got.estimatedInputTokens).toBeGreaterThan(300_000n);
    expect(got.reasons.join("\n")).toMatch(/upgraded to .* \(context window \d+\)/);
  });

  it("a request no model of the role can hold is refused with INVALID_ARGUMENT and a clear message", async () => {
    const err = await rejection(classify(memberA, { text: hard, contextTokens: 5_000_000n }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/needs about \d+ tokens .* context window/);
  });

  it("with an API key limited to some models, the upgrade only picks a model the key may call", async () => {
    const authClient = createClient(AuthService, auth.address);
    const made = await authClient.createApiKey(
      { name: "thinking only", limits: { models: ["thinking"] } },
      as(adminA),
    );
    const exchanged = await authClient.authenticateApiKey(
      { apiKey: made.secret },
      as(await auth.mintServiceToken("gateway")),
    );
    // Too large for the thinking role's model, and the larger ones of the role are not the key's.
    const err = await rejection(
      classify(exchanged.accessToken, { text: hard, contextTokens: 300_000n }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(
      /no model of the same role that this API key may call has a larger one/,
    );
    // Within the window, the key's own model answers.
    const fits = await classify(exchanged.accessToken, { text: hard });
    expect(fits.route?.target.value).toBe("thinking");
  });

  it("a long simple input takes the long-input route rather than the fast model", async () => {
    const text = `Summarise these meeting notes in three bullet points.\n${"The team discussed the roadmap and hiring. ".repeat(1_200)}`;
    const got = await classify(memberA, { text });
    expect(got.category).toBe(Category.M);
    expect(got.routeId).toBe("category-m-long");
  });
});

describe("categorizer - the judge", () => {
  it("an unparseable judge answer degrades to the feature classifier's decision, with a reason, and is billed", async () => {
    const text = "Prove that the sum of two odd numbers is even.";
    const features = await classify(memberA, { text });
    const got = await classify(memberA, { text, judge: JudgePolicy.ALWAYS }, judged);
    expect(got.judgeModel).toBe("sim-fast");
    expect(got.decidedBy).toBe(Decider.FEATURES);
    expect(got.category).toBe(features.category);
    expect(got.route?.target).toEqual(features.route?.target);
    expect(got.reasons.join("\n")).toContain("judge sim-fast gave no usable answer");
    expect(got.usage?.inputTokens).toBeGreaterThan(0n);
  });

  it("NEVER skips the judge; ALWAYS without a configured judge is FAILED_PRECONDITION", async () => {
    const skipped = await classify(memberA, { text: "hmm", judge: JudgePolicy.NEVER }, judged);
    expect(skipped.judgeModel).toBe("");
    const err = await rejection(classify(memberA, { text: "hmm", judge: JudgePolicy.ALWAYS }));
    expect(err.code).toBe(Code.FailedPrecondition);
  });

  it("a judge model the catalog does not know degrades too", async () => {
    // An unknown judge model: model-proxy answers NOT_FOUND; the decision stands.
    const broken = build({
      version: "test",
      logger: captureLogs({ level: "silent" }).logger,
      verifier: createJwksVerifier({ jwksUrl: auth.jwksUrl }),
      routes: await RouteStore.open(mongo, { cacheTtlMs: 60_000 }),
      catalog: new ModelCatalog(createClient(RegistryService, registry.address), { ttlMs: 30_000 }),
      modelProxy: createClient(ModelProxyService, proxy.address),
      judge: { model: "no-such-judge", threshold: 0.6, weight: 0.6, timeoutMs: 5_000 },
      exactCountMargin: 0,
      notices: createNotices(nc, captureLogs({ level: "silent" }).logger),
    });
    const client = createClient(
      CategorizerService,
      `127.0.0.1:${await broken.listen("127.0.0.1:0")}`,
    );
    try {
      const got = await classify(
        memberA,
        { text: "Who painted Guernica?", judge: JudgePolicy.ALWAYS },
        client,
      );
      expect(got.route?.target).toEqual({ case: "model", value: "fast" });
      expect(got.reasons.join("\n")).toMatch(/judge no-such-judge could not be asked \(NotFound\)/);
    } finally {
      await broken.shutdown({ timeoutMs: 2_000 });
    }
  });
});
