// Schedules: runs started once at a time, or again and again on a cron expression (RunService
// CreateSchedule, ListSchedules, UpdateSchedule, PauseSchedule, ResumeSchedule, DeleteSchedule).
// The table is read again just after the soonest next fire, so fires, their runs and a
// schedule that paused itself show up without a reload; a schedule's latest runs
// (ListRuns{schedule_id}) open under its row.
import { timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";
import type { Schedule } from "@ensemble/proto";
import { Fragment, useEffect, useState } from "react";
import type { FormEvent, ReactNode } from "react";
import { api, errorText, invalidField } from "../api";
import { loadChatModels, loadTemplates, loadUserEmails, modelLabel } from "../models";
import { AllUsersToggle, ErrorBox, Guard, RunLink, fmtTime, useLoad, type Loaded } from "../ui";
import { TemplateVariables, templateDefaults, templateMode } from "./catalog";
import { RunsTable } from "./runs";

const PAGE = 100;
/** ListSchedules' largest page (PageRequest.page_size). */
const MAX_PAGE = 500;
/**
 * The table is read again a second after the soonest next fire, within these bounds (every
 * second would be too often; a timer cannot wait for a yearly schedule).
 */
const MIN_RELOAD_MS = 2_000;
const MAX_RELOAD_MS = 5 * 60_000;
/** The runs listed under a schedule's row. */
const RUNS_SHOWN = 20;

/** The browser's own time zone, offered as the example. */
const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone;
const TIME_ZONES = Intl.supportedValuesOf("timeZone");

export function SchedulesPage() {
  const [allUsers, setAllUsers] = useState(false);
  const [limit, setLimit] = useState(PAGE);
  const schedules = useLoad(async () => {
    const [res, emails] = await Promise.all([
      api.runs.listSchedules({ allUsers, page: { pageSize: limit } }),
      // Only to name each owner: without the list, the user id does.
      allUsers ? loadUserEmails() : new Map<string, string>(),
    ]);
    return { list: res.schedules, more: (res.page?.nextPageToken ?? "") !== "", emails };
  }, [allUsers, limit]);
  const { data, reload } = schedules;
  // The schedule whose pause or rename form, or runs, are open under its row.
  const [open, setOpen] = useState<{ id: string; what: "pause" | "rename" | "runs" }>();
  const [error, setError] = useState<string>();

  useEffect(() => {
    const next = Math.min(
      ...(data?.list ?? []).flatMap((s) =>
        s.nextFireTime !== undefined && !s.paused ? [timestampMs(s.nextFireTime)] : [],
      ),
    );
    if (!Number.isFinite(next)) return;
    const wait = Math.min(MAX_RELOAD_MS, Math.max(MIN_RELOAD_MS, next - Date.now() + 1_000));
    const timer = setTimeout(reload, wait);
    return () => clearTimeout(timer);
  }, [data, reload]);

  const toggle = (s: Schedule, what: "pause" | "rename" | "runs") =>
    setOpen(open?.id === s.id && open.what === what ? undefined : { id: s.id, what });
  const act = async (s: Schedule, call: () => Promise<unknown>) => {
    setError(undefined);
    try {
      await call();
      reload();
    } catch (err) {
      setError(`${s.name}: ${errorText(err)}`);
    }
  };
  const remove = (s: Schedule) => {
    if (
      !window.confirm(
        `Delete the schedule "${s.name}"? It starts no more runs; the runs it started stay.`,
      )
    ) {
      return;
    }
    if (open?.id === s.id) setOpen(undefined);
    void act(s, () => api.runs.deleteSchedule({ scheduleId: s.id }));
  };
  const columns = allUsers ? 8 : 7;

  return (
    <div>
      <h1>Schedules</h1>
      <p className="hint">
        Runs started for you once at a time, or again and again on a cron expression, with your
        access. A schedule whose occurrences keep starting no run (its model or template left the
        catalog, say) pauses itself after several in a row and says why; resume it once that is
        fixed.
      </p>
      <form className="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filters">
        <AllUsersToggle
          checked={allUsers}
          onChange={setAllUsers}
          label="every user of the tenant"
        />
        <button type="button" onClick={reload} disabled={schedules.loading}>
          Refresh
        </button>
      </form>
      <ErrorBox error={error} />
      <Guard
        loaded={schedules}
        empty={(d) => d.list.length === 0}
        emptyText="No schedules yet: create one below."
      >
        {({ list, more, emails }) => (
          <>
            <div className="table-wrap">
              <table className="schedules">
                <thead>
                  <tr>
                    <th>Name</th>
                    {allUsers && <th>Owner</th>}
                    <th>When</th>
                    <th>Next fire</th>
                    <th>Last fire</th>
                    <th>Fires</th>
                    <th>State</th>
                    <th />
                  </tr>
                </thead>
                <tbody>
                  {list.map((s) => (
                    <Fragment key={s.id}>
                      <tr
                        data-schedule={s.name}
                        className={s.paused || s.lastError !== "" ? "warn" : undefined}
                      >
                        <td data-col="name">
                          <strong>{s.name}</strong>
                          <div className="muted">{specText(s)}</div>
                        </td>
                        {allUsers && <td>{emails.get(s.userId) ?? s.userId}</td>}
                        <td data-col="when">{whenText(s)}</td>
                        <td data-col="next" className="nowrap">
                          {s.paused ? "— (paused)" : fmtTime(s.nextFireTime)}
                        </td>
                        <td data-col="last" className="nowrap">
                          {fmtTime(s.lastFireTime)}
                          {s.lastRunId !== "" && (
                            <div>
                              <RunLink runId={s.lastRunId}>last run</RunLink>
                            </div>
                          )}
                        </td>
                        <td data-col="fires">{String(s.fireCount)}</td>
                        <td data-col="state">
                          <ScheduleState schedule={s} />
                        </td>
                        <td className="actions">
                          {s.paused ? (
                            <button
                              type="button"
                              onClick={() =>
                                void act(s, () => api.runs.resumeSchedule({ scheduleId: s.id }))
                              }
                              aria-label={`Resume ${s.name}`}
                            >
                              Resume
                            </button>
                          ) : (
                            <button
                              type="button"
                              onClick={() => toggle(s, "pause")}
                              aria-label={`Pause ${s.name}`}
                              aria-expanded={open?.id === s.id && open.what === "pause"}
                            >
                              Pause
                            </button>
                          )}{" "}
                          <button
                            type="button"
                            onClick={() => toggle(s, "rename")}
                            aria-label={`Rename ${s.name}`}
                            aria-expanded={open?.id === s.id && open.what === "rename"}
                          >
                            Rename
                          </button>{" "}
                          <button
                            type="button"
                            onClick={() => toggle(s, "runs")}
                            aria-label={`Runs of ${s.name}`}
                            aria-expanded={open?.id === s.id && open.what === "runs"}
                          >
                            Runs
                          </button>{" "}
                          <button
                            type="button"
                            onClick={() => remove(s)}
                            aria-label={`Delete ${s.name}`}
                          >
                            Delete
                          </button>
                        </td>
                      </tr>
                      {open?.id === s.id && open.what === "pause" && !s.paused && (
                        <RowForm
                          columns={columns}
                          label={`Pause ${s.name}`}
                          field="Reason (optional)"
                          initial=""
                          maxLength={256}
                          submit="Pause schedule"
                          hint="It fires no more until it is resumed, and the occurrences that fall meanwhile are not made up for; it keeps its runs and history. The reason is shown here (and sent to the tenant's schedule.paused webhooks)."
                          onSubmit={(reason) =>
                            api.runs.pauseSchedule({ scheduleId: s.id, reason: reason.trim() })
                          }
                          onDone={(changed) => {
                            setOpen(undefined);
                            if (changed) reload();
                          }}
                        />
                      )}
                      {open?.id === s.id && open.what === "rename" && (
                        <RowForm
                          columns={columns}
                          label={`Rename ${s.name}`}
                          field="New name"
                          initial={s.name}
                          maxLength={128}
                          required
                          submit="Save name"
                          onSubmit={(name) =>
                            api.runs.updateSchedule({
                              scheduleId: s.id,
                              name: name.trim(),
                              updateMask: { paths: ["name"] },
                            })
                          }
                          onDone={(changed) => {
                            setOpen(undefined);
                            if (changed) reload();
                          }}
                        />
                      )}
                      {open?.id === s.id && open.what === "runs" && (
                        <tr className="sub-row">
                          <td colSpan={columns}>
                            <ScheduleRuns schedule={s} allUsers={allUsers} />
                          </td>
                        </tr>
                      )}
                    </Fragment>
                  ))}
                </tbody>
              </table>
            </div>
            {more && limit < MAX_PAGE && (
              <p>
                <button type="button" onClick={() => setLimit((l) => Math.min(l + PAGE, MAX_PAGE))}>
                  Show more schedules
                </button>
              </p>
            )}
          </>
        )}
      </Guard>
      <CreateSchedule onCreated={reload} />
    </div>
  );
}

/** "model sim-fast · What changed overnight?" */
function specText(s: Schedule): string {
  const mode = s.spec?.mode;
  const how =
    mode?.case === "model"
      ? `model ${mode.value.model}`
      : mode?.case === "workflow"
        ? mode.value.definition.case === "templateId"
          ? `workflow ${mode.value.definition.value}`
          : "inline workflow"
        : mode?.case === "compare"
          ? `compare ${mode.value.models.join(", ")}`
          : "auto";
  const input = s.spec?.input ?? "";
  return input === "" ? how : `${how} · ${input.length > 60 ? `${input.slice(0, 60)}…` : input}`;
}

function whenText(s: Schedule): ReactNode {
  if (s.when.case === "cron") {
    return (
      <>
        <code className="nowrap">{s.when.value.expression}</code>{" "}
        <span className="muted">{s.when.value.timeZone || "UTC"}</span>
      </>
    );
  }
  if (s.when.case === "at") return `once, ${fmtTime(s.when.value)}`;
  return "—";
}

function ScheduleState({ schedule: s }: { schedule: Schedule }) {
  return (
    <>
      <span className={`status ${s.paused ? "s-paused" : "s-active"}`}>
        {s.paused ? "paused" : "active"}
      </span>
      {s.paused && (
        <div className="reason" data-testid="pause-reason">
          {s.pauseReason}
          {s.pauseTime !== undefined && (
            <span className="muted"> · since {fmtTime(s.pauseTime)}</span>
          )}
        </div>
      )}
      {s.lastError !== "" && (
        <div className="error last-error">Its last occurrence started no run: {s.lastError}</div>
      )}
    </>
  );
}

/** A one-field form in a row under a schedule (pause with a reason, rename). */
function RowForm(props: {
  columns: number;
  label: string;
  field: string;
  initial: string;
  maxLength: number;
  required?: boolean;
  submit: string;
  hint?: string;
  onSubmit: (value: string) => Promise<unknown>;
  onDone: (changed: boolean) => void;
}) {
  const [value, setValue] = useState(props.initial);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setBusy(true);
    try {
      await props.onSubmit(value);
      props.onDone(true);
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <tr className="sub-row">
      <td colSpan={props.columns}>
        <form onSubmit={(e) => void submit(e)} aria-label={props.label}>
          <div className="inline-row">
            <label className="wide">
              {props.field}
              <input
                autoFocus
                required={props.required}
                maxLength={props.maxLength}
                value={value}
                onChange={(e) => setValue(e.target.value)}
              />
            </label>
            <button type="submit" className="primary" disabled={busy}>
              {props.submit}
            </button>
            <button type="button" onClick={() => props.onDone(false)}>
              Cancel
            </button>
          </div>
          {props.hint !== undefined && <p className="hint">{props.hint}</p>}
          <ErrorBox error={error} />
        </form>
      </td>
    </tr>
  );
}

/** A schedule's latest runs; read again whenever it has fired once more. */
function ScheduleRuns({ schedule, allUsers }: { schedule: Schedule; allUsers: boolean }) {
  const runs = useLoad(
    () =>
      api.runs.listRuns({
        scheduleId: schedule.id,
        // An admin looking at the tenant's schedules sees their owners' runs.
        allUsers,
        page: { pageSize: RUNS_SHOWN },
      }),
    [schedule.id, allUsers, String(schedule.fireCount)],
  );
  return (
    <section aria-label={`Runs of ${schedule.name}`}>
      <h3>Latest runs</h3>
      <Guard
        loaded={runs}
        empty={(r) => r.runs.length === 0}
        emptyText="No runs yet: one starts at each occurrence."
      >
        {(r) => (
          <>
            <RunsTable runs={r.runs} />
            {(r.page?.nextPageToken ?? "") !== "" && (
              <p className="hint">The latest {RUNS_SHOWN} of its runs.</p>
            )}
          </>
        )}
      </Guard>
    </section>
  );
}

/** The controls an INVALID_ARGUMENT can point at. */
type Field = "name" | "input" | "runWith" | "cron" | "timeZone" | "at";

/** Which control a request field path ("cron.expression", "spec.model.model") belongs to. */
function fieldOf(path: string | undefined): Field | undefined {
  if (path === undefined) return undefined;
  if (path === "name") return "name";
  if (path.startsWith("spec.input")) return "input";
  if (path.startsWith("spec")) return "runWith";
  if (path.includes("time_zone")) return "timeZone";
  if (path.includes("cron")) return "cron";
  if (path === "at" || path.endsWith(".at")) return "at";
  return undefined;
}

function CreateSchedule({ onCreated }: { onCreated: () => void }) {
  const models = useLoad(loadChatModels, []);
  const templates = useLoad(loadTemplates, []);
  const [name, setName] = useState("");
  const [input, setInput] = useState("");
  const [runWith, setRunWith] = useState<"model" | "template">("model");
  const [model, setModel] = useState("");
  const [templateId, setTemplateId] = useState("");
  // The variables typed for a template (another template's are not kept).
  const [typed, setTyped] = useState<{ templateId: string; values: Record<string, string> }>();
  const [repeat, setRepeat] = useState(true);
  const [cron, setCron] = useState("");
  const [timeZone, setTimeZone] = useState("");
  const [at, setAt] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<{ text: string; field: Field | undefined }>();

  // Until one is picked, the first of each list.
  const chosenModel = model || models.data?.[0]?.id || "";
  const template = templates.data?.find((t) => t.id === templateId) ?? templates.data?.[0];
  const vars =
    template === undefined
      ? {}
      : typed?.templateId === template.id
        ? typed.values
        : templateDefaults(template);
  /** The error, when it is about this control. */
  const errorAt = (field: Field | undefined) =>
    error !== undefined && error.field === field ? error.text : undefined;
  const invalid = (field: Field) => (errorAt(field) !== undefined ? true : undefined);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    const mode =
      runWith === "model"
        ? chosenModel !== ""
          ? { case: "model" as const, value: { model: chosenModel } }
          : undefined
        : template !== undefined
          ? templateMode(template, vars)
          : undefined;
    if (mode === undefined) {
      setError({ text: `Pick a ${runWith} to run.`, field: "runWith" });
      return;
    }
    const time = new Date(at);
    if (!repeat && Number.isNaN(time.getTime())) {
      setError({ text: "Pick the date and time to run it at.", field: "at" });
      return;
    }
    setBusy(true);
    try {
      await api.runs.createSchedule({
        name: name.trim(),
        spec: { input, mode },
        when: repeat
          ? { case: "cron", value: { expression: cron.trim(), timeZone: timeZone.trim() } }
          : { case: "at", value: timestampFromDate(time) },
      });
      setName("");
      setInput("");
      setAt("");
      onCreated();
    } catch (err) {
      setError({ text: errorText(err), field: fieldOf(invalidField(err)) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-label="New schedule">
      <h2>New schedule</h2>
      <form onSubmit={(e) => void create(e)} aria-label="Create schedule">
        <label>
          Name
          <input
            name="name"
            required
            maxLength={128}
            autoComplete="off"
            value={name}
            aria-invalid={invalid("name")}
            onChange={(e) => setName(e.target.value)}
          />
        </label>
        <ErrorBox error={errorAt("name")} />
        <label>
          Input
          <textarea
            name="input"
            rows={2}
            required
            value={input}
            aria-invalid={invalid("input")}
            onChange={(e) => setInput(e.target.value)}
          />
        </label>
        <ErrorBox error={errorAt("input")} />
        <fieldset>
          <legend>Run with</legend>
          <label className="check">
            <input
              type="radio"
              name="runWith"
              checked={runWith === "model"}
              onChange={() => setRunWith("model")}
            />
            a model
          </label>
          <label className="check">
            <input
              type="radio"
              name="runWith"
              checked={runWith === "template"}
              onChange={() => setRunWith("template")}
            />
            a workflow template
          </label>
          {runWith === "model" ? (
            <Picker label="Model" loaded={models}>
              {(list) => (
                <select
                  name="model"
                  value={chosenModel}
                  aria-invalid={invalid("runWith")}
                  onChange={(e) => setModel(e.target.value)}
                >
                  {list.map((m) => (
                    <option key={m.id} value={m.id}>
                      {modelLabel(m)}
                    </option>
                  ))}
                </select>
              )}
            </Picker>
          ) : (
            <>
              <Picker label="Template" loaded={templates}>
                {(list) => (
                  <select
                    name="template"
                    value={template?.id ?? ""}
                    aria-invalid={invalid("runWith")}
                    onChange={(e) => setTemplateId(e.target.value)}
                  >
                    {list.map((t) => (
                      <option key={t.id} value={t.id}>
                        {t.name || t.id}
                      </option>
                    ))}
                  </select>
                )}
              </Picker>
              {template !== undefined && (
                <TemplateVariables
                  template={template}
                  value={vars}
                  onChange={(values) => setTyped({ templateId: template.id, values })}
                />
              )}
            </>
          )}
          <ErrorBox error={errorAt("runWith")} />
        </fieldset>
        <fieldset>
          <legend>When</legend>
          <label className="check">
            <input type="radio" name="repeat" checked={repeat} onChange={() => setRepeat(true)} />
            repeatedly (cron)
          </label>
          <label className="check">
            <input type="radio" name="repeat" checked={!repeat} onChange={() => setRepeat(false)} />
            once
          </label>
          {repeat ? (
            <>
              <div className="inline-row">
                <label>
                  Cron expression
                  <input
                    name="cron"
                    required
                    spellCheck={false}
                    autoComplete="off"
                    placeholder="0 9 * * 1-5"
                    value={cron}
                    aria-invalid={invalid("cron")}
                    onChange={(e) => setCron(e.target.value)}
                  />
                </label>
                <label>
                  Time zone (optional)
                  <input
                    name="timeZone"
                    list="time-zones"
                    spellCheck={false}
                    autoComplete="off"
                    placeholder="UTC"
                    value={timeZone}
                    aria-invalid={invalid("timeZone")}
                    onChange={(e) => setTimeZone(e.target.value)}
                  />
                  <datalist id="time-zones">
                    {TIME_ZONES.map((z) => (
                      <option key={z} value={z} />
                    ))}
                  </datalist>
                </label>
              </div>
              <p className="hint">
                5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; or
                @yearly, @monthly, @weekly, @daily, @hourly. <code>0 9 * * 1-5</code> is 9:00 on
                weekdays. Read in the IANA time zone given (yours is {BROWSER_ZONE}); empty = UTC.
              </p>
              <ErrorBox error={errorAt("cron") ?? errorAt("timeZone")} />
            </>
          ) : (
            <>
              <label>
                Date and time
                <input
                  type="datetime-local"
                  name="at"
                  required
                  value={at}
                  aria-invalid={invalid("at")}
                  onChange={(e) => setAt(e.target.value)}
                />
              </label>
              <p className="hint">In your time zone ({BROWSER_ZONE}); it must be in the future.</p>
              <ErrorBox error={errorAt("at")} />
            </>
          )}
        </fieldset>
        <ErrorBox error={errorAt(undefined)} />
        <button type="submit" className="primary" disabled={busy}>
          Create schedule
        </button>
      </form>
    </section>
  );
}

/** A labelled picker over a loaded list: its error or "Loading" until the list is there. */
function Picker<T>(props: {
  label: string;
  loaded: Loaded<T[]>;
  children: (list: T[]) => ReactNode;
}) {
  const { data, error } = props.loaded;
  if (error !== undefined) return <ErrorBox error={error} />;
  return (
    <label>
      {props.label}
      {data === undefined ? <span className="muted"> loading…</span> : props.children(data)}
    </label>
  );
}
