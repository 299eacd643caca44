// Accounting against real infrastructure: NATS (KV spend counters, JetStream usage events) and
// the test kit's MongoDB-wire server for the ledger, and the built auth service as a process for
// budgets (signup, invites and SetBudget over gRPC with real tokens).
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import {
  closeMongo,
  connectMongo,
  connectNats,
  createClient,
  createJwksVerifier,
  createMetrics,
  jetstream,
  PermissionDeniedError,
  ResourceExhaustedError,
  type GrpcClient,
  type Metrics,
  type NatsConnection,
  type Principal,
} from "@ensemble/kit";
import {
  AuthService,
  BudgetScope,
  GetUsageRequestSchema,
  UsageDimension,
  UsageEventSchema,
  UsageOperation,
} from "@ensemble/proto";
import {
  captureLogs,
  freePort,
  mongoUrl,
  natsUrl,
  ServerProcess,
  startMongo,
  uniqueName,
  type CapturedLogs,
} from "@ensemble/testkit";
import { create } from "@bufbuild/protobuf";
import { Kvm } from "@nats-io/kv";
import mongoose from "mongoose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ledgerModel,
  openAccounting,
  usageSubject,
  type Accounting,
  type AccountingDeps,
  type Caller,
  type LedgerEntry,
} from "../src/accounting/index.js";
import { monthOf, userSpendKey, tenantSpendKey } from "../src/accounting/keys.js";

const repoRoot = ((): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "tsconfig.base.json")) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
})();

let auth: ServerProcess;
let authAddress: string;
let jwksUrl: string;
let nc: NatsConnection;
let mongo: mongoose.Connection;
let authMetrics: Metrics;
let authClient: GrpcClient<typeof AuthService>;
const logs: CapturedLogs = captureLogs({ level: "debug" });
const opened: Accounting[] = [];
const secrets: string[] = [];

beforeAll(async () => {
  const [port, jwksPort] = [await freePort(), await freePort()];
  authAddress = `127.0.0.1:${port}`;
  jwksUrl = `http://127.0.0.1:${jwksPort}/.well-known/jwks.json`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: "development",
    LOG_LEVEL: "info",
    AUTH_ADDR: authAddress,
    AUTH_JWKS_PORT: String(jwksPort),
    METRICS_PORT: "0",
    NATS_URL: natsUrl(),
    MONGODB_URL: mongoUrl(),
    MONGODB_DB: uniqueName("mpauth"),
    AUTH_ARGON2_MEMORY_KIB: "8192",
    AUTH_ARGON2_TIME_COST: "1",
  };
  delete env["JWKS_URL"];
  auth = new ServerProcess(
    "auth",
    process.execPath,
    [join(repoRoot, "services/auth/dist/src/main.js")],
    env,
  );
  await auth.waitForLine(/auth listening/, 90_000);
  nc = await connectNats({ url: natsUrl(), name: "accounting-test", logger: logs.logger });
  mongo = await connectMongo({
    url: mongoUrl(),
    dbName: uniqueName("mpledger"),
    logger: logs.logger,
  });
  authMetrics = createMetrics({ service: "model-proxy-test", defaultMetrics: false });
  authClient = createClient(AuthService, authAddress, { metrics: authMetrics });
});

afterAll(async () => {
  for (const a of opened) await a.close().catch(() => undefined);
  await mongo?.dropDatabase().catch(() => undefined);
  if (mongo !== undefined) await closeMongo(mongo);
  await nc?.drain();
  await auth?.stop(10_000);
});

async function open(over: Partial<AccountingDeps> = {}): Promise<Accounting> {
  const acc = await openAccounting({
    mongo,
    nc,
    auth: authClient,
    logger: logs.logger,
    spendBucket: uniqueName("spend"),
    budgetCacheMs: 0,
    flushMs: 50,
    batchSize: 100,
    ...over,
  });
  opened.push(acc);
  return acc;
}

let emails = 0;
const email = (p: string) =>
  `${p}.${process.pid}.${++emails}.${Date.now().toString(36)}@example.test`;
const PASSWORD = "correct-Horse-battery-9";

interface TestUser {
  caller: Caller;
  principal: Principal;
  client: GrpcClient<typeof AuthService>;
}

