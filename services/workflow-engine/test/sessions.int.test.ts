// Conversations against the real mesh (test/engine-mesh.ts, with a categorizer): auth, registry
// and model-proxy as built processes, the LLM simulator as the only provider, NATS JetStream and
// the MongoDB-wire server from the test kit, the engine in-process. Users sign up through auth; a
// second user joins tenant A by invite, a third has a tenant of their own.
//
// What the model received is checked through the simulator's determinism: its answer is a hash
// of the whole conversation it was sent, so a reply equals model-proxy's answer to exactly the
// messages the context should hold, and differs from the answer to any other context.
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import {
  Capability,
  ChatRole,
  ModelProxyService,
  RunEventType,
  RunService,
  RunStatus,
  SessionMessageStatus,
  SessionService,
  SessionSettingsSchema,
  UsageDimension,
  type RunEvent,
  type SessionMessage,
} from "@ensemble/proto";
import { collect, rejection } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSessionModels, SessionStore } from "../src/sessions.store.js";
import { encode } from "../src/store.js";
import { PASSWORD, startEngineMesh, type EngineMesh } from "./engine-mesh.js";

const MODEL = "sim-fast";

let mesh: EngineMesh;
let sessions: GrpcClient<typeof SessionService>;
/** The same engine behind a server that has no categorizer configured for sessions. */
let sessionsNoAuto: GrpcClient<typeof SessionService>;
let runs: GrpcClient<typeof RunService>;
let store: SessionStore;
let modelProxy: GrpcClient<typeof ModelProxyService>;
/** Admin of tenant A. */
let userA: string;
/** A member of tenant A (invited). */
let userA2: string;
/** Tenant B. */
let userB: string;

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

interface Reply {
  user?: SessionMessage;
  events: RunEvent[];
  assistant: SessionMessage;
  /** The item kinds in order ("user", "event", "assistant"). */
  order: string[];
}

function reply(items: Array<{ item: { case: string | undefined; value?: unknown } }>): Reply {
  const out: Partial<Reply> & { events: RunEvent[]; order: string[] } = { events: [], order: [] };
  for (const { item } of items) {
    if (item.case === "userMessage") {
      out.user = item.value as SessionMessage;
      out.order.push("user");
    } else if (item.case === "event") {
      out.events.push(item.value as RunEvent);
      out.order.push("event");
    } else if (item.case === "assistantMessage") {
      out.assistant = item.value as SessionMessage;
      out.order.push("assistant");
    }
  }
  if (out.assistant === undefined) throw new Error("no assistant message");
  return out as Reply;
}

type SendInit = Parameters<GrpcClient<typeof SessionService>["sendMessage"]>[0];

async function send(req: SendInit, token = userA): Promise<Reply> {
  return reply(await collect(sessions.sendMessage(req, as(token))));
}

async function regenerate(sessionId: string, messageId: string, token = userA): Promise<Reply> {
  return reply(await collect(sessions.regenerate({ sessionId, messageId }, as(token))));
}

async function newSession(
  settings: Record<string, unknown> = { model: MODEL },
  token = userA,
  title = "",
): Promise<string> {
  const res = await sessions.createSession({ title, settings }, as(token));
  return res.session!.id;
}

function text(m: SessionMessage | undefined): string {
  return (m?.content ?? []).flatMap((c) => (c.part.case === "text" ? [c.part.value] : [])).join("");
}

/** model-proxy's (deterministic) answer to exactly these turns, alternating user/assistant. */
async function answerTo(...turns: string[]): Promise<string> {
  const res = await modelProxy.chat(
    {
      model: MODEL,
      messages: turns.map((t, i) => ({
        role: i % 2 === 0 ? ChatRole.USER : ChatRole.ASSISTANT,
        content: [{ part: { case: "text", value: t } }],
      })),
    },
    as(userA),
  );
  return (res.message?.content ?? [])
    .flatMap((c) => (c.part.case === "text" ? [c.part.value] : []))
    .join("");
}

