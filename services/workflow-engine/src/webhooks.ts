// Webhooks: a tenant's HTTPS endpoints told when any of its runs ends (RunService CreateWebhook,
// ListWebhooks, DeleteWebhook, ListWebhookDeliveries), so a system that starts runs need not
// poll. Deliveries follow the Standard Webhooks specification (signed with the endpoint's secret
// by the `standardwebhooks` library, which receivers can use to verify them).
//
// From event to delivery: every replica pulls from one durable JetStream consumer on RUN_EVENTS
// that takes only the terminal events, so each event is handled once. For each endpoint of the
// tenant that wants it, a delivery is inserted with the key <webhook>.<event> (a redelivered
// event adds nothing), then the event is acked: an event is never lost between the two.
//
// Sending: every replica looks for due deliveries (at once after new ones, else every
// WEBHOOK_POLL_MS). An attempt is taken by inserting its claim
// <delivery>#<attempt>@<due time>.<lease period since then> into a collection with a unique key
// (FerretDB's conditional updates are not atomic, see store.ts), so one replica makes each
// attempt. The holder first moves the due time past its lease, so if it dies another replica
// takes the attempt over once the lease ends; if it dies (or MongoDB fails) before even that,
// the lease period in the key changes one lease later, and another replica takes it. Deliveries
// are therefore at least once (a holder slower than its lease may be doubled): receivers dedupe
// by the webhook-id header, which is the delivery's key on every attempt.
//
// Endpoints are refused, and connections not made, to loopback, private, link-local and other
// non-public addresses unless WEBHOOK_ALLOW_PRIVATE is set: deliveries leave from inside the
// mesh's network and must not reach what is only reachable from there.
import { randomBytes, randomUUID } from "node:crypto";
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { BlockList, isIP } from "node:net";
import { create, fromBinary, toJson } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  nextPageToken,
  paging,
  TtlCache,
  type Logger,
  type Notices,
  type Principal,
} from "@ensemble/kit";
import {
  BudgetAlertSchema,
  RunEventSchema,
  ScheduleSchema,
  RunEventType,
  WebhookDeliverySchema,
  WebhookDeliveryStatus,
  WebhookSchema,
  WebhookEventType,
  type BudgetAlert,
  type CreateWebhookRequest,
  type ListWebhookDeliveriesRequest,
  type RunEvent,
  type Schedule,
  type Webhook,
  type WebhookDelivery,
} from "@ensemble/proto";
import {
  AckPolicy,
  DeliverPolicy,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { Schema, type Connection, type Model } from "mongoose";
import { Counter, type Registry } from "prom-client";
import { Webhook as Signer } from "standardwebhooks";
import { Agent, request } from "undici";
import { decodeEvent, EVENT_TOKENS } from "./events.js";
import { byId, claim, model, retryBusy, setFields } from "./store.js";

/** An endpoint of a tenant. */
interface WebhookDoc {
  _id: string;
  tenantId: string;
  url: string;
  /** WebhookEventType numbers; empty = all. */
  events: number[];
  description: string;
  /** whsec_... (needed to sign; never returned after creation, never logged). */
  secret: string;
  createTime: Date;
  createdBy: string;
}

/** One event for one endpoint. */
interface DeliveryDoc {
  /** <webhook id>.<event id>: the webhook-id header of every attempt. */
  _id: string;
  tenantId: string;
  webhookId: string;
  event: WebhookEventType;
  runId: string;
  /** The JSON body, the same bytes on every attempt. */
  body: string;
  status: WebhookDeliveryStatus;
  attempts: number;
  lastStatusCode: number;
  lastError: string;
  createTime: Date;
  /** When the next attempt is due (PENDING), or the lease of the attempt being made. */
  nextAttemptAt: Date;
  deliveredAt?: Date | undefined;
}

/** The claim of one attempt. */
interface AttemptDoc {
  _id: string;
  tenantId: string;
  at: Date;
}

interface WebhookModels {
  webhooks: Model<WebhookDoc>;
  deliveries: Model<DeliveryDoc>;
  attempts: Model<AttemptDoc>;
}

const opts = { versionKey: false as const };

const webhookSchema = new Schema<WebhookDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true, index: true },
    url: { type: String, required: true },
    events: { type: [Number], default: [] },
    description: { type: String, default: "" },
    secret: { type: String, required: true },
    createTime: { type: Date, required: true },
    createdBy: { type: String, required: true },
  },
  opts,
);

