// Webhooks against the in-process engine mesh (real NATS, MongoDB-wire server, auth, registry,
// model-proxy, simulator) and a real HTTP receiver: what an endpoint gets when runs end, signed
// as Standard Webhooks; retries; event filters; tenant isolation; the URL policy.
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient, type GrpcClient } from "@ensemble/kit";
import {
  BudgetScope,
  ChatRole,
  RunService,
  RunStatus,
  WebhookDeliveryStatus,
  WebhookEventType,
  type Run,
} from "@ensemble/proto";
import { rejection } from "@ensemble/testkit";
import { Webhook as Verifier } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkWebhookUrl, publicLookup } from "../src/webhooks.js";
import { startEngineMesh, type EngineMesh } from "./engine-mesh.js";

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

let mesh: EngineMesh;
let runs: GrpcClient<typeof RunService>;
let receiver: Server;
let base: string;
const received: Received[] = [];
/** Answers with this status (then 200) for the next requests to a path. */
const failures = new Map<string, number[]>();

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

beforeAll(async () => {
  receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const path = req.url ?? "";
      received.push({ path, headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
      const status = failures.get(path)?.shift() ?? 200;
      res.writeHead(status, { "content-type": "text/plain" }).end(status === 200 ? "ok" : "down");
    });
  });
  receiver.listen(0, "127.0.0.1");
  await once(receiver, "listening");
  base = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
  mesh = await startEngineMesh({ name: "webhooks", webhooks: { leaseMs: 500 } });
  runs = createClient(RunService, await mesh.serve());
}, 240_000);

afterAll(async () => {
  await mesh?.stop();
  receiver?.close();
});

