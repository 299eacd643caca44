// webhooks create / list / delete / deliveries: the tenant's endpoints that the workflow engine
// tells when any of its runs ends, a budget nears its limit or a schedule is paused (RunService
// CreateWebhook, ListWebhooks, DeleteWebhook, ListWebhookDeliveries; tenant admins only).
// Deliveries follow the Standard Webhooks specification: a signed JSON POST, retried with backoff
// for about a day until it gets a 2xx.
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  RunService,
  WebhookDeliverySchema,
  WebhookDeliveryStatus,
  WebhookEventType,
  WebhookSchema,
  type Webhook,
  type WebhookDelivery,
} from "@ensemble/proto";
import type { Context } from "./context.js";
import { label, table, when } from "./output.js";
import { UsageError } from "./session.js";

/** --events' words, in the order the help lists them. */
const EVENT_WORDS: Record<string, WebhookEventType> = {
  completed: WebhookEventType.RUN_COMPLETED,
  failed: WebhookEventType.RUN_FAILED,
  cancelled: WebhookEventType.RUN_CANCELLED,
  budget: WebhookEventType.BUDGET_THRESHOLD,
  "schedule-paused": WebhookEventType.SCHEDULE_PAUSED,
};

/** The event names receivers see in the body's "type". */
const EVENT_NAMES: Record<string, string> = {
  completed: "run.completed",
  failed: "run.failed",
  cancelled: "run.cancelled",
  budget: "budget.threshold",
  "schedule-paused": "schedule.paused",
};
const EVENT_LIST = Object.keys(EVENT_WORDS).join(", ");

/** ListWebhookDeliveries' largest page (PageRequest.page_size). */
const MAX_LIMIT = 500;
/** CreateWebhookRequest.description's limit (protovalidate). */
const MAX_DESCRIPTION = 200;
/** Characters of a delivery's last error shown in the table. */
const ERROR_CHARS = 80;

/** The event's name as receivers see it in the body's "type": run.completed, ... */
function eventName(e: WebhookEventType): string {
  const word = Object.keys(EVENT_WORDS).find((w) => EVENT_WORDS[w] === e);
  return word !== undefined ? (EVENT_NAMES[word] ?? word) : String(e);
}

/** An endpoint's events: "all", or "run.completed,run.failed". */
function eventsText(events: WebhookEventType[]): string {
  return events.length === 0 ? "all" : events.map(eventName).join(",");
}

/**
 * "completed,failed" -> [RUN_COMPLETED, RUN_FAILED] (any case; the names receivers see,
 * "run.completed" ... "schedule.paused", too; duplicates dropped); "all" -> [] (every event);
 * else a UsageError listing the words.
 */
function eventTypes(raw: string): WebhookEventType[] {
  const words = raw
    .split(",")
    .map((w) =>
      w
        .trim()
        .toLowerCase()
        .replace(/^run\./, "")
        .replace(/^budget\.threshold$/, "budget")
        .replace(/^schedule\.paused$/, "schedule-paused"),
    )
    .filter((w) => w !== "");
  if (words.length === 0) {
    throw new UsageError(`--events ${JSON.stringify(raw)}: expected a list of ${EVENT_LIST}`);
  }
  const unknown = words.find((w) => EVENT_WORDS[w] === undefined && w !== "all");
  if (unknown !== undefined) {
    throw new UsageError(`--events ${unknown}: expected one of ${EVENT_LIST} (or all)`);
  }
  if (words.includes("all")) return [];
  return [...new Set(words.map((w) => EVENT_WORDS[w]!))];
}

/** The endpoint URL: http(s) and parseable (the engine decides what else it accepts). */
function endpointUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw new UsageError(`${raw}: not a URL; expected https://host/path`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new UsageError(`${raw}: expected an https:// URL`);
  }
  return url.href;
}

/** One line, at most `max` characters. */
function oneLine(text: string, max: number): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}

/** The gateway's errors for these calls, in words: who may, what is refused, what is missing. */
function explain(err: unknown, webhookId?: string): unknown {
  const e = ConnectError.from(err);
  switch (e.code) {
    case Code.PermissionDenied:
      return new ConnectError(
        `only a tenant admin can manage the tenant's webhooks (with an API key, one with the admin scope): ${e.rawMessage}`,
        Code.PermissionDenied,
      );
    case Code.NotFound:
      return webhookId !== undefined
        ? new Error(
            `no webhook ${webhookId} in your tenant (\`ensemble webhooks list\` shows them)`,
          )
        : err;
    case Code.InvalidArgument:
      return /^url\b/.test(e.rawMessage)
        ? new ConnectError(
            `${e.rawMessage} (endpoints must be https:// URLs of public hosts; http and private addresses only when the workflow engine runs with WEBHOOK_ALLOW_PRIVATE=true, for development)`,
            Code.InvalidArgument,
          )
        : err;
    case Code.Unimplemented:
      return new Error(
        `the workflow engine behind the gateway does not support webhooks yet (${e.rawMessage})`,
      );
    default:
      return err;
  }
}

