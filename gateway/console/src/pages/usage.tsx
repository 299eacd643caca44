// Usage and cost from model-proxy's ledger (GetUsage), by day, model, user, API key and the value
// of a label the calls carry (team, feature, customer: ChatRequest.metadata, the OpenAI API's
// `metadata`). A user sees their own; an admin can switch to the whole tenant.
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { UsageDimension, type UsageBucket } from "@ensemble/proto";
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
            <p className="totals">
              {String(results[0]?.totalRequests ?? 0n)} requests ·{" "}
              {String(results[0]?.total?.totalTokens ?? 0n)} tokens ·{" "}
              {fmtUsd(results[0]?.total?.costUsd)}
              {labelled !== "" && ` · only calls labelled ${labelled}`}
            </p>
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
          </>
        )}
      </Guard>
    </div>
  );
}
