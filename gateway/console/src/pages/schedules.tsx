// Schedules: runs started once at a time, or again and again on a cron expression (RunService
// CreateSchedule, ListSchedules, UpdateSchedule, PauseSchedule, ResumeSchedule, DeleteSchedule).
// The table is read again just after the soonest next fire, so fires, their runs and a
// schedule that paused itself show up without a reload; a schedule's latest runs
// (ListRuns{schedule_id}) open under its row, as do the forms that pause, rename or edit it (its
// time and input).
import { timestampDate, timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { Schedule } from "@ensemble/proto";
import { Fragment, useEffect, useId, useState } from "react";
import type { FormEvent, ReactNode } from "react";
import { api, errorText, invalidField, isCode } from "../api";
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
  // The schedule whose pause, rename or edit form, or runs, are open under its row.
  const [open, setOpen] = useState<{ id: string; what: Opened; focusWhen?: boolean }>();
  // The last action's error; `retime`: the schedule Resume refused for its time (it can be given
  // a new one right away).
  const [error, setError] = useState<{ text: string; retime?: Schedule }>();

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

  const toggle = (s: Schedule, what: Opened) =>
    setOpen(open?.id === s.id && open.what === what ? undefined : { id: s.id, what });
  const act = async (s: Schedule, call: () => Promise<unknown>) => {
    setError(undefined);
    try {
      await call();
      reload();
    } catch (err) {
      setError({ text: `${s.name}: ${errorText(err)}` });
    }
  };
  const resume = async (s: Schedule) => {
    setError(undefined);
    try {
      await api.runs.resumeSchedule({ scheduleId: s.id });
      reload();
    } catch (err) {
      // FAILED_PRECONDITION: a one-time schedule whose time passed (or a cron that never fires
      // again) resumes only with a new time, which the edit form gives it here.
      if (!isCode(err, Code.FailedPrecondition)) {
        setError({ text: `${s.name}: ${errorText(err)}` });
        return;
      }
      const text = errorText(err).replace(/ with UpdateSchedule$/, "");
      setError({ text: `${s.name}: ${text}`, retime: s });
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
  const retime = error?.retime;

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
      <ErrorBox error={error?.text} />
      {retime !== undefined && (
        <p>
          <button
            type="button"
            onClick={() => {
              setOpen({ id: retime.id, what: "edit", focusWhen: true });
              setError(undefined);
            }}
          >
            Edit its time
          </button>
        </p>
      )}
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
                              onClick={() => void resume(s)}
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
                            onClick={() => toggle(s, "edit")}
                            aria-label={`Edit ${s.name}`}
                            aria-expanded={open?.id === s.id && open.what === "edit"}
                          >
                            Edit
                          </button>{" "}
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
                      {open?.id === s.id && open.what === "edit" && (
                        <EditSchedule
                          schedule={s}
                          columns={columns}
                          focusWhen={open.focusWhen === true}
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

/** What opens under a schedule's row. */
type Opened = "pause" | "rename" | "edit" | "runs";

/** "model sim-fast · What changed overnight?" */
function specText(s: Schedule): string {
  const how = runsWith(s);
  const input = s.spec?.input ?? "";
  return input === "" ? how : `${how} · ${input.length > 60 ? `${input.slice(0, 60)}…` : input}`;
}

/** "model sim-fast", "workflow tpl_digest", "auto" ... */
function runsWith(s: Schedule): string {
  const mode = s.spec?.mode;
  return mode?.case === "model"
    ? `model ${mode.value.model}`
    : mode?.case === "workflow"
      ? mode.value.definition.case === "templateId"
        ? `workflow ${mode.value.definition.value}`
        : "inline workflow"
      : mode?.case === "compare"
        ? `compare ${mode.value.models.join(", ")}`
        : "auto";
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
const ALL_FIELDS: readonly Field[] = ["name", "input", "runWith", "cron", "timeZone", "at"];

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

/** An error to show next to a control, or at the foot of the form (no field). */
interface FieldError {
  text: string;
  field: Field | undefined;
}

/**
 * A schedule form's error. The engine's refusal goes next to the control it names when the form
 * has that control (`fields`), else to the form's foot.
 */
function useFieldError(fields: readonly Field[]) {
  const [error, setError] = useState<FieldError>();
  /** The error, when it is about this control (`undefined`: the form's foot). */
  const errorAt = (field: Field | undefined) =>
    error !== undefined && error.field === field ? error.text : undefined;
  const refused = (err: unknown) => {
    const field = fieldOf(invalidField(err));
    setError({
      text: errorText(err),
      field: field !== undefined && fields.includes(field) ? field : undefined,
    });
  };
  return { setError, errorAt, refused };
}

/** `aria-invalid` of a control with an error next to it. */
const invalidIf = (error: string | undefined) => (error !== undefined ? true : undefined);

/** What the "When" fieldset holds: a cron expression and its zone, or one date and time. */
interface WhenValue {
  repeat: boolean;
  cron: string;
  timeZone: string;
  /** datetime-local: the browser's own time, to the minute. */
  at: string;
}

const NEW_WHEN: WhenValue = { repeat: true, cron: "", timeZone: "", at: "" };

/** A schedule's time as the fieldset shows it. */
function whenValue(s: Schedule): WhenValue {
  if (s.when.case === "cron") {
    return { ...NEW_WHEN, cron: s.when.value.expression, timeZone: s.when.value.timeZone };
  }
  if (s.when.case === "at") {
    return { ...NEW_WHEN, repeat: false, at: localDateTime(timestampDate(s.when.value)) };
  }
  return NEW_WHEN;
}

function localDateTime(d: Date): string {
  const two = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}`;
}

function sameWhen(a: WhenValue, b: WhenValue): boolean {
  return a.repeat
    ? b.repeat && a.cron.trim() === b.cron.trim() && a.timeZone.trim() === b.timeZone.trim()
    : !b.repeat && a.at === b.at;
}

/** The request's `when` (Create and UpdateSchedule's), or what to fix first. */
function requestWhen(
  w: WhenValue,
):
  | { case: "cron"; value: { expression: string; timeZone: string } }
  | { case: "at"; value: Timestamp }
  | FieldError {
  if (w.repeat) {
    return { case: "cron", value: { expression: w.cron.trim(), timeZone: w.timeZone.trim() } };
  }
  const time = new Date(w.at);
  if (Number.isNaN(time.getTime())) {
    return { text: "Pick the date and time to run it at.", field: "at" };
  }
  return { case: "at", value: timestampFromDate(time) };
}

/** The question or instruction each run starts with. */
function InputField(props: {
  value: string;
  onChange: (value: string) => void;
  error: string | undefined;
  autoFocus?: boolean;
}) {
  return (
    <>
      <label>
        Input
        <textarea
          name="input"
          rows={2}
          required
          autoFocus={props.autoFocus}
          value={props.value}
          aria-invalid={invalidIf(props.error)}
          onChange={(e) => props.onChange(e.target.value)}
        />
      </label>
      <ErrorBox error={props.error} />
    </>
  );
}

/** "When": repeatedly on a cron expression in a time zone, or once at a date and time. */
function WhenFields(props: {
  value: WhenValue;
  onChange: (value: WhenValue) => void;
  errorAt: (field: Field) => string | undefined;
  autoFocus?: boolean;
}) {
  const { value: w, errorAt } = props;
  const set = (change: Partial<WhenValue>) => props.onChange({ ...w, ...change });
  // Each form has its own list: two forms on the page must not share an element id.
  const zones = useId();
  return (
    <fieldset>
      <legend>When</legend>
      <label className="check">
        <input
          type="radio"
          name="repeat"
          checked={w.repeat}
          onChange={() => set({ repeat: true })}
        />
        repeatedly (cron)
      </label>
      <label className="check">
        <input
          type="radio"
          name="repeat"
          checked={!w.repeat}
          onChange={() => set({ repeat: false })}
        />
        once
      </label>
      {w.repeat ? (
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
                autoFocus={props.autoFocus}
                value={w.cron}
                aria-invalid={invalidIf(errorAt("cron"))}
                onChange={(e) => set({ cron: e.target.value })}
              />
            </label>
            <label>
              Time zone (optional)
              <input
                name="timeZone"
                list={zones}
                spellCheck={false}
                autoComplete="off"
                placeholder="UTC"
                value={w.timeZone}
                aria-invalid={invalidIf(errorAt("timeZone"))}
                onChange={(e) => set({ timeZone: e.target.value })}
              />
              <datalist id={zones}>
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
              autoFocus={props.autoFocus}
              value={w.at}
              aria-invalid={invalidIf(errorAt("at"))}
              onChange={(e) => set({ at: e.target.value })}
            />
          </label>
          <p className="hint">In your time zone ({BROWSER_ZONE}); it must be in the future.</p>
          <ErrorBox error={errorAt("at")} />
        </>
      )}
    </fieldset>
  );
}

/** The controls of the edit form. */
const EDIT_FIELDS: readonly Field[] = ["input", "cron", "timeZone", "at"];

/**
 * A schedule's time and input, changed in place (UpdateSchedule). What it runs with (its mode,
 * model or template) stays: the spec sent is its own with the new input. Only what changed is
 * in the update mask, so an untouched time is not moved.
 */
function EditSchedule(props: {
  schedule: Schedule;
  columns: number;
  /** Opened to give it a new time: the time has the focus. */
  focusWhen: boolean;
  onDone: (changed: boolean) => void;
}) {
  const s = props.schedule;
  // What the form started from; the row's schedule is read again while the form is open.
  const [initial] = useState(() => ({ input: s.spec?.input ?? "", when: whenValue(s) }));
  const [input, setInput] = useState(initial.input);
  const [when, setWhen] = useState(initial.when);
  const [busy, setBusy] = useState(false);
  const { setError, errorAt, refused } = useFieldError(EDIT_FIELDS);

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    const newInput = s.spec !== undefined && input !== initial.input;
    const newWhen = !sameWhen(when, initial.when);
    if (!newInput && !newWhen) {
      props.onDone(false);
      return;
    }
    const w = newWhen ? requestWhen(when) : undefined;
    if (w !== undefined && "text" in w) {
      setError(w);
      return;
    }
    setBusy(true);
    try {
      await api.runs.updateSchedule({
        scheduleId: s.id,
        ...(newInput && s.spec !== undefined ? { spec: { ...s.spec, input } } : {}),
        ...(w !== undefined ? { when: w } : {}),
        updateMask: { paths: [...(newInput ? ["spec"] : []), ...(newWhen ? ["when"] : [])] },
      });
      props.onDone(true);
    } catch (err) {
      refused(err);
      setBusy(false);
    }
  };

  return (
    <tr className="sub-row">
      <td colSpan={props.columns}>
        <form onSubmit={(e) => void save(e)} aria-label={`Edit ${s.name}`}>
          {s.spec !== undefined && (
            <InputField
              value={input}
              onChange={setInput}
              error={errorAt("input")}
              autoFocus={!props.focusWhen}
            />
          )}
          <WhenFields
            value={when}
            onChange={setWhen}
            errorAt={errorAt}
            autoFocus={props.focusWhen}
          />
          <p className="hint">
            What it runs with stays as it is ({runsWith(s)}). A new time counts from now
            {s.paused ? "; it stays paused, and its new time applies once it is resumed" : ""}.
          </p>
          <ErrorBox error={errorAt(undefined)} />
          <div className="inline-row">
            <button type="submit" className="primary" disabled={busy}>
              Save changes
            </button>
            <button type="button" onClick={() => props.onDone(false)}>
              Cancel
            </button>
          </div>
        </form>
      </td>
    </tr>
  );
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
  const [when, setWhen] = useState(NEW_WHEN);
  const [busy, setBusy] = useState(false);
  const { setError, errorAt, refused } = useFieldError(ALL_FIELDS);

  // Until one is picked, the first of each list.
  const chosenModel = model || models.data?.[0]?.id || "";
  const template = templates.data?.find((t) => t.id === templateId) ?? templates.data?.[0];
  const vars =
    template === undefined
      ? {}
      : typed?.templateId === template.id
        ? typed.values
        : templateDefaults(template);

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
    const w = requestWhen(when);
    if ("text" in w) {
      setError(w);
      return;
    }
    setBusy(true);
    try {
      await api.runs.createSchedule({ name: name.trim(), spec: { input, mode }, when: w });
      setName("");
      setInput("");
      setWhen((old) => ({ ...old, at: "" }));
      onCreated();
    } catch (err) {
      refused(err);
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
            aria-invalid={invalidIf(errorAt("name"))}
            onChange={(e) => setName(e.target.value)}
          />
        </label>
        <ErrorBox error={errorAt("name")} />
        <InputField value={input} onChange={setInput} error={errorAt("input")} />
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
                  aria-invalid={invalidIf(errorAt("runWith"))}
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
                    aria-invalid={invalidIf(errorAt("runWith"))}
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
        <WhenFields value={when} onChange={setWhen} errorAt={errorAt} />
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
