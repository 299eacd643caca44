// Usage and cost from model-proxy's ledger (GetUsage), by day, model, user and API key. A user
// sees their own; an admin can switch to the whole tenant.
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { UsageDimension, type UsageBucket } from "@ensemble/proto";
import { useState } from "react";
import { api } from "../api";
import { BarChart, type Bar } from "../chart";
import { useSession } from "../session";
import { AllUsersToggle, Guard, fmtUsd, useLoad } from "../ui";

const VIEWS: Array<{
  dim: UsageDimension;
  title: string;
  label: (b: UsageBucket) => string;
  admin?: boolean;
}> = [
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

export function UsagePage() {
  const { me } = useSession();
  const [days, setDays] = useState(30);
  const [allUsers, setAllUsers] = useState(false);
  const views = VIEWS.filter((v) => v.admin !== true || (me?.admin === true && allUsers));
  const usage = useLoad(async () => {
    const end = Date.now() + 60_000;
    const range = {
      startTime: timestampFromMs(end - days * 86_400_000),
      endTime: timestampFromMs(end),
      allUsers,
    };
    const results = await Promise.all(
      views.map((v) => api.proxy.getUsage({ ...range, groupBy: [v.dim] })),
    );
    return results;
  }, [days, allUsers]);

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
      <Guard
        loaded={usage}
        empty={(r) => (r[0]?.totalRequests ?? 0n) === 0n}
        emptyText="No usage in this period yet."
      >
        {(results) => (
          <>
            <p className="totals">
              {String(results[0]?.totalRequests ?? 0n)} requests ·{" "}
              {String(results[0]?.total?.totalTokens ?? 0n)} tokens ·{" "}
              {fmtUsd(results[0]?.total?.costUsd)}
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