const deliverySchema = new Schema<DeliveryDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true },
    webhookId: { type: String, required: true },
    event: { type: Number, required: true },
    runId: { type: String, required: true },
    body: { type: String, required: true },
    status: { type: Number, required: true },
    attempts: { type: Number, required: true },
    lastStatusCode: { type: Number, default: 0 },
    lastError: { type: String, default: "" },
    createTime: { type: Date, required: true },
    nextAttemptAt: { type: Date, required: true },
    deliveredAt: { type: Date },
  },
  opts,
);
deliverySchema.index({ status: 1, nextAttemptAt: 1 });
deliverySchema.index({ tenantId: 1, webhookId: 1, createTime: -1 });

const attemptSchema = new Schema<AttemptDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true },
    at: { type: Date, required: true },
  },
  opts,
);

export async function openWebhookModels(conn: Connection): Promise<WebhookModels> {
  const models: WebhookModels = {
    webhooks: model(conn, "Webhook", webhookSchema, "webhooks"),
    deliveries: model(conn, "WebhookDelivery", deliverySchema, "webhook_deliveries"),
    attempts: model(conn, "WebhookAttempt", attemptSchema, "webhook_attempts"),
  };
  await Promise.all(Object.values(models).map((m: Model<unknown>) => m.init()));
  return models;
}

/** Subjects of model-proxy's usage events: `<root>.<tenant>` and budget alerts `<root>.<tenant>.budget`. */
const USAGE_SUBJECT_ROOT = "ensemble.usage";

/** The run event behind each webhook event type. */
const RUN_EVENT_OF: Record<number, RunEventType> = {
  [WebhookEventType.RUN_COMPLETED]: RunEventType.COMPLETED,
  [WebhookEventType.RUN_FAILED]: RunEventType.FAILED,
  [WebhookEventType.RUN_CANCELLED]: RunEventType.CANCELLED,
};
const WEBHOOK_EVENT_OF = new Map<RunEventType, WebhookEventType>(
  Object.entries(RUN_EVENT_OF).map(([w, r]) => [r, Number(w) as WebhookEventType]),
);

/** Seconds-to-days backoff after attempt n (1-based): 5 s, 1 min, 5 min, 30 min, 2 h, 5 h, 10 h. */
const BACKOFF_FACTORS = [1, 12, 60, 360, 1_440, 3_600, 7_200];
/** Endpoints per tenant. */
const MAX_WEBHOOKS = 20;
/** How long an attempt may take before another replica may take it over. */
const ATTEMPT_TIMEOUT_MS = 10_000;
const LEASE_MS = ATTEMPT_TIMEOUT_MS + 20_000;
/** Characters of an endpoint's answer kept in last_error. */
const ERROR_CHARS = 300;

/** Addresses a delivery must not reach (RFC 6890 special-purpose ranges). */
const NON_PUBLIC = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, "ipv4");
}
for (const [net, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["::ffff:0:0", 96],
  ["64:ff9b::", 96],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, "ipv6");
}

export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  return !NON_PUBLIC.check(address, family === 4 ? "ipv4" : "ipv6");
}

/**
 * The URL an endpoint may have: https, no credentials in it, and (unless private addresses are
 * allowed) not a loopback, private or otherwise non-public address or a local name.
 */
