// Admin > Webhooks (tenant admins only): the tenant's HTTPS endpoints that are told when any of
// its runs ends, when a monthly budget nears its limit, and when a schedule is paused (RunService
// CreateWebhook, ListWebhooks, DeleteWebhook, ListWebhookDeliveries).
// The signing secret is shown once, at creation; each endpoint's recent deliveries, with their
// attempts and what the endpoint last answered, open under its row.
import {
  WebhookDeliveryStatus,
  WebhookEventType,
  type Webhook,
  type WebhookDelivery,
} from "@ensemble/proto";
import { Fragment, useEffect, useState } from "react";
import type { FormEvent } from "react";
import { api, errorText } from "../api";
import { loadUserEmails } from "../models";
import { ErrorBox, Guard, RunLink, enumLabel, fmtTime, useLoad } from "../ui";

/** What an endpoint can be told about, with the names in a delivery's `type`. */
const EVENTS: Array<{ type: WebhookEventType; name: string }> = [
  { type: WebhookEventType.RUN_COMPLETED, name: "run.completed" },
  { type: WebhookEventType.RUN_FAILED, name: "run.failed" },
  { type: WebhookEventType.RUN_CANCELLED, name: "run.cancelled" },
  { type: WebhookEventType.BUDGET_THRESHOLD, name: "budget.threshold" },
  { type: WebhookEventType.SCHEDULE_PAUSED, name: "schedule.paused" },
];

/** "run.completed, run.failed"; no events means every one. */
function eventNames(events: WebhookEventType[]): string {
  if (events.length === 0) return "all";
  return events.map((e) => EVENTS.find((x) => x.type === e)?.name ?? String(e)).join(", ");
}

/** The start of an endpoint's secret, "whsec_AbCd…" (the engine may already end it with "…"). */
function secretHint(w: Webhook): string {
  return w.secretHint.endsWith("…") ? w.secretHint : `${w.secretHint}…`;
}

/** Deliveries listed at first, and added by each "Show older deliveries". */
const PAGE = 25;
/** ListWebhookDeliveries' largest page (PageRequest.page_size). */
const MAX_PAGE = 500;
/** While a delivery is pending, its endpoint's list is reloaded this often. */
const PENDING_RELOAD_MS = 5_000;

/** The secret of an endpoint just created, shown once. */
interface Created {
  url: string;
  secret: string;
}

