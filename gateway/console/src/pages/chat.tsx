// Chat: conversations kept by SessionService (messages form a tree: editing an earlier message or
// regenerating a reply starts a sibling branch). Replies stream in as the model writes them. When
// the deployment does not route SessionService, the page falls back to single-turn runs
// (RunService.Run) so chatting still works, without history.
import { Code } from "@connectrpc/connect";
import {
  ChatRole,
  RunEventType,
  type Artifact,
  type Classification,
  type RunEvent,
  type Session,
  type SessionMessage,
} from "@ensemble/proto";
import { useEffect, useMemo, useRef, useState } from "react";
import type { FormEvent, KeyboardEvent } from "react";
import { api, errorText, isCode } from "../api";
import { ArtifactView } from "../artifacts";
import { describeRoute, loadAddons, loadChatModels, modelLabel } from "../models";
import { ErrorBox, Loading, fmtCached, fmtMs, fmtUsd, useLoad } from "../ui";

interface Turn {
  id: string;
  role: "user" | "assistant";
  text: string;
  streaming?: boolean;
  model?: string;
  classification?: Classification | undefined;
  error?: string;
  meta?: string;
  /** The reply run's result files (an image reply's images). */
  artifacts?: { runId: string; list: Artifact[] };
  /** Sibling navigation: this message's position among its parent's children. */
  siblings?: { index: number; ids: string[] };
  message?: SessionMessage;
}

const textOf = (m: SessionMessage): string =>
  m.content.map((p) => (p.part.case === "text" ? p.part.value : "")).join("");

/** Deltas of the answer: concatenated text and the categorizer's decision, from run events. */
function applyEvent(turn: Turn, event: RunEvent): Turn {
  if (event.payload.case === "stepDelta")
    return { ...turn, text: turn.text + event.payload.value.text };
  if (event.payload.case === "classified") {
    return { ...turn, classification: event.payload.value.classification };
  }
  if (event.payload.case === "stepStarted" && event.payload.value.model !== "") {
    return { ...turn, model: event.payload.value.model };
  }
  if (event.type === RunEventType.FAILED && event.payload.case === "failed") {
    const e = event.payload.value.error;
    return { ...turn, error: e?.explanation || e?.message || "the answer failed" };
  }
  return turn;
}

