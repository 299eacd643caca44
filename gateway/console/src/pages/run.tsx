// One run, live: WatchRun sends the current record, then every event (replayed from the start,
// then as it happens) with the token deltas, until the run ends. The step graph is drawn in
// layers by dependency depth; each step shows its state and its text as it streams, and the
// files it produced (an image step's images), fetched with GetArtifact.
import {
  RunEventType,
  RunStatus,
  StepKind,
  StepStatus,
  type Artifact,
  type Run,
  type RunEvent,
} from "@ensemble/proto";
import { useEffect, useState } from "react";
import { api, errorText } from "../api";
import { RouteNote } from "./chat";
import { ArtifactView } from "../artifacts";
import { useRouter } from "../router";
import { ErrorBox, Loading, enumLabel, fmtCached, fmtMs, fmtUsd } from "../ui";

interface StepView {
  id: string;
  name: string;
  kind: StepKind;
  model: string;
  dependsOn: string[];
  status: StepStatus;
  text: string;
  artifacts: Artifact[];
}

const TERMINAL = new Set([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]);

function stepsOf(run: Run): Map<string, StepView> {
  return new Map(
    run.steps.map((s) => [
      s.stepId,
      {
        id: s.stepId,
        name: s.name,
        kind: s.kind,
        model: s.model || s.models.join(", "),
        dependsOn: s.dependsOn,
        status: s.status,
        text: s.output || s.answers.map((a) => a.text).join("\n\n"),
        artifacts: s.artifacts,
      },
    ]),
  );
}

/** Steps in layers: a step sits one layer below its deepest dependency. */
function layers(steps: StepView[]): StepView[][] {
  const depth = new Map<string, number>();
  const byId = new Map(steps.map((s) => [s.id, s]));
  const depthOf = (s: StepView, seen = new Set<string>()): number => {
    const known = depth.get(s.id);
    if (known !== undefined) return known;
    if (seen.has(s.id)) return 0;
    seen.add(s.id);
    const d = Math.max(
      0,
      ...s.dependsOn.map((id) => {
        const dep = byId.get(id);
        return dep === undefined ? 0 : depthOf(dep, seen) + 1;
      }),
    );
    depth.set(s.id, d);
    return d;
  };
  const out: StepView[][] = [];
  for (const s of steps) (out[depthOf(s)] ??= []).push(s);
  return out.filter((l) => l !== undefined);
}

function describe(e: RunEvent): string {
  const step = e.stepId !== "" ? ` ${e.stepId}` : "";
  switch (e.payload.case) {
    case "stepStarted":
      return `step${step} started (${e.payload.value.model || e.payload.value.models.join(", ")}), attempt ${e.attempt}`;
    case "stepCompleted":
      return `step${step} completed in ${fmtMs(e.payload.value.latency)}`;
    case "stepFailed":
      return `step${step} failed: ${e.payload.value.error?.message ?? ""}${e.payload.value.willRetry ? " (retrying)" : ""}`;
    case "failed":
      return `run failed: ${e.payload.value.error?.explanation || e.payload.value.error?.message || ""}`;
    case "cancelled":
      return "run cancelled";
    default:
      return `${enumLabel(RunEventType, e.type)}${step}`;
  }
}

