import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  SearchHitSchema,
  SearchResponseSchema,
  StepKind,
  StepStatus,
  WorkflowStepSchema,
  type SearchRequest,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { executeStep, passagesText, type StepContext, type StepDeps } from "./executor.js";

function context(step: Record<string, unknown>, retries = 0): StepContext {
  return {
    ref: { tenantId: "t1", runId: "run_1", userId: "u1", sessionId: "" },
    step: create(WorkflowStepSchema, { id: "search", kind: StepKind.RETRIEVE, ...step }),
    scope: { input: "where is the cat?", vars: { kb: "notes" }, outputs: {} },
    runSystem: "",
    runAddons: [],
    addonTexts: {},
    attachments: [],
    rankBy: [],
    timeoutMs: 5_000,
    deadline: Date.now() + 60_000,
    retries,
    signal: new AbortController().signal,
    token: () => Promise.resolve("token"),
    emit: () => Promise.resolve(),
    delta: () => undefined,
  };
}

const noModels = { streamChat: () => undefined } as unknown as StepDeps["modelProxy"];

describe("retrieve steps", () => {
  it("retrieve - without vector-search configured the step fails FAILED_PRECONDITION saying so", async () => {
    const record = await executeStep(context({ collection: "notes" }), { modelProxy: noModels });
    expect(record.status).toBe(StepStatus.FAILED);
    expect(record.error?.code).toBe("FAILED_PRECONDITION");
    expect(record.error?.message).toContain("vector-search is not configured");
  });

  it("retrieve - searches the rendered collection for the input, retries a transient failure, numbers the hits", async () => {
    const calls: Array<Partial<SearchRequest>> = [];
    const vectorSearch = {
      search: (req: Partial<SearchRequest>) => {
        calls.push(req);
        if (calls.length === 1) throw new ConnectError("busy", Code.Unavailable);
        return Promise.resolve(
          create(SearchResponseSchema, {
            hits: [
              create(SearchHitSchema, { documentId: "cats", text: "The cat sat.", score: 0.9 }),
              create(SearchHitSchema, {
                documentId: "dogs",
                chunkIndex: 2,
                text: "Dogs bark.",
                score: 0.1,
              }),
            ],
          }),
        );
      },
    } as unknown as StepDeps["vectorSearch"];
    const record = await executeStep(context({ collection: "{{vars.kb}}" }, 1), {
      modelProxy: noModels,
      vectorSearch,
    });
    expect(record.status).toBe(StepStatus.COMPLETED);
    expect(record.attempts).toBe(2);
    expect(calls[1]).toMatchObject({ collectionId: "notes", text: "where is the cat?", k: 5 });
    expect(record.output).toBe("[1] (cats) The cat sat.\n\n[2] (dogs) Dogs bark.");
    expect(record.structuredOutput).toEqual({
      hits: [
        {
          n: 1,
          id: "cats#0",
          documentId: "cats",
          chunkIndex: 0,
          text: "The cat sat.",
          score: 0.9,
          metadata: {},
        },
        {
          n: 2,
          id: "dogs#2",
          documentId: "dogs",
          chunkIndex: 2,
          text: "Dogs bark.",
          score: 0.1,
          metadata: {},
        },
      ],
    });
  });

  it("retrieve - an unexpected failure is recorded as INTERNAL without its text, which goes to the log", async () => {
    const vectorSearch = {
      search: () => Promise.reject(new TypeError("cannot read properties of undefined (secret)")),
    } as unknown as StepDeps["vectorSearch"];
    const logged: unknown[] = [];
    const record = await executeStep(
      { ...context({ collection: "notes" }), internalError: (err) => logged.push(err) },
      { modelProxy: noModels, vectorSearch },
    );
    expect(record.status).toBe(StepStatus.FAILED);
    expect(record.error).toMatchObject({
      code: "INTERNAL",
      message: 'retrieve from collection "notes" failed: internal error',
    });
    expect(JSON.stringify(record.error)).not.toContain("secret");
    expect(logged).toHaveLength(1);
    expect(String((logged[0] as Error).cause)).toContain("secret");
  });

  it("retrieve - no hits is an output that says so, not an empty prompt", () => {
    expect(passagesText([], "notes")).toBe('(no passages found in collection "notes")');
  });
});
