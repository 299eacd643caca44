// Usage and cost from model-proxy's ledger (GetUsage), by day, model, user, API key and the value
// of a label the calls carry (team, feature, customer: ChatRequest.metadata, the OpenAI API's
// `metadata`). A user sees their own; an admin can switch to the whole tenant. The totals and
// the per-model table say how much input the providers' prompt caches served.
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { UsageDimension, type Usage, type UsageBucket } from "@ensemble/proto";
import { useState } from "react";
import { api } from "../api";
import { BarChart, type Bar } from "../chart";
import { useSession } from "../session";
import {
  AllUsersToggle,
  ErrorBox,
  Guard,
  LabelFilterInput,
  MAX_LABEL_KEY,
  fmtLabels,
  fmtUsd,
  useLabelFilter,
  useLoad,
} from "../ui";

interface View {
  dim: UsageDimension;
  title: string;
  label: (b: UsageBucket) => string;
  admin?: boolean;
}

const VIEWS: View[] = [
  {
    dim: UsageDimension.DAY,
    title: "Cost by day",
    label: (b) =>
      b.periodStart !== undefined ? timestampDate(b.periodStart).toISOString().slice(0, 10) : "—",
  },
  { dim: UsageDimension.MODEL, title: "Cost by model", label: (b) => b.model || "—" },
  { dim: UsageDimension.USER, title: "Cost by user", label: (b) => b.userId || "—", admin: true },
  {
    dim: UsageDimension.API_KEY,
    title: "Cost by API key",
    label: (b) => b.apiKeyId || "(no key: console or token)",
  },
];

// GetUsageRequest's bound on the metadata filter's values.
const MAX_VALUE = 256;

/** What the label inputs ask for, once applied: a key to group by ("" none) and a filter. */
interface Labels {
  key: string;
  only: Record<string, string>;
}

export function UsagePage() {
  const { me } = useSession();
  const [days, setDays] = useState(30);
  const [allUsers, setAllUsers] = useState(false);
  // The label inputs apply on Enter or Apply (which also refreshes), not on every keystroke.
  const [keyDraft, setKeyDraft] = useState("");
  const onlyFilter = useLabelFilter(MAX_VALUE);
  const [labels, setLabels] = useState<Labels>({ key: "", only: {} });
  const { key, only } = labels;

  const usage = useLoad(async () => {
    const views = VIEWS.filter((v) => v.admin !== true || (me?.admin === true && allUsers));
    if (key !== "") {
      views.push({
        dim: UsageDimension.METADATA,
        title: `Cost by label: ${key}`,
        label: (b) => b.metadataValue || "(none)",
      });
    }
    const end = Date.now() + 60_000;
    const range = {
      startTime: timestampFromMs(end - days * 86_400_000),
      endTime: timestampFromMs(end),
      allUsers,
      metadata: only,
    };
    const results = await Promise.all(
      views.map((v) =>
        api.proxy.getUsage({
          ...range,
          groupBy: [v.dim],
          ...(v.dim === UsageDimension.METADATA ? { metadataKey: key } : {}),
        }),
      ),
    );
    // With what was asked: the page shows the last answer while the next loads, and must not
    // describe it with inputs it was not asked with.
    return { views, results, only: fmtLabels(only) };
  }, [days, allUsers, labels]);

  const apply = () => {
    const applied = onlyFilter.apply();
    if (applied === undefined) return;
    setLabels({ key: keyDraft.trim(), only: applied });
    usage.reload();
  };

  return (
    <div>
      <h1>Usage and cost</h1>
      <form className="filters" onSubmit={(e) => e.preventDefault()} aria-label="Period">
        <label>
          Period
          <select value={days} onChange={(e) => setDays(Number(e.target.value))}>
            <option value={1}>last 24 hours</option>
            <option value={7}>last 7 days</option>
            <option value={30}>last 30 days</option>
            <option value={90}>last 90 days</option>
          </select>
        </label>
        <AllUsersToggle checked={allUsers} onChange={setAllUsers} label="whole tenant" />
      </form>
      <form
        className="filters"
        aria-label="Labels"
        onSubmit={(e) => {
          e.preventDefault();
          apply();
        }}
      >
        <label>
          Cost by label
          <input
            value={keyDraft}
            placeholder="a key, e.g. team"
            maxLength={MAX_LABEL_KEY}
            onChange={(e) => setKeyDraft(e.target.value)}
          />
        </label>
        <LabelFilterInput label="Only calls labelled" filter={onlyFilter} />
        <button type="submit">Apply</button>
      </form>
      <ErrorBox error={onlyFilter.error && `Only calls labelled: ${onlyFilter.error}`} />
      <Guard
        loaded={usage}
        empty={(r) => (r.results[0]?.totalRequests ?? 0n) === 0n}
        emptyText={
          usage.data?.only
            ? `No calls labelled ${usage.data.only} in this period.`
            : "No usage in this period yet."
        }
      >
        {({ views, results, only: labelled }) => (
          <>
            <Totals
              requests={results[0]?.totalRequests ?? 0n}
              usage={results[0]?.total}
              labelled={labelled}
            />
            <div className="charts">
              {views.map((v, i) => {
                const bars: Bar[] = (results[i]?.buckets ?? []).map((b) => ({
                  label: v.label(b),
                  value: b.usage?.costUsd ?? 0,
                  text: `${fmtUsd(b.usage?.costUsd)} · ${String(b.usage?.totalTokens ?? 0n)} tok · ${String(b.requests)} req`,
                }));
                if (v.dim !== UsageDimension.DAY) bars.sort((a, b) => b.value - a.value);
                return <BarChart key={v.dim} title={v.title} bars={bars} />;
              })}
            </div>
            <TokensByModel
              buckets={results[views.findIndex((v) => v.dim === UsageDimension.MODEL)]?.buckets}
            />
          </>
        )}
      </Guard>
    </div>
  );
}