beforeAll(async () => {
  mesh = await startEngineMesh({
    name: "sessions",
    proxyEnv: { RETRY_MAX_ATTEMPTS: "1" },
    // The simulator's Anthropic Messages API, which caches prompts only at breakpoints.
    proxyDeployments: (url) => [
      { name: "anthro", provider: "anthro", api: "anthropic", baseUrl: url, apiKey: "k" },
    ],
    categorizer: true,
    settings: { workerConcurrency: 8, tenantMaxParallel: 8, runTimeoutMs: 60_000 },
  });
  store = new SessionStore(await openSessionModels(mesh.mongo));
  const base = {
    sessions: store,
  };
  const address = await mesh.serve({ ...base, autoAvailable: true });
  sessions = createClient(SessionService, address);
  runs = createClient(RunService, address);
  sessionsNoAuto = createClient(
    SessionService,
    await mesh.serve({ ...base, autoAvailable: false, fallbackModel: MODEL }),
  );
  modelProxy = mesh.modelProxy;

  const a = await mesh.signup("a");
  userA = a.token;
  const { token: invite } = await mesh.authClient.createInvite({}, as(userA));
  const a2 = await mesh.authClient.signup({
    email: `sessions-a2-${Date.now()}@example.com`,
    password: PASSWORD,
    tenant: { case: "inviteToken", value: invite },
  });
  userA2 = a2.tokens?.accessToken ?? "";
  expect(a2.tenant?.id).toBe(a.tenantId);
  userB = (await mesh.signup("b")).token;
}, 240_000);

afterAll(async () => {
  await mesh?.stop();
});

