// Run schedules against the built engine as processes: two replicas sharing one database, step
// queue and event stream fire each occurrence once; an occurrence missed while no replica looked
// at the schedules fires once when they come back; a claimed occurrence whose claimer died is
// started by another replica after the grace period. Real auth (users, an invite, service
// tokens), registry, model-proxy and the LLM simulator; MODEL runs on sim-fast.
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { closeMongo, connectMongo, createClient, type GrpcClient } from "@ensemble/kit";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  Capability,
  RegistryService,
  RunService,
  RunStatus,
  WebhookEventType,
  type Run,
  type Schedule,
} from "@ensemble/proto";
import {
  captureLogs,
  mongoUrl,
  rejection,
  startServices,
  startWorkflowProcess,
  workflowSharedNames,
  type AuthProcess,
  type MeshProcess,
  type Services,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fireKey, openScheduleModels, scheduledRunId, scheduleKey } from "../src/schedules.js";

const PASSWORD = "correct-Horse-battery-9";
const SPEC = {
  input: "scheduled hello",
  mode: { case: "model" as const, value: { model: "sim-fast" } },
};

let sim: Simulator;
let services: Services;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
const engines: MeshProcess[] = [];
let shared: ReturnType<typeof workflowSharedNames>;
let engineOpts: Parameters<typeof startWorkflowProcess>[0];
/** Serves the API but looks for due schedules only when it starts (tick of an hour). */
let idle: GrpcClient<typeof RunService>;
/** The two replicas that run the scheduler (started by the first test). */
let a: GrpcClient<typeof RunService>;
let b: GrpcClient<typeof RunService>;
let owner: { token: string; id: string; tenantId: string };
let member: { token: string; id: string };
let stranger: { token: string };

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
const ms = (t: Parameters<typeof timestampDate>[0] | undefined) =>
  t === undefined ? undefined : timestampDate(t).getTime();
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));

