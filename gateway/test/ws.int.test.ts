// The WebSocket endpoint (GET /v1/ws) against the real mesh: auth, registry, model-proxy and
// the workflow engine as built processes, the simulator as the provider, and the `ws` package
// as the client. Run events arrive in order and end with the terminal event, live or replayed;
// chat streams deltas; authentication and tenancy hold; a revoked credential ends its socket; bad
// frames get error frames on a socket that keeps working.
import { fromJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  ModelProxyService,
  RegistryService,
  RunRequestSchema,
  RunService,
} from "@ensemble/proto";
import { startServices, type MeshProcess, type Services } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { startGateway, type AuthProcess, type TestGateway } from "./harness.js";

let sim: Simulator;
let services: Services<"workflow">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let workflow: MeshProcess;
let gw: TestGateway;
let wsUrl: string;
let alice: string;
let mallory: string;

const PING_MS = 300;

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 20, tokensPerSecond: 400 } });
  services = await startServices({ simulatorUrl: `${sim.url}/v1`, workflow: {} });
  ({ auth, registry, modelProxy: proxy, workflow } = services);
  gw = await startGateway({
    jwksUrl: auth.jwksUrl,
    serviceToken: await auth.mintServiceToken("gateway"),
    wsPingIntervalMs: PING_MS,
    upstreams: [
      { name: "auth", services: [AuthService], address: auth.address },
      { name: "registry", services: [RegistryService], address: registry.address },
      { name: "model-proxy", services: [ModelProxyService], address: proxy.address },
      { name: "workflow", services: [RunService], address: workflow.address },
    ],
  });
  wsUrl = `ws://127.0.0.1:${gw.port}/v1/ws`;
  alice = await signup("alice");
  mallory = await signup("mallory");
}, 240_000);

afterAll(async () => {
  await gw?.close();
  await services?.stop();
  await sim?.close();
});

/** A new user in a new tenant; their access token. */
async function signup(name: string): Promise<string> {
  const res = await fetch(`${gw.url}/${AuthService.typeName}/Signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      email: `${name}-${Date.now()}@example.com`,
      password: "correct-Horse-battery-9",
    }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { tokens: { accessToken: string } }).tokens.accessToken;
}

/** An AuthService method through the gateway's Connect JSON route (200 expected). */
async function authCall(method: string, body: unknown, token?: string) {
  const res = await fetch(`${gw.url}/${AuthService.typeName}/${method}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as {
    tokens?: { accessToken: string; refreshToken: string };
    secret?: string;
    apiKey?: { id: string };
  };
}

/** A new user signed up and logged in again: the tokens of its two sessions. */
async function twoSessions(label: string) {
  const email = `${label}-${Date.now()}@example.com`;
  const password = "correct-Horse-battery-9";
  const first = (await authCall("Signup", { email, password })).tokens!;
  const second = (await authCall("Login", { email, password })).tokens!;
  return [first, second] as const;
}

/** StartRun through the gateway's Connect route; the run id. */
async function startRun(token: string, spec: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${gw.url}/${RunService.typeName}/StartRun`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ spec }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { run: { id: string } }).run.id;
}

interface Frame {
  id?: string;
  type: string;
  at: number;
  [key: string]: unknown;
}

interface RunEventJson {
  eventId: string;
  runId: string;
  sequence: string;
  type: string;
  stepDelta?: { content?: string };
}

/** A `ws` client that records every frame with its arrival time. */
class Client {
  readonly frames: Frame[] = [];
  #waiters: Array<() => void> = [];
  closed: { code: number } | undefined;

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data: Buffer) => {
      this.frames.push({ ...(JSON.parse(data.toString()) as Frame), at: performance.now() });
      this.#wake();
    });
    ws.on("close", (code: number) => {
      this.closed = { code };
      this.#wake();
    });
  }

  static open(
    opts: { token?: string; protocols?: string[]; autoPong?: boolean; origin?: string } = {},
  ): Promise<Client> {
    const ws = new WebSocket(wsUrl, opts.protocols ?? [], {
      ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
      ...(opts.token !== undefined ? { headers: { authorization: `Bearer ${opts.token}` } } : {}),
      ...(opts.autoPong !== undefined ? { autoPong: opts.autoPong } : {}),
    });
    return new Promise((resolve, reject) => {
      ws.once("open", () => resolve(new Client(ws)));
      ws.once("error", reject);
    });
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Waits until `done(frames)` holds; fails after `timeoutMs`. */
  async until(done: (frames: Frame[]) => boolean, timeoutMs = 30_000): Promise<Frame[]> {
    const deadline = Date.now() + timeoutMs;
    while (!done(this.frames)) {
      if (this.closed !== undefined) throw new Error(`socket closed (${this.closed.code})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; frames: ${JSON.stringify(this.frames)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.frames;
  }

  /** The frames of subscription `id` up to and including its `end` or `error`. */
  async finished(id: string, timeoutMs?: number): Promise<Frame[]> {
    const mine = (): Frame[] => this.frames.filter((f) => f.id === id);
    await this.until(() => mine().some((f) => f.type === "end" || f.type === "error"), timeoutMs);
    return mine();
  }

  waitClosed(timeoutMs = 10_000): Promise<{ code: number }> {
    return this.until(() => this.closed !== undefined, timeoutMs).then(() => this.closed!);
  }

  close(): void {
    this.ws.close();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}

/** The HTTP status an upgrade was refused with. */
function refusedStatus(
  headers: Record<string, string>,
  protocols: string[] = [],
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, protocols, { headers });
    ws.once("open", () => {
      ws.close();
      reject(new Error("the upgrade was accepted"));
    });
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (b: Buffer) => (body += b.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.once("error", () => undefined);
  });
}