export function checkWebhookUrl(raw: string, allowPrivate: boolean): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new InvalidArgumentError("url: not a URL", { field: "url" });
  }
  if (url.protocol !== "https:" && !(allowPrivate && url.protocol === "http:")) {
    throw new InvalidArgumentError("url: must be https://", { field: "url" });
  }
  if (url.username !== "" || url.password !== "") {
    throw new InvalidArgumentError(
      "url: must not hold credentials; verify deliveries by their signature instead",
      { field: "url" },
    );
  }
  const host = url.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  const local =
    host === "localhost" ||
    host.endsWith(".localhost") ||
    host.endsWith(".local") ||
    host.endsWith(".internal") ||
    (isIP(host) === 0 && !host.includes(".")) ||
    (isIP(host) !== 0 && !isPublicAddress(host));
  if (local && !allowPrivate) {
    throw new InvalidArgumentError(
      `url: ${host} is not a public address; deliveries only go to the public internet`,
      { field: "url" },
    );
  }
  return url;
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/** dns.lookup that fails for a name resolving to a non-public address (checked per connection). */
export function publicLookup(hostname: string, options: object, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err !== null) return callback(err, []);
    const blocked = addresses.find((a) => !isPublicAddress(a.address));
    if (blocked !== undefined) {
      const e: NodeJS.ErrnoException = new Error(
        `${hostname} resolves to ${blocked.address}, not a public address`,
      );
      e.code = "ENONPUBLIC";
      return callback(e, []);
    }
    if ((options as { all?: boolean }).all === true) return callback(null, addresses);
    const first = addresses[0];
    if (first === undefined) return callback(new Error(`${hostname}: no address`), []);
    callback(null, first.address, first.family);
  });
}

export interface WebhookSettings {
  stream: string;
  /** Subject root of run events. */
  root: string;
  consumer: string;
  /** model-proxy's stream of usage events and budget alerts, and the consumer of the alerts. */
  usageStream: string;
  budgetConsumer: string;
  allowPrivate: boolean;
  /** Backoff unit (the first retry's delay). */
  retryBaseMs: number;
  maxAttempts: number;
  pollMs: number;
  retentionMs: number;
  /** How long an attempt's holder has before another replica may take it over (default 30 s). */
  leaseMs?: number;
}

export interface WebhookDeps {
  models: WebhookModels;
  /** Tells every replica a tenant's endpoints changed (kit notices, kind "webhooks"). */
  notices: Notices;
  js: JetStreamClient;
  jsm: JetStreamManager;
  logger: Logger;
  settings: WebhookSettings;
  metricsRegistry?: Registry | undefined;
}

export class Webhooks {
  readonly #d: WebhookDeps;
  readonly #s: WebhookSettings;
  readonly #log: Logger;
  readonly #agent: Agent;
  readonly #leaseMs: number;
  /**
   * Each tenant's endpoints, for the events. A replica that creates or deletes one tells every
   * replica (a change notice, passed on before the call answers), so the next event uses it
   * wherever it is consumed; the TTL bounds what a lost notice can cost.
   */
  readonly #endpoints = new TtlCache<WebhookDoc[]>({ ttlMs: 5_000 });
  #changedSub: { unsubscribe(): void } | undefined;
  readonly #results: Counter<"result"> | undefined;
  readonly #messages = new Set<ConsumerMessages>();
  readonly #consuming: Array<Promise<void>> = [];
  #timer: NodeJS.Timeout | undefined;
  #sending: Promise<void> | undefined;
  #again = false;
  #stopping = false;
  #lastSweep = 0;
  readonly #inFlight = new Set<Promise<void>>();

