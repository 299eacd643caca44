// Runs: the caller's runs (an admin may list the whole tenant's), newest first, with filters.
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { RunMode, RunStatus, type Run } from "@ensemble/proto";
import { useState } from "react";
import { api } from "../api";
import {
  AllUsersToggle,
  ErrorBox,
  Guard,
  LabelFilterInput,
  RunLink,
  enumLabel,
  fmtLabels,
  fmtMs,
  fmtTime,
  fmtUsd,
  useLabelFilter,
  useLoad,
} from "../ui";

const STATUSES = [
  RunStatus.PENDING,
  RunStatus.RUNNING,
  RunStatus.COMPLETED,
  RunStatus.FAILED,
  RunStatus.CANCELLED,
];
const MODES = [RunMode.AUTO, RunMode.MODEL, RunMode.WORKFLOW, RunMode.COMPARE];
// ListRunsRequest's bound on the metadata filter's values.
const MAX_LABEL_VALUE = 1024;

export function RunsPage() {
  const [status, setStatus] = useState<RunStatus>(RunStatus.UNSPECIFIED);
  const [mode, setMode] = useState<RunMode>(RunMode.UNSPECIFIED);
  const [template, setTemplate] = useState("");
  const [model, setModel] = useState("");
  const [days, setDays] = useState(0);
  const [allUsers, setAllUsers] = useState(false);
  const labelFilter = useLabelFilter(MAX_LABEL_VALUE);
  const [labels, setLabels] = useState<Record<string, string>>({});
  const runs = useLoad(
    () =>
      api.runs.listRuns({
        page: { pageSize: 100 },
        statuses: status === RunStatus.UNSPECIFIED ? [] : [status],
        mode,
        templateId: template.trim(),
        model: model.trim(),
        allUsers,
        metadata: labels,
        ...(days > 0 ? { createdAfter: timestampFromMs(Date.now() - days * 86_400_000) } : {}),
      }),
    [status, mode, template, model, days, allUsers, labels],
  );

  return (
    <div>
      <h1>Runs</h1>
      <form
        className="filters"
        aria-label="Filters"
        onSubmit={(e) => {
          e.preventDefault();
          // Apply refreshes even when the labels are the same (a new object).
          const applied = labelFilter.apply();
          if (applied !== undefined) setLabels(applied);
        }}
      >
        <label>
          Status
          <select value={status} onChange={(e) => setStatus(Number(e.target.value))}>
            <option value={RunStatus.UNSPECIFIED}>any</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {enumLabel(RunStatus, s)}
              </option>
            ))}
          </select>
        </label>
        <label>
          Mode
          <select value={mode} onChange={(e) => setMode(Number(e.target.value))}>
            <option value={RunMode.UNSPECIFIED}>any</option>
            {MODES.map((m) => (
              <option key={m} value={m}>
                {enumLabel(RunMode, m)}
              </option>
            ))}
          </select>
        </label>
        <label>
          Template
          <input value={template} onChange={(e) => setTemplate(e.target.value)} />
        </label>
        <label>
          Model
          <input value={model} onChange={(e) => setModel(e.target.value)} />
        </label>
        <label>
          Created
          <select value={days} onChange={(e) => setDays(Number(e.target.value))}>
            <option value={0}>any time</option>
            <option value={1}>last 24 hours</option>
            <option value={7}>last 7 days</option>
            <option value={30}>last 30 days</option>
          </select>
        </label>
        <LabelFilterInput label="Labelled" filter={labelFilter} />
        <button type="submit">Apply</button>
        <AllUsersToggle
          checked={allUsers}
          onChange={setAllUsers}
          label="every user of the tenant"
        />
      </form>
      <ErrorBox error={labelFilter.error && `Labelled: ${labelFilter.error}`} />
      <Guard
        loaded={runs}
        empty={(r) => r.runs.length === 0}
        emptyText="No runs match. Start one from Chat, Compare or the Catalog's templates."
      >
        {(r) => <RunsTable runs={r.runs} />}
      </Guard>
    </div>
  );
}

/** Runs newest first, each linked to its live view (the Runs page, a schedule's runs). */
export function RunsTable({ runs }: { runs: Run[] }) {
  return (
    <div className="table-wrap">
      <table className="runs">
        <thead>
          <tr>
            <th>Question</th>
            <th>Mode</th>
            <th>Status</th>
            <th>Created</th>
            <th>Latency</th>
            <th>Tokens</th>
            <th>Cost</th>
          </tr>
        </thead>
        <tbody>
          {runs.map((run) => (
            <tr key={run.id} data-run={run.id}>
              <td>
                <RunLink runId={run.id}>
                  {(run.spec?.input ?? run.id).slice(0, 80) || run.id}
                </RunLink>
                {run.templateId !== "" && <span className="tag">{run.templateId}</span>}
                {Object.keys(run.spec?.metadata ?? {}).length > 0 && (
                  <div className="muted">{fmtLabels(run.spec?.metadata ?? {})}</div>
                )}
              </td>
              <td>{enumLabel(RunMode, run.mode)}</td>
              <td>
                <span className={`status s-${RunStatus[run.status]?.toLowerCase()}`}>
                  {enumLabel(RunStatus, run.status)}
                </span>
              </td>
              <td>{fmtTime(run.createTime)}</td>
              <td>{fmtMs(run.latency)}</td>
              <td>{String(run.usage?.totalTokens ?? 0n)}</td>
              <td>{fmtUsd(run.usage?.costUsd)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