const events = (frames: Frame[]): RunEventJson[] =>
  frames.filter((f) => f.type === "event").map((f) => f["event"] as RunEventJson);

const MODEL_RUN = { input: "Name three uses of copper", model: { model: "fast" } };

describe("websocket /v1/ws", () => {
  let firstRunId = "";
  let firstEvents: RunEventJson[] = [];

  it("watch_run - a user's socket receives the run's events in order, ending with the terminal event", async () => {
    firstRunId = await startRun(alice, MODEL_RUN);
    const client = await Client.open({ token: alice });
    client.send({ id: "w1", type: "watch_run", run_id: firstRunId, after_sequence: 0 });
    const frames = await client.finished("w1");
    client.close();

    expect(frames.at(-1)?.type).toBe("end");
    firstEvents = events(frames);
    expect(firstEvents.length).toBeGreaterThanOrEqual(4);
    expect(firstEvents.every((e) => e.runId === firstRunId)).toBe(true);
    // Stored events: 1, 2, 3, ... without gaps.
    expect(firstEvents.map((e) => Number(e.sequence))).toEqual(firstEvents.map((_e, i) => i + 1));
    expect(firstEvents[0]?.type).toBe("RUN_EVENT_TYPE_CREATED");
    expect(firstEvents.at(-1)?.type).toBe("RUN_EVENT_TYPE_COMPLETED");
    const types = firstEvents.map((e) => e.type);
    expect(types).toContain("RUN_EVENT_TYPE_STEP_STARTED");
    expect(types).toContain("RUN_EVENT_TYPE_STEP_COMPLETED");
  }, 60_000);

  it("watch_run - joining after the run ended replays every event; after_sequence resumes", async () => {
    expect(firstEvents.length).toBeGreaterThan(0);
    const client = await Client.open({ token: alice });
    client.send({ id: "late", type: "watch_run", run_id: firstRunId });
    client.send({ id: "resume", type: "watch_run", runId: firstRunId, afterSequence: "2" });
    const late = await client.finished("late");
    const resumed = await client.finished("resume");
    client.close();

    expect(late.at(-1)?.type).toBe("end");
    expect(events(late).map((e) => e.eventId)).toEqual(firstEvents.map((e) => e.eventId));
    expect(events(resumed).map((e) => Number(e.sequence))).toEqual(
      firstEvents.slice(2).map((e) => Number(e.sequence)),
    );
  }, 30_000);

  it("run - a browser-style socket (token in the subprotocol) starts a run and streams it live", async () => {
    const client = await Client.open({ protocols: ["ensemble.v1", `ensemble.bearer.${alice}`] });
    // The server picks the protocol, never the entry carrying the token.
    expect(client.ws.protocol).toBe("ensemble.v1");
    client.send({ id: "r1", type: "run", request: { spec: MODEL_RUN } });
    const frames = await client.finished("r1");
    client.close();

    const kinds = frames.map((f) => f.type);
    expect(kinds[0]).toBe("run");
    expect(kinds.at(-2)).toBe("run");
    expect(kinds.at(-1)).toBe("end");
    const final = frames.at(-2)?.["run"] as { status: string; output: string };
    expect(final.status).toBe("RUN_STATUS_COMPLETED");
    expect(final.output.length).toBeGreaterThan(0);
    const evs = events(frames);
    expect(evs.at(-1)?.type).toBe("RUN_EVENT_TYPE_COMPLETED");
    // Token deltas stream while the step runs (the run call includes them by default).
    const deltas = evs.filter((e) => e.type === "RUN_EVENT_TYPE_STEP_DELTA");
    expect(deltas.length).toBeGreaterThan(1);
  }, 60_000);

  it("chat - an OpenAI chat body streams several chunks before the end", async () => {
    const client = await Client.open({ token: alice });
    client.send({
      id: "c1",
      type: "chat",
      request: {
        model: "fast",
        messages: [{ role: "user", content: "Explain how a bicycle gear works in detail." }],
        stream_options: { include_usage: true },
      },
    });
    const frames = await client.finished("c1");
    client.close();

    expect(frames.at(-1)?.type).toBe("end");
    const chunks = frames
      .filter((f) => f.type === "chunk")
      .map(
        (f) =>
          f["chunk"] as {
            object: string;
            choices: Array<{ delta: { content?: string; role?: string }; finish_reason: string }>;
            usage?: { total_tokens: number } | null;
          },
      );
    expect(chunks.every((c) => c.object === "chat.completion.chunk")).toBe(true);
    expect(chunks[0]?.choices[0]?.delta.role).toBe("assistant");
    const withContent = frames.filter(
      (f) =>
        f.type === "chunk" &&
        ((f["chunk"] as (typeof chunks)[number]).choices[0]?.delta.content ?? "") !== "",
    );
    expect(withContent.length).toBeGreaterThan(2);
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text.length).toBeGreaterThan(10);
    expect(chunks.some((c) => c.choices[0]?.finish_reason === "stop")).toBe(true);
    expect(chunks.at(-1)?.usage?.total_tokens).toBeGreaterThan(0);
    // Deltas arrive as the model produces them, not all at the end.
    expect(frames.at(-1)!.at - withContent[0]!.at).toBeGreaterThan(20);
  }, 30_000);

  it("auth - an upgrade without a valid credential is refused with 401 and no socket", async () => {
    const none = await refusedStatus({});
    expect(none.status).toBe(401);
    expect(JSON.parse(none.body)).toMatchObject({ code: "unauthenticated" });
    expect((await refusedStatus({ authorization: "Bearer not-a-token" })).status).toBe(401);
    expect((await refusedStatus({}, ["ensemble.v1", "ensemble.bearer.bogus"])).status).toBe(401);
    // A browser origin outside GATEWAY_CORS_ORIGINS is refused even with a token.
    expect(
      (await refusedStatus({ authorization: `Bearer ${alice}`, origin: "https://evil.example" }))
        .status,
    ).toBe(403);
    // A page served by the gateway itself (the console) is same-origin.
    const own = await Client.open({ token: alice, origin: `http://127.0.0.1:${gw.port}` });
    own.close();
    // So is a listed one.
    const listed = await Client.open({ token: alice, origin: "https://console.example" });
    listed.close();
  });

  it("tenancy - another tenant's run is an error frame not_found", async () => {
    expect(firstRunId).not.toBe("");
    const client = await Client.open({ token: mallory });
    client.send({ id: "peek", type: "watch_run", run_id: firstRunId });
    const frames = await client.finished("peek");
    client.close();
    expect(frames).toHaveLength(1);
    expect(frames[0]).toMatchObject({ id: "peek", type: "error", code: "not_found" });
  });

  it("frames - malformed or unknown frames get error frames and the socket stays usable", async () => {
    const client = await Client.open({ token: alice });
    client.send("{not json");
    client.send({ id: "u1", type: "subscribe_everything" });
    client.send({ id: "b1", type: "watch_run", run_id: firstRunId, bogus: true });
    client.send({ type: "watch_run", run_id: firstRunId });
    client.send({ id: "n1", type: "chat", request: { model: "fast", messages: "hi" } });
    client.send({
      id: "n2",
      type: "chat",
      request: { model: "fast", messages: [{ role: "user", content: "hi" }], n: 2 },
    });
    client.send({ id: "x1", type: "cancel" });
    await client.until((f) => f.filter((x) => x.type === "error").length >= 7);
    const errors = client.frames.filter((f) => f.type === "error");
    expect(errors[0]).toMatchObject({ code: "invalid_argument" });
    expect(errors[0]?.id).toBeUndefined();
    expect(errors.find((e) => e.id === "u1")).toMatchObject({ code: "invalid_argument" });
    expect(errors.find((e) => e.id === "b1")?.message).toContain("bogus");
    expect(errors.find((e) => e.id === "n1")).toMatchObject({
      code: "invalid_argument",
      param: "messages",
    });
    expect(errors.find((e) => e.id === "n2")).toMatchObject({
      code: "invalid_argument",
      param: "n",
    });
    expect(errors.find((e) => e.id === "x1")).toMatchObject({ code: "not_found" });

    client.send({ id: "p", type: "ping" });
    client.send({ id: "ok", type: "watch_run", run_id: firstRunId });
    const ok = await client.finished("ok");
    expect(client.frames.some((f) => f.id === "p" && f.type === "pong")).toBe(true);
    expect(events(ok).at(-1)?.type).toBe("RUN_EVENT_TYPE_COMPLETED");
    client.close();
  }, 30_000);

  it("multiplexing - a cancelled subscription ends at once while another on the socket finishes", async () => {
    const client = await Client.open({ token: alice });
    client.send({
      id: "long",
      type: "run",
      request: {
        spec: {
          input: "Remote work and city centres",
          workflow: { templateId: "research_report" },
        },
      },
    });
    client.send({ id: "dup", type: "watch_run", run_id: firstRunId });
    client.send({ id: "dup", type: "watch_run", run_id: firstRunId });
    await client.until((f) => f.some((x) => x.id === "long" && x.type === "event"));
    client.send({ id: "long", type: "cancel" });
    const long = await client.finished("long");
    expect(long.at(-1)).toMatchObject({ type: "end", cancelled: true });
    const dup = await client.finished("dup");
    expect(dup.some((f) => f.type === "error" && f["code"] === "already_exists")).toBe(true);
    // Nothing more for the cancelled id.
    const count = client.frames.filter((f) => f.id === "long").length;
    await new Promise((r) => setTimeout(r, 300));
    expect(client.frames.filter((f) => f.id === "long").length).toBe(count);
    client.close();
  }, 60_000);

  it("limits - a frame larger than the message limit closes the socket with 1009", async () => {
    const client = await Client.open({ token: alice });
    client.send(JSON.stringify({ id: "big", type: "ping", pad: "x".repeat(100 * 1024) }));
    expect((await client.waitClosed()).code).toBe(1009);
  });

  it("keepalive - the server pings; a peer that never answers is dropped", async () => {
    const client = await Client.open({ token: alice });
    let pings = 0;
    client.ws.on("ping", () => (pings += 1));
    const silent = await Client.open({ token: alice, autoPong: false });
    const closed = await silent.waitClosed(PING_MS * 6);
    expect(closed.code).toBe(1006); // terminated, no close handshake
    expect(pings).toBeGreaterThan(0);
    expect(client.closed).toBeUndefined();
    client.close();
  });

  it("revocation - logging out ends that session's socket (its subscription gets unauthenticated, close 4401) and its Connect stream at once; the user's other session runs on; revoking an API key ends its socket", async () => {
    const [first, second] = await twoSessions("ws-rev");
    const [ended, kept] = await Promise.all([
      Client.open({ token: first.accessToken }),
      Client.open({ token: second.accessToken }),
    ]);
    const long = {
      id: "long",
      type: "run",
      request: {
        spec: {
          input: "Remote work and city centres",
          workflow: { templateId: "research_report" },
        },
      },
    };
    for (const c of [ended, kept]) c.send(long);
    for (const c of [ended, kept]) {
      await c.until((f) => f.some((x) => x.id === "long" && x.type === "event"));
    }
    // The same session's Connect stream (RunService.Run) through the gateway ends too.
    const runs = createClient(
      RunService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    let streamed = 0;
    const connectRun = (async () => {
      for await (const _ of runs.run(fromJson(RunRequestSchema, long.request), {
        headers: { authorization: `Bearer ${first.accessToken}` },
      })) {
        streamed += 1;
      }
    })().then(
      () => undefined,
      (err: unknown) => ConnectError.from(err),
    );
    await expect.poll(() => streamed, { timeout: 10_000 }).toBeGreaterThan(0);

    await authCall("Logout", { refreshToken: first.refreshToken });
    const frames = await ended.finished("long", 10_000);
    expect(frames.at(-1)).toMatchObject({ type: "error", code: "unauthenticated" });
    expect(String(frames.at(-1)?.["message"])).toMatch(/revoked/);
    expect((await ended.waitClosed()).code).toBe(4401);
    const streamError = await connectRun;
    expect(streamError?.code).toBe(Code.Unauthenticated);
    expect(streamError?.rawMessage).toMatch(/revoked/);

    // The other session's socket: still open, its run streams to the end.
    expect(kept.closed).toBeUndefined();
    expect((await kept.finished("long", 60_000)).at(-1)).toMatchObject({ type: "end" });
    kept.close();

    // A socket opened with an API key ends when the key is revoked.
    const key = await authCall("CreateApiKey", { name: "ws" }, second.accessToken);
    const withKey = await Client.open({ token: key.secret! });
    withKey.send(long);
    await withKey.until((f) => f.some((x) => x.id === "long" && x.type === "event"));
    await authCall("RevokeApiKey", { id: key.apiKey!.id }, second.accessToken);
    expect((await withKey.finished("long", 10_000)).at(-1)).toMatchObject({
      type: "error",
      code: "unauthenticated",
    });
    expect((await withKey.waitClosed()).code).toBe(4401);
  }, 90_000);

  it("auth frame - a fresh token of the same user replaces the socket's credential, for new operations and for revocation; another user's or a bad token changes nothing", async () => {
    const [first, second] = await twoSessions("ws-auth");
    const [renewed, control] = await Promise.all([
      Client.open({ token: first.accessToken }),
      Client.open({ token: first.accessToken }),
    ]);
    const chat = (id: string) => ({
      id,
      type: "chat",
      request: { model: "sim-fast", messages: [{ role: "user", content: "hello" }] },
    });

    renewed.send({ id: "a1", type: "auth", token: second.accessToken });
    await renewed.until((f) => f.some((x) => x.id === "a1"));
    expect(renewed.frames.find((x) => x.id === "a1")).toMatchObject({ type: "authenticated" });
    const expires = Date.parse(String(renewed.frames.find((x) => x.id === "a1")?.["expire_time"]));
    expect(expires).toBeGreaterThan(Date.now());

    // Refused, and nothing changes: another user's token, a token that is not one.
    renewed.send({ id: "a2", type: "auth", token: mallory });
    renewed.send({ id: "a3", type: "auth", token: "not-a-token" });
    expect((await renewed.finished("a2")).at(-1)).toMatchObject({
      type: "error",
      code: "permission_denied",
    });
    expect((await renewed.finished("a3")).at(-1)).toMatchObject({
      type: "error",
      code: "unauthenticated",
    });

    // Logging out the first session ends the socket still on its token, not the renewed one.
    await authCall("Logout", { refreshToken: first.refreshToken });
    expect((await control.waitClosed()).code).toBe(4401);
    expect(renewed.closed).toBeUndefined();
    renewed.send(chat("c1"));
    expect((await renewed.finished("c1")).at(-1)).toMatchObject({ type: "end" });

    // An API key of the same user: authenticated, with no end to announce.
    const key = await authCall("CreateApiKey", { name: "ws-auth" }, second.accessToken);
    renewed.send({ id: "a4", type: "auth", token: key.secret! });
    await renewed.until((f) => f.some((x) => x.id === "a4"));
    const keyed = renewed.frames.find((x) => x.id === "a4");
    expect(keyed).toMatchObject({ type: "authenticated" });
    expect(keyed?.["expire_time"]).toBeUndefined();
    renewed.send(chat("c2"));
    expect((await renewed.finished("c2")).at(-1)).toMatchObject({ type: "end" });
    renewed.close();
  }, 60_000);

  it("close - closing the socket cancels its upstream call", async () => {
    const client = await Client.open({ token: alice });
    client.send({
      id: "gone",
      type: "chat",
      request: {
        model: "fast",
        max_tokens: 2000,
        // The simulator echoes up to 300 characters: an answer long enough to cut mid-way.
        messages: [{ role: "user", content: "Write a very long essay about rivers. ".repeat(10) }],
      },
    });
    await client.until((f) => f.some((x) => x.id === "gone" && x.type === "chunk"));
    client.ws.terminate();
    await expect
      .poll(
        () =>
          gw.logs
            .lines()
            .find((l) => l["method"] === "WS chat" && String(l["requestId"]).endsWith(":gone")),
        { timeout: 5_000 },
      )
      .toMatchObject({ code: "CANCELLED" });
  });
});
