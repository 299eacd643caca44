// Pure helpers of the accounting: calendar periods (UTC), the KV keys of the spend counters, the
// ledger's dedupe keys, and how amounts appear in messages.

/** base64url: only [A-Za-z0-9_-], so any id is a valid KV key token and NATS subject token. */
export function safeToken(id: string): string {
  return Buffer.from(id, "utf8").toString("base64url");
}

/** The month of a time as "YYYYMM" (UTC calendar month: budgets are per calendar month in UTC). */
export function monthOf(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
}

/** "YYYYMM" as "YYYY-MM" (messages). */
export function monthLabel(month: string): string {
  return `${month.slice(0, 4)}-${month.slice(4)}`;
}

/** Milliseconds from `ms` to the first instant of the next UTC month. */
export function msUntilNextMonth(ms: number): number {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) - ms;
}

/** Start of the UTC day of a time. */
export function dayStart(time: Date): Date {
  return new Date(Date.UTC(time.getUTCFullYear(), time.getUTCMonth(), time.getUTCDate()));
}

/** Start of the UTC hour of a time. */
export function hourStart(time: Date): Date {
  const ms = time.getTime();
  return new Date(ms - (((ms % 3_600_000) + 3_600_000) % 3_600_000));
}

/**
 * KV keys of the month's spend counters: one per tenant, one per (tenant, user), one per (tenant,
 * API key). The month comes first so a replica can tell a past month's counter from the key alone.
 */
export function tenantSpendKey(month: string, tenantId: string): string {
  return `${month}.t.${safeToken(tenantId)}`;
}

export function userSpendKey(month: string, tenantId: string, userId: string): string {
  return `${month}.u.${safeToken(tenantId)}.${safeToken(userId)}`;
}

export function apiKeySpendKey(month: string, tenantId: string, apiKeyId: string): string {
  return `${month}.k.${safeToken(tenantId)}.${safeToken(apiKeyId)}`;
}

/** The month ("YYYYMM") a spend key belongs to, or undefined for a key that is not ours. */
export function monthOfKey(key: string): string | undefined {
  const m = /^(\d{6})\.[tuk]\./.exec(key);
  return m?.[1];
}

/**
 * The ledger's three uniqueness rules as plain unique fields (FerretDB 1.24 has no partial
 * indexes, and a sparse compound index would still index every entry under its tenant on
 * MongoDB): `runKey` is the (tenant, run, step, attempt) key when run and step are set, and
 * `idemKey` the (tenant, idempotency key) key when one is set; otherwise each holds a value
 * derived from the entry's own unique id, which can never collide with another entry's.
 */
export function dedupeKeys(e: {
  id: string;
  tenantId: string;
  runId: string;
  stepId: string;
  attempt: number;
  idempotencyKey: string;
}): { runKey: string; idemKey: string } {
  const runKey =
    e.runId !== "" && e.stepId !== ""
      ? `run:${safeToken(e.tenantId)}:${safeToken(e.runId)}:${safeToken(e.stepId)}:${e.attempt}`
      : `id:${e.id}`;
  const idemKey =
    e.idempotencyKey !== ""
      ? `idem:${safeToken(e.tenantId)}:${safeToken(e.idempotencyKey)}`
      : `id:${e.id}`;
  return { runKey, idemKey };
}

/** A dollar amount for messages: cents for amounts of a dollar or more, else up to 6 decimals. */
export function formatUsd(usd: number): string {
  if (Math.abs(usd) >= 1) return `$${usd.toFixed(2)}`;
  return `$${Number(usd.toFixed(6)).toString()}`;
}

/** A cost as a finite, non-negative number (anything else counts as 0). */
export function cleanCost(usd: number): number {
  return Number.isFinite(usd) && usd > 0 ? usd : 0;
}