async function asUser(token: string, apiKeyId = ""): Promise<TestUser> {
  secrets.push(token);
  const principal = await createJwksVerifier({ jwksUrl }).verify(token);
  return {
    principal,
    caller: { tenantId: principal.tenantId, userId: principal.subject, apiKeyId, token },
    client: createClient(AuthService, authAddress, { token: () => token }),
  };
}

/** A new tenant: its admin, and `members` users invited into it. */
async function tenant(members = 1): Promise<{ admin: TestUser; users: TestUser[] }> {
  const signed = await authClient.signup({ email: email("admin"), password: PASSWORD });
  const admin = await asUser(signed.tokens?.accessToken ?? "");
  const users: TestUser[] = [];
  for (let i = 0; i < members; i++) {
    const { token } = await admin.client.createInvite({});
    const joined = await authClient.signup({
      email: email("member"),
      password: PASSWORD,
      tenant: { case: "inviteToken", value: token },
    });
    users.push(await asUser(joined.tokens?.accessToken ?? ""));
  }
  return { admin, users };
}

async function setBudget(admin: TestUser, usd: number | undefined, user?: TestUser) {
  await admin.client.setBudget({
    scope: user === undefined ? BudgetScope.TENANT : BudgetScope.USER,
    userId: user?.principal.subject ?? "",
    ...(usd !== undefined ? { monthlyLimitUsd: usd } : {}),
  });
}

let ids = 0;
function entry(who: TestUser, over: Partial<LedgerEntry> = {}): LedgerEntry {
  return {
    id: `chatcmpl-${process.pid}-${++ids}-${Date.now().toString(36)}`,
    tenantId: who.caller.tenantId,
    userId: who.caller.userId,
    apiKeyId: who.caller.apiKeyId,
    operation: UsageOperation.CHAT,
    model: "sim-small",
    requestedModel: "sim-small",
    provider: "simulator",
    deployment: "simulator",
    inputTokens: 10,
    cachedInputTokens: 0,
    cacheWriteInputTokens: 0,
    reasoningTokens: 0,
    outputTokens: 20,
    costUsd: 0.1,
    latencyMs: 100,
    ttftMs: 20,
    time: new Date(),
    streaming: false,
    cacheHit: false,
    simulated: true,
    status: "OK",
    runId: "",
    stepId: "",
    sessionId: "",
    attempt: 0,
    idempotencyKey: "",
    metadata: {},
    ...over,
  };
}

async function refusal(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected the budget check to refuse, but it passed");
}