async function finished(spec: Parameters<typeof runs.startRun>[0]["spec"], token: string) {
  const run = (await runs.startRun({ spec }, as(token))).run!;
  const until = Date.now() + 20_000;
  for (;;) {
    const now = (await runs.getRun({ runId: run.id }, as(token))).run!;
    if (now.status === RunStatus.COMPLETED || now.status === RunStatus.FAILED) return now;
    if (Date.now() > until) throw new Error(`run ${run.id} still ${RunStatus[now.status]}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The requests to `path` once there are `n` of them. */
async function receivedAt(path: string, n: number, timeoutMs = 15_000): Promise<Received[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const got = received.filter((r) => r.path === path);
    if (got.length >= n) return got;
    if (Date.now() > until) throw new Error(`${path}: ${got.length} of ${n} requests`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("webhooks", () => {
  it("a run's end reaches the tenant's endpoint, signed; a failing endpoint is retried until it answers", async () => {
    const admin = await mesh.signup("alice");
    failures.set("/alice", [503]);
    const created = await runs.createWebhook(
      { url: `${base}/alice`, description: "billing system" },
      as(admin.token),
    );
    expect(created.secret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/);
    const listed = await runs.listWebhooks({}, as(admin.token));
    expect(listed.webhooks).toHaveLength(1);
    expect(listed.webhooks[0]).toMatchObject({
      url: `${base}/alice`,
      description: "billing system",
      secretHint: `${created.secret.slice(0, 10)}…`,
    });
    const text = JSON.stringify(listed, (_k, v: unknown) =>
      typeof v === "bigint" ? String(v) : v,
    );
    expect(text).not.toContain(created.secret);

    const run: Run = await finished(
      { input: "What is a monad?", mode: { case: "model", value: { model: "sim-fast" } } },
      admin.token,
    );
    expect(run.status).toBe(RunStatus.COMPLETED);
    const [first, second] = await receivedAt("/alice", 2);
    // The same delivery twice: the same id, each attempt signed on its own.
    expect(second!.headers["webhook-id"]).toBe(first!.headers["webhook-id"]);
    expect(second!.body).toBe(first!.body);
    const verifier = new Verifier(created.secret);
    const payload = verifier.verify(second!.body, second!.headers as Record<string, string>) as {
      type: string;
      data: { runId: string; tenantId: string; type: string; completed?: { output?: string } };
    };
    expect(payload.type).toBe("run.completed");
    expect(payload.data).toMatchObject({
      runId: run.id,
      tenantId: admin.tenantId,
      type: "RUN_EVENT_TYPE_COMPLETED",
    });
    expect(JSON.stringify(payload.data.completed)).toContain("monad");
    // A forged body does not verify.
    expect(() =>
      verifier.verify(
        second!.body.replace("monad", "mOnad"),
        second!.headers as Record<string, string>,
      ),
    ).toThrow();

    const until = Date.now() + 5_000;
    let delivery = (
      await runs.listWebhookDeliveries({ webhookId: created.webhook!.id }, as(admin.token))
    ).deliveries[0];
    while (delivery?.status !== WebhookDeliveryStatus.DELIVERED && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
      delivery = (
        await runs.listWebhookDeliveries({ webhookId: created.webhook!.id }, as(admin.token))
      ).deliveries[0];
    }
    expect(delivery).toMatchObject({
      id: first!.headers["webhook-id"],
      runId: run.id,
      event: WebhookEventType.RUN_COMPLETED,
      status: WebhookDeliveryStatus.DELIVERED,
      attempts: 2,
      lastStatusCode: 200,
      lastError: "",
    });
  });

  it("an endpoint hears only its events; one that never answers is given up; another tenant sees and gets none of it", async () => {
    const admin = await mesh.signup("bob");
    const all = await runs.createWebhook({ url: `${base}/bob-all` }, as(admin.token));
    const failedOnly = await runs.createWebhook(
      { url: `${base}/bob-failed`, events: [WebhookEventType.RUN_FAILED] },
      as(admin.token),
    );
    failures.set("/bob-down", [500, 502, 503]);
    const down = await runs.createWebhook({ url: `${base}/bob-down` }, as(admin.token));
    const other = await mesh.signup("carol");
    await runs.createWebhook({ url: `${base}/carol` }, as(other.token));

    await finished(
      { input: "hello", mode: { case: "model", value: { model: "sim-fast" } } },
      admin.token,
    );
    await receivedAt("/bob-all", 1);
    // Three attempts (the test mesh's maximum), then FAILED with the last answer.
    await receivedAt("/bob-down", 3);
    const until = Date.now() + 5_000;
    let gaveUp = (
      await runs.listWebhookDeliveries({ webhookId: down.webhook!.id }, as(admin.token))
    ).deliveries[0];
    while (gaveUp?.status !== WebhookDeliveryStatus.FAILED && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
      gaveUp = (await runs.listWebhookDeliveries({ webhookId: down.webhook!.id }, as(admin.token)))
        .deliveries[0];
    }
    expect(gaveUp).toMatchObject({
      status: WebhookDeliveryStatus.FAILED,
      attempts: 3,
      lastStatusCode: 503,
      lastError: "HTTP 503: down",
    });
    expect(received.filter((r) => r.path === "/bob-failed")).toEqual([]);
    expect(
      (await runs.listWebhookDeliveries({ webhookId: failedOnly.webhook!.id }, as(admin.token)))
        .deliveries,
    ).toEqual([]);
    expect(received.filter((r) => r.path === "/carol")).toEqual([]);

    // Carol's tenant sees nothing of Bob's; Bob's endpoints are NOT_FOUND to her.
    expect((await runs.listWebhooks({}, as(other.token))).webhooks.map((w) => w.url)).toEqual([
      `${base}/carol`,
    ]);
    const hidden = await rejection(
      runs.listWebhookDeliveries({ webhookId: all.webhook!.id }, as(other.token)),
    );
    expect(hidden.code).toBe(Code.NotFound);
    expect(
      (await rejection(runs.deleteWebhook({ webhookId: all.webhook!.id }, as(other.token)))).code,
    ).toBe(Code.NotFound);

    // Deleted: the next run's end is not delivered.
    await runs.deleteWebhook({ webhookId: all.webhook!.id }, as(admin.token));
    await finished(
      { input: "again", mode: { case: "model", value: { model: "sim-fast" } } },
      admin.token,
    );
    await new Promise((r) => setTimeout(r, 1_000));
    expect(received.filter((r) => r.path === "/bob-all")).toHaveLength(1);
  });

  it("budget alerts - the tenant's spend reaching 80 % and then 100 % of its limit is told once each, from model-proxy's budget checks", async () => {
    const admin = await mesh.signup("erin");
    await mesh.authClient.setBudget(
      { scope: BudgetScope.TENANT, monthlyLimitUsd: 0.0002 },
      as(admin.token),
    );
    const hook = await runs.createWebhook(
      { url: `${base}/erin-budget`, events: [WebhookEventType.BUDGET_THRESHOLD] },
      as(admin.token),
    );
    // Calls until the budget refuses them; each call's spend counts once its ledger batch is
    // flushed (LEDGER_FLUSH_MS), so the next check sees it. A call costs about 8 % of the limit,
    // so even a check that missed one flush cannot step over the 80-100 % window.
    let refused = false;
    for (let i = 0; i < 60 && !refused; i++) {
      try {
        await mesh.modelProxy.chat(
          {
            model: "sim-fast",
            messages: [
              { role: ChatRole.USER, content: [{ part: { case: "text", value: `count ${i}` } }] },
            ],
          },
          as(admin.token),
        );
      } catch (err) {
        expect(ConnectError.from(err).code).toBe(Code.ResourceExhausted);
        refused = true;
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(refused).toBe(true);
    // One more refused call after the 100 % alert: nothing new.
    await mesh.modelProxy
      .chat(
        {
          model: "sim-fast",
          messages: [
            { role: ChatRole.USER, content: [{ part: { case: "text", value: "again" } }] },
          ],
        },
        as(admin.token),
      )
      .catch(() => undefined);
    const got = await receivedAt("/erin-budget", 2);
    await new Promise((r) => setTimeout(r, 1_000));
    const all = received.filter((r) => r.path === "/erin-budget");
    const alerts = all.map(
      (r) =>
        new Verifier(hook.secret).verify(r.body, r.headers as Record<string, string>) as {
          type: string;
          data: {
            tenantId: string;
            scope: string;
            thresholdPercent: number;
            limitUsd: number;
            spendUsd: number;
          };
        },
    );
    expect(got.length).toBe(2);
    expect(alerts.map((a) => [a.type, a.data.scope, a.data.thresholdPercent])).toEqual([
      ["budget.threshold", "BUDGET_ALERT_SCOPE_TENANT", 80],
      ["budget.threshold", "BUDGET_ALERT_SCOPE_TENANT", 100],
    ]);
    expect(alerts[1]!.data).toMatchObject({ tenantId: admin.tenantId, limitUsd: 0.0002 });
    expect(alerts[1]!.data.spendUsd).toBeGreaterThanOrEqual(0.0002);
    expect(new Set(all.map((r) => r.headers["webhook-id"])).size).toBe(2);
  });

  it("an endpoint created through another replica gets the very next run end, though this replica had the tenant's endpoints cached", async () => {
    const admin = await mesh.signup("gina");
    const spec = { input: "Hello", mode: { case: "model" as const, value: { model: "sim-fast" } } };
    // The consuming replica handles a run end of the tenant with no endpoint, and keeps that.
    const before = await finished(spec, admin.token);
    await new Promise((r) => setTimeout(r, 300));
    // Created through a replica that does not consume events.
    const elsewhere = createClient(
      RunService,
      await mesh.serve({ webhooks: mesh.webhooksReplica() }),
    );
    const hook = await elsewhere.createWebhook({ url: `${base}/gina` }, as(admin.token));
    const after = await finished(spec, admin.token);
    const [got] = await receivedAt("/gina", 1, 10_000);
    const payload = new Verifier(hook.secret).verify(
      got!.body,
      got!.headers as Record<string, string>,
    ) as { data: { runId: string } };
    expect(payload.data.runId).toBe(after.id);
    expect(received.filter((r) => r.body.includes(before.id))).toHaveLength(0);
  });

  it("a replica that claimed an attempt and died before anything else leaves it to another one lease later", async () => {
    const admin = await mesh.signup("frank");
    const hook = await runs.createWebhook({ url: `${base}/frank` }, as(admin.token));
    // What a holder leaves when it dies right after its claim: the delivery still due, the
    // attempt's claim taken. (The mesh's lease is 500 ms.)
    const due = new Date(Date.now() - 100);
    const id = `${hook.webhook!.id}.stuck-event`;
    const body = JSON.stringify({ type: "run.completed", timestamp: due.toISOString(), data: {} });
    await mesh.mongo.collection("webhook_attempts").insertOne({
      _id: `${id}#1@${due.getTime()}.0` as never,
      tenantId: admin.tenantId,
      at: new Date(),
    });
    await mesh.mongo.collection("webhook_deliveries").insertOne({
      _id: id as never,
      tenantId: admin.tenantId,
      webhookId: hook.webhook!.id,
      event: WebhookEventType.RUN_COMPLETED,
      runId: "run_stuck",
      body,
      status: WebhookDeliveryStatus.PENDING,
      attempts: 0,
      lastStatusCode: 0,
      lastError: "",
      createTime: due,
      nextAttemptAt: due,
    });
    const [got] = await receivedAt("/frank", 1, 10_000);
    expect(got!.headers["webhook-id"]).toBe(id);
    expect(() =>
      new Verifier(hook.secret).verify(got!.body, got!.headers as Record<string, string>),
    ).not.toThrow();
  });

  it("url policy - https to public hosts only, unless private addresses are allowed; names resolving inside are refused at connection", async () => {
    for (const url of [
      "http://hooks.example.com/x",
      "https://localhost/x",
      "https://127.0.0.1/x",
      "https://10.1.2.3/x",
      "https://169.254.169.254/latest/meta-data",
      "https://[::1]/x",
      "https://intranet/x",
      "https://user:pw@hooks.example.com/x",
    ]) {
      expect(() => checkWebhookUrl(url, false), url).toThrow(/url:/);
    }
    expect(checkWebhookUrl("https://hooks.example.com/ensemble", false).host).toBe(
      "hooks.example.com",
    );
    expect(checkWebhookUrl("http://127.0.0.1:9000/x", true).port).toBe("9000");
    const err = await new Promise<NodeJS.ErrnoException | null>((resolve) =>
      publicLookup("localhost", {}, (e) => resolve(e)),
    );
    expect(err?.code).toBe("ENONPUBLIC");
    // Through the API: refused with the field named.
    const admin = await mesh.signup("dave");
    const bad = await rejection(
      runs.createWebhook({ url: "ftp://example.com/x" }, as(admin.token)),
    );
    expect(bad.code).toBe(Code.InvalidArgument);
    // Every event type named at once is accepted (the list's limit once lagged behind them).
    const every = Object.values(WebhookEventType).filter(
      (t): t is WebhookEventType => typeof t === "number" && t !== WebhookEventType.UNSPECIFIED,
    );
    const all = await runs.createWebhook(
      { url: "https://hooks.example.com/every", events: every },
      as(admin.token),
    );
    expect(all.webhook?.events).toEqual(every);
  });
});
