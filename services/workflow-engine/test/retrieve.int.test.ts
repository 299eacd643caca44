// Retrieve steps against the real mesh: auth, registry (seeded from deploy/config, so the
// rag_answer template is there), model-proxy and vector-search as built processes, the simulator
// as chat and embedding provider (its embeddings are deterministic and texts sharing words are
// closer; its chat answer quotes the prompt), NATS and the MongoDB-wire server; the engine as a
// built process too, given VECTOR_SEARCH_ADDR as npm start gives it. Collections belong to a
// tenant: the search runs as the run's user, so another tenant's run never sees them.
import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  ChunkStrategy,
  DistanceMetric,
  RunService,
  RunStatus,
  StepKind,
  StepStatus,
  VectorSearchService,
  WorkflowTemplateSchema,
  type Run,
  type RunSpecSchema,
} from "@ensemble/proto";
import {
  startServices,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const PASSWORD = "correct-Horse-battery-9";

let sim: Simulator;
let services: Services<"vectorSearch" | "workflow">;
let auth: AuthProcess;
let vectorProc: MeshProcess;
let workflow: MeshProcess;
let runs: GrpcClient<typeof RunService>;
let vs: GrpcClient<typeof VectorSearchService>;
let userA: string;
let userB: string;

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

const HANDBOOK = [
  { id: "cats", text: "The cat sat on the mat and purred all afternoon.", metadata: { page: 3 } },
  { id: "trains", text: "The night train to Vienna leaves the station at ten.", metadata: {} },
  { id: "soup", text: "Tomato soup needs basil, garlic and a slow simmer.", metadata: {} },
  { id: "rust", text: "Rust ownership makes memory safety a compile-time property.", metadata: {} },
];

async function createCollection(token: string, id: string): Promise<void> {
  await vs.createCollection(
    {
      collection: {
        id,
        dimensions: 64,
        metric: DistanceMetric.COSINE,
        embeddingModel: "sim-embed",
        chunking: { strategy: ChunkStrategy.NONE },
      },
    },
    as(token),
  );
}

async function run(token: string, spec: MessageInitShape<typeof RunSpecSchema>): Promise<Run> {
  const res = await runs.startRun({ spec }, as(token));
  const id = res.run?.id ?? "";
  const until = Date.now() + 20_000;
  for (;;) {
    const r = (await runs.getRun({ runId: id }, as(token))).run!;
    if ([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED].includes(r.status)) return r;
    if (Date.now() > until) throw new Error(`run ${id} still ${RunStatus[r.status]}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function ragTemplate(input: string, collection: string): MessageInitShape<typeof RunSpecSchema> {
  return {
    input,
    mode: {
      case: "workflow",
      value: { definition: { case: "templateId", value: "rag_answer" }, variables: { collection } },
    },
  };
}

function inline(
  input: string,
  steps: Array<Record<string, unknown>>,
): MessageInitShape<typeof RunSpecSchema> {
  const template = create(WorkflowTemplateSchema, {
    id: "rag",
    name: "RAG",
    outputStep: (steps.at(-1)?.["id"] as string) ?? "",
    steps: steps as never,
  });
  return {
    input,
    mode: { case: "workflow", value: { definition: { case: "inline", value: template } } },
  };
}

function step(r: Run, id: string) {
  const s = r.steps.find((x) => x.stepId === id);
  if (s === undefined) throw new Error(`run ${r.id} has no step ${id}`);
  return s;
}

function hitsOf(r: Run, id: string): JsonObject[] {
  return ((step(r, id).structuredOutput?.["hits"] as JsonObject[] | undefined) ?? []).slice();
}

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0 } });
  services = await startServices({
    simulatorUrl: `${sim.url}/v1`,
    vectorSearch: {},
    workflow: {},
  });
  ({ auth, vectorSearch: vectorProc, workflow } = services);
  runs = createClient(RunService, workflow.address);
  const authClient = createClient(AuthService, auth.address);
  vs = createClient(VectorSearchService, vectorProc.address);
  const stamp = Date.now();
  const signup = async (who: string) =>
    (
      await authClient.signup({
        email: `rag-${who}-${stamp}@example.com`,
        password: PASSWORD,
        tenant: { case: "tenantName", value: `rag ${who}` },
      })
    ).tokens?.accessToken ?? "";
  userA = await signup("a");
  userB = await signup("b");
  await createCollection(userA, "handbook");
  await vs.upsert({ collectionId: "handbook", documents: HANDBOOK }, as(userA));
}, 300_000);

afterAll(async () => {
  await services?.stop().catch(() => undefined);
  await sim?.close();
});

describe("retrieve", () => {
  it("retrieve - the rag_answer template finds the relevant passage first and the answer gets the numbered passages", async () => {
    const r = await run(userA, ragTemplate("where did the cat sit?", "handbook"));
    expect(r.status, JSON.stringify(r.error)).toBe(RunStatus.COMPLETED);
    const retrieve = step(r, "retrieve");
    expect(retrieve.kind).toBe(StepKind.RETRIEVE);
    expect(retrieve.status).toBe(StepStatus.COMPLETED);
    const hits = hitsOf(r, "retrieve");
    // top_k 5 of a 4-document collection: every document, the one sharing the words first.
    expect(hits).toHaveLength(4);
    expect(hits[0]).toMatchObject({
      n: 1,
      id: "cats#0",
      documentId: "cats",
      chunkIndex: 0,
      text: HANDBOOK[0]!.text,
      metadata: { page: 3 },
    });
    const scores = hits.map((h) => h["score"] as number);
    expect([...scores].sort((a, b) => b - a)).toEqual(scores);
    // The text output numbers the passages in the same order.
    const lines = retrieve.output.split("\n\n");
    expect(lines[0]).toBe(`[1] (cats) ${HANDBOOK[0]!.text}`);
    expect(lines.map((l) => /^\[(\d)\] \((\w+)\)/.exec(l)?.slice(1))).toEqual(
      hits.map((h, i) => [String(i + 1), h["documentId"]]),
    );
    expect(hits.map((h) => h["n"])).toEqual([1, 2, 3, 4]);
    // Embedding the query is billed to the step.
    expect(retrieve.usage?.inputTokens).toBeGreaterThan(0n);
    // The simulator quotes the prompt it got: the passages, numbered, came first.
    const answer = step(r, "answer");
    expect(answer.status).toBe(StepStatus.COMPLETED);
    expect(answer.output).toContain(
      `You said: "Passages (each is [n] (document id) text): [1] (cats) ${HANDBOOK[0]!.text} [2] (`,
    );
    expect(r.output).toBe(answer.output);
  });

  it("retrieve - an inline retrieve -> llm passes top_k and a rendered query; the llm cites what it got", async () => {
    const r = await run(
      userA,
      inline("tell me about trains", [
        {
          id: "search",
          kind: StepKind.RETRIEVE,
          collection: "handbook",
          prompt: "night train {{input}}",
          topK: 2,
        },
        {
          id: "answer",
          kind: StepKind.LLM,
          model: "sim-fast",
          dependsOn: ["search"],
          prompt: "{{steps.search.output}}\n\nAnswer citing [n]: {{input}}",
        },
      ]),
    );
    expect(r.status, JSON.stringify(r.error)).toBe(RunStatus.COMPLETED);
    const hits = hitsOf(r, "search");
    expect(hits.map((h) => h["n"])).toEqual([1, 2]);
    expect(hits[0]?.["documentId"]).toBe("trains");
    expect(r.output).toContain(`You said: "[1] (trains) ${HANDBOOK[1]!.text} [2] (`);
  });

  it("retrieve - another tenant's run does not see the collection: NOT_FOUND, and its own collection of that name has only its documents", async () => {
    const denied = await run(userB, ragTemplate("where did the cat sit?", "handbook"));
    expect(denied.status).toBe(RunStatus.FAILED);
    expect(denied.error).toMatchObject({
      code: "NOT_FOUND",
      stepId: "retrieve",
      message: `collection "handbook" was not found in this tenant's vector-search`,
    });
    expect(step(denied, "retrieve").status).toBe(StepStatus.FAILED);
    expect(step(denied, "retrieve").structuredOutput).toBeUndefined();
    expect(step(denied, "answer").status).toBe(StepStatus.SKIPPED);

    await createCollection(userB, "handbook");
    await vs.upsert(
      {
        collectionId: "handbook",
        documents: [{ id: "b-cats", text: "Our office cat sleeps on the radiator." }],
      },
      as(userB),
    );
    const own = await run(userB, ragTemplate("where did the cat sit?", "handbook"));
    expect(own.status, JSON.stringify(own.error)).toBe(RunStatus.COMPLETED);
    expect(hitsOf(own, "retrieve").map((h) => h["documentId"])).toEqual(["b-cats"]);
    expect(step(own, "retrieve").output).toBe(
      "[1] (b-cats) Our office cat sleeps on the radiator.",
    );
    expect(own.output).not.toContain("The cat sat on the mat");
  });

  it("retrieve - a collection that does not exist fails the run with the step's clear error", async () => {
    const r = await run(
      userA,
      inline("anything", [
        { id: "search", kind: StepKind.RETRIEVE, collection: "no-such-collection" },
        {
          id: "answer",
          kind: StepKind.LLM,
          model: "sim-fast",
          dependsOn: ["search"],
          prompt: "{{steps.search.output}}",
        },
      ]),
    );
    expect(r.status).toBe(RunStatus.FAILED);
    expect(r.error).toMatchObject({
      code: "NOT_FOUND",
      stepId: "search",
      message: `collection "no-such-collection" was not found in this tenant's vector-search`,
    });
    expect(step(r, "answer").status).toBe(StepStatus.SKIPPED);
  });
});