export function ChatPage() {
  const models = useLoad(loadChatModels, []);
  const addons = useLoad(loadAddons, []);
  // undefined: not known yet; false: SessionService is not routed here.
  const [sessionsAvailable, setSessionsAvailable] = useState<boolean>();
  const [sessions, setSessions] = useState<Session[]>([]);
  const [sessionId, setSessionId] = useState<string>();
  const [messages, setMessages] = useState<SessionMessage[]>([]);
  const [leafId, setLeafId] = useState<string>();
  const [localTurns, setLocalTurns] = useState<Turn[]>([]);
  const [pending, setPending] = useState<Turn[]>([]);
  const [model, setModel] = useState("auto");
  const [chosenAddons, setChosenAddons] = useState<string[]>([]);
  const [input, setInput] = useState("");
  const [replyTo, setReplyTo] = useState<{ parentId: string; label: string }>();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const bottom = useRef<HTMLDivElement>(null);

  const refreshSessions = async () => {
    try {
      const res = await api.sessions.listSessions({ page: { pageSize: 100 } });
      setSessions(res.sessions);
      setSessionsAvailable(true);
    } catch (err) {
      // Without SessionService chat falls back to single runs; so does a first probe that
      // fails (a later failed refresh keeps what is known).
      if (isCode(err, Code.Unimplemented)) setSessionsAvailable(false);
      else {
        setError(errorText(err));
        setSessionsAvailable((known) => known ?? false);
      }
    }
  };
  useEffect(() => {
    void refreshSessions();
  }, []);

  const openSession = async (id: string) => {
    setError(undefined);
    setPending([]);
    setReplyTo(undefined);
    try {
      const res = await api.sessions.getSession({ sessionId: id });
      setSessionId(id);
      setMessages(res.messages);
      setLeafId(res.session?.lastMessageId);
      if (res.session?.settings !== undefined) {
        setModel(res.session.settings.model || "auto");
        setChosenAddons(res.session.settings.addons);
      }
    } catch (err) {
      setError(errorText(err));
    }
  };

  const newChat = () => {
    setSessionId(undefined);
    setMessages([]);
    setLeafId(undefined);
    setLocalTurns([]);
    setPending([]);
    setReplyTo(undefined);
  };

  // The branch on screen: from the chosen leaf up to the root, with sibling positions.
  const branch = useMemo<Turn[]>(() => {
    const byId = new Map(messages.map((m) => [m.id, m]));
    const children = new Map<string, SessionMessage[]>();
    for (const m of messages) {
      const list = children.get(m.parentMessageId) ?? [];
      list.push(m);
      children.set(m.parentMessageId, list);
    }
    const path: SessionMessage[] = [];
    for (let m = leafId !== undefined ? byId.get(leafId) : undefined; m !== undefined;) {
      path.unshift(m);
      m = m.parentMessageId !== "" ? byId.get(m.parentMessageId) : undefined;
    }
    return path.map((m) => {
      const ids = (children.get(m.parentMessageId) ?? []).map((s) => s.id);
      return {
        id: m.id,
        role: m.role === ChatRole.USER ? "user" : "assistant",
        text: textOf(m),
        model: m.model,
        classification: m.classification,
        ...(m.artifacts.length > 0 ? { artifacts: { runId: m.runId, list: m.artifacts } } : {}),
        ...(m.error !== undefined ? { error: m.error.explanation || m.error.message } : {}),
        meta:
          m.role === ChatRole.USER
            ? ""
            : `${fmtMs(m.latency)} · ${m.usage?.totalTokens ?? 0n} tokens${fmtCached(m.usage)} · ${fmtUsd(m.usage?.costUsd)}${m.simulated ? " · simulated" : ""}`,
        siblings: { index: ids.indexOf(m.id), ids },
        message: m,
      };
    });
  }, [messages, leafId]);

  /** Follows the newest child down from a message, to show a whole branch. */
  const deepest = (id: string): string => {
    let current = id;
    for (;;) {
      const kids = messages.filter((m) => m.parentMessageId === current);
      const last = kids.at(-1);
      if (last === undefined) return current;
      current = last.id;
    }
  };

  // Braces matter: newer browsers return a promise from scrollIntoView, and an effect must
  // return nothing or a cleanup function.
  useEffect(() => {
    void bottom.current?.scrollIntoView({ block: "end" });
  }, [pending, branch, localTurns]);

  const sendViaSession = async (text: string) => {
    let id = sessionId;
    if (id === undefined) {
      const created = await api.sessions.createSession({
        title: text.slice(0, 60),
        settings: { model, addons: chosenAddons },
      });
      id = created.session?.id ?? "";
      setSessionId(id);
      setMessages([]);
    }
    const parent = replyTo?.parentId ?? leafId ?? "";
    let user: Turn = { id: "pending-user", role: "user", text };
    let reply: Turn = { id: "pending-reply", role: "assistant", text: "", streaming: true, model };
    setPending([user, reply]);
    const stored: SessionMessage[] = [];
    for await (const item of api.sessions.sendMessage({
      sessionId: id,
      text,
      model,
      ...(parent !== "" ? { parentMessageId: parent } : { newRoot: replyTo !== undefined }),
    })) {
      if (item.item.case === "userMessage") {
        stored.push(item.item.value);
        user = { ...user, id: item.item.value.id };
      } else if (item.item.case === "event") {
        reply = applyEvent(reply, item.item.value);
      } else if (item.item.case === "assistantMessage") {
        stored.push(item.item.value);
      }
      setPending([user, reply]);
    }
    setMessages((ms) => [...ms, ...stored]);
    setLeafId(stored.at(-1)?.id ?? leafId);
    setPending([]);
    void refreshSessions();
  };

  const sendViaRun = async (text: string) => {
    const user: Turn = { id: `u${Date.now()}`, role: "user", text };
    let reply: Turn = { id: `a${Date.now()}`, role: "assistant", text: "", streaming: true, model };
    setLocalTurns((t) => [...t, user]);
    setPending([reply]);
    for await (const item of api.runs.run({
      spec: {
        input: text,
        addons: chosenAddons,
        mode: model === "auto" ? { case: "auto", value: {} } : { case: "model", value: { model } },
      },
    })) {
      if (item.item.case === "event") reply = applyEvent(reply, item.item.value);
      if (item.item.case === "run" && item.item.value.endTime !== undefined) {
        const run = item.item.value;
        reply = {
          ...reply,
          text: run.output || reply.text,
          ...(run.artifacts.length > 0
            ? { artifacts: { runId: run.id, list: run.artifacts } }
            : {}),
          meta: `${fmtMs(run.latency)} · ${run.usage?.totalTokens ?? 0n} tokens${fmtCached(run.usage)} · ${fmtUsd(run.usage?.costUsd)}`,
          ...(run.error !== undefined ? { error: run.error.explanation || run.error.message } : {}),
        };
      }
      setPending([reply]);
    }
    setLocalTurns((t) => [...t, { ...reply, streaming: false }]);
    setPending([]);
  };

  const send = async (e?: FormEvent) => {
    e?.preventDefault();
    const text = input.trim();
    // Until the session probe answers, where the reply would be kept is not known (a reply sent
    // as a single run vanished from the screen when the probe then found SessionService).
    if (text === "" || busy || sessionsAvailable === undefined) return;
    setBusy(true);
    setError(undefined);
    setInput("");
    try {
      if (sessionsAvailable === true) await sendViaSession(text);
      else await sendViaRun(text);
      setReplyTo(undefined);
    } catch (err) {
      setError(errorText(err));
      setPending([]);
      setInput(text);
    } finally {
      setBusy(false);
    }
  };

  const regenerate = async (turn: Turn) => {
    if (sessionId === undefined || busy) return;
    setBusy(true);
    setError(undefined);
    let reply: Turn = { id: "pending-reply", role: "assistant", text: "", streaming: true, model };
    // The new sibling replaces the old reply on screen while it streams.
    const keep = branch.slice(
      0,
      branch.findIndex((t) => t.id === turn.id),
    );
    setLeafId(keep.at(-1)?.id);
    setPending([reply]);
    try {
      let stored: SessionMessage | undefined;
      for await (const item of api.sessions.regenerate({ sessionId, messageId: turn.id, model })) {
        if (item.item.case === "event") reply = applyEvent(reply, item.item.value);
        else if (item.item.case === "assistantMessage") stored = item.item.value;
        setPending([reply]);
      }
      if (stored !== undefined) {
        const s = stored;
        setMessages((ms) => [...ms, s]);
        setLeafId(s.id);
      }
    } catch (err) {
      setError(errorText(err));
      setLeafId(turn.id);
    } finally {
      setPending([]);
      setBusy(false);
    }
  };

  const onKeyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      void send();
    }
  };

  const toggleAddon = (id: string) => {
    const next = chosenAddons.includes(id)
      ? chosenAddons.filter((a) => a !== id)
      : [...chosenAddons, id];
    setChosenAddons(next);
    if (sessionId !== undefined) {
      void api.sessions
        .updateSession({ sessionId, settings: { model, addons: next } })
        .catch((err: unknown) => setError(errorText(err)));
    }
  };

  const turns = sessionsAvailable === true ? [...branch, ...pending] : [...localTurns, ...pending];

  return (
    <div className="chat">
      <aside className="sessions" aria-label="Conversations">
        <button type="button" className="primary" onClick={newChat}>
          New chat
        </button>
        {sessionsAvailable === false && (
          <p className="hint">
            Conversations are not kept on this deployment: each message is a new run.
          </p>
        )}
        <ul>
          {sessions.map((s) => (
            <li key={s.id}>
              <button
                type="button"
                className={s.id === sessionId ? "link active" : "link"}
                onClick={() => void openSession(s.id)}
              >
                {s.title || "Untitled"} <span className="muted">({s.messageCount})</span>
              </button>
            </li>
          ))}
        </ul>
        {sessionsAvailable === true && sessions.length === 0 && (
          <p className="empty">No conversations yet.</p>
        )}
      </aside>
      <section className="conversation">
        <div className="controls">
          <label>
            Model
            <select name="model" value={model} onChange={(e) => setModel(e.target.value)}>
              <option value="auto">auto (the categorizer decides)</option>
              {(models.data ?? []).map((m) => (
                <option key={m.id} value={m.id}>
                  {modelLabel(m)}
                </option>
              ))}
            </select>
          </label>
          <details className="addons">
            <summary>Prompt addons ({chosenAddons.length})</summary>
            {addons.loading && <Loading />}
            <ErrorBox error={addons.error} />
            {(addons.data ?? []).map((a) => (
              <label key={a.id} className="check" title={a.description}>
                <input
                  type="checkbox"
                  checked={chosenAddons.includes(a.id)}
                  onChange={() => toggleAddon(a.id)}
                />
                {a.name || a.id}
              </label>
            ))}
          </details>
        </div>
        <ol className="messages" aria-live="polite">
          {turns.length === 0 && <li className="empty">Ask anything to start.</li>}
          {turns.map((t) => (
            <li key={t.id} className={`msg ${t.role}`} data-streaming={t.streaming === true}>
              <div className="who">
                {t.role === "user" ? "You" : (t.model ?? "assistant")}
                {t.siblings !== undefined && t.siblings.ids.length > 1 && (
                  <span className="siblings">
                    <button
                      type="button"
                      aria-label="Previous branch"
                      disabled={t.siblings.index <= 0}
                      onClick={() => setLeafId(deepest(t.siblings!.ids[t.siblings!.index - 1]!))}
                    >
                      ‹
                    </button>
                    {t.siblings.index + 1}/{t.siblings.ids.length}
                    <button
                      type="button"
                      aria-label="Next branch"
                      disabled={t.siblings.index >= t.siblings.ids.length - 1}
                      onClick={() => setLeafId(deepest(t.siblings!.ids[t.siblings!.index + 1]!))}
                    >
                      ›
                    </button>
                  </span>
                )}
              </div>
              <div className="text">{t.text || (t.streaming === true ? "…" : "")}</div>
              {t.artifacts?.list.map((a) => (
                <ArtifactView key={a.id} runId={t.artifacts!.runId} artifact={a} />
              ))}
              {t.classification !== undefined && <RouteNote c={t.classification} />}
              {t.error !== undefined && <p className="error">{t.error}</p>}
              {t.meta !== undefined && t.meta !== "" && <div className="meta">{t.meta}</div>}
              {t.message !== undefined && !busy && (
                <div className="actions">
                  {t.role === "assistant" ? (
                    <button type="button" onClick={() => void regenerate(t)}>
                      Regenerate
                    </button>
                  ) : (
                    <button
                      type="button"
                      onClick={() => {
                        setInput(t.text);
                        setReplyTo({
                          parentId: t.message!.parentMessageId,
                          label: t.text.slice(0, 40),
                        });
                      }}
                    >
                      Edit as new branch
                    </button>
                  )}
                </div>
              )}
            </li>
          ))}
        </ol>
        <div ref={bottom} />
        <ErrorBox error={error} />
        <form className="composer" onSubmit={(e) => void send(e)}>
          {replyTo !== undefined && (
            <p className="hint">
              New branch instead of “{replyTo.label}”{" "}
              <button type="button" className="link" onClick={() => setReplyTo(undefined)}>
                cancel
              </button>
            </p>
          )}
          <label className="sr-only" htmlFor="chat-input">
            Message
          </label>
          <textarea
            id="chat-input"
            name="message"
            rows={3}
            placeholder="Message (Enter to send, Shift+Enter for a new line)"
            value={input}
            onChange={(e) => setInput(e.target.value)}
            onKeyDown={onKeyDown}
          />
          <button
            type="submit"
            className="primary"
            disabled={busy || input.trim() === "" || sessionsAvailable === undefined}
          >
            {busy ? "Answering…" : "Send"}
          </button>
        </form>
      </section>
    </div>
  );
}

export function RouteNote({ c }: { c: Classification }) {
  const { summary, reasons } = describeRoute(c);
  return (
    <details className="route">
      <summary>auto: {summary}</summary>
      <ul>
        {reasons.map((r) => (
          <li key={r}>{r}</li>
        ))}
      </ul>
    </details>
  );
}
