// Logs: the chats model-proxy kept in its call log (ListCallLogs / GetCallLog), newest first,
// and one call with its whole request and answer. Only chats sent with `log: true`, every chat
// of a tenant whose admins turned on "Keep every chat in the call log" (Admin page), or of a
// tenant the operator listed in CALL_LOG_TENANTS, are kept, so an empty list says how to get one.
// A user sees their own calls; an admin can switch to the whole tenant's.
import {
  ChatRole,
  FinishReason,
  type CallLogSummary,
  type ChatMessage,
  type ToolCall,
} from "@ensemble/proto";
import { useState } from "react";
import { api } from "../api";
import { Link, useRouter } from "../router";
import { useSession } from "../session";
import {
  AllUsersToggle,
  Empty,
  ErrorBox,
  Loading,
  enumLabel,
  fmtCached,
  fmtMs,
  fmtTime,
  fmtUsd,
  useLoad,
} from "../ui";

const PAGE = 50;
/** ListCallLogs' largest page (PageRequest.page_size). */
const MAX_PAGE = 500;

/** "fast → sim-fast", or one name when the model asked for answered. */
function modelText(c: CallLogSummary): string {
  if (c.requestedModel === "" || c.requestedModel === c.model) return c.model || "—";
  return `${c.requestedModel} → ${c.model || "—"}`;
}

function StatusTag({ status }: { status: string }) {
  return <span className={`status ${status === "OK" ? "s-ok" : "s-error"}`}>{status}</span>;
}

/** Only logged chats are listed: what a person sees before there is any. */
function EmptyHint({ filtered, admin }: { filtered: boolean; admin: boolean }) {
  // Only admins have the Admin page: a link for them, its name for the others to pass on.
  const settings = admin ? (
    <Link to="/admin">Tenant settings on the Admin page</Link>
  ) : (
    "Tenant settings on the Admin page"
  );
  return (
    <Empty>
      {filtered ? "No logged calls match these filters. " : "No logged calls yet. "}
      Only chats sent with <code>log: true</code> are kept (for example <code>"log": true</code> in
      the body of <code>POST /v1/chat/completions</code>, or <code>ensemble chat --log</code>), and
      only for a limited time. To keep every chat of the tenant, an admin can turn on &ldquo;Keep
      every chat in the call log&rdquo; in {settings}.
    </Empty>
  );
}