async function schedule(client: GrpcClient<typeof RunService>, id: string): Promise<Schedule> {
  return (await client.getSchedule({ scheduleId: id }, as(owner.token))).schedule!;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function runsOf(scheduleId: string): Promise<Run[]> {
  const res = await a.listRuns({ scheduleId, page: { pageSize: 500 } }, as(owner.token));
  return res.runs;
}

async function waitEnd(id: string): Promise<Run> {
  return until(`run ${id} to end`, async () => {
    const run = (await a.getRun({ runId: id }, as(owner.token))).run!;
    return [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED].includes(run.status)
      ? run
      : undefined;
  });
}

beforeAll(async () => {
  sim = await startSimulator({ defaults: { ttftMs: 0 } });
  services = await startServices({ simulatorUrl: `${sim.url}/v1` });
  ({ auth, registry, modelProxy: proxy } = services);
  shared = workflowSharedNames();
  engineOpts = {
    jwksUrl: auth.jwksUrl,
    authAddress: auth.address,
    registryAddress: registry.address,
    modelProxyAddress: proxy.address,
    serviceToken: await auth.mintServiceToken("workflow"),
    shared,
    // Webhooks to the test's receiver on 127.0.0.1.
    env: { SCHEDULE_TICK_MS: "200", WEBHOOK_ALLOW_PRIVATE: "true" },
  };
  const idleEngine = await startWorkflowProcess({
    ...engineOpts,
    env: { SCHEDULE_TICK_MS: "3600000", WEBHOOK_ALLOW_PRIVATE: "true" },
  });
  engines.push(idleEngine);
  idle = createClient(RunService, idleEngine.address);

  const authClient = createClient(AuthService, auth.address);
  const stamp = Date.now();
  const o = await authClient.signup({
    email: `sched-owner-${stamp}@example.com`,
    password: PASSWORD,
    tenant: { case: "tenantName", value: "schedules" },
  });
  owner = { token: o.tokens!.accessToken, id: o.user!.id, tenantId: o.user!.tenantId };
  const invite = await authClient.createInvite({}, as(owner.token));
  const m = await authClient.signup({
    email: `sched-member-${stamp}@example.com`,
    password: PASSWORD,
    tenant: { case: "inviteToken", value: invite.token },
  });
  member = { token: m.tokens!.accessToken, id: m.user!.id };
  const s = await authClient.signup({
    email: `sched-stranger-${stamp}@example.com`,
    password: PASSWORD,
    tenant: { case: "tenantName", value: "elsewhere" },
  });
  stranger = { token: s.tokens!.accessToken };
}, 240_000);

afterAll(async () => {
  await Promise.allSettled(engines.map((e) => e.stop()));
  await services?.stop().catch(() => undefined);
  await sim?.close();
});

describe("schedules", () => {
  it("occurrences missed while no replica looked fire once, the latest only, when replicas start", async () => {
    // Three occurrences one second apart, then none for a minute.
    const first = Math.ceil(Date.now() / 1000) + 5;
    const seconds = [0, 1, 2].map((i) => (first + i) % 60);
    const cron = (
      await idle.createSchedule(
        {
          name: "three seconds",
          spec: SPEC,
          when: { case: "cron", value: { expression: `${seconds.join(",")} * * * * *` } },
        },
        as(owner.token),
      )
    ).schedule!;
    const once = (
      await idle.createSchedule(
        {
          name: "once, missed",
          spec: SPEC,
          when: { case: "at", value: timestampFromDate(new Date(first * 1000 + 500)) },
        },
        as(owner.token),
      )
    ).schedule!;
    await sleep(first * 1000 + 2_500 - Date.now());
    const missed = await schedule(idle, cron.id);
    const missedOnce = await schedule(idle, once.id);

    // Both replicas come up at the same time and race for the missed occurrences.
    const [ea, eb] = await Promise.all([
      startWorkflowProcess(engineOpts),
      startWorkflowProcess(engineOpts),
    ]);
    engines.push(ea, eb);
    a = createClient(RunService, ea.address);
    b = createClient(RunService, eb.address);
    expect(ms(missed.nextFireTime)).toBe(first * 1000);
    expect(missed.fireCount).toBe(0n);
    expect(missedOnce.fireCount).toBe(0n);
    await until("the missed cron occurrence", async () =>
      (await schedule(a, cron.id)).fireCount > 0n ? true : undefined,
    );
    await until("the missed one-time occurrence", async () =>
      (await schedule(b, once.id)).fireCount > 0n ? true : undefined,
    );
    await sleep(1_000);

    const latest = new Date((first + 2) * 1000);
    const fired = await schedule(a, cron.id);
    expect(fired.fireCount).toBe(1n);
    expect(ms(fired.lastFireTime)).toBe(latest.getTime());
    expect(fired.lastRunId).toBe(scheduledRunId(owner.tenantId, cron.id, latest));
    expect(ms(fired.nextFireTime)).toBe((first + 60) * 1000);
    const cronRuns = await runsOf(cron.id);
    expect(cronRuns.map((r) => r.id)).toEqual([fired.lastRunId]);
    const run = await waitEnd(fired.lastRunId);
    expect(run.status).toBe(RunStatus.COMPLETED);
    expect(run.userId).toBe(owner.id);
    expect(run.scheduleId).toBe(cron.id);
    expect(run.output).toContain("[simulated");

    const onceFired = await schedule(b, once.id);
    expect(onceFired.fireCount).toBe(1n);
    expect(onceFired.nextFireTime).toBeUndefined();
    expect((await runsOf(once.id)).map((r) => r.id)).toEqual([onceFired.lastRunId]);
    await a.deleteSchedule({ scheduleId: cron.id }, as(owner.token));
  }, 120_000);

  it("a seconds cron on two replicas starts exactly one run per occurrence; deleting it stops it", async () => {
    const created = (
      await a.createSchedule(
        {
          name: "every two seconds",
          spec: SPEC,
          when: { case: "cron", value: { expression: "*/2 * * * * *", timeZone: "Europe/Berlin" } },
        },
        as(owner.token),
      )
    ).schedule!;
    const fired = await until(
      "three occurrences",
      async () => {
        const s = await schedule(b, created.id);
        return s.fireCount >= 3n ? s : undefined;
      },
      30_000,
    );
    await b.deleteSchedule({ scheduleId: created.id }, as(owner.token));
    const deletedAt = Date.now();
    expect((await rejection(a.getSchedule({ scheduleId: created.id }, as(owner.token)))).code).toBe(
      Code.NotFound,
    );
    // An occurrence claimed just before the deletion may still start its run.
    await sleep(2_000);
    const runs = await runsOf(created.id);

    // Every run is the run of one even second between creation and deletion, each at most once.
    // (A gap is allowed: a replica too busy to look for two seconds fires only the latest.)
    const start = Math.ceil(ms(created.createTime)! / 2000) * 2000;
    const occurrences = new Map<string, number>();
    for (let t = start; t <= deletedAt; t += 2000) {
      occurrences.set(scheduledRunId(owner.tenantId, created.id, new Date(t)), t);
    }
    const times = runs.map((r) => occurrences.get(r.id));
    expect(times.every((t) => t !== undefined)).toBe(true);
    expect(new Set(times).size).toBe(runs.length);
    expect(runs.length).toBeGreaterThanOrEqual(Number(fired.fireCount));
    expect(runs.length).toBeLessThanOrEqual(Number(fired.fireCount) + 1);
    expect(runs.every((r) => r.userId === owner.id && r.scheduleId === created.id)).toBe(true);
    for (const r of runs) expect((await waitEnd(r.id)).status).toBe(RunStatus.COMPLETED);

    // Deleted: nothing more fires, and its fires went with it (bar one claimed just before).
    await sleep(4_000);
    expect((await runsOf(created.id)).length).toBe(runs.length);
    const mongo = await connectMongo({
      url: mongoUrl(),
      dbName: shared.database,
      logger: captureLogs({ level: "warn" }).logger,
    });
    try {
      const models = await openScheduleModels(mongo);
      const left = await models.fires.countDocuments({
        tenantId: owner.tenantId,
        scheduleId: created.id,
      });
      expect(left).toBeLessThanOrEqual(1);
    } finally {
      await closeMongo(mongo);
    }
  }, 90_000);

  it("fires older than the retention are folded into a total: the schedule keeps a handful of fire documents, and fireCount still counts every run", async () => {
    // A third replica folding after 2 s (the others keep the 7-day default; they count the
    // same way).
    const folding = await startWorkflowProcess({
      ...engineOpts,
      env: { SCHEDULE_TICK_MS: "200", SCHEDULE_FIRE_RETENTION_MS: "2000" },
    });
    engines.push(folding);
    const c = createClient(RunService, folding.address);
    const created = (
      await c.createSchedule(
        {
          name: "every second",
          spec: SPEC,
          when: { case: "cron", value: { expression: "* * * * * *" } },
        },
        as(owner.token),
      )
    ).schedule!;
    const logger = captureLogs({ level: "warn" }).logger;
    const mongo = await connectMongo({ url: mongoUrl(), dbName: shared.database, logger });
    try {
      const models = await openScheduleModels(mongo);
      const scope = { tenantId: owner.tenantId, scheduleId: created.id };
      await until(
        "a fold",
        async () => ((await models.totals.exists(scope)) !== null ? true : undefined),
        30_000,
      );
      await until(
        "twenty occurrences",
        async () => ((await schedule(c, created.id)).fireCount >= 20n ? true : undefined),
        30_000,
      );
      const before = (await runsOf(created.id)).length;
      const counted = Number((await schedule(c, created.id)).fireCount);
      const after = (await runsOf(created.id)).length;
      expect(counted).toBeGreaterThanOrEqual(before);
      expect(counted).toBeLessThanOrEqual(after + 2);
      // A few seconds of fires are kept (the retention and up to one more, until the folding
      // replica records an occurrence again), not every one.
      expect(await models.fires.countDocuments(scope)).toBeLessThanOrEqual(12);
      expect(await models.totals.countDocuments(scope)).toBeLessThanOrEqual(2);
    } finally {
      await c.deleteSchedule({ scheduleId: created.id }, as(owner.token));
      await closeMongo(mongo);
      // Its 2 s retention would fold the fires later tests count.
      engines.splice(engines.indexOf(folding), 1);
      await folding.stop();
    }
  }, 90_000);

  it("a one-time schedule fires once and then has no next fire time", async () => {
    const created = (
      await b.createSchedule(
        {
          name: "once",
          spec: SPEC,
          when: { case: "at", value: timestampFromDate(new Date(Date.now() + 3_000)) },
        },
        as(owner.token),
      )
    ).schedule!;
    expect(created.when.case).toBe("at");
    expect(ms(created.nextFireTime)).toBe(
      created.when.case === "at" ? ms(created.when.value) : undefined,
    );
    const fired = await until("the occurrence", async () => {
      const s = await schedule(a, created.id);
      return s.fireCount > 0n ? s : undefined;
    });
    expect(fired.nextFireTime).toBeUndefined();
    expect(ms(fired.lastFireTime)).toBe(ms(created.nextFireTime));
    expect((await waitEnd(fired.lastRunId)).status).toBe(RunStatus.COMPLETED);
    await sleep(1_000);
    const again = await schedule(b, created.id);
    expect(again.fireCount).toBe(1n);
    expect((await runsOf(created.id)).map((r) => r.id)).toEqual([fired.lastRunId]);
  }, 60_000);

  it("an occurrence that cannot start its run says why on the schedule, and makes no run", async () => {
    // A model of the tenant's own, removed from the catalog after the schedule was made.
    const catalog = createClient(RegistryService, registry.address);
    await catalog.upsertModel(
      {
        model: {
          id: "house-model",
          provider: "simulator",
          providerModelId: "sim-fast",
          displayName: "House model",
          capabilities: [Capability.CHAT],
          contextWindow: 32_000,
          enabled: true,
        },
      },
      as(owner.token),
    );
    const created = (
      await b.createSchedule(
        {
          name: "retired model",
          spec: { input: "hello", mode: { case: "model", value: { model: "house-model" } } },
          when: { case: "at", value: timestampFromDate(new Date(Date.now() + 3_000)) },
        },
        as(owner.token),
      )
    ).schedule!;
    expect(created.lastError).toBe("");
    await catalog.deleteModel({ id: "house-model" }, as(owner.token));
    const failed = await until("the failed occurrence", async () => {
      const s = await schedule(a, created.id);
      return s.lastError !== "" ? s : undefined;
    });
    expect(failed.lastError).toBe('spec.model.model: model "house-model" is not in the catalog');
    expect(failed.fireCount).toBe(0n);
    expect(failed.lastRunId).toBe("");
    expect(await runsOf(created.id)).toEqual([]);
  }, 60_000);

  it("pause, update and resume: a paused cron starts nothing, keeps its changes, and fires again from now once resumed", async () => {
    const created = (
      await a.createSchedule(
        {
          name: "pausable",
          spec: SPEC,
          when: { case: "cron", value: { expression: "* * * * * *" } },
        },
        as(owner.token),
      )
    ).schedule!;
    try {
      await until("a first run", async () =>
        (await runsOf(created.id)).length > 0 ? true : undefined,
      );
      const paused = (
        await b.pauseSchedule({ scheduleId: created.id, reason: "maintenance" }, as(owner.token))
      ).schedule!;
      expect(paused).toMatchObject({ paused: true, pauseReason: "maintenance" });
      expect(paused.nextFireTime).toBeUndefined();
      expect(paused.pauseTime).toBeDefined();
      // Pausing again changes nothing.
      const again = (await a.pauseSchedule({ scheduleId: created.id }, as(owner.token))).schedule!;
      expect(ms(again.pauseTime)).toBe(ms(paused.pauseTime));
      expect(again.pauseReason).toBe("maintenance");
      // An occurrence a pass had already read may still start (give it 2 s on a busy machine);
      // then nothing for 2.5 s.
      await sleep(2_000);
      const before = (await runsOf(created.id)).length;
      await sleep(2_500);
      expect((await runsOf(created.id)).length).toBe(before);
      expect((await schedule(a, created.id)).paused).toBe(true);

      // Changes while paused are kept, and it stays paused.
      const updated = (
        await a.updateSchedule(
          {
            scheduleId: created.id,
            name: "pausable, renamed",
            spec: { ...SPEC, input: "after the pause" },
            when: { case: "cron", value: { expression: "*/2 * * * * *" } },
            updateMask: { paths: ["name", "spec", "when"] },
          },
          as(owner.token),
        )
      ).schedule!;
      expect(updated).toMatchObject({
        name: "pausable, renamed",
        paused: true,
        spec: { input: "after the pause" },
        when: { case: "cron", value: { expression: "*/2 * * * * *" } },
      });
      expect(updated.nextFireTime).toBeUndefined();

      const resumedAt = Date.now();
      const resumed = (await b.resumeSchedule({ scheduleId: created.id }, as(owner.token)))
        .schedule!;
      expect(resumed).toMatchObject({ paused: false, pauseReason: "" });
      expect(resumed.pauseTime).toBeUndefined();
      const next = ms(resumed.nextFireTime)!;
      expect(next).toBeGreaterThan(resumedAt);
      expect(new Date(next).getUTCSeconds() % 2).toBe(0);
      // The next run carries the new spec.
      const fresh = await until("a run after the resume", async () => {
        const found = (await runsOf(created.id)).find((r) => r.spec?.input === "after the pause");
        return found;
      });
      expect(ms(fresh.createTime)).toBeGreaterThanOrEqual(resumedAt);

      // A one-time time given to a running schedule is its next fire time.
      const at = new Date(Date.now() + 3_600_000);
      const once = (
        await a.updateSchedule(
          {
            scheduleId: created.id,
            when: { case: "at", value: timestampFromDate(at) },
            updateMask: { paths: ["when"] },
          },
          as(owner.token),
        )
      ).schedule!;
      expect(once.when).toMatchObject({ case: "at" });
      expect(ms(once.nextFireTime)).toBe(at.getTime());
      expect(once.name).toBe("pausable, renamed");

      // Bad updates and other users.
      const bad: Array<[Parameters<typeof a.updateSchedule>[0], Code]> = [
        [{ scheduleId: created.id, name: "x" }, Code.InvalidArgument],
        [{ scheduleId: created.id, name: "x", updateMask: { paths: [] } }, Code.InvalidArgument],
        [{ scheduleId: created.id, updateMask: { paths: ["owner"] } }, Code.InvalidArgument],
        [{ scheduleId: created.id, updateMask: { paths: ["name"] } }, Code.InvalidArgument],
        [{ scheduleId: created.id, updateMask: { paths: ["spec"] } }, Code.InvalidArgument],
        [
          {
            scheduleId: created.id,
            spec: { input: "x", mode: { case: "model", value: { model: "no-such" } } },
            updateMask: { paths: ["spec"] },
          },
          Code.InvalidArgument,
        ],
      ];
      for (const [req, code] of bad) {
        expect((await rejection(a.updateSchedule(req, as(owner.token))))?.code).toBe(code);
      }
      for (const token of [member.token, stranger.token]) {
        expect(
          (await rejection(a.pauseSchedule({ scheduleId: created.id }, as(token))))?.code,
        ).toBe(Code.NotFound);
        expect(
          (
            await rejection(
              a.updateSchedule(
                { scheduleId: created.id, name: "mine", updateMask: { paths: ["name"] } },
                as(token),
              ),
            )
          )?.code,
        ).toBe(Code.NotFound);
      }
      expect((await schedule(a, created.id)).name).toBe("pausable, renamed");

      // A one-time schedule whose time passed while paused cannot simply resume.
      const soon = (
        await a.createSchedule(
          {
            name: "soon",
            spec: SPEC,
            when: { case: "at", value: timestampFromDate(new Date(Date.now() + 1_500)) },
          },
          as(owner.token),
        )
      ).schedule!;
      await a.pauseSchedule({ scheduleId: soon.id }, as(owner.token));
      await sleep(2_500);
      const late = await rejection(a.resumeSchedule({ scheduleId: soon.id }, as(owner.token)));
      expect(late?.code).toBe(Code.FailedPrecondition);
      expect(late?.rawMessage).toMatch(/passed while it was paused/);
      expect(await runsOf(soon.id)).toEqual([]);
      await a.deleteSchedule({ scheduleId: soon.id }, as(owner.token));
    } finally {
      await a.deleteSchedule({ scheduleId: created.id }, as(owner.token));
    }
  }, 90_000);

  it("a schedule that can never start pauses itself after five failed occurrences, says why, and tells the webhooks", async () => {
    const hooks: string[] = [];
    const receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        hooks.push(Buffer.concat(chunks).toString("utf8"));
        res.writeHead(200).end("ok");
      });
    });
    receiver.listen(0, "127.0.0.1");
    await once(receiver, "listening");
    const catalog = createClient(RegistryService, registry.address);
    const hook = await a.createWebhook(
      {
        url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/paused`,
        events: [WebhookEventType.SCHEDULE_PAUSED],
      },
      as(owner.token),
    );
    await catalog.upsertModel(
      {
        model: {
          id: "doomed-model",
          provider: "simulator",
          providerModelId: "sim-fast",
          displayName: "Doomed",
          capabilities: [Capability.CHAT],
          contextWindow: 32_000,
          enabled: true,
        },
      },
      as(owner.token),
    );
    const created = (
      await a.createSchedule(
        {
          name: "doomed",
          spec: { input: "hello", mode: { case: "model", value: { model: "doomed-model" } } },
          when: { case: "cron", value: { expression: "* * * * * *" } },
        },
        as(owner.token),
      )
    ).schedule!;
    try {
      await catalog.deleteModel({ id: "doomed-model" }, as(owner.token));
      const paused = await until(
        "the schedule to pause itself",
        async () => {
          const s = await schedule(b, created.id);
          return s.paused ? s : undefined;
        },
        30_000,
      );
      const why = 'spec.model.model: model "doomed-model" is not in the catalog';
      expect(paused.pauseReason).toBe(`paused after 5 occurrences in a row started no run: ${why}`);
      expect(paused.lastError).toBe(why);
      expect(paused.nextFireTime).toBeUndefined();
      const runsBefore = (await runsOf(created.id)).length;
      // It stays paused: no further occurrence fires (or fails).
      const last = ms(paused.lastFireTime);
      await sleep(2_500);
      const later = await schedule(a, created.id);
      expect(later.paused).toBe(true);
      expect(ms(later.lastFireTime)).toBeLessThanOrEqual((last ?? 0) + 1_000);
      expect((await runsOf(created.id)).length).toBe(runsBefore);
      // The tenant's endpoint is told once, with the schedule and its reason.
      await until(
        "the webhook",
        () => Promise.resolve(hooks.length > 0 ? true : undefined),
        15_000,
      );
      await sleep(1_000);
      expect(hooks).toHaveLength(1);
      const body = JSON.parse(hooks[0]!) as { type: string; data: Record<string, unknown> };
      expect(body.type).toBe("schedule.paused");
      expect(body.data).toMatchObject({
        id: created.id,
        paused: true,
        pauseReason: paused.pauseReason,
      });
    } finally {
      await a.deleteSchedule({ scheduleId: created.id }, as(owner.token));
      await a.deleteWebhook({ webhookId: hook.webhook!.id }, as(owner.token));
      receiver.close();
    }
  }, 90_000);

  it("a claimed occurrence whose claimer died is started once by another replica", async () => {
    const logger = captureLogs({ level: "warn" }).logger;
    const mongo = await connectMongo({ url: mongoUrl(), dbName: shared.database, logger });
    try {
      const models = await openScheduleModels(mongo);
      const created = (
        await a.createSchedule(
          {
            name: "orphaned claim",
            spec: SPEC,
            when: { case: "at", value: timestampFromDate(new Date(Date.now() + 3_600_000)) },
          },
          as(owner.token),
        )
      ).schedule!;
      // What a replica leaves when it dies right after claiming: the schedule due, the
      // occurrence claimed (longer ago than the grace period), no run.
      const occurrence = new Date(Date.now() - 1_000);
      const runId = scheduledRunId(owner.tenantId, created.id, occurrence);
      await models.fires.collection.insertOne({
        _id: fireKey(owner.tenantId, created.id, occurrence) as never,
        tenantId: owner.tenantId,
        scheduleId: created.id,
        occurrence,
        runId,
        status: "claimed",
        error: "",
        createTime: new Date(Date.now() - 60_000),
      });
      await models.schedules.collection.updateOne(
        { _id: scheduleKey(owner.tenantId, created.id) as never },
        { $set: { at: occurrence, nextFireMs: occurrence.getTime() } },
      );
      // Started by whichever replica sees it first (the due scan, or the recovery of stale
      // claims), and the schedule then has nothing more to fire.
      const fired = await until("the orphaned occurrence", async () => {
        const s = await schedule(a, created.id);
        return s.lastRunId !== "" && s.nextFireTime === undefined ? s : undefined;
      });
      expect(fired.lastRunId).toBe(runId);
      expect(fired.fireCount).toBe(1n);
      expect(fired.nextFireTime).toBeUndefined();
      expect((await waitEnd(runId)).status).toBe(RunStatus.COMPLETED);
      await sleep(1_000);
      expect((await runsOf(created.id)).map((r) => r.id)).toEqual([runId]);
      expect(await models.fires.countDocuments({ scheduleId: created.id })).toBe(1);
    } finally {
      await closeMongo(mongo);
    }
  }, 60_000);

  it("schedules belong to their owner; a tenant admin sees the tenant's; other tenants get NOT_FOUND", async () => {
    const later = (h: number) => timestampFromDate(new Date(Date.now() + h * 3_600_000));
    // Daily, 12 hours from now (UTC): always after the one-time schedules below. ("@daily" was
    // sooner than "in an hour" between 23:00 and midnight UTC, and this test failed then.)
    const noonAway = new Date(Date.now() + 12 * 3_600_000);
    const daily = `${noonAway.getUTCMinutes()} ${noonAway.getUTCHours()} * * *`;
    const mine = (
      await a.createSchedule(
        { name: "daily", spec: SPEC, when: { case: "cron", value: { expression: daily } } },
        as(owner.token),
      )
    ).schedule!;
    const soon = (
      await a.createSchedule(
        { name: "in an hour", spec: SPEC, when: { case: "at", value: later(1) } },
        as(owner.token),
      )
    ).schedule!;
    const theirs = (
      await b.createSchedule(
        { name: "member's", spec: SPEC, when: { case: "at", value: later(2) } },
        as(member.token),
      )
    ).schedule!;
    expect(theirs.userId).toBe(member.id);

    // The owner's, by next fire time (the fired one-time schedules, with none, last).
    const listed = (await a.listSchedules({}, as(owner.token))).schedules;
    expect(listed.every((s) => s.userId === owner.id)).toBe(true);
    const ids = listed.map((s) => s.id);
    expect(ids.indexOf(soon.id)).toBeLessThan(ids.indexOf(mine.id));
    expect(ids).not.toContain(theirs.id);
    const next = listed.map((s) => ms(s.nextFireTime) ?? Infinity);
    expect(next).toEqual([...next].sort((x, y) => x - y));
    // Paging walks the same order.
    const paged: string[] = [];
    let token = "";
    do {
      const page = await a.listSchedules(
        { page: { pageSize: 2, pageToken: token } },
        as(owner.token),
      );
      paged.push(...page.schedules.map((s) => s.id));
      token = page.page?.nextPageToken ?? "";
    } while (token !== "");
    expect(paged).toEqual(ids);

    // A member sees only their own; an admin the tenant's.
    const forMember = (await b.listSchedules({}, as(member.token))).schedules.map((s) => s.id);
    expect(forMember).toEqual([theirs.id]);
    expect((await rejection(b.listSchedules({ allUsers: true }, as(member.token)))).code).toBe(
      Code.PermissionDenied,
    );
    expect((await rejection(b.getSchedule({ scheduleId: mine.id }, as(member.token)))).code).toBe(
      Code.NotFound,
    );
    expect(
      (await rejection(b.deleteSchedule({ scheduleId: mine.id }, as(member.token)))).code,
    ).toBe(Code.NotFound);
    const all = (await a.listSchedules({ allUsers: true }, as(owner.token))).schedules;
    expect(all.map((s) => s.id)).toEqual(expect.arrayContaining([mine.id, theirs.id]));
    expect((await a.getSchedule({ scheduleId: theirs.id }, as(owner.token))).schedule?.name).toBe(
      "member's",
    );

    // Another tenant sees nothing and can delete nothing.
    for (const id of [mine.id, theirs.id]) {
      expect((await rejection(a.getSchedule({ scheduleId: id }, as(stranger.token)))).code).toBe(
        Code.NotFound,
      );
      expect((await rejection(a.deleteSchedule({ scheduleId: id }, as(stranger.token)))).code).toBe(
        Code.NotFound,
      );
    }
    expect((await a.listSchedules({}, as(stranger.token))).schedules).toEqual([]);
    expect((await a.getSchedule({ scheduleId: mine.id }, as(owner.token))).schedule?.id).toBe(
      mine.id,
    );

    // An admin may delete a member's schedule.
    await a.deleteSchedule({ scheduleId: theirs.id }, as(owner.token));
    expect((await b.listSchedules({}, as(member.token))).schedules).toEqual([]);
    for (const id of [mine.id, soon.id])
      await a.deleteSchedule({ scheduleId: id }, as(owner.token));
  });

  it("bad expressions, time zones, times and specs are refused and never become schedules", async () => {
    const before = (await a.listSchedules({}, as(owner.token))).schedules.length;
    type Init = Parameters<typeof a.createSchedule>[0];
    const create = (when: NonNullable<Init["when"]>, spec: Init["spec"] = SPEC) =>
      rejection(a.createSchedule({ name: "bad", spec, when }, as(owner.token)));

    const badMinute = await create({ case: "cron", value: { expression: "61 * * * *" } });
    expect(badMinute.code).toBe(Code.InvalidArgument);
    expect(badMinute.rawMessage).toMatch(/cron\.expression.*61 \* \* \* \*/);
    const tooShort = await create({ case: "cron", value: { expression: "* * *" } });
    expect(tooShort.code).toBe(Code.InvalidArgument);
    expect(tooShort.rawMessage).toContain("expression");
    const seven = await create({ case: "cron", value: { expression: "* * * * * * *" } });
    expect(seven.code).toBe(Code.InvalidArgument);
    const never = await create({ case: "cron", value: { expression: "0 0 30 2 *" } });
    expect(never.code).toBe(Code.InvalidArgument);
    expect(never.rawMessage).toContain("never fires");
    const zone = await create({
      case: "cron",
      value: { expression: "0 9 * * 1-5", timeZone: "Mars/Olympus_Mons" },
    });
    expect(zone.code).toBe(Code.InvalidArgument);
    expect(zone.rawMessage).toContain("cron.time_zone");
    const past = await create({
      case: "at",
      value: timestampFromDate(new Date(Date.now() - 60_000)),
    });
    expect(past.code).toBe(Code.InvalidArgument);
    expect((await create({ case: undefined })).code).toBe(Code.InvalidArgument);

    // The spec is planned as StartRun would: unknown addons, templates and AUTO without a
    // categorizer are refused now, not at the first occurrence.
    const daily = { case: "cron" as const, value: { expression: "@daily" } };
    const addon = await create(daily, { ...SPEC, addons: ["no-such-addon"] });
    expect(addon.code).toBe(Code.InvalidArgument);
    expect(addon.rawMessage).toContain("no-such-addon");
    const template = await create(daily, {
      input: "x",
      mode: { case: "workflow", value: { definition: { case: "templateId", value: "no-such" } } },
    });
    expect(template.code).toBe(Code.NotFound);
    const auto = await create(daily, { input: "x" });
    expect(auto.code).toBe(Code.FailedPrecondition);

    expect((await a.listSchedules({}, as(owner.token))).schedules.length).toBe(before);
  });
});