/** The share of the input read from the providers' prompt caches: "0%", "<1%", "42%". */
function cachedShare(u: Usage | undefined): string {
  const input = Number(u?.inputTokens ?? 0n);
  const cached = Number(u?.cachedInputTokens ?? 0n);
  if (input === 0 || cached === 0) return "0%";
  const share = (cached / input) * 100;
  return share < 1 ? "<1%" : `${Math.round(share)}%`;
}

const CACHED_HINT =
  "Input tokens read from the provider's prompt cache (part of the input, billed at the model's cached input price)";

/** The period's totals: cached input is part of the input, reasoning part of the output. */
function Totals(props: { requests: bigint; usage: Usage | undefined; labelled: string }) {
  const { usage: u } = props;
  const reasoning = u?.reasoningTokens ?? 0n;
  return (
    <p className="totals">
      {String(props.requests)} requests · {String(u?.totalTokens ?? 0n)} tokens ·{" "}
      <span data-total="input">{String(u?.inputTokens ?? 0n)} input</span>{" "}
      <span data-total="cached" title={CACHED_HINT}>
        ({String(u?.cachedInputTokens ?? 0n)} cached, {cachedShare(u)} of input)
      </span>{" "}
      · <span data-total="output">{String(u?.outputTokens ?? 0n)} output</span>
      {reasoning > 0n && (
        <span data-total="reasoning"> ({String(reasoning)} reasoning)</span>
      )} · {fmtUsd(u?.costUsd)}
      {props.labelled !== "" && ` · only calls labelled ${props.labelled}`}
    </p>
  );
}

/**
 * Tokens and cost per model, as figures: what the charts cannot show, how much of each model's
 * input came from the prompt cache. Cache writes (Anthropic bills them above the input price)
 * get a column only when there were some.
 */
function TokensByModel({ buckets }: { buckets: UsageBucket[] | undefined }) {
  if (buckets === undefined || buckets.length === 0) return null;
  const rows = [...buckets].sort((a, b) => (b.usage?.costUsd ?? 0) - (a.usage?.costUsd ?? 0));
  const writes = rows.some((b) => (b.usage?.cacheWriteInputTokens ?? 0n) > 0n);
  return (
    <section aria-label="Tokens by model">
      <h2>Tokens by model</h2>
      <div className="table-wrap">
        <table className="usage">
          <thead>
            <tr>
              <th>Model</th>
              <th>Requests</th>
              <th>Input</th>
              <th title={CACHED_HINT}>Cached input</th>
              {writes && <th>Cache writes</th>}
              <th>Output</th>
              <th title="Output tokens the model spent reasoning (part of the output)">
                Reasoning
              </th>
              <th>Cost</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((b) => (
              <tr key={b.model} data-model={b.model}>
                <td>{b.model || "—"}</td>
                <td>{String(b.requests)}</td>
                <td>{String(b.usage?.inputTokens ?? 0n)}</td>
                <td>
                  {String(b.usage?.cachedInputTokens ?? 0n)}
                  {(b.usage?.cachedInputTokens ?? 0n) > 0n && ` (${cachedShare(b.usage)})`}
                </td>
                {writes && <td>{String(b.usage?.cacheWriteInputTokens ?? 0n)}</td>}
                <td>{String(b.usage?.outputTokens ?? 0n)}</td>
                <td>{String(b.usage?.reasoningTokens ?? 0n)}</td>
                <td>{fmtUsd(b.usage?.costUsd)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