/** The webhook as "name  value" lines (create's answer). */
function describeWebhook(w: Webhook, secret: string): string {
  const rows: Array<[string, string]> = [
    ["url", w.url],
    [
      "events",
      w.events.length === 0
        ? `all (${Object.values(EVENT_WORDS).map(eventName).join(", ")})`
        : eventsText(w.events),
    ],
    ["description", w.description || "-"],
    ["secret", secret],
  ];
  const width = Math.max(...rows.map(([name]) => name.length)) + 2;
  return [`webhook ${w.id} created`, ...rows.map(([n, v]) => `${n.padEnd(width)}${v}`)].join("\n");
}

const VERIFY_HINT = `Each delivery is a POST of {"type":"run.completed","timestamp":...,"data":<the run's last event>}
(or "budget.threshold" with the budget alert as data, "schedule.paused" with the schedule)
with the Standard Webhooks headers webhook-id, webhook-timestamp and webhook-signature
(HMAC-SHA256 with the secret). Verify them with the standardwebhooks library
(https://www.standardwebhooks.com; npm, PyPI, Go, ...):
  new Webhook(secret).verify(rawBody, headers)
Answer 2xx within 10 s, else the delivery is retried with backoff for about a day; webhook-id is
the same on every attempt, so use it to drop duplicates.`;

function deliveryRow(d: WebhookDelivery): string[] {
  const code = d.lastStatusCode !== 0 ? String(d.lastStatusCode) : "-";
  return [
    when(d.createTime),
    eventName(d.event),
    d.runId || "-",
    label(WebhookDeliveryStatus, d.status),
    String(d.attempts),
    code,
    d.status === WebhookDeliveryStatus.PENDING ? when(d.nextAttemptTime) : "-",
    d.lastError !== "" ? oneLine(d.lastError, ERROR_CHARS) : "-",
  ];
}

