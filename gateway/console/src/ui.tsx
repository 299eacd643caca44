// Shared pieces every page uses: loading/empty/error states, a data-loading hook, formatters,
// links to a run, the admins' switch to the whole tenant.
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Usage } from "@ensemble/proto";
import { useCallback, useEffect, useState } from "react";
import type { ReactNode } from "react";
import { errorText } from "./api";
import { Link } from "./router";
import { useSession } from "./session";

export interface Loaded<T> {
  data: T | undefined;
  error: string | undefined;
  loading: boolean;
  reload: () => void;
}

/** Runs `load` on mount and whenever `deps` change; stale answers are dropped. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data?: T; error?: string; loading: boolean }>({
    loading: true,
  });
  const [tick, setTick] = useState(0);
  // The caller names the inputs `load` depends on, as with useEffect.
  const run = useCallback(load, deps);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    run().then(
      (data) => live && setState({ data, loading: false }),
      (err: unknown) => live && setState({ error: errorText(err), loading: false }),
    );
    return () => {
      live = false;
    };
  }, [run, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return {
    data: state.data,
    error: state.error,
    loading: state.loading,
    reload,
  };
}

export function ErrorBox({ error }: { error: string | undefined }) {
  if (error === undefined) return null;
  return (
    <p className="error" role="alert">
      {error}
    </p>
  );
}

export function Loading({ what = "Loading" }: { what?: string }) {
  return (
    <p className="muted" aria-live="polite">
      {what}…
    </p>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="empty">{children}</p>;
}

/** Loading, error or empty state, else the content. */
export function Guard<T>(props: {
  loaded: Loaded<T>;
  empty?: (data: T) => boolean;
  emptyText?: string;
  children: (data: T) => ReactNode;
}) {
  const { loaded } = props;
  if (loaded.error !== undefined) return <ErrorBox error={loaded.error} />;
  if (loaded.data === undefined) return <Loading />;
  if (props.empty?.(loaded.data) === true)
    return <Empty>{props.emptyText ?? "Nothing yet."}</Empty>;
  return <>{props.children(loaded.data)}</>;
}

export function ms(d: Duration | undefined): number {
  if (d === undefined) return 0;
  return Number(d.seconds) * 1000 + d.nanos / 1e6;
}

export function fmtMs(d: Duration | undefined): string {
  const v = ms(d);
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

export function fmtUsd(v: number | undefined): string {
  const n = v ?? 0;
  return n === 0 ? "$0" : n < 0.01 ? `$${n.toFixed(6)}` : `$${n.toFixed(4)}`;
}

/**
 * " (1200 cached)" after a token count when some of the input came from the provider's prompt
 * cache, else nothing: most calls have none, and a "0 cached" on each would be noise.
 */
export function fmtCached(u: Usage | undefined): string {
  const n = u?.cachedInputTokens ?? 0n;
  return n > 0n ? ` (${n} cached)` : "";
}

export function fmtTime(t: Timestamp | undefined): string {
  return t === undefined ? "—" : timestampDate(t).toLocaleString();
}

export function fmtBytes(n: number | bigint): string {
  const v = Number(n);
  return v >= 1048576
    ? `${(v / 1048576).toFixed(1)} MiB`
    : v >= 1024
      ? `${(v / 1024).toFixed(1)} KiB`
      : `${v} B`;
}

/** A generated enum's value name (already without its prefix), for people. */
export function enumLabel(names: Record<number, string>, value: number): string {
  return (names[value] ?? String(value)).toLowerCase().replaceAll("_", " ");
}

/** A link to a run's live view, reading its id unless told otherwise. */
export function RunLink({ runId, children }: { runId: string; children?: ReactNode }) {
  return <Link to={`/runs/${encodeURIComponent(runId)}`}>{children ?? <code>{runId}</code>}</Link>;
}

/** Admins only: list the whole tenant's items instead of the caller's own (`all_users`). */
export function AllUsersToggle(props: {
  checked: boolean;
  onChange: (checked: boolean) => void;
  label: string;
}) {
  const { me } = useSession();
  if (me?.admin !== true) return null;
  return (
    <label className="check">
      <input
        type="checkbox"
        checked={props.checked}
        onChange={(e) => props.onChange(e.target.checked)}
      />
      {props.label}
    </label>
  );
}

// Bounds every request that filters on labels shares (values' bound differs: the caller's).
export const MAX_LABEL_KEY = 64;
const MAX_LABEL_PAIRS = 8;

/** "team=search, env=prod" -> the pairs ({} for ""); else why not. */
export function parseLabels(
  text: string,
  maxValue: number,
): { labels: Record<string, string> } | { error: string } {
  const labels: Record<string, string> = {};
  const entries = text.trim() === "" ? [] : text.split(",");
  if (entries.length > MAX_LABEL_PAIRS) {
    return { error: `At most ${MAX_LABEL_PAIRS} key=value pairs.` };
  }
  for (const entry of entries) {
    const eq = entry.indexOf("=");
    const key = entry.slice(0, eq).trim();
    if (eq <= 0 || key === "") return { error: "Expected key=value, e.g. team=search." };
    if (key.length > MAX_LABEL_KEY) {
      return { error: `A key has at most ${MAX_LABEL_KEY} characters.` };
    }
    const value = entry.slice(eq + 1).trim();
    if (value.length > maxValue) return { error: `A value has at most ${maxValue} characters.` };
    labels[key] = value;
  }
  return { labels };
}

/** Labels for people: "team=search, env=prod". */
export function fmtLabels(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}

/**
 * A "key=value, …" label filter's draft. It applies when its form is submitted (Enter or
 * Apply), not on every keystroke: `apply` gives the labels, or undefined and shows why not.
 */
export function useLabelFilter(maxValue: number) {
  const [draft, setDraft] = useState("");
  const [error, setError] = useState<string | undefined>(undefined);
  const apply = (): Record<string, string> | undefined => {
    const parsed = parseLabels(draft, maxValue);
    setError("error" in parsed ? parsed.error : undefined);
    return "error" in parsed ? undefined : parsed.labels;
  };
  return { draft, setDraft, error, apply };
}

/** The input of a `useLabelFilter`, inside the form that applies it. */
export function LabelFilterInput(props: {
  label: string;
  filter: ReturnType<typeof useLabelFilter>;
}) {
  const { filter } = props;
  return (
    <label>
      {props.label}
      <input
        value={filter.draft}
        placeholder="e.g. team=search, env=prod"
        aria-invalid={filter.error !== undefined}
        onChange={(e) => filter.setDraft(e.target.value)}
      />
    </label>
  );
}