async function eventually(check: () => Promise<void>, timeoutMs = 5_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

async function kvSpend(bucket: string, key: string): Promise<number> {
  const kv = await new Kvm(nc).open(bucket);
  const e = await kv.get(key);
  return e === null ? 0 : (e.json<{ usd: number }>().usd ?? 0);
}

const ledgerCount = (filter: Record<string, unknown>) =>
  ledgerModel(mongo).countDocuments(filter).exec();

function authGetBudgetCalls(): Promise<number> {
  return authMetrics.registry
    .getSingleMetricAsString("ensemble_rpc_client_duration_seconds")
    .then((text) => {
      const line = text.split("\n").find((l) => l.includes("_count") && l.includes("GetBudget"));
      return line === undefined ? 0 : Number(line.split(" ").pop());
    });
}

describe("accounting", () => {
  it("budget - spend accumulates and a call over the user's limit is refused, saying whose limit and the spend", async () => {
    const acc = await open();
    const { admin, users } = await tenant(1);
    const u = users[0]!;
    await setBudget(admin, 1, u);

    await acc.checkBudget(u.caller, 0.3);
    acc.record(entry(u, { costUsd: 0.6 }));
    await acc.checkBudget(u.caller, 0.3); // 0.6 + 0.3 fits
    acc.record(entry(u, { costUsd: 0.3 }));
    // 0.9 spent: another 0.2 would exceed $1, and is refused before any flush (own spend counts at once)
    const err = await refusal(acc.checkBudget(u.caller, 0.2));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect((err as ResourceExhaustedError).code).toBe(Code.ResourceExhausted);
    expect(err.message).toMatch(
      /your limit for \d{4}-\d{2} is \$1\.00 and \$0\.9 is already spent/,
    );
    expect((err as ResourceExhaustedError).retryAfterMs).toBeGreaterThan(0);
    for (const s of secrets) expect(err.message).not.toContain(s);
    // the admin (no user limit) is not affected by the member's limit
    await acc.checkBudget(admin.caller, 0.2);

    await acc.flush();
    expect(await ledgerCount({ tenantId: u.caller.tenantId })).toBe(2);
  });

  it("budget - the tenant's limit covers every user; a limit of 0 blocks even an unestimated call", async () => {
    const acc = await open();
    const { admin, users } = await tenant(1);
    const u = users[0]!;
    await setBudget(admin, 2);
    acc.record(entry(admin, { costUsd: 1.5 }));
    acc.record(entry(u, { costUsd: 0.4 }));
    await acc.checkBudget(u.caller, 0.05);
    const err = await refusal(acc.checkBudget(u.caller, 0.2));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect(err.message).toContain("the tenant's limit");
    expect(err.message).toContain("$2.00");
    expect(err.message).toContain("$1.9");

    await setBudget(admin, undefined); // removed: no limit
    await acc.checkBudget(u.caller, 5);
    await setBudget(admin, 0, u);
    const zero = await refusal(acc.checkBudget(u.caller, 0));
    expect(zero).toBeInstanceOf(ResourceExhaustedError);
    expect(zero.message).toContain("your limit");
  });

  it("budget - a warm check makes no call to auth; BUDGET_CACHE_MS bounds how late a change applies", async () => {
    const acc = await open({ budgetCacheMs: 60_000 });
    const { admin, users } = await tenant(1);
    const u = users[0]!;
    await setBudget(admin, 1, u);
    await acc.checkBudget(u.caller, 0); // cold: tenant + user limits from auth
    const before = await authGetBudgetCalls();
    const started = performance.now();
    for (let i = 0; i < 2_000; i++) await acc.checkBudget(u.caller, 0.01);
    const perCheckUs = ((performance.now() - started) / 2_000) * 1000;
    expect(await authGetBudgetCalls()).toBe(before);
    logs.logger.info({ perCheckUs }, "warm budget check");
    expect(perCheckUs).toBeLessThan(1_000);
    // a lower limit set now is not seen until the cached one expires
    await setBudget(admin, 0, u);
    await acc.checkBudget(u.caller, 0);
  });

  it("replicas - two instances on one KV bucket see each other's spend after a flush, and concurrent flushes lose nothing", async () => {
    const bucket = uniqueName("spend");
    const a = await open({ spendBucket: bucket });
    const b = await open({ spendBucket: bucket });
    const { admin, users } = await tenant(1);
    const u = users[0]!;
    await setBudget(admin, 1, u);

    a.record(entry(u, { costUsd: 0.8 }));
    await a.flush();
    await eventually(async () => {
      const err = await refusal(b.checkBudget(u.caller, 0.3));
      expect(err).toBeInstanceOf(ResourceExhaustedError);
      expect(err.message).toContain("$0.8");
    });
    await b.checkBudget(u.caller, 0.1);

    // 2 x 50 calls of $0.01 recorded and flushed by both replicas at once: exactly $0.5 more
    for (let i = 0; i < 50; i++) {
      a.record(entry(u, { costUsd: 0.01 }));
      b.record(entry(u, { costUsd: 0.01 }));
    }
    await Promise.all([a.flush(), b.flush()]);
    const month = monthOf(Date.now());
    expect(
      await kvSpend(bucket, userSpendKey(month, u.caller.tenantId, u.caller.userId)),
    ).toBeCloseTo(1.8, 9);
    expect(await kvSpend(bucket, tenantSpendKey(month, u.caller.tenantId))).toBeCloseTo(1.8, 9);
    expect(await ledgerCount({ userId: u.caller.userId })).toBe(101);
  });

  it("dedupe - the same id, run/step/attempt or idempotency key is recorded and billed once, also across replicas", async () => {
    const bucket = uniqueName("spend");
    const a = await open({ spendBucket: bucket });
    const b = await open({ spendBucket: bucket });
    const { admin, users } = await tenant(1);
    const u = users[0]!;

    const same = entry(u, { costUsd: 0.25 });
    a.record(same);
    a.record({ ...same }); // same buffer
    b.record({ ...same }); // other replica
    const step = { runId: "run-1", stepId: "step-a", attempt: 1 };
    a.record(entry(u, { ...step, costUsd: 0.5 }));
    b.record(entry(u, { ...step, costUsd: 0.5 })); // a redelivered step, another completion id
    b.record(entry(u, { ...step, attempt: 2, costUsd: 0.5 })); // the next attempt is billed
    a.record(entry(u, { idempotencyKey: "k-1", costUsd: 1 }));
    b.record(entry(u, { idempotencyKey: "k-1", costUsd: 1 }));
    await Promise.all([a.flush(), b.flush()]);
    // once more after the first copies are in MongoDB
    a.record({ ...same });
    b.record(entry(u, { ...step, costUsd: 0.5 }));
    await Promise.all([a.flush(), b.flush()]);

    expect(await ledgerCount({ userId: u.caller.userId })).toBe(4);
    expect(await ledgerCount({ id: same.id })).toBe(1);
    const month = monthOf(Date.now());
    expect(
      await kvSpend(bucket, userSpendKey(month, u.caller.tenantId, u.caller.userId)),
    ).toBeCloseTo(2.25, 9);
    // neither replica still counts a refused duplicate as its own pending spend: with a limit of
    // $2.30, a $0.04 call fits on both (it would not with one duplicate's $0.25 still counted)
    await setBudget(admin, 2.3, u);
    await eventually(async () => {
      for (const acc of [a, b]) await acc.checkBudget(u.caller, 0.04);
    });
    await expect(a.checkBudget(u.caller, 0.1)).rejects.toBeInstanceOf(ResourceExhaustedError);
  });

  it("close - buffered entries are in MongoDB and their usage events on NATS after close()", async () => {
    const acc = await openAccounting({
      mongo,
      nc,
      auth: authClient,
      logger: logs.logger,
      spendBucket: uniqueName("spend"),
      budgetCacheMs: 0,
      flushMs: 60_000, // nothing flushes by itself during the test
      batchSize: 1_000,
    });
    const { users } = await tenant(1);
    const u = users[0]!;
    const entries = [1, 2, 3].map((n) =>
      entry(u, {
        costUsd: n / 100,
        runId: "r",
        stepId: `s${n}`,
        attempt: 1,
        // keys MongoDB would not take as field names
        metadata: { "feature.name": "chat", $n: String(n) },
      }),
    );
    for (const e of entries) acc.record(e);
    expect(await ledgerCount({ userId: u.caller.userId })).toBe(0);
    await acc.close();
    expect(await ledgerCount({ userId: u.caller.userId })).toBe(3);
    const stored = await ledgerModel(mongo).findOne({ id: entries[1]!.id }).lean().exec();
    expect(stored?.metadata).toEqual([
      { k: "feature.name", v: "chat" },
      { k: "$n", v: "2" },
    ]);

    const js = jetstream(nc);
    const consumer = await js.consumers.get("USAGE", {
      filter_subjects: [usageSubject(u.caller.tenantId)],
    });
    const got = new Map<string, { cost: number; runId: string; step: string }>();
    const batch = await consumer.fetch({ max_messages: 10, expires: 2_000 });
    for await (const m of batch) {
      const ev = fromBinary(UsageEventSchema, m.data);
      got.set(ev.requestId, { cost: ev.usage?.costUsd ?? 0, runId: ev.runId, step: ev.stepId });
      if (got.size === 3) break;
    }
    expect(got).toEqual(
      new Map(entries.map((e) => [e.id, { cost: e.costUsd, runId: "r", step: e.stepId }])),
    );
  });

  it("usage - grouped by day, model, user and API key; all_users needs admin; another tenant never sees it", async () => {
    const acc = await open();
    const a = await tenant(1);
    const b = await tenant(0);
    const [admin, member] = [a.admin, a.users[0]!];
    const d1 = new Date("2025-03-01T10:00:00Z");
    const d2 = new Date("2025-03-02T23:59:59Z");
    acc.record(entry(admin, { time: d1, model: "m1", costUsd: 1, apiKeyId: "key-1" }));
    acc.record(entry(admin, { time: d1, model: "m2", costUsd: 2, latencyMs: 300 }));
    acc.record(entry(member, { time: d1, model: "m1", costUsd: 4, latencyMs: 100 }));
    acc.record(entry(member, { time: d2, model: "m1", costUsd: 8, latencyMs: 300 }));
    acc.record(entry(member, { time: d2, model: "m1", costUsd: 0, status: "UNAVAILABLE" }));
    acc.record(entry(member, { time: d2, model: "m1", costUsd: 0, cacheHit: true, latencyMs: 5 }));
    acc.record(entry(b.admin, { time: d1, model: "m1", costUsd: 100 }));
    await acc.flush();

    const req = (over: Parameters<typeof create<typeof GetUsageRequestSchema>>[1] = {}) =>
      create(GetUsageRequestSchema, {
        startTime: timestampFromDate(new Date("2025-03-01T00:00:00Z")),
        endTime: timestampFromDate(new Date("2025-04-01T00:00:00Z")),
        ...over,
      });

    // a user sees their own usage only
    const own = await acc.getUsage(member.principal, req({ groupBy: [UsageDimension.DAY] }));
    expect(own.buckets.map((x) => [x.periodStart?.seconds, x.requests, x.usage?.costUsd])).toEqual([
      [BigInt(Date.parse("2025-03-01T00:00:00Z") / 1000), 1n, 4],
      [BigInt(Date.parse("2025-03-02T00:00:00Z") / 1000), 3n, 8],
    ]);
    expect(own.buckets[1]?.errors).toBe(1n);
    expect(own.buckets[1]?.cacheHits).toBe(1n);
    expect(own.totalRequests).toBe(4n);
    await expect(acc.getUsage(member.principal, req({ allUsers: true }))).rejects.toBeInstanceOf(
      PermissionDeniedError,
    );
    await expect(
      acc.getUsage(member.principal, req({ userId: admin.caller.userId })),
    ).rejects.toBeInstanceOf(PermissionDeniedError);

    // the admin sees the tenant, by user and by model
    const byUser = await acc.getUsage(
      admin.principal,
      req({ allUsers: true, groupBy: [UsageDimension.USER, UsageDimension.MODEL] }),
    );
    const rows = byUser.buckets.map((x) => [x.userId, x.model, x.requests, x.usage?.costUsd]);
    const expected = [
      [admin.caller.userId, "m1", 1n, 1],
      [admin.caller.userId, "m2", 1n, 2],
      [member.caller.userId, "m1", 4n, 12],
    ].sort((x, y) =>
      `${String(x[0])}${String(x[1])}` < `${String(y[0])}${String(y[1])}` ? -1 : 1,
    );
    expect(rows).toEqual(expected);
    expect(byUser.total?.costUsd).toBe(15);
    const memberM1 = byUser.buckets.find((x) => x.userId === member.caller.userId);
    // mean latency of the successful calls only: (100 + 300 + 5) / 3
    expect(Number(memberM1?.meanLatency?.nanos) / 1e6).toBe(135);

    const byKey = await acc.getUsage(
      admin.principal,
      req({ allUsers: true, groupBy: [UsageDimension.API_KEY], model: "m1" }),
    );
    expect(byKey.buckets.map((x) => [x.apiKeyId, x.requests])).toEqual([
      ["", 4n],
      ["key-1", 1n],
    ]);
    const oneUser = await acc.getUsage(admin.principal, req({ userId: member.caller.userId }));
    expect(oneUser.totalRequests).toBe(4n);

    // tenant B's admin sees only tenant B's call
    const other = await acc.getUsage(b.admin.principal, req({ allUsers: true }));
    expect(other.totalRequests).toBe(1n);
    expect(other.total?.costUsd).toBe(100);
    const otherUser = await acc.getUsage(
      b.admin.principal,
      req({ allUsers: true, userId: member.caller.userId }),
    );
    expect(otherUser.totalRequests).toBe(0n);
  });

  it("usage by metadata - calls filtered by their labels and grouped by one label's value, per team or customer", async () => {
    const acc = await open();
    const a = await tenant(1);
    const [admin, member] = [a.admin, a.users[0]!];
    const at = new Date("2025-05-10T12:00:00Z");
    const label = (metadata: Record<string, string>, costUsd: number, who = admin) =>
      acc.record(entry(who, { time: at, metadata, costUsd }));
    label({ team: "search", env: "prod" }, 1);
    label({ team: "search", env: "dev" }, 2);
    label({ team: "ads", env: "prod" }, 4, member);
    label({ env: "prod" }, 8);
    label({}, 16);
    await acc.flush();
    const req = (over: Parameters<typeof create<typeof GetUsageRequestSchema>>[1] = {}) =>
      create(GetUsageRequestSchema, {
        startTime: timestampFromDate(new Date("2025-05-01T00:00:00Z")),
        endTime: timestampFromDate(new Date("2025-06-01T00:00:00Z")),
        allUsers: true,
        ...over,
      });
    const rows = (res: Awaited<ReturnType<typeof acc.getUsage>>) =>
      res.buckets.map((b) => [b.metadataValue, b.requests, b.usage?.costUsd]);

    const byTeam = await acc.getUsage(
      admin.principal,
      req({ groupBy: [UsageDimension.METADATA], metadataKey: "team" }),
    );
    expect(rows(byTeam)).toEqual([
      ["", 2n, 24],
      ["ads", 1n, 4],
      ["search", 2n, 3],
    ]);
    const prodByTeam = await acc.getUsage(
      admin.principal,
      req({ groupBy: [UsageDimension.METADATA], metadataKey: "team", metadata: { env: "prod" } }),
    );
    expect(rows(prodByTeam)).toEqual([
      ["", 1n, 8],
      ["ads", 1n, 4],
      ["search", 1n, 1],
    ]);
    const both = await acc.getUsage(
      admin.principal,
      req({ metadata: { env: "prod", team: "search" } }),
    );
    expect(both.totalRequests).toBe(1n);
    expect(both.total?.costUsd).toBe(1);
    // With another dimension, and a member sees only their own calls.
    const byUserTeam = await acc.getUsage(
      admin.principal,
      req({ groupBy: [UsageDimension.USER, UsageDimension.METADATA], metadataKey: "team" }),
    );
    expect(byUserTeam.buckets.find((b) => b.userId === member.caller.userId)?.metadataValue).toBe(
      "ads",
    );
    const own = await acc.getUsage(
      member.principal,
      req({ allUsers: false, groupBy: [UsageDimension.METADATA], metadataKey: "team" }),
    );
    expect(rows(own)).toEqual([["ads", 1n, 4]]);
    // The key goes with the dimension, both or neither.
    for (const bad of [req({ groupBy: [UsageDimension.METADATA] }), req({ metadataKey: "team" })]) {
      await expect(acc.getUsage(admin.principal, bad)).rejects.toThrow(/metadata_key/);
    }
  });

  it("resilience - a flush while MongoDB is down keeps the entries and writes them, billed once, when it is back", async () => {
    const port = await freePort();
    const dataDir = await mkdtemp(join(tmpdir(), "mp-ledger-"));
    let server = await startMongo({ port, dataDir });
    const conn = await mongoose
      .createConnection(`mongodb://127.0.0.1:${port}`, {
        dbName: "ledger",
        serverSelectionTimeoutMS: 500,
      })
      .asPromise();
    const bucket = uniqueName("spend");
    try {
      const acc = await openAccounting({
        mongo: conn,
        nc,
        auth: authClient,
        logger: logs.logger,
        spendBucket: bucket,
        budgetCacheMs: 0,
        flushMs: 50,
        batchSize: 100,
        flushGiveUpMs: 1_000,
      });
      const { users } = await tenant(1);
      const u = users[0]!;
      await server.stop();
      for (let i = 0; i < 5; i++) acc.record(entry(u, { costUsd: 0.1 }));
      await expect(acc.flush()).rejects.toThrow();
      server = await startMongo({ port, dataDir });
      await acc.close();
      expect(await ledgerModel(conn).countDocuments({ userId: u.caller.userId })).toBe(5);
      const month = monthOf(Date.now());
      expect(
        await kvSpend(bucket, userSpendKey(month, u.caller.tenantId, u.caller.userId)),
      ).toBeCloseTo(0.5, 9);
    } finally {
      await conn.close().catch(() => undefined);
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