export function LogsPage() {
  const { me } = useSession();
  const { go } = useRouter();
  const [model, setModel] = useState("");
  const [errorsOnly, setErrorsOnly] = useState(false);
  const [allUsers, setAllUsers] = useState(false);
  const [limit, setLimit] = useState(PAGE);
  const logs = useLoad(
    () =>
      api.proxy.listCallLogs({
        page: { pageSize: limit },
        model: model.trim(),
        errorsOnly,
        allUsers,
      }),
    [model, errorsOnly, allUsers, limit],
  );
  const filtered = model.trim() !== "" || errorsOnly;

  return (
    <div>
      <h1>Logs</h1>
      <form className="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filters">
        <label>
          Model
          <input
            value={model}
            placeholder="asked or answered"
            onChange={(e) => setModel(e.target.value)}
          />
        </label>
        <label className="check">
          <input
            type="checkbox"
            checked={errorsOnly}
            onChange={(e) => setErrorsOnly(e.target.checked)}
          />
          errors only
        </label>
        <AllUsersToggle checked={allUsers} onChange={setAllUsers} label="all users" />
        <button type="button" onClick={logs.reload}>
          Refresh
        </button>
      </form>
      <ErrorBox error={logs.error} />
      {logs.error === undefined && logs.data === undefined && <Loading />}
      {logs.data !== undefined && logs.data.calls.length === 0 && (
        <EmptyHint filtered={filtered} admin={me?.admin === true} />
      )}
      {logs.data !== undefined && logs.data.calls.length > 0 && (
        <>
          <div className="table-wrap">
            <table className="logs">
              <thead>
                <tr>
                  <th>Time</th>
                  {allUsers && <th>User</th>}
                  <th>Model</th>
                  <th>Status</th>
                  <th>Latency</th>
                  <th>Tokens</th>
                  <th>Cost</th>
                  <th>Question</th>
                </tr>
              </thead>
              <tbody>
                {logs.data.calls.map((c) => (
                  <tr
                    key={c.id}
                    data-call={c.id}
                    className="clickable"
                    onClick={(e) => {
                      // The time cell's link navigates itself (and opens a new tab with Ctrl).
                      if ((e.target as HTMLElement).closest("a") === null)
                        go(`/logs/${encodeURIComponent(c.id)}`);
                    }}
                  >
                    <td className="nowrap">
                      <Link to={`/logs/${encodeURIComponent(c.id)}`}>{fmtTime(c.time)}</Link>
                    </td>
                    {allUsers && <td>{c.userId}</td>}
                    <td>
                      {modelText(c)}
                      {c.cacheHit && <span className="tag">cache</span>}
                      {c.streaming && <span className="tag">stream</span>}
                    </td>
                    <td>
                      <StatusTag status={c.status} />
                    </td>
                    <td className="nowrap">{fmtMs(c.latency)}</td>
                    <td className="nowrap" title="input / output tokens">
                      {String(c.inputTokens)} / {String(c.outputTokens)}
                    </td>
                    <td>{fmtUsd(c.costUsd)}</td>
                    <td className="preview">{c.questionPreview || "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {logs.data.page?.nextPageToken !== undefined &&
            logs.data.page.nextPageToken !== "" &&
            limit < MAX_PAGE && (
              <p>
                <button type="button" onClick={() => setLimit((l) => Math.min(l + PAGE, MAX_PAGE))}>
                  Show older calls
                </button>
              </p>
            )}
        </>
      )}
    </div>
  );
}

const ROLES: Record<number, string> = {
  [ChatRole.SYSTEM]: "system",
  [ChatRole.USER]: "user",
  [ChatRole.ASSISTANT]: "assistant",
  [ChatRole.TOOL]: "tool",
  [ChatRole.DEVELOPER]: "developer",
};

/** A message's text, with each image as "[image]" (the log keeps it, the page does not show it). */
function messageText(m: ChatMessage | undefined): string {
  return (m?.content ?? [])
    .map((p) => (p.part.case === "text" ? p.part.value : "[image]"))
    .join("\n");
}

/** A tool call as JSON, with its arguments parsed when they are valid JSON. */
function toolCallJson(t: ToolCall): string {
  let args: unknown = t.arguments;
  try {
    args = JSON.parse(t.arguments);
  } catch {
    // models may produce invalid JSON; show it as the text it is
  }
  return JSON.stringify({ id: t.id, name: t.name, arguments: args }, null, 2);
}

function ToolCalls({ calls }: { calls: ToolCall[] }) {
  if (calls.length === 0) return null;
  return (
    <>
      {calls.map((t, i) => (
        <pre key={`${t.id}-${i}`} className="json" aria-label={`Tool call ${t.name}`}>
          {toolCallJson(t)}
        </pre>
      ))}
    </>
  );
}

export function LogPage({ callId }: { callId: string }) {
  const loaded = useLoad(() => api.proxy.getCallLog({ id: callId }), [callId]);
  const back = (
    <p>
      <Link to="/logs">← All logs</Link>
    </p>
  );
  if (loaded.error !== undefined)
    return (
      <div>
        {back}
        <ErrorBox error={loaded.error} />
      </div>
    );
  if (loaded.data === undefined) return <Loading what="Loading the call" />;
  const call = loaded.data.call;
  const s = call?.summary;
  const req = call?.request;
  const res = call?.response;
  const answer = messageText(res?.message);
  const params = [
    req?.temperature !== undefined ? `temperature ${req.temperature}` : "",
    req?.maxTokens !== undefined ? `max tokens ${req.maxTokens}` : "",
    req?.topP !== undefined ? `top p ${req.topP}` : "",
    (req?.tools.length ?? 0) > 0 ? `${req?.tools.length} tools` : "",
  ].filter((p) => p !== "");
  return (
    <div className="call-log">
      {back}
      <h1>Call</h1>
      <p>
        <StatusTag status={s?.status ?? "—"} /> <span className="muted">{callId}</span>
      </p>
      <dl className="facts" aria-label="Summary">
        <dt>time</dt>
        <dd>{fmtTime(s?.time)}</dd>
        <dt>model</dt>
        <dd>
          {s !== undefined ? modelText(s) : "—"}
          {res?.servedBy?.provider !== undefined && res.servedBy.provider !== ""
            ? ` (${res.servedBy.provider})`
            : ""}
        </dd>
        <dt>user</dt>
        <dd>{s?.userId || "—"}</dd>
        <dt>API key</dt>
        <dd>{s?.apiKeyId || "— (console or token)"}</dd>
        <dt>latency</dt>
        <dd>
          {fmtMs(s?.latency)}
          {res?.timeToFirstToken !== undefined && ` (first token ${fmtMs(res.timeToFirstToken)})`}
        </dd>
        <dt>tokens</dt>
        <dd>
          {String(s?.inputTokens ?? 0n)} in{fmtCached(res?.usage)}, {String(s?.outputTokens ?? 0n)}{" "}
          out
          {(res?.usage?.reasoningTokens ?? 0n) > 0n &&
            ` (${res?.usage?.reasoningTokens} reasoning)`}
        </dd>
        <dt>cost</dt>
        <dd>{fmtUsd(s?.costUsd)}</dd>
        <dt>streaming</dt>
        <dd>{s?.streaming === true ? "yes" : "no"}</dd>
        <dt>cache hit</dt>
        <dd>{s?.cacheHit === true ? "yes" : "no"}</dd>
        {res !== undefined && res.finishReason !== FinishReason.UNSPECIFIED && (
          <>
            <dt>finish</dt>
            <dd>{enumLabel(FinishReason, res.finishReason)}</dd>
          </>
        )}
        {params.length > 0 && (
          <>
            <dt>parameters</dt>
            <dd>{params.join(", ")}</dd>
          </>
        )}
      </dl>
      {call?.error !== undefined && call.error !== "" && (
        <p className="error" role="alert">
          {call.error}
        </p>
      )}
      <section aria-label="Request">
        <h2>Request</h2>
        {req === undefined ? (
          <Empty>The request was too large to keep.</Empty>
        ) : (
          <ol className="messages">
            {req.messages.map((m, i) => (
              <li key={i} className={`msg ${ROLES[m.role] ?? ""}`} data-role={ROLES[m.role]}>
                <div className="who">
                  <span>
                    {ROLES[m.role] ?? enumLabel(ChatRole, m.role)}
                    {m.name !== "" && ` · ${m.name}`}
                    {m.toolCallId !== "" && ` · answers ${m.toolCallId}`}
                  </span>
                </div>
                {messageText(m) !== "" && <div className="text">{messageText(m)}</div>}
                <ToolCalls calls={m.toolCalls} />
              </li>
            ))}
          </ol>
        )}
      </section>
      <section aria-label="Answer">
        <h2>Answer</h2>
        {res === undefined ? (
          <Empty>No answer{(call?.error ?? "") !== "" ? " (the call failed)" : ""}.</Empty>
        ) : (
          <div className="msg assistant">
            {res.reasoning !== "" && (
              <details className="reasoning">
                <summary>Reasoning</summary>
                <div className="text small">{res.reasoning}</div>
              </details>
            )}
            {answer !== "" && <div className="text">{answer}</div>}
            <ToolCalls calls={res.message?.toolCalls ?? []} />
            {answer === "" && (res.message?.toolCalls.length ?? 0) === 0 && (
              <p className="empty">The answer was empty.</p>
            )}
          </div>
        )}
      </section>
    </div>
  );
}