export function RunPage({ runId }: { runId: string }) {
  const { go } = useRouter();
  const [run, setRun] = useState<Run>();
  const [steps, setSteps] = useState<Map<string, StepView>>(new Map());
  const [events, setEvents] = useState<RunEvent[]>([]);
  const [error, setError] = useState<string>();
  const [live, setLive] = useState(false);

  useEffect(() => {
    const abort = new AbortController();
    let current = new Map<string, StepView>();
    const update = (id: string, f: (s: StepView) => StepView) => {
      const s = current.get(id);
      if (s === undefined) return;
      current = new Map(current).set(id, f(s));
      setSteps(current);
    };
    const plan = (
      planned: Array<{
        stepId: string;
        name: string;
        kind: StepKind;
        model: string;
        models: string[];
        dependsOn: string[];
      }>,
    ) => {
      for (const p of planned) {
        if (current.has(p.stepId)) continue;
        current = new Map(current).set(p.stepId, {
          id: p.stepId,
          name: p.name,
          kind: p.kind,
          model: p.model || p.models.join(", "),
          dependsOn: p.dependsOn,
          status: StepStatus.PENDING,
          text: "",
          artifacts: [],
        });
      }
      setSteps(current);
    };
    (async () => {
      setLive(true);
      for await (const item of api.runs.watchRun(
        { runId, includeSnapshot: true, includeDeltas: true },
        { signal: abort.signal },
      )) {
        if (item.item.case === "run") {
          setRun(item.item.value);
          current = stepsOf(item.item.value);
          setSteps(current);
          continue;
        }
        if (item.item.case !== "event") continue;
        const e = item.item.value;
        const p = e.payload;
        if (p.case === "stepDelta") {
          update(e.stepId, (s) => ({ ...s, text: s.text + p.value.text }));
          continue;
        }
        setEvents((list) => [...list, e]);
        if (p.case === "created") plan(p.value.plan);
        else if (p.case === "classified") plan(p.value.plan);
        else if (p.case === "stepStarted")
          update(e.stepId, (s) => ({ ...s, status: StepStatus.RUNNING, text: "" }));
        else if (p.case === "stepCompleted") {
          update(e.stepId, (s) => ({
            ...s,
            status: StepStatus.COMPLETED,
            text: p.value.output || s.text,
            artifacts: p.value.artifacts,
          }));
        } else if (p.case === "stepFailed" && !p.value.willRetry) {
          update(e.stepId, (s) => ({ ...s, status: StepStatus.FAILED }));
        }
      }
      // The stream ends after the terminal event: fetch the final record.
      const final = await api.runs.getRun({ runId });
      if (final.run !== undefined) {
        setRun(final.run);
        current = stepsOf(final.run);
        setSteps(current);
      }
    })()
      .catch((err: unknown) => {
        if (!abort.signal.aborted) setError(errorText(err));
      })
      .finally(() => setLive(false));
    return () => abort.abort();
  }, [runId]);

  const cancel = async () => {
    try {
      const res = await api.runs.cancelRun({ runId, reason: "cancelled from the console" });
      if (res.run !== undefined) setRun(res.run);
    } catch (err) {
      setError(errorText(err));
    }
  };

  /** Deletes the ended run (with its images and events), after the user confirms, then lists runs. */
  const remove = async () => {
    if (!window.confirm("Delete this run, its images and its events? Its cost stays in usage."))
      return;
    try {
      await api.runs.deleteRun({ runId });
      go("/runs");
    } catch (err) {
      setError(errorText(err));
    }
  };

  if (run === undefined)
    return error !== undefined ? <ErrorBox error={error} /> : <Loading what="Loading the run" />;
  const done = TERMINAL.has(run.status) && !live;
  return (
    <div className="run">
      <h1>Run {run.templateId !== "" ? `· ${run.templateId}` : ""}</h1>
      <p className="question">{run.spec?.input}</p>
      <p>
        <span
          className={`status s-${RunStatus[run.status]?.toLowerCase()}`}
          data-testid="run-status"
        >
          {enumLabel(RunStatus, run.status)}
        </span>{" "}
        {live && <span className="muted">live</span>}{" "}
        {done && (
          <span className="muted">
            {fmtMs(run.latency)} · {String(run.usage?.totalTokens ?? 0n)} tokens
            {fmtCached(run.usage)} · {fmtUsd(run.usage?.costUsd)}
          </span>
        )}{" "}
        {!TERMINAL.has(run.status) && (
          <button type="button" onClick={() => void cancel()}>
            Cancel run
          </button>
        )}
        {done && (
          <button type="button" onClick={() => void remove()}>
            Delete run
          </button>
        )}
      </p>
      {run.classification !== undefined && <RouteNote c={run.classification} />}
      <ErrorBox error={error} />
      {run.error !== undefined && (
        <p className="error">{run.error.explanation || run.error.message}</p>
      )}
      <section aria-label="Steps" className="graph">
        {layers([...steps.values()]).map((layer, i) => (
          <div key={i} className="layer">
            {layer.map((s) => (
              <article
                key={s.id}
                className={`step st-${StepStatus[s.status]?.toLowerCase()}`}
                data-step={s.id}
                data-status={StepStatus[s.status]?.toLowerCase()}
              >
                <header>
                  <strong>{s.name || s.id}</strong>{" "}
                  <span className="muted">
                    {enumLabel(StepKind, s.kind)} · {s.model}
                  </span>
                  <span className="state">{enumLabel(StepStatus, s.status)}</span>
                </header>
                {s.dependsOn.length > 0 && <p className="muted">after {s.dependsOn.join(", ")}</p>}
                {s.text !== "" && <div className="text small">{s.text}</div>}
                {s.artifacts.map((a) => (
                  <ArtifactView key={a.id} runId={runId} artifact={a} />
                ))}
              </article>
            ))}
          </div>
        ))}
      </section>
      {(run.output !== "" || run.artifacts.length > 0) && done && (
        <section aria-label="Result">
          <h2>Result</h2>
          {run.output !== "" && <div className="text">{run.output}</div>}
          {run.artifacts.length > 0 && (
            <div className="artifacts">
              {run.artifacts.map((a) => (
                <ArtifactView key={a.id} runId={runId} artifact={a} />
              ))}
            </div>
          )}
        </section>
      )}
      <section aria-label="Events">
        <h2>Events</h2>
        {events.length === 0 ? (
          <p className="empty">No events yet.</p>
        ) : (
          <ol className="timeline">
            {events.map((e) => (
              <li key={e.eventId}>
                <span className="muted">#{String(e.sequence)}</span> {describe(e)}
              </li>
            ))}
          </ol>
        )}
      </section>
    </div>
  );
}