describe("SessionService", () => {
  it("sessions - SendMessage streams the stored question, the run's token deltas, then the stored reply", async () => {
    const id = await newSession();
    const r = await send({ sessionId: id, text: "What is the capital of France?" });

    expect(r.order[0]).toBe("user");
    expect(r.order.at(-1)).toBe("assistant");
    expect(r.order.filter((o) => o === "user")).toHaveLength(1);
    expect(r.user?.role).toBe(ChatRole.USER);
    expect(r.user?.parentMessageId).toBe("");
    expect(r.user?.status).toBe(SessionMessageStatus.COMPLETE);
    expect(text(r.user)).toBe("What is the capital of France?");

    const deltas = r.events.filter((e) => e.type === RunEventType.STEP_DELTA);
    expect(deltas.length).toBeGreaterThan(1);
    expect(r.events.at(-1)?.type).toBe(RunEventType.COMPLETED);

    const a = r.assistant;
    expect(a.role).toBe(ChatRole.ASSISTANT);
    expect(a.status).toBe(SessionMessageStatus.COMPLETE);
    expect(a.parentMessageId).toBe(r.user?.id);
    expect(a.model).toBe(MODEL);
    expect(a.simulated).toBe(true);
    expect(a.usage?.totalTokens).toBeGreaterThan(0n);
    expect(a.runId).not.toBe("");
    const answer = text(a);
    expect(answer).toBe(await answerTo("What is the capital of France?"));
    expect(answer).toContain('You said: "What is the capital of France?"');
    // The streamed deltas are the stored answer.
    expect(
      deltas.map((d) => (d.payload.case === "stepDelta" ? d.payload.value.text : "")).join(""),
    ).toBe(answer);

    // Named after the first message; the reply is a run of this user, tagged with the session.
    const got = await sessions.getSession({ sessionId: id }, as(userA));
    expect(got.session?.title).toBe("What is the capital of France?");
    expect(got.session?.messageCount).toBe(2);
    expect(got.session?.lastMessageId).toBe(a.id);
    expect(got.messages.map((m) => m.id)).toEqual([r.user?.id, a.id]);
    const run = (await runs.getRun({ runId: a.runId }, as(userA))).run!;
    expect(run.sessionId).toBe(id);
    expect(run.status).toBe(RunStatus.COMPLETED);
    expect(run.output).toBe(answer);
    const listed = await runs.listRuns({ sessionId: id }, as(userA));
    expect(listed.runs.map((x) => x.id)).toEqual([a.runId]);
  });

  it("sessions - the next message is answered with the first exchange as its context", async () => {
    const id = await newSession();
    const first = await send({ sessionId: id, text: "My name is Ada." });
    const second = await send({ sessionId: id, text: "What is my name?" });

    expect(second.user?.parentMessageId).toBe(first.assistant.id);
    const answer = text(second.assistant);
    expect(answer).toBe(
      await answerTo("My name is Ada.", text(first.assistant), "What is my name?"),
    );
    // Not what the question alone would get.
    expect(answer).not.toBe(await answerTo("What is my name?"));
  });

  it("sessions - Regenerate adds a sibling reply; GetSession returns the tree", async () => {
    const id = await newSession();
    const first = await send({ sessionId: id, text: "Tell me a joke." });
    const calls = mesh.sim.requests(MODEL);
    const again = await regenerate(id, first.assistant.id);

    expect(again.order.includes("user")).toBe(false);
    expect(again.order.at(-1)).toBe("assistant");
    expect(again.events.some((e) => e.type === RunEventType.STEP_DELTA)).toBe(true);
    expect(mesh.sim.requests(MODEL)).toBe(calls + 1);
    const sibling = again.assistant;
    expect(sibling.id).not.toBe(first.assistant.id);
    expect(sibling.parentMessageId).toBe(first.user?.id);
    expect(sibling.runId).not.toBe(first.assistant.runId);
    expect(sibling.status).toBe(SessionMessageStatus.COMPLETE);
    // Same question, same (empty) context: the deterministic model answers the same.
    expect(text(sibling)).toBe(text(first.assistant));

    // Continuing goes under the most recent reply (the regenerated one).
    const next = await send({ sessionId: id, text: "Another one." });
    expect(next.user?.parentMessageId).toBe(sibling.id);

    const got = await sessions.getSession({ sessionId: id }, as(userA));
    expect(got.session?.messageCount).toBe(5);
    const byId = new Map(got.messages.map((m) => [m.id, m]));
    expect(got.messages[0]?.id).toBe(first.user?.id);
    const children = got.messages.filter((m) => m.parentMessageId === first.user?.id);
    expect(children.map((m) => m.id).sort()).toEqual([first.assistant.id, sibling.id].sort());
    expect(byId.get(next.assistant.id)?.parentMessageId).toBe(next.user?.id);
    expect(got.messages.every((m) => m.status === SessionMessageStatus.COMPLETE)).toBe(true);

    // Regenerating a user message is a bad request.
    const bad = await rejection(regenerate(id, first.user!.id));
    expect(bad.code).toBe(Code.InvalidArgument);
  });

  it("sessions - sending under an earlier message starts a branch whose context leaves the other branch out", async () => {
    const id = await newSession();
    const first = await send({ sessionId: id, text: "Let us talk about cats." });
    await send({ sessionId: id, text: "They are independent." });
    const branch = await send({
      sessionId: id,
      parentMessageId: first.assistant.id,
      text: "Let us talk about dogs instead.",
    });
    expect(branch.user?.parentMessageId).toBe(first.assistant.id);
    expect(text(branch.assistant)).toBe(
      await answerTo(
        "Let us talk about cats.",
        text(first.assistant),
        "Let us talk about dogs instead.",
      ),
    );

    // A new root has no context at all.
    const root = await send({ sessionId: id, newRoot: true, text: "Fresh start." });
    expect(root.user?.parentMessageId).toBe("");
    expect(text(root.assistant)).toBe(await answerTo("Fresh start."));

    const got = await sessions.getSession({ sessionId: id }, as(userA));
    expect(got.messages.filter((m) => m.parentMessageId === "")).toHaveLength(2);
    expect(got.messages.filter((m) => m.parentMessageId === first.assistant.id)).toHaveLength(2);
    // The title stays the first message's.
    expect(got.session?.title).toBe("Let us talk about cats.");
  });

  it("sessions - max_context_messages and max_context_tokens bound the context, oldest first", async () => {
    const id = await newSession({ model: MODEL, maxContextMessages: 2 });
    const one = await send({ sessionId: id, text: "One." });
    const two = await send({ sessionId: id, text: "Two." });
    const three = await send({ sessionId: id, text: "Three." });
    expect(text(three.assistant)).toBe(await answerTo("Two.", text(two.assistant), "Three."));
    expect(text(three.assistant)).not.toBe(
      await answerTo("One.", text(one.assistant), "Two.", text(two.assistant), "Three."),
    );

    // A token budget too small for any earlier message leaves only the question.
    await sessions.updateSession(
      { sessionId: id, settings: { model: MODEL, maxContextTokens: 10 } },
      as(userA),
    );
    const four = await send({ sessionId: id, text: "Four." });
    expect(text(four.assistant)).toBe(await answerTo("Four."));
  });

  it("sessions - a reply that fails is stored FAILED with its error and the stream ends normally", async () => {
    // sim-vision has no fallback chain in the catalog, so its provider failing fails the reply.
    const id = await newSession({ model: "sim-vision" });
    mesh.sim.configure("sim-vision", { fail: "503" });
    const r = await send({ sessionId: id, text: "Hello?" }).finally(() =>
      mesh.sim.configure("sim-vision", { fail: undefined }),
    );
    expect(r.order[0]).toBe("user");
    expect(r.events.at(-1)?.type).toBe(RunEventType.FAILED);
    expect(r.assistant.status).toBe(SessionMessageStatus.FAILED);
    expect(r.assistant.error?.code).not.toBe("");
    expect(r.assistant.error?.message).not.toBe("");
    const got = await sessions.getSession({ sessionId: id }, as(userA));
    expect(got.messages.map((m) => m.status)).toEqual([
      SessionMessageStatus.COMPLETE,
      SessionMessageStatus.FAILED,
    ]);
    expect((await runs.getRun({ runId: r.assistant.runId }, as(userA))).run?.status).toBe(
      RunStatus.FAILED,
    );
  });

  it("sessions - a model not in the catalog is refused before anything is stored, naming the setting", async () => {
    const refusal = async (p: Promise<unknown>) => {
      const err = await rejection(p);
      return { code: err.code, message: err.rawMessage };
    };
    const unknown = 'model "no-such-model" is not in the catalog';
    expect(await refusal(newSession({ model: "no-such-model" }))).toEqual({
      code: Code.InvalidArgument,
      message: `settings.model: ${unknown}`,
    });
    const id = await newSession();
    expect(
      await refusal(
        sessions.updateSession({ sessionId: id, settings: { model: "no-such-model" } }, as(userA)),
      ),
    ).toEqual({ code: Code.InvalidArgument, message: `settings.model: ${unknown}` });
    expect(await refusal(send({ sessionId: id, text: "Hello?", model: "no-such-model" }))).toEqual({
      code: Code.InvalidArgument,
      message: `model: ${unknown}`,
    });

    // A session whose model has left the catalog since it was saved.
    const me = (await mesh.authClient.getMe({}, as(userA))).user;
    const owner = { tenantId: me?.tenantId ?? "", userId: me?.id ?? "" };
    await store.updateSession(owner, id, {
      settings: encode(SessionSettingsSchema, create(SessionSettingsSchema, { model: "retired" })),
    });
    expect(await refusal(send({ sessionId: id, text: "Hello?" }))).toEqual({
      code: Code.FailedPrecondition,
      message: 'settings.model: model "retired" is not in the catalog',
    });
    expect((await sessions.getSession({ sessionId: id }, as(userA))).messages).toEqual([]);
  });

  it("sessions - model auto: the categorizer picks the model and the reply carries its classification", async () => {
    const id = await newSession({ model: "auto" });
    const first = await send({ sessionId: id, text: "What is 2 + 2?" });
    expect(first.events.map((e) => e.type).slice(0, 2)).toEqual([
      RunEventType.CREATED,
      RunEventType.CLASSIFIED,
    ]);
    const a = first.assistant;
    expect(a.status).toBe(SessionMessageStatus.COMPLETE);
    expect(a.classification?.route?.target.case).toBeDefined();
    expect(a.model).not.toBe("");
    expect(text(a)).toContain("[simulated");
    const run = (await runs.getRun({ runId: a.runId }, as(userA))).run!;
    expect(run.sessionId).toBe(id);
    expect(run.classification?.route?.target.case).toBeDefined();

    // The next AUTO reply gets the conversation too: its model received more than the question.
    const second = await send({ sessionId: id, text: "And times 3?" });
    expect(second.assistant.status).toBe(SessionMessageStatus.COMPLETE);
    const alone = await send({ sessionId: id, newRoot: true, text: "And times 3?" });
    // The same question routes to the same model, which received more than the question.
    expect(second.assistant.model).toBe(alone.assistant.model);
    expect(second.assistant.usage?.inputTokens).toBeGreaterThan(
      alone.assistant.usage?.inputTokens ?? 0n,
    );

    // A request for a picture is answered with one: the reply carries the image its run made.
    const picture = await send({
      sessionId: id,
      newRoot: true,
      text: "Generate an image of a red fox in the snow",
    });
    const art = picture.assistant.artifacts[0];
    expect(picture.assistant.status).toBe(SessionMessageStatus.COMPLETE);
    expect(picture.assistant.artifacts.map((x) => x.mimeType)).toEqual(["image/png"]);
    expect(text(picture.assistant)).toContain(`artifact ${art?.id ?? "?"}`);
    const stored = (await sessions.getSession({ sessionId: id }, as(userA))).messages.find(
      (m) => m.id === picture.assistant.id,
    );
    expect(stored?.artifacts).toEqual(picture.assistant.artifacts);
    const bytes = await runs.getArtifact(
      { runId: picture.assistant.runId, artifactId: art?.id ?? "" },
      as(userA),
    );
    expect(Buffer.from(bytes.data.subarray(1, 4)).toString()).toBe("PNG");
  });

  it("sessions - without a categorizer, model auto (or empty) answers with the fallback model", async () => {
    for (const model of ["", "auto"]) {
      const res = await sessionsNoAuto.createSession({ settings: { model } }, as(userA));
      const r = reply(
        await collect(
          sessionsNoAuto.sendMessage(
            { sessionId: res.session!.id, text: "Which model are you?" },
            as(userA),
          ),
        ),
      );
      expect(r.events.some((e) => e.type === RunEventType.CLASSIFIED)).toBe(false);
      expect(r.assistant.status).toBe(SessionMessageStatus.COMPLETE);
      expect(r.assistant.model).toBe(MODEL);
    }
  });

  it("sessions - another user of the tenant (its admin included) and another tenant get NOT_FOUND", async () => {
    const mine = await newSession({ model: MODEL }, userA2, "private");
    const first = await send({ sessionId: mine, text: "Secret plans." }, userA2);
    const own = await newSession({ model: MODEL }, userB, "tenant B");

    for (const token of [userA, userB]) {
      expect((await rejection(sessions.getSession({ sessionId: mine }, as(token)))).code).toBe(
        Code.NotFound,
      );
      expect((await rejection(send({ sessionId: mine, text: "Let me in." }, token))).code).toBe(
        Code.NotFound,
      );
      expect((await rejection(regenerate(mine, first.assistant.id, token))).code).toBe(
        Code.NotFound,
      );
      expect(
        (await rejection(sessions.updateSession({ sessionId: mine, title: "mine now" }, as(token))))
          .code,
      ).toBe(Code.NotFound);
      expect((await rejection(sessions.deleteSession({ sessionId: mine }, as(token)))).code).toBe(
        Code.NotFound,
      );
      const listed = await sessions.listSessions({}, as(token));
      expect(listed.sessions.map((s) => s.id)).not.toContain(mine);
    }
    // Tenant B's own session is not visible to tenant A either.
    expect((await rejection(sessions.getSession({ sessionId: own }, as(userA)))).code).toBe(
      Code.NotFound,
    );
    // Untouched: still the owner's, with its messages.
    const got = await sessions.getSession({ sessionId: mine }, as(userA2));
    expect(got.session?.title).toBe("private");
    expect(got.messages).toHaveLength(2);
    expect((await sessions.listSessions({}, as(userA2))).sessions.map((s) => s.id)).toEqual([mine]);
    // The other tenant cannot read the reply's run either.
    expect((await rejection(runs.getRun({ runId: first.assistant.runId }, as(userB)))).code).toBe(
      Code.NotFound,
    );
  });

  it("sessions - ListSessions pages most recently updated first; update and delete", async () => {
    const token = userB;
    const s1 = await newSession({ model: MODEL }, token, "first");
    const s2 = await newSession({ model: MODEL }, token, "second");
    await send({ sessionId: s1, text: "Bump." }, token);

    const seen: string[] = [];
    let pageToken = "";
    do {
      const res = await sessions.listSessions({ page: { pageSize: 1, pageToken } }, as(token));
      expect(res.sessions.length).toBeLessThanOrEqual(1);
      seen.push(...res.sessions.map((s) => s.id));
      pageToken = res.page?.nextPageToken ?? "";
    } while (pageToken !== "");
    expect(seen.indexOf(s1)).toBeLessThan(seen.indexOf(s2));
    expect(new Set(seen).size).toBe(seen.length);

    const renamed = await sessions.updateSession(
      { sessionId: s2, title: "renamed", settings: { model: MODEL, maxContextMessages: 3 } },
      as(token),
    );
    expect(renamed.session?.title).toBe("renamed");
    expect(renamed.session?.settings?.maxContextMessages).toBe(3);

    const got = await sessions.getSession({ sessionId: s1 }, as(token));
    const runId = got.messages.find((m) => m.role === ChatRole.ASSISTANT)?.runId ?? "";
    await sessions.deleteSession({ sessionId: s1 }, as(token));
    expect((await rejection(sessions.getSession({ sessionId: s1 }, as(token)))).code).toBe(
      Code.NotFound,
    );
    // The run stays in the run history.
    expect((await runs.getRun({ runId }, as(token))).run?.sessionId).toBe(s1);
  });

  it("sessions - a message that lands after its session was deleted is removed again (NOT_FOUND)", async () => {
    // A reply starting while its session is deleted (the stream then ends NOT_FOUND and its run
    // is cancelled): nothing of the deleted session may stay stored.
    const token = userB;
    const sessionId = await newSession({ model: MODEL }, token, "deleted meanwhile");
    const me = (await mesh.authClient.getMe({}, as(token))).user;
    const owner = { tenantId: me?.tenantId ?? "", userId: me?.id ?? "" };
    await sessions.deleteSession({ sessionId }, as(token));
    const late = {
      ...owner,
      sessionId,
      id: "msg_late",
      parentId: "",
      role: ChatRole.ASSISTANT,
      content: [],
      status: SessionMessageStatus.STREAMING,
      runId: "run_late",
      model: MODEL,
      latencyMs: 0,
      simulated: false,
      createTime: new Date(),
    };
    await expect(store.addMessage(owner, late)).rejects.toThrow(/not found \(deleted\)/);
    expect(await store.messages(owner, sessionId)).toEqual([]);
  });

  it("sessions - bad input is INVALID_ARGUMENT, an unknown parent NOT_FOUND", async () => {
    const id = await newSession();
    const cases: SendInit[] = [
      { sessionId: id, text: "" },
      { sessionId: id, text: "x", newRoot: true, parentMessageId: "msg_1" },
      { sessionId: "", text: "x" },
    ];
    for (const req of cases) {
      expect((await rejection(send(req))).code).toBe(Code.InvalidArgument);
    }
    expect(
      (
        await rejection(
          sessions.createSession({ settings: { maxContextMessages: 1001 } }, as(userA)),
        )
      ).code,
    ).toBe(Code.InvalidArgument);
    expect(
      (await rejection(send({ sessionId: id, parentMessageId: "msg_nope", text: "x" }))).code,
    ).toBe(Code.NotFound);
    expect((await rejection(sessions.getSession({ sessionId: "ses_nope" }, as(userA)))).code).toBe(
      Code.NotFound,
    );
    // Nothing was stored by the refused calls.
    expect((await sessions.getSession({ sessionId: id }, as(userA))).messages).toEqual([]);
  });

  it("sessions - a reply runs as the API key the message was sent with, and model-proxy bills that key", async () => {
    const owner = (await mesh.signup("keyed")).token;
    const created = await mesh.authClient.createApiKey({ name: "chat" }, as(owner));
    const keyId = created.apiKey!.id;
    const gateway = await mesh.auth.mintServiceToken("gateway");
    const viaKey = (
      await mesh.authClient.authenticateApiKey({ apiKey: created.secret }, as(gateway))
    ).accessToken;
    // One session of the user, used through the key and through their own login.
    const id = await newSession({ model: MODEL }, owner);

    const keyed = await send({ sessionId: id, text: "sent with a key" }, viaKey);
    expect(keyed.assistant.status).toBe(SessionMessageStatus.COMPLETE);
    const keyedRun = (await runs.getRun({ runId: keyed.assistant.runId }, as(owner))).run!;
    expect(keyedRun.apiKeyId).toBe(keyId);
    // The key of whoever asks for the reply, not of the message answered.
    const again = await regenerate(id, keyed.assistant.id, owner);
    const ownRun = (await runs.getRun({ runId: again.assistant.runId }, as(owner))).run!;
    expect(ownRun.apiKeyId).toBe("");

    // model-proxy writes its ledger in batches.
    const deadline = Date.now() + 15_000;
    let byKey: Array<{ apiKeyId: string; requests: number }> = [];
    for (;;) {
      const usage = await modelProxy.getUsage(
        {
          startTime: timestampFromMs(Date.now() - 3_600_000),
          endTime: timestampFromMs(Date.now() + 3_600_000),
          groupBy: [UsageDimension.API_KEY],
        },
        as(owner),
      );
      byKey = usage.buckets.map((b) => ({ apiKeyId: b.apiKeyId, requests: Number(b.requests) }));
      if (Number(usage.totalRequests) >= 2 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(byKey).toEqual(
      expect.arrayContaining([
        { apiKeyId: keyId, requests: 1 },
        { apiKeyId: "", requests: 1 },
      ]),
    );
    expect(byKey).toHaveLength(2);
  });

  it("sessions - with a model that caches only at breakpoints (Anthropic's API), each turn reads the conversation the turn before wrote, billed at the cached price", async () => {
    const owner = (await mesh.signup("cached-chat")).token;
    await mesh.registryClient.upsertModel(
      {
        model: {
          id: "anthro-chat",
          provider: "anthro",
          providerModelId: "sim-fast",
          displayName: "anthro-chat",
          capabilities: [Capability.CHAT],
          contextWindow: 128_000,
          inputPricePerMtok: 1,
          outputPricePerMtok: 2,
          cachedInputPricePerMtok: 0.1,
          cacheWritePricePerMtok: 1.25,
          enabled: true,
        },
      },
      as(owner),
    );
    const id = await newSession({ model: "anthro-chat" }, owner);
    const long = Array.from({ length: 1300 }, (_, i) => `word${i % 89}`).join(" ");
    const turns: Reply[] = [];
    for (const question of [long, "And briefly?", "Once more."]) {
      turns.push(await send({ sessionId: id, text: question }, owner));
    }
    const [first, second, third] = turns.map((t) => t.assistant.usage!);
    // Turn 1 has no conversation before its question (and no system prompt) to cache.
    expect([first!.cachedInputTokens, first!.cacheWriteInputTokens]).toEqual([0n, 0n]);
    // Turn 2 writes the first exchange; turn 3 reads it and writes the second.
    const exchange = second!.cacheWriteInputTokens;
    expect(exchange).toBeGreaterThan(1_200n);
    expect(second!.cachedInputTokens).toBe(0n);
    expect(third!.cachedInputTokens).toBe(exchange);
    const written = third!.cacheWriteInputTokens;
    expect(written).toBeGreaterThan(0n);
    const n = Number;
    expect(third!.costUsd).toBeCloseTo(
      (n(third!.inputTokens - exchange - written) * 1 +
        n(exchange) * 0.1 +
        n(written) * 1.25 +
        n(third!.outputTokens) * 2) /
        1e6,
      12,
    );
  });

  it("sessions - a session's labels go on its replies' runs and their model calls, so usage is reported per team", async () => {
    const owner = (await mesh.signup("labelled-chat")).token;
    const res = await sessions.createSession(
      { settings: { model: MODEL }, metadata: { team: "support" } },
      as(owner),
    );
    const id = res.session!.id;
    const reply = await send({ sessionId: id, text: "a labelled question" }, owner);
    expect(reply.assistant.status).toBe(SessionMessageStatus.COMPLETE);
    const run = (await runs.getRun({ runId: reply.assistant.runId }, as(owner))).run!;
    expect(run.spec?.metadata).toEqual({ team: "support" });
    const deadline = Date.now() + 15_000;
    let byTeam: Array<[string, number]> = [];
    for (;;) {
      const usage = await modelProxy.getUsage(
        {
          startTime: timestampFromMs(Date.now() - 3_600_000),
          endTime: timestampFromMs(Date.now() + 3_600_000),
          groupBy: [UsageDimension.METADATA],
          metadataKey: "team",
        },
        as(owner),
      );
      byTeam = usage.buckets.map((b) => [b.metadataValue, Number(b.requests)]);
      if (Number(usage.totalRequests) >= 1 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(byTeam).toEqual([["support", 1]]);
  });
});