export function registerWebhookCommands(program: Command, ctx: Context): void {
  const webhooks = program
    .command("webhooks")
    .description(
      "endpoints told when the tenant's runs end (completed, failed, cancelled), when a budget nears its limit and when a schedule is paused; tenant admins only",
    )
    .addHelpText(
      "after",
      `\nA webhook lets a system that starts runs (ensemble run -d, StartRun) learn when they end
without polling. Deliveries are signed as Standard Webhooks; see \`ensemble webhooks create --help\`.`,
    );

  webhooks
    .command("create")
    .description("add an endpoint; its signing secret is printed once and never again")
    .argument("<url>", "where to POST the events: https://... on a public host")
    .option(
      "--events <events>",
      `what to send, comma-separated: ${EVENT_LIST} (budget: a monthly budget reached 80 % or 100 % of its limit; schedule-paused: a schedule was paused, by a user or by the engine because its occurrences kept starting no run); or all (default: all)`,
    )
    .option("--description <text>", `what it is for (at most ${MAX_DESCRIPTION} characters)`)
    .addHelpText(
      "after",
      `\n${VERIFY_HINT}

The URL must be https:// on a public host: http, localhost and private addresses are refused
unless the workflow engine runs with WEBHOOK_ALLOW_PRIVATE=true (for development). A tenant has
at most 20 webhooks.

Examples:
  ensemble webhooks create https://hooks.example.com/ensemble
  ensemble webhooks create https://hooks.example.com/ensemble --events failed,cancelled --description "pager"
  ensemble webhooks create https://hooks.example.com/ops --events failed,schedule-paused
  ensemble --json webhooks create https://hooks.example.com/ensemble | jq -r .secret`,
    )
    .action(async (rawUrl: string, opts: { events?: string; description?: string }) => {
      // Bad values are refused before anything is sent.
      const url = endpointUrl(rawUrl);
      const events = opts.events !== undefined ? eventTypes(opts.events) : [];
      const description = opts.description ?? "";
      if (description.length > MAX_DESCRIPTION) {
        throw new UsageError(
          `--description: ${description.length} characters; at most ${MAX_DESCRIPTION}`,
        );
      }
      const { gw, out } = ctx.get();
      const res = await gw
        .client(RunService)
        .createWebhook({ url, events, description })
        .catch((err: unknown) => {
          throw explain(err);
        });
      if (res.webhook === undefined) throw new Error("the gateway returned no webhook");
      const w = res.webhook;
      out.result({ webhook: toJson(WebhookSchema, w), secret: res.secret }, () =>
        describeWebhook(w, res.secret),
      );
      if (!out.json) {
        out.notice(
          `\nSave the secret now; it is not shown again (\`ensemble webhooks list\` shows only its start, ${w.secretHint}).\n\n${VERIFY_HINT}`,
        );
      }
    });

  webhooks
    .command("list")
    .description("the tenant's webhooks, oldest first (never their secrets)")
    .addHelpText(
      "after",
      `\nThe secret hint is the start of a webhook's secret, to tell secrets apart.

Examples:
  ensemble webhooks list
  ensemble --json webhooks list | jq -r '.webhooks[].id'`,
    )
    .action(async () => {
      const { gw, out } = ctx.get();
      const res = await gw
        .client(RunService)
        .listWebhooks({})
        .catch((err: unknown) => {
          throw explain(err);
        });
      out.result({ webhooks: res.webhooks.map((w) => toJson(WebhookSchema, w)) }, () =>
        table(
          ["id", "url", "events", "description", "secret hint", "created"],
          res.webhooks.map((w) => [
            w.id,
            w.url,
            eventsText(w.events),
            w.description || "-",
            w.secretHint,
            when(w.createTime),
          ]),
        ),
      );
      if (!out.json && res.webhooks.length === 0) {
        out.notice("no webhooks yet; add one with `ensemble webhooks create https://...`");
      }
    });

  webhooks
    .command("delete")
    .description("remove a webhook; its pending deliveries are dropped")
    .argument("<id>", "the webhook's id (wh_..., from `ensemble webhooks list`)")
    .addHelpText("after", `\nExample:\n  ensemble webhooks delete wh_0f3c...`)
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      await gw
        .client(RunService)
        .deleteWebhook({ webhookId: id })
        .catch((err: unknown) => {
          throw explain(err, id);
        });
      out.result({ deleted: id }, () => `webhook ${id} deleted`);
    });

  webhooks
    .command("deliveries")
    .description(
      "a webhook's deliveries, newest first: status, attempts, the endpoint's last answer",
    )
    .argument("<id>", "the webhook's id (wh_..., from `ensemble webhooks list`)")
    .option("-n, --limit <n>", `how many, 1 to ${MAX_LIMIT}`, "20")
    .addHelpText(
      "after",
      `\nA delivery is one run's end for one webhook: pending (another attempt is due at "next
attempt"), delivered (the endpoint answered 2xx) or failed (every attempt failed, or the
webhook was deleted). "code" is the HTTP status of the last attempt (- when it got no answer),
"error" why it failed. Deliveries are kept 7 days.

Examples:
  ensemble webhooks deliveries wh_0f3c...
  ensemble webhooks deliveries wh_0f3c... -n 100
  ensemble --json webhooks deliveries wh_0f3c... | jq '.deliveries[] | select(.status != "WEBHOOK_DELIVERY_STATUS_DELIVERED")'`,
    )
    .action(async (id: string, opts: { limit: string }) => {
      const limit = Number(opts.limit);
      if (!/^\d+$/.test(opts.limit.trim()) || limit < 1 || limit > MAX_LIMIT) {
        throw new UsageError(
          `--limit ${opts.limit}: expected a whole number from 1 to ${MAX_LIMIT}`,
        );
      }
      const { gw, out } = ctx.get();
      const res = await gw
        .client(RunService)
        .listWebhookDeliveries({ webhookId: id, page: { pageSize: limit } })
        .catch((err: unknown) => {
          throw explain(err, id);
        });
      const next = res.page?.nextPageToken ?? "";
      out.result(
        {
          deliveries: res.deliveries.map((d) => toJson(WebhookDeliverySchema, d)),
          nextPageToken: next,
        },
        () =>
          table(
            ["time", "event", "run", "status", "attempts", "code", "next attempt", "error"],
            res.deliveries.map(deliveryRow),
          ),
      );
      if (!out.json && res.deliveries.length === 0) {
        out.notice(
          "no deliveries yet: one is made when a run of the tenant ends with one of the webhook's events",
        );
      }
      if (!out.json && next !== "") out.notice("(more deliveries: raise --limit)");
    });
}