export function WebhooksSection() {
  const hooks = useLoad(async () => {
    const [list, emails] = await Promise.all([
      api.runs.listWebhooks({}).then((r) => r.webhooks),
      // Only to name who created each: without the list, the user id does.
      loadUserEmails(),
    ]);
    return { list, emails };
  }, []);
  const [url, setUrl] = useState("");
  const [events, setEvents] = useState<WebhookEventType[]>([]);
  const [description, setDescription] = useState("");
  const [busy, setBusy] = useState(false);
  const [created, setCreated] = useState<Created>();
  // The endpoint whose deliveries are open under its row.
  const [open, setOpen] = useState<string>();
  const [error, setError] = useState<string>();

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setBusy(true);
    try {
      const res = await api.runs.createWebhook({
        url: url.trim(),
        // Every event checked is all of them, which the contract spells as none (it takes at most
        // four, fewer than there are).
        events: events.length === EVENTS.length ? [] : events,
        description: description.trim(),
      });
      setCreated({ url: res.webhook?.url ?? url.trim(), secret: res.secret });
      setUrl("");
      setEvents([]);
      setDescription("");
      hooks.reload();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };
  const remove = async (w: Webhook) => {
    if (
      !window.confirm(
        `Delete the webhook to ${w.url}? It is told of nothing more, and its pending deliveries are dropped.`,
      )
    ) {
      return;
    }
    setError(undefined);
    try {
      await api.runs.deleteWebhook({ webhookId: w.id });
      if (open === w.id) setOpen(undefined);
      hooks.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };
  const COLUMNS = 6;

  return (
    <section aria-label="Webhooks">
      <h2>Webhooks</h2>
      <p className="hint">
        Endpoints told when a run of anyone in the tenant ends, so a system that starts runs need
        not poll for them, when a monthly budget of the tenant, a user or an API key reaches 80 % or
        100 % of its limit (<code>budget.threshold</code>), and when a schedule is paused, by a
        person or by the engine because its occurrences kept starting no run (
        <code>schedule.paused</code>, with the schedule and its pause reason). Each gets a signed{" "}
        <code>POST</code> per event it asked for, retried with backoff for about a day until it
        answers 2xx within 10 s. Only <code>https://</code> URLs of public hosts are accepted
        (unless the operator allows private ones, for development).
      </p>
      <form onSubmit={(e) => void create(e)} aria-label="Create webhook">
        <div className="inline-row">
          <label className="wide">
            Endpoint URL
            <input
              name="webhookUrl"
              inputMode="url"
              required
              spellCheck={false}
              autoComplete="off"
              placeholder="https://example.com/hooks/ensemble"
              value={url}
              onChange={(e) => setUrl(e.target.value)}
            />
          </label>
          <label>
            Description (optional)
            <input
              name="webhookDescription"
              maxLength={200}
              value={description}
              onChange={(e) => setDescription(e.target.value)}
            />
          </label>
        </div>
        <fieldset>
          <legend>Events (none checked = all)</legend>
          <div className="checks">
            {EVENTS.map((ev) => (
              <label key={ev.type} className="check">
                <input
                  type="checkbox"
                  name="webhookEvent"
                  value={ev.name}
                  checked={events.includes(ev.type)}
                  onChange={() =>
                    setEvents(
                      events.includes(ev.type)
                        ? events.filter((x) => x !== ev.type)
                        : [...events, ev.type],
                    )
                  }
                />
                {ev.name}
              </label>
            ))}
          </div>
        </fieldset>
        <button type="submit" className="primary" disabled={busy}>
          Create webhook
        </button>
      </form>
      {created !== undefined && (
        <div className="secret" role="status" data-testid="webhook-created">
          <p>
            The signing secret of the webhook to {created.url}. Copy it now: it is shown only once.
          </p>
          <code data-testid="webhook-secret">{created.secret}</code>{" "}
          <button type="button" onClick={() => void navigator.clipboard?.writeText(created.secret)}>
            Copy
          </button>{" "}
          <button type="button" onClick={() => setCreated(undefined)}>
            Done
          </button>
          <p className="hint">
            Deliveries follow{" "}
            <a href="https://www.standardwebhooks.com" target="_blank" rel="noreferrer">
              Standard Webhooks
            </a>
            : a JSON body <code>{'{"type":"run.completed","timestamp":…,"data":{…}}'}</code> with
            the headers <code>webhook-id</code> (the same on every retry of one delivery: drop
            duplicates by it), <code>webhook-timestamp</code> and <code>webhook-signature</code>{" "}
            (HMAC-SHA256 with this secret). Verify them on the raw body with a{" "}
            <code>standardwebhooks</code> library, for example{" "}
            <code>new Webhook(secret).verify(body, headers)</code> in JavaScript.
          </p>
        </div>
      )}
      <ErrorBox error={error} />
      <Guard loaded={hooks} empty={(h) => h.list.length === 0} emptyText="No webhooks.">
        {({ list, emails }) => (
          <div className="table-wrap">
            <table className="webhooks">
              <thead>
                <tr>
                  <th>URL</th>
                  <th>Events</th>
                  <th>Description</th>
                  <th>Secret</th>
                  <th>Created</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {list.map((w) => (
                  <Fragment key={w.id}>
                    <tr data-webhook={w.url}>
                      <td data-col="url" className="url">
                        {w.url}
                      </td>
                      <td data-col="events">{eventNames(w.events)}</td>
                      <td data-col="description">{w.description || "—"}</td>
                      <td data-col="secret">
                        <code>{secretHint(w)}</code>
                      </td>
                      <td>
                        {fmtTime(w.createTime)}
                        {w.createdBy !== "" && (
                          <div className="muted">by {emails.get(w.createdBy) ?? w.createdBy}</div>
                        )}
                      </td>
                      <td className="actions">
                        <button
                          type="button"
                          onClick={() => setOpen(open === w.id ? undefined : w.id)}
                          aria-label={`Deliveries of ${w.url}`}
                          aria-expanded={open === w.id}
                        >
                          Deliveries
                        </button>{" "}
                        <button
                          type="button"
                          onClick={() => void remove(w)}
                          aria-label={`Delete ${w.url}`}
                        >
                          Delete
                        </button>
                      </td>
                    </tr>
                    {open === w.id && (
                      <tr className="sub-row">
                        <td colSpan={COLUMNS}>
                          <Deliveries webhook={w} />
                        </td>
                      </tr>
                    )}
                  </Fragment>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Guard>
    </section>
  );
}

/** An endpoint's deliveries, newest first; reloaded while one is still pending. */
function Deliveries(props: { webhook: Webhook }) {
  const { webhook } = props;
  const [limit, setLimit] = useState(PAGE);
  const deliveries = useLoad(
    () => api.runs.listWebhookDeliveries({ webhookId: webhook.id, page: { pageSize: limit } }),
    [webhook.id, limit],
  );
  const { data, reload } = deliveries;
  const pending = data?.deliveries.some((d) => d.status === WebhookDeliveryStatus.PENDING) ?? false;
  useEffect(() => {
    if (!pending) return;
    const timer = setTimeout(reload, PENDING_RELOAD_MS);
    return () => clearTimeout(timer);
  }, [pending, data, reload]);

  return (
    <section className="deliveries" aria-label={`Deliveries of ${webhook.url}`}>
      <div className="inline-row">
        <h3>Recent deliveries</h3>
        <button type="button" onClick={reload} disabled={deliveries.loading}>
          Refresh
        </button>
      </div>
      <Guard
        loaded={deliveries}
        empty={(d) => d.deliveries.length === 0}
        emptyText="No deliveries yet: one is made for each event it is told about."
      >
        {(d) => (
          <>
            <table>
              <thead>
                <tr>
                  <th>Time</th>
                  <th>Event</th>
                  <th>Run</th>
                  <th>Status</th>
                  <th>Attempts</th>
                  <th>Last answer</th>
                  <th>Next attempt</th>
                </tr>
              </thead>
              <tbody>
                {d.deliveries.map((x) => (
                  <DeliveryRow key={x.id} delivery={x} />
                ))}
              </tbody>
            </table>
            {d.page?.nextPageToken !== undefined &&
              d.page.nextPageToken !== "" &&
              limit < MAX_PAGE && (
                <p>
                  <button
                    type="button"
                    onClick={() => setLimit((l) => Math.min(l + PAGE, MAX_PAGE))}
                  >
                    Show older deliveries
                  </button>
                </p>
              )}
          </>
        )}
      </Guard>
    </section>
  );
}

function DeliveryRow({ delivery: x }: { delivery: WebhookDelivery }) {
  const status = WebhookDeliveryStatus[x.status]?.toLowerCase() ?? "unknown";
  return (
    <tr data-delivery={x.id} data-run={x.runId}>
      <td className="nowrap">{fmtTime(x.createTime)}</td>
      <td data-col="event">{eventNames([x.event])}</td>
      <td data-col="run">{x.runId === "" ? "—" : <RunLink runId={x.runId} />}</td>
      <td data-col="status">
        <span
          className={`status s-${status}`}
          title={
            x.deliveredTime !== undefined ? `delivered at ${fmtTime(x.deliveredTime)}` : undefined
          }
        >
          {enumLabel(WebhookDeliveryStatus, x.status)}
        </span>
      </td>
      <td data-col="attempts">{x.attempts}</td>
      <td data-col="answer">
        {x.attempts === 0 ? (
          "—"
        ) : (
          <>
            {x.lastStatusCode !== 0 ? `HTTP ${x.lastStatusCode}` : "no answer"}
            {x.lastError !== "" && <div className="muted last-error">{x.lastError}</div>}
          </>
        )}
      </td>
      <td data-col="next" className="nowrap">
        {x.status === WebhookDeliveryStatus.PENDING ? fmtTime(x.nextAttemptTime) : "—"}
      </td>
    </tr>
  );
}