  constructor(deps: WebhookDeps) {
    this.#d = deps;
    this.#s = deps.settings;
    this.#log = deps.logger.child({ component: "webhooks" });
    this.#leaseMs = deps.settings.leaseMs ?? LEASE_MS;
    this.#agent = new Agent({
      connections: 16,
      keepAliveTimeout: 10_000,
      ...(deps.settings.allowPrivate ? {} : { connect: { lookup: publicLookup } }),
    });
    this.#results =
      deps.metricsRegistry === undefined
        ? undefined
        : new Counter({
            name: "ensemble_workflow_webhook_attempts_total",
            help: "Webhook delivery attempts by result: delivered, retry (failed, another attempt follows), failed (the last attempt failed)",
            labelNames: ["result"] as const,
            registers: [deps.metricsRegistry],
          });
  }

  // ------------------------------------------------------------------------------ API

  async create(
    p: Principal,
    req: CreateWebhookRequest,
  ): Promise<{ webhook: Webhook; secret: string }> {
    const url = checkWebhookUrl(req.url, this.#s.allowPrivate);
    const { webhooks } = this.#d.models;
    if ((await webhooks.countDocuments({ tenantId: p.tenantId })) >= MAX_WEBHOOKS) {
      throw new FailedPreconditionError(
        `a tenant has at most ${MAX_WEBHOOKS} webhooks; delete one first`,
      );
    }
    const secret = `whsec_${randomBytes(24).toString("base64")}`;
    const doc: WebhookDoc = {
      _id: `wh_${randomUUID().replaceAll("-", "")}`,
      tenantId: p.tenantId,
      url: url.href,
      events: [...req.events],
      description: req.description,
      secret,
      createTime: new Date(),
      createdBy: p.subject,
    };
    await claim(webhooks, doc);
    await this.#changed(p.tenantId);
    this.#log.info({ tenantId: p.tenantId, webhookId: doc._id, host: url.host }, "webhook created");
    return { webhook: toWebhook(doc), secret };
  }

  async list(p: Principal): Promise<Webhook[]> {
    const docs = await this.#d.models.webhooks
      .find({ tenantId: p.tenantId })
      .sort({ createTime: 1 })
      .lean<WebhookDoc[]>();
    return docs.map(toWebhook);
  }

  async delete(p: Principal, webhookId: string): Promise<void> {
    const { webhooks, deliveries } = this.#d.models;
    const doc = await byId(webhooks, webhookId);
    if (doc === null || doc.tenantId !== p.tenantId) throw new NotFoundError("webhook not found");
    await retryBusy(() => webhooks.collection.deleteOne({ _id: webhookId as never }));
    // Its pending deliveries are dropped; delivered and failed ones age out.
    await retryBusy(() =>
      deliveries.collection.updateMany(
        { tenantId: p.tenantId, webhookId, status: WebhookDeliveryStatus.PENDING },
        { $set: { status: WebhookDeliveryStatus.FAILED, lastError: "the webhook was deleted" } },
      ),
    );
    await this.#changed(p.tenantId);
    this.#log.info({ tenantId: p.tenantId, webhookId }, "webhook deleted");
  }

  async deliveries(
    p: Principal,
    req: ListWebhookDeliveriesRequest,
  ): Promise<{ deliveries: WebhookDelivery[]; page: { nextPageToken: string } }> {
    const doc = await byId(this.#d.models.webhooks, req.webhookId);
    if (doc === null || doc.tenantId !== p.tenantId) throw new NotFoundError("webhook not found");
    const { skip, limit } = paging(req.page);
    const rows = await this.#d.models.deliveries
      .find({ tenantId: p.tenantId, webhookId: req.webhookId })
      .sort({ createTime: -1, _id: 1 })
      .skip(skip)
      .limit(limit + 1)
      .lean<DeliveryDoc[]>();
    return {
      deliveries: rows.slice(0, limit).map(toDelivery),
      page: { nextPageToken: nextPageToken(skip, limit, rows.length) },
    };
  }

  // ------------------------------------------------------------------------------ lifecycle

  /** The consumer of terminal run events, and the sending loop. */
  start(): void {
    // Before any event is consumed: a notice read here drops the tenant's cached endpoints
    // synchronously, ahead of the events that come after it on the same connection.
    this.#changedSub = this.#d.notices.subscribe("webhooks", (n) =>
      this.#endpoints.forget(n.tenantId),
    );
    // Run endings from RUN_EVENTS (the engine's own stream, there before this starts).
    this.#consuming.push(
      this.#consume(
        this.#s.stream,
        this.#s.consumer,
        [RunEventType.COMPLETED, RunEventType.FAILED, RunEventType.CANCELLED].map(
          (t) => `${this.#s.root}.*.*.${EVENT_TOKENS[t]}`,
        ),
        (data) => this.#ingestRunEvent(decodeEvent(data)),
      ),
    );
    // Budget alerts from model-proxy's USAGE stream (made by model-proxy: until it exists, the
    // loop retries every second).
    this.#consuming.push(
      this.#consume(
        this.#s.usageStream,
        this.#s.budgetConsumer,
        [`${USAGE_SUBJECT_ROOT}.*.budget`],
        (data) => this.#ingestBudgetAlert(fromBinary(BudgetAlertSchema, data)),
      ),
    );
    this.#timer = setInterval(() => this.#kick(), this.#s.pollMs);
    this.#timer.unref();
    this.#kick();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#changedSub?.unsubscribe();
    if (this.#timer !== undefined) clearInterval(this.#timer);
    await Promise.all([...this.#messages].map((m) => m.close()));
    await Promise.all(this.#consuming);
    await this.#sending;
    await Promise.allSettled([...this.#inFlight]);
    await this.#agent.close();
  }

  /** A tenant's endpoints changed here: forget them, and tell the other replicas. */
  async #changed(tenantId: string): Promise<void> {
    this.#endpoints.forget(tenantId);
    await this.#d.notices.publish("webhooks", tenantId);
  }

  // ------------------------------------------------------------------------------ work

  /**
   * Takes events from a durable consumer shared by every replica (made or updated here) until
   * stopped, again after a failure; an event is acked once its deliveries are stored.
   */
  async #consume(
    stream: string,
    durable: string,
    subjects: string[],
    ingest: (data: Uint8Array) => Promise<boolean>,
  ): Promise<void> {
    const config = {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: 30_000_000_000,
      max_ack_pending: 1_000,
      filter_subjects: subjects,
    };
    let failures = 0;
    while (!this.#stopping) {
      let messages: ConsumerMessages | undefined;
      try {
        try {
          await this.#d.jsm.consumers.add(stream, config);
        } catch {
          await this.#d.jsm.consumers.update(stream, durable, config);
        }
        const consumer = await this.#d.js.consumers.get(stream, durable);
        messages = await consumer.consume({ max_messages: 64 });
        this.#messages.add(messages);
        for await (const msg of messages) {
          failures = 0;
          try {
            if (await ingest(msg.data)) this.#kick();
            msg.ack();
          } catch (err) {
            this.#log.warn(
              { err, stream },
              "an event could not become webhook deliveries; retried",
            );
            msg.nak(1_000);
          }
        }
      } catch (err) {
        if (this.#stopping) return;
        if (failures++ === 0) {
          this.#log.warn({ err, stream }, "webhook event consumer failed; retrying every second");
        }
      } finally {
        if (messages !== undefined) this.#messages.delete(messages);
      }
      if (!this.#stopping) await new Promise((r) => setTimeout(r, 1_000));
    }
  }

  async #ingestRunEvent(ev: RunEvent): Promise<boolean> {
    const type = WEBHOOK_EVENT_OF.get(ev.type);
    if (type === undefined) return false;
    return this.#ingest(ev.tenantId, type, ev.eventId, ev.runId, {
      type: `run.${EVENT_TOKENS[ev.type]}`,
      time: ev.time !== undefined ? timestampDate(ev.time) : new Date(),
      data: toJson(RunEventSchema, ev),
    });
  }

  async #ingestBudgetAlert(alert: BudgetAlert): Promise<boolean> {
    return this.#ingest(alert.tenantId, WebhookEventType.BUDGET_THRESHOLD, alert.eventId, "", {
      type: "budget.threshold",
      time: alert.time !== undefined ? timestampDate(alert.time) : new Date(),
      data: toJson(BudgetAlertSchema, alert),
    });
  }

  /** A schedule was paused: "schedule.paused" to the endpoints that want it. */
  async schedulePaused(schedule: Schedule, eventId: string): Promise<void> {
    const added = await this.#ingest(
      schedule.tenantId,
      WebhookEventType.SCHEDULE_PAUSED,
      eventId,
      "",
      {
        type: "schedule.paused",
        time: schedule.pauseTime !== undefined ? timestampDate(schedule.pauseTime) : new Date(),
        data: toJson(ScheduleSchema, schedule),
      },
    );
    if (added) this.#kick();
  }

  /** Deliveries for the endpoints of the tenant that want this event; true when any was added. */
  async #ingest(
    tenantId: string,
    type: WebhookEventType,
    eventId: string,
    runId: string,
    payload: { type: string; time: Date; data: unknown },
  ): Promise<boolean> {
    const endpoints = await this.#endpoints.get(tenantId, () =>
      this.#d.models.webhooks.find({ tenantId }).lean<WebhookDoc[]>().exec(),
    );
    const wanted = endpoints.filter((w) => w.events.length === 0 || w.events.includes(type));
    if (wanted.length === 0) return false;
    const body = JSON.stringify({
      type: payload.type,
      timestamp: payload.time.toISOString(),
      data: payload.data,
    });
    const now = new Date();
    for (const w of wanted) {
      const doc: DeliveryDoc = {
        _id: `${w._id}.${eventId}`,
        tenantId,
        webhookId: w._id,
        event: type,
        runId,
        body,
        status: WebhookDeliveryStatus.PENDING,
        attempts: 0,
        lastStatusCode: 0,
        lastError: "",
        createTime: now,
        nextAttemptAt: now,
      };
      // false: a redelivered event, whose delivery is already there.
      await claim(this.#d.models.deliveries, doc);
    }
    return true;
  }

  /** Runs a sending pass now (or right after the one running). */
  #kick(): void {
    if (this.#stopping) return;
    if (this.#sending !== undefined) {
      this.#again = true;
      return;
    }
    this.#sending = this.#sendDue()
      .catch((err: unknown) => this.#log.warn({ err }, "webhook sending pass failed"))
      .finally(() => {
        this.#sending = undefined;
        if (this.#again) {
          this.#again = false;
          this.#kick();
        }
      });
  }

  async #sendDue(): Promise<void> {
    const now = new Date();
    if (now.getTime() - this.#lastSweep > 3_600_000) {
      this.#lastSweep = now.getTime();
      await this.#sweep(now);
    }
    const due = await this.#d.models.deliveries
      .find({ status: WebhookDeliveryStatus.PENDING, nextAttemptAt: { $lte: now } })
      .sort({ nextAttemptAt: 1 })
      .limit(50)
      .lean<DeliveryDoc[]>();
    for (const d of due) {
      if (this.#stopping) return;
      const attempt = d.attempts + 1;
      // A holder that died before moving the due time leaves the delivery due with its claim
      // taken: one lease later the claim key changes (the lease period it falls in), so another
      // replica takes the attempt over instead of the delivery staying stuck.
      const due = d.nextAttemptAt.getTime();
      const period = Math.floor(Math.max(0, now.getTime() - due) / this.#leaseMs);
      const won = await claim(this.#d.models.attempts, {
        _id: `${d._id}#${attempt}@${due}.${period}`,
        tenantId: d.tenantId,
        at: now,
      });
      if (!won) continue;
      const work = this.#attempt(d, attempt)
        .catch((err: unknown) =>
          this.#log.warn({ err, deliveryId: d._id }, "webhook attempt failed unexpectedly"),
        )
        .finally(() => this.#inFlight.delete(work));
      this.#inFlight.add(work);
    }
  }

  /** One attempt of one delivery, by the replica holding its claim. */
  async #attempt(d: DeliveryDoc, attempt: number): Promise<void> {
    const { deliveries, webhooks } = this.#d.models;
    await setFields(
      deliveries,
      { _id: d._id },
      { nextAttemptAt: new Date(Date.now() + this.#leaseMs) },
    );
    const endpoint = await byId(webhooks, d.webhookId);
    if (endpoint === null) {
      await setFields(
        deliveries,
        { _id: d._id },
        { status: WebhookDeliveryStatus.FAILED, lastError: "the webhook was deleted" },
      );
      return;
    }
    let statusCode = 0;
    let error = "";
    try {
      const sentAt = new Date();
      const res = await request(endpoint.url, {
        method: "POST",
        dispatcher: this.#agent,
        signal: AbortSignal.timeout(ATTEMPT_TIMEOUT_MS),
        headers: {
          "content-type": "application/json",
          "user-agent": "Ensemble-Webhooks/1",
          "webhook-id": d._id,
          "webhook-timestamp": String(Math.floor(sentAt.getTime() / 1000)),
          "webhook-signature": new Signer(endpoint.secret).sign(d._id, sentAt, d.body),
        },
        body: d.body,
      });
      statusCode = res.statusCode;
      if (statusCode < 200 || statusCode > 299) {
        const text = await res.body.text().catch(() => "");
        error = `HTTP ${statusCode}${text !== "" ? `: ${text.slice(0, ERROR_CHARS)}` : ""}`;
      } else {
        await res.body.dump();
      }
    } catch (err) {
      error =
        err instanceof Error && err.name === "TimeoutError"
          ? `no answer within ${ATTEMPT_TIMEOUT_MS / 1000} s`
          : describeNetworkError(err);
    }
    const now = new Date();
    if (error === "") {
      this.#results?.inc({ result: "delivered" });
      await setFields(
        deliveries,
        { _id: d._id },
        {
          status: WebhookDeliveryStatus.DELIVERED,
          attempts: attempt,
          lastStatusCode: statusCode,
          lastError: "",
          deliveredAt: now,
        },
      );
      return;
    }
    const last = attempt >= this.#s.maxAttempts;
    this.#results?.inc({ result: last ? "failed" : "retry" });
    const factor = BACKOFF_FACTORS[Math.min(attempt, BACKOFF_FACTORS.length) - 1] ?? 1;
    const next = new Date(now.getTime() + this.#s.retryBaseMs * factor);
    await setFields(
      deliveries,
      { _id: d._id },
      {
        status: last ? WebhookDeliveryStatus.FAILED : WebhookDeliveryStatus.PENDING,
        attempts: attempt,
        lastStatusCode: statusCode,
        lastError: error,
        nextAttemptAt: next,
      },
    );
    if (!last) setTimeout(() => this.#kick(), next.getTime() - now.getTime() + 10).unref();
  }

  /** Deliveries and attempt claims older than the retention are deleted. */
  async #sweep(now: Date): Promise<void> {
    const before = new Date(now.getTime() - this.#s.retentionMs);
    const { deliveries, attempts } = this.#d.models;
    await retryBusy(() =>
      deliveries.collection.deleteMany({
        createTime: { $lt: before },
        status: { $ne: WebhookDeliveryStatus.PENDING },
      }),
    );
    await retryBusy(() => attempts.collection.deleteMany({ at: { $lt: before } }));
  }
}

/** A network failure in words, without stacks. */
function describeNetworkError(err: unknown): string {
  if (!(err instanceof Error)) return "the request failed";
  const code = (err as NodeJS.ErrnoException).code ?? "";
  const cause = err.cause instanceof Error ? err.cause : undefined;
  const detail = cause?.message ?? err.message;
  return `${code !== "" ? `${code}: ` : ""}${detail}`.slice(0, ERROR_CHARS);
}

function toWebhook(doc: WebhookDoc): Webhook {
  return create(WebhookSchema, {
    id: doc._id,
    url: doc.url,
    events: doc.events as WebhookEventType[],
    description: doc.description,
    createTime: timestampFromDate(doc.createTime),
    createdBy: doc.createdBy,
    secretHint: `${doc.secret.slice(0, 10)}…`,
  });
}

function toDelivery(doc: DeliveryDoc): WebhookDelivery {
  return create(WebhookDeliverySchema, {
    id: doc._id,
    webhookId: doc.webhookId,
    event: doc.event,
    runId: doc.runId,
    status: doc.status,
    attempts: doc.attempts,
    lastStatusCode: doc.lastStatusCode,
    lastError: doc.lastError,
    createTime: timestampFromDate(doc.createTime),
    ...(doc.status === WebhookDeliveryStatus.PENDING
      ? { nextAttemptTime: timestampFromDate(doc.nextAttemptAt) }
      : {}),
    ...(doc.deliveredAt !== undefined ? { deliveredTime: timestampFromDate(doc.deliveredAt) } : {}),
  });
}
