// Admin (tenant admins only): users and roles, API keys (the secret is shown once, at
// creation and when the key is rolled) with their own limits (models, monthly budget, requests
// and tokens per minute) and what each has spent this month, monthly budgets for the tenant and
// per user, and the tenant's settings (every chat in the call log, the default response cache,
// the semantic cache's threshold, and the guardrails: personal data redacted or refused, terms
// prompts and answers may not hold),
// and the tenant's webhooks (admin-webhooks.tsx).
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  ApiKeyScope,
  BudgetScope,
  DefaultCache,
  PiiKind,
  Role,
  UsageDimension,
  type ApiKey,
  type ApiKeyLimitsSchema,
  type TenantSettings,
  type User,
} from "@ensemble/proto";
import { Fragment, useState } from "react";
import type { FormEvent } from "react";
import { api, errorText } from "../api";
import { loadCallableModels } from "../models";
import { useSession } from "../session";
import { ErrorBox, Guard, Loading, enumLabel, fmtTime, fmtUsd, useLoad } from "../ui";
import { WebhooksSection } from "./admin-webhooks";

export function AdminPage() {
  return (
    <div className="admin">
      <h1>Admin</h1>
      <ApiKeys />
      <Users />
      <Budgets />
      <TenantSettingsSection />
      <WebhooksSection />
    </div>
  );
}

/** "5", "12.50" -> 5, 12.5; "" -> undefined (no limit); anything else -> null (refused). */
function parseUsd(text: string): number | undefined | null {
  const t = text.trim();
  if (t === "") return undefined;
  const v = Number(t);
  // The bounds of ApiKeyLimits / SetBudgetRequest in auth.proto.
  return Number.isFinite(v) && v >= 0 && v <= 1e9 ? v : null;
}

const BAD_KEY_BUDGET =
  "The monthly budget must be an amount in USD (0 or more; 0 blocks paid calls), or empty for none.";

/** "60" -> 60; "" -> undefined (no limit); anything but a whole number in 1..max -> null. */
function parsePerMinute(text: string, max: number): number | undefined | null {
  const t = text.trim();
  if (t === "") return undefined;
  const v = Number(t);
  return /^\d+$/.test(t) && v >= 1 && v <= max ? v : null;
}

// The bounds of ApiKeyLimits' requests_per_minute and tokens_per_minute in auth.proto.
const MAX_RPM = 1_000_000;
const MAX_TPM = 1_000_000_000;

/** The text of a key's limit fields, as the create and Edit limits forms hold them. */
interface LimitFields {
  budget: string;
  rpm: string;
  tpm: string;
}

const NO_LIMITS: LimitFields = { budget: "", rpm: "", tpm: "" };

/**
 * The key's limits from the form (UpdateApiKey replaces them as a whole, so every field counts),
 * or what is wrong with a field. `set` says whether any limit is given at all.
 */
function readLimits(
  models: string[],
  fields: LimitFields,
): { limits: MessageInitShape<typeof ApiKeyLimitsSchema>; set: boolean } | { error: string } {
  const usd = parseUsd(fields.budget);
  if (usd === null) return { error: BAD_KEY_BUDGET };
  const rpm = parsePerMinute(fields.rpm, MAX_RPM);
  if (rpm === null) {
    return {
      error: `Requests per minute must be a whole number from 1 to ${MAX_RPM.toLocaleString("en")}, or empty for none.`,
    };
  }
  const tpm = parsePerMinute(fields.tpm, MAX_TPM);
  if (tpm === null) {
    return {
      error: `Tokens per minute must be a whole number from 1 to ${MAX_TPM.toLocaleString("en")}, or empty for none.`,
    };
  }
  return {
    limits: {
      models,
      ...(usd !== undefined ? { monthlyLimitUsd: usd } : {}),
      ...(rpm !== undefined ? { requestsPerMinute: rpm } : {}),
      ...(tpm !== undefined ? { tokensPerMinute: tpm } : {}),
    },
    set: models.length > 0 || usd !== undefined || rpm !== undefined || tpm !== undefined,
  };
}

/** A key's pace for the table: "—" (none), "60 rpm", "60 rpm, 90000 tpm" (a part never split). */
function Rate(props: { limits: ApiKey["limits"] }) {
  const { limits } = props;
  const parts = [
    ...(limits?.requestsPerMinute !== undefined ? [`${limits.requestsPerMinute} rpm`] : []),
    ...(limits?.tokensPerMinute !== undefined ? [`${limits.tokensPerMinute} tpm`] : []),
  ];
  if (parts.length === 0) return <>—</>;
  return parts.map((p, i) => (
    <Fragment key={p}>
      {i > 0 && ", "}
      <span className="nowrap">{p}</span>
    </Fragment>
  ));
}

/**
 * The monthly budget and per-minute fields of a key's limits (the create form and Edit limits).
 */
function LimitInputs(props: { value: LimitFields; onChange: (fields: LimitFields) => void }) {
  const { value, onChange } = props;
  return (
    <>
      <label>
        Monthly budget (USD, empty = none)
        <input
          name="keyBudget"
          inputMode="decimal"
          value={value.budget}
          onChange={(e) => onChange({ ...value, budget: e.target.value })}
        />
      </label>
      <label>
        Requests / minute (empty = none)
        <input
          name="keyRpm"
          inputMode="numeric"
          value={value.rpm}
          onChange={(e) => onChange({ ...value, rpm: e.target.value })}
        />
      </label>
      <label>
        Tokens / minute (empty = none)
        <input
          name="keyTpm"
          inputMode="numeric"
          value={value.tpm}
          onChange={(e) => onChange({ ...value, tpm: e.target.value })}
        />
      </label>
    </>
  );
}

/** A key's monthly limit for the table: "—" (none) or "$5.00". */
function fmtLimit(v: number | undefined): string {
  if (v === undefined) return "—";
  const cents = Math.round(v * 100);
  return Math.abs(v * 100 - cents) < 1e-6 ? `$${(cents / 100).toFixed(2)}` : `$${v}`;
}

/** USD spent this month per API key id, or why it is not known. */
type KeySpend = { byKey: Map<string, number> } | { error: string };

// A slow model-proxy must not hold up the keys themselves, which come from auth.
const SPEND_TIMEOUT_MS = 10_000;

/**
 * What the tenant's API keys have spent this UTC calendar month (the period model-proxy holds
 * against a key's monthly budget), from one GetUsage call grouped by key. The table lists every
 * user's keys, so the usage is the whole tenant's (all_users; this page is for admins). Never
 * rejects: without model-proxy the keys are still worth showing.
 */
async function loadKeySpend(): Promise<KeySpend> {
  const now = new Date();
  const year = now.getUTCFullYear();
  const month = now.getUTCMonth();
  try {
    const res = await api.proxy.getUsage(
      {
        startTime: timestampFromMs(Date.UTC(year, month, 1)),
        endTime: timestampFromMs(Date.UTC(year, month + 1, 1)),
        groupBy: [UsageDimension.API_KEY],
        allUsers: true,
      },
      { timeoutMs: SPEND_TIMEOUT_MS },
    );
    return { byKey: new Map(res.buckets.map((b) => [b.apiKeyId, b.usage?.costUsd ?? 0])) };
  } catch (err) {
    return { error: errorText(err) };
  }
}

/** A key's spend this month next to its budget: "$1.23", "<$0.01 of $5.00", "? of $5.00". */
function Spent(props: { spend: KeySpend; apiKey: ApiKey }) {
  const { spend, apiKey } = props;
  const spent = "error" in spend ? undefined : (spend.byKey.get(apiKey.id) ?? 0);
  const amount =
    spent === undefined
      ? "?"
      : spent === 0
        ? "$0.00"
        : // A few chat calls cost fractions of a cent: say that there was spend, not "$0.00".
          spent < 0.005
          ? "<$0.01"
          : `$${spent.toFixed(2)}`;
  const limit = apiKey.limits?.monthlyLimitUsd;
  return (
    <span
      className="nowrap"
      title={spent !== undefined ? `${fmtUsd(spent)} this month (UTC)` : undefined}
    >
      {limit === undefined ? amount : `${amount} of ${fmtLimit(limit)}`}
    </span>
  );
}

/**
 * The models an API key may call, as checkboxes of the models callable here (none checked:
 * every model). Names the key already has that nothing here answers stay listed, so that saving
 * does not drop them unseen. When the list cannot be loaded, a comma-separated text field.
 */
function ModelPicker(props: { value: string[]; onChange: (models: string[]) => void }) {
  const callable = useLoad(loadCallableModels, []);
  const [text, setText] = useState(props.value.join(", "));
  const { value, onChange } = props;
  if (callable.error !== undefined || callable.data?.ids.length === 0) {
    return (
      <label>
        Models (comma-separated ids or aliases, empty = all)
        <input
          name="keyModels"
          value={text}
          onChange={(e) => {
            setText(e.target.value);
            onChange([
              ...new Set(
                e.target.value
                  .split(",")
                  .map((m) => m.trim())
                  .filter((m) => m !== ""),
              ),
            ]);
          }}
        />
      </label>
    );
  }
  const { ids, aliases } = callable.data ?? { ids: [], aliases: {} };
  const options = [...ids, ...value.filter((m) => !ids.includes(m))];
  return (
    <fieldset className="key-models">
      <legend>Models (none checked = all)</legend>
      {callable.data === undefined ? (
        <Loading what="Loading models" />
      ) : (
        <div className="checks">
          {options.map((m) => {
            const answers = Object.keys(aliases).filter((a) => aliases[a] === m);
            return (
              <label key={m} className="check">
                <input
                  type="checkbox"
                  name="keyModel"
                  value={m}
                  checked={value.includes(m)}
                  onChange={() =>
                    onChange(value.includes(m) ? value.filter((x) => x !== m) : [...value, m])
                  }
                />
                {m}
                {answers.length > 0 && <span className="muted">({answers.join(", ")})</span>}
                {!ids.includes(m) && <span className="muted">(not callable here)</span>}
              </label>
            );
          })}
        </div>
      )}
    </fieldset>
  );
}

/** The "Edit limits" row under a key: replaces its limits as a whole (UpdateApiKey). */
function KeyLimitsForm(props: {
  apiKey: ApiKey;
  columns: number;
  onDone: (saved: boolean) => void;
}) {
  const { apiKey, onDone } = props;
  const [models, setModels] = useState<string[]>(apiKey.limits?.models ?? []);
  const text = (v: number | undefined) => (v !== undefined ? String(v) : "");
  const [fields, setFields] = useState<LimitFields>({
    budget: text(apiKey.limits?.monthlyLimitUsd),
    rpm: text(apiKey.limits?.requestsPerMinute),
    tpm: text(apiKey.limits?.tokensPerMinute),
  });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    const read = readLimits(models, fields);
    if ("error" in read) {
      setError(read.error);
      return;
    }
    setBusy(true);
    try {
      await api.auth.updateApiKey({ id: apiKey.id, limits: read.limits });
      onDone(true);
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <tr className="key-limits">
      <td colSpan={props.columns}>
        <form onSubmit={(e) => void save(e)} aria-label={`Limits of ${apiKey.name}`}>
          <ModelPicker value={models} onChange={setModels} />
          <div className="inline-row">
            <LimitInputs value={fields} onChange={setFields} />
            <button type="submit" className="primary" disabled={busy}>
              Save limits
            </button>
            <button type="button" onClick={() => onDone(false)}>
              Cancel
            </button>
          </div>
          <p className="hint">
            The key&apos;s own limits, on top of its owner&apos;s and the tenant&apos;s budgets.
            Over a per-minute limit, calls are refused and told when to retry. Calls made with the
            key see a change once model-proxy&apos;s cache of limits expires (30 s by default).
          </p>
          <ErrorBox error={error} />
        </form>
      </td>
    </tr>
  );
}

/** How long the old secret of a rolled key keeps working (RollApiKey allows up to 7 days). */
const GRACE_CHOICES: Array<{ ms: number; label: string }> = [
  { ms: 0, label: "None: it stops now" },
  { ms: 3_600_000, label: "1 hour" },
  { ms: 86_400_000, label: "1 day" },
  { ms: 7 * 86_400_000, label: "7 days" },
];

/** A secret to show once: a created key's, or a rolled key's with when its old one stops. */
interface ShownSecret {
  secret: string;
  /** Set for a roll: the key's name and when its old secret stops (unset: it already has). */
  rolled?: { name: string; oldUntil: ApiKey["previousSecretExpireTime"] };
}

/** The "Roll" row under a key: a new secret for it (RollApiKey), the old one kept for a grace. */
function KeyRollForm(props: {
  apiKey: ApiKey;
  columns: number;
  onDone: (rolled: ShownSecret | undefined) => void;
}) {
  const { apiKey, onDone } = props;
  const [grace, setGrace] = useState(0);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();

  const roll = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setBusy(true);
    try {
      const res = await api.auth.rollApiKey({
        id: apiKey.id,
        ...(grace > 0 ? { previousValidFor: durationFromMs(grace) } : {}),
      });
      onDone({
        secret: res.secret,
        rolled: { name: apiKey.name, oldUntil: res.apiKey?.previousSecretExpireTime },
      });
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <tr className="key-limits">
      <td colSpan={props.columns}>
        <form onSubmit={(e) => void roll(e)} aria-label={`Roll ${apiKey.name}`}>
          <div className="inline-row">
            <label>
              The old secret keeps working
              <select name="grace" value={grace} onChange={(e) => setGrace(Number(e.target.value))}>
                {GRACE_CHOICES.map((c) => (
                  <option key={c.ms} value={c.ms}>
                    {c.label}
                  </option>
                ))}
              </select>
            </label>
            <button type="submit" className="primary" disabled={busy}>
              Roll secret
            </button>
            <button type="button" onClick={() => onDone(undefined)}>
              Cancel
            </button>
          </div>
          <p className="hint">
            The key gets a new secret, shown once; its id, name, scopes, limits and usage stay. With
            a grace, clients still using the old secret keep working until it ends, so they can move
            to the new one without an outage; without one, the old secret stops now (a gateway may
            accept it for up to 30 s more, its cache of keys). Rolling again ends an earlier grace.
          </p>
          <ErrorBox error={error} />
        </form>
      </td>
    </tr>
  );
}

function ApiKeys() {
  const keys = useLoad(async () => {
    const [list, spend] = await Promise.all([
      api.auth
        .listApiKeys({ allUsers: true, includeRevoked: true, page: { pageSize: 200 } })
        .then((r) => r.apiKeys),
      loadKeySpend(),
    ]);
    return { list, spend };
  }, []);
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<ApiKeyScope[]>([ApiKeyScope.READ, ApiKeyScope.WRITE]);
  const [models, setModels] = useState<string[]>([]);
  const [fields, setFields] = useState<LimitFields>(NO_LIMITS);
  // Remounts the create form's model picker once a key is made, clearing a typed list too.
  const [created, setCreated] = useState(0);
  // The key whose row has a form open under it: its limits, or a roll.
  const [editing, setEditing] = useState<string>();
  const [rolling, setRolling] = useState<string>();
  const [secret, setSecret] = useState<ShownSecret>();
  const [error, setError] = useState<string>();

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    const read = readLimits(models, fields);
    if ("error" in read) {
      setError(read.error);
      return;
    }
    try {
      const res = await api.auth.createApiKey({
        name,
        scopes,
        ...(read.set ? { limits: read.limits } : {}),
      });
      setSecret({ secret: res.secret });
      setName("");
      setModels([]);
      setFields(NO_LIMITS);
      setCreated((n) => n + 1);
      keys.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };
  const revoke = async (id: string) => {
    setError(undefined);
    try {
      await api.auth.revokeApiKey({ id });
      if (editing === id) setEditing(undefined);
      if (rolling === id) setRolling(undefined);
      keys.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };
  const COLUMNS = 9;

  return (
    <section aria-label="API keys">
      <h2>API keys</h2>
      <form onSubmit={(e) => void create(e)} aria-label="Create API key">
        <div className="inline-row">
          <label>
            Name
            <input name="keyName" required value={name} onChange={(e) => setName(e.target.value)} />
          </label>
          {[ApiKeyScope.READ, ApiKeyScope.WRITE, ApiKeyScope.ADMIN].map((s) => (
            <label key={s} className="check">
              <input
                type="checkbox"
                checked={scopes.includes(s)}
                onChange={() =>
                  setScopes(scopes.includes(s) ? scopes.filter((x) => x !== s) : [...scopes, s])
                }
              />
              {enumLabel(ApiKeyScope, s)}
            </label>
          ))}
        </div>
        <ModelPicker key={created} value={models} onChange={setModels} />
        <div className="inline-row">
          <LimitInputs value={fields} onChange={setFields} />
          <button type="submit" className="primary">
            Create key
          </button>
        </div>
      </form>
      {secret !== undefined && (
        <div className="secret" role="status">
          {secret.rolled === undefined ? (
            <p>Copy this key now: it is shown only once.</p>
          ) : (
            <p>
              The new secret of {secret.rolled.name}. Copy it now: it is shown only once.{" "}
              {secret.rolled.oldUntil !== undefined
                ? `The old secret works until ${fmtTime(secret.rolled.oldUntil)}.`
                : "The old secret no longer works."}
            </p>
          )}
          <code data-testid="api-key-secret">{secret.secret}</code>{" "}
          <button type="button" onClick={() => void navigator.clipboard?.writeText(secret.secret)}>
            Copy
          </button>{" "}
          <button type="button" onClick={() => setSecret(undefined)}>
            Done
          </button>
        </div>
      )}
      <ErrorBox error={error} />
      <Guard loaded={keys} empty={(k) => k.list.length === 0} emptyText="No API keys.">
        {({ list, spend }) => (
          <div className="table-wrap">
            {"error" in spend && (
              <p className="hint" role="note">
                This month&apos;s spend is unknown (shown as ?): {spend.error}
              </p>
            )}
            <table>
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Key</th>
                  <th>Scopes</th>
                  <th>Models</th>
                  <th>Spent this month</th>
                  <th>Rate</th>
                  <th>Created</th>
                  <th>Last used</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {list.map((k) => {
                  const revoked = k.revokeTime !== undefined && timestampMs(k.revokeTime) > 0;
                  const limited = k.limits?.models ?? [];
                  return (
                    <Fragment key={k.id}>
                      <tr data-key={k.name}>
                        <td>{k.name}</td>
                        <td data-col="key">
                          <code>{k.prefix}…</code>
                          {k.previousSecretExpireTime !== undefined && !revoked && (
                            <div className="muted" data-testid="old-secret">
                              old secret until {fmtTime(k.previousSecretExpireTime)}
                            </div>
                          )}
                        </td>
                        <td>{k.scopes.map((s) => enumLabel(ApiKeyScope, s)).join(", ")}</td>
                        <td data-col="models">
                          {limited.length === 0 ? (
                            <span className="muted">all</span>
                          ) : (
                            limited.join(", ")
                          )}
                        </td>
                        <td data-col="budget">
                          <Spent spend={spend} apiKey={k} />
                        </td>
                        <td data-col="rate">
                          <Rate limits={k.limits} />
                        </td>
                        <td>{fmtTime(k.createTime)}</td>
                        <td>{fmtTime(k.lastUsedTime)}</td>
                        <td className="actions">
                          {revoked ? (
                            "revoked"
                          ) : (
                            <>
                              <button
                                type="button"
                                onClick={() => {
                                  setRolling(undefined);
                                  setEditing(editing === k.id ? undefined : k.id);
                                }}
                                aria-label={`Edit limits of ${k.name}`}
                                aria-expanded={editing === k.id}
                              >
                                Edit limits
                              </button>{" "}
                              <button
                                type="button"
                                onClick={() => {
                                  setEditing(undefined);
                                  setRolling(rolling === k.id ? undefined : k.id);
                                }}
                                aria-label={`Roll ${k.name}`}
                                aria-expanded={rolling === k.id}
                              >
                                Roll
                              </button>{" "}
                              <button
                                type="button"
                                onClick={() => void revoke(k.id)}
                                aria-label={`Revoke ${k.name}`}
                              >
                                Revoke
                              </button>
                            </>
                          )}
                        </td>
                      </tr>
                      {editing === k.id && !revoked && (
                        <KeyLimitsForm
                          apiKey={k}
                          columns={COLUMNS}
                          onDone={(saved) => {
                            setEditing(undefined);
                            if (saved) keys.reload();
                          }}
                        />
                      )}
                      {rolling === k.id && !revoked && (
                        <KeyRollForm
                          apiKey={k}
                          columns={COLUMNS}
                          onDone={(rolled) => {
                            setRolling(undefined);
                            if (rolled !== undefined) {
                              setSecret(rolled);
                              keys.reload();
                            }
                          }}
                        />
                      )}
                    </Fragment>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </Guard>
    </section>
  );
}

function Users() {
  const { me } = useSession();
  const users = useLoad(
    () =>
      api.auth.listUsers({ includeDisabled: true, page: { pageSize: 200 } }).then((r) => r.users),
    [],
  );
  const [error, setError] = useState<string>();
  const act = async (f: () => Promise<unknown>) => {
    setError(undefined);
    try {
      await f();
      users.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };
  const isAdmin = (u: User) => u.roles.includes(Role.ADMIN);
  return (
    <section aria-label="Users">
      <h2>Users and roles</h2>
      <ErrorBox error={error} />
      <Guard loaded={users} empty={(u) => u.length === 0} emptyText="No users.">
        {(list) => (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Email</th>
                  <th>Role</th>
                  <th>Last login</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {list.map((u) => (
                  <tr key={u.id}>
                    <td>
                      {u.email} {u.disabled && <span className="tag">disabled</span>}
                    </td>
                    <td>
                      <select
                        aria-label={`Role of ${u.email}`}
                        value={isAdmin(u) ? Role.ADMIN : Role.USER}
                        onChange={(e) =>
                          void act(() =>
                            api.auth.setUserRole({ userId: u.id, role: Number(e.target.value) }),
                          )
                        }
                      >
                        <option value={Role.USER}>user</option>
                        <option value={Role.ADMIN}>admin</option>
                      </select>
                    </td>
                    <td>{fmtTime(u.lastLoginTime)}</td>
                    <td>
                      {u.id !== me?.user.id && (
                        <button
                          type="button"
                          onClick={() =>
                            void act(() =>
                              api.auth.setUserDisabled({ userId: u.id, disabled: !u.disabled }),
                            )
                          }
                        >
                          {u.disabled ? "Enable" : "Disable"}
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Guard>
    </section>
  );
}

function Budgets() {
  const budget = useLoad(
    () => api.auth.getBudget({ scope: BudgetScope.TENANT }).then((r) => r.budget),
    [],
  );
  const [limit, setLimit] = useState("");
  const [userId, setUserId] = useState("");
  const [error, setError] = useState<string>();
  const [saved, setSaved] = useState<string>();

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setSaved(undefined);
    const value = limit.trim() === "" ? undefined : Number(limit);
    if (value !== undefined && (!Number.isFinite(value) || value < 0)) {
      setError("The limit must be a positive amount in USD, or empty for none.");
      return;
    }
    try {
      await api.auth.setBudget({
        scope: userId.trim() === "" ? BudgetScope.TENANT : BudgetScope.USER,
        userId: userId.trim(),
        ...(value !== undefined ? { monthlyLimitUsd: value } : {}),
      });
      setSaved(userId.trim() === "" ? "Tenant budget saved." : "User budget saved.");
      budget.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };

  return (
    <section aria-label="Budgets">
      <h2>Budgets</h2>
      <Guard loaded={budget}>
        {(b) => (
          <p>
            Tenant monthly limit:{" "}
            <strong>{b?.monthlyLimitUsd !== undefined ? `$${b.monthlyLimitUsd}` : "none"}</strong>
          </p>
        )}
      </Guard>
      <form className="inline" onSubmit={(e) => void save(e)} aria-label="Set budget">
        <label>
          Monthly limit (USD, empty = none)
          <input inputMode="decimal" value={limit} onChange={(e) => setLimit(e.target.value)} />
        </label>
        <label>
          User id (empty = the tenant)
          <input value={userId} onChange={(e) => setUserId(e.target.value)} />
        </label>
        <button type="submit">Save budget</button>
      </form>
      {saved !== undefined && <p role="status">{saved}</p>}
      <ErrorBox error={error} />
    </section>
  );
}

/** The choices of the default response cache, in the order offered, with what each does. */
const CACHE_CHOICES: Array<{ value: DefaultCache; label: string; hint: string }> = [
  {
    value: DefaultCache.UNSPECIFIED,
    label: "Deployment default",
    hint: "What the operator configured for this tenant: the exact cache when they listed it, else no cache.",
  },
  {
    value: DefaultCache.OFF,
    label: "Off",
    hint: "Every call goes to the model, whatever the deployment's default.",
  },
  {
    value: DefaultCache.EXACT,
    label: "Exact",
    hint: "A request identical to an earlier one of the tenant (same model, messages and parameters) is answered from the cache, at no cost.",
  },
  {
    value: DefaultCache.SEMANTIC,
    label: "Semantic",
    hint: "As Exact, and a question asked in other words than an earlier one is answered with that one's answer too (each question costs one embedding call; without vector search in the deployment, as Exact).",
  },
];

// The semantic cache threshold's bounds in auth (0: the deployment's default).
const MIN_THRESHOLD = 0.5;
const MAX_THRESHOLD = 1;

const BAD_THRESHOLD = `The semantic cache threshold must be a number from ${MIN_THRESHOLD} to ${MAX_THRESHOLD}, or empty (or 0) for the deployment's default.`;

/** "0.92" -> 0.92; "" or "0" -> 0 (the deployment's default); anything else -> null (refused). */
function parseThreshold(text: string): number | null {
  const t = text.trim();
  if (t === "") return 0;
  const v = Number(t);
  return Number.isFinite(v) && (v === 0 || (v >= MIN_THRESHOLD && v <= MAX_THRESHOLD)) ? v : null;
}

/** The threshold as the form holds it: empty for the deployment's default. */
function thresholdText(v: number | undefined): string {
  return v === undefined || v === 0 ? "" : String(v);
}

/** The settings with, when known, the email of the admin who last changed them. */
interface LoadedSettings {
  settings: TenantSettings | undefined;
  emails: Map<string, string>;
}

/**
 * The tenant's settings (GetTenantSettings): the defaults and the guardrails, each a form of its
 * own that changes only its own fields (UpdateTenantSettings' update_mask), so saving one never
 * undoes the other. model-proxy reads them through a cache, so a change reaches calls only after
 * a while.
 */
function TenantSettingsSection() {
  const loaded = useLoad(async (): Promise<LoadedSettings> => {
    const [res, users] = await Promise.all([
      api.auth.getTenantSettings({}),
      // Only to name who changed them: without the list, the user id does.
      api.auth
        .listUsers({ includeDisabled: true, page: { pageSize: 200 } })
        .then((r) => r.users)
        .catch(() => [] as User[]),
    ]);
    return { settings: res.settings, emails: new Map(users.map((u) => [u.id, u.email])) };
  }, []);
  return (
    <section aria-label="Tenant settings">
      <h2>Tenant settings</h2>
      <p className="hint">
        For every call of everyone in the tenant. model-proxy applies a change within about 30
        seconds (its cache of settings, <code>BUDGET_CACHE_MS</code>); calls already made are not
        affected.
      </p>
      <Guard loaded={loaded}>{(d) => <TenantSettingsForms loaded={d} />}</Guard>
    </section>
  );
}

function TenantSettingsForms(props: { loaded: LoadedSettings }) {
  const { emails } = props.loaded;
  // As auth has them: loaded, then as each save returns them.
  const [settings, setSettings] = useState(props.loaded.settings);
  const by = settings?.updatedBy ?? "";
  return (
    <>
      <TenantSettingsForm initial={props.loaded.settings} onSaved={setSettings} />
      <GuardrailsForm initial={props.loaded.settings} onSaved={setSettings} />
      <p className="muted" data-testid="settings-changed">
        {settings?.updateTime === undefined
          ? "Never changed: the defaults apply."
          : `Last changed by ${emails.get(by) ?? (by || "an admin")} at ${fmtTime(settings.updateTime)}.`}
      </p>
    </>
  );
}

/**
 * The defaults a call uses when it does not choose: the call log and the response cache, and the
 * semantic cache's threshold.
 */
function TenantSettingsForm(props: {
  initial: TenantSettings | undefined;
  onSaved: (settings: TenantSettings | undefined) => void;
}) {
  const { initial, onSaved } = props;
  const [logCalls, setLogCalls] = useState(initial?.logCalls ?? false);
  const [cache, setCache] = useState(initial?.defaultCache ?? DefaultCache.UNSPECIFIED);
  const [threshold, setThreshold] = useState(thresholdText(initial?.semanticCacheMinSimilarity));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const [saved, setSaved] = useState(false);
  const choice = CACHE_CHOICES.find((c) => c.value === cache);

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setSaved(false);
    const semanticCacheMinSimilarity = parseThreshold(threshold);
    if (semanticCacheMinSimilarity === null) {
      setError(BAD_THRESHOLD);
      return;
    }
    setBusy(true);
    try {
      const res = await api.auth.updateTenantSettings({
        settings: { logCalls, defaultCache: cache, semanticCacheMinSimilarity },
        // Only what this form shows: the guardrails stay as they are.
        updateMask: { paths: ["log_calls", "default_cache", "semantic_cache_min_similarity"] },
      });
      setThreshold(thresholdText(res.settings?.semanticCacheMinSimilarity));
      onSaved(res.settings);
      setSaved(true);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    // noValidate: the threshold's bounds are checked by save (0 is allowed, below its min).
    <form
      className="settings"
      onSubmit={(e) => void save(e)}
      aria-label="Tenant settings"
      noValidate
    >
      <label className="check">
        <input
          type="checkbox"
          name="logCalls"
          checked={logCalls}
          onChange={(e) => setLogCalls(e.target.checked)}
        />
        Keep every chat in the call log
      </label>
      <p className="hint">
        Every chat of the tenant is kept with its question and answer, as if each were sent with{" "}
        <code>log: true</code>, for the deployment&apos;s retention time (a week by default), and
        listed on the Logs page. Off: only the chats that ask for it are kept. Prompts are your
        users&apos; data: turn it on when you mean to read them.
      </p>
      <label>
        Default response cache
        <select
          name="defaultCache"
          value={cache}
          onChange={(e) => setCache(Number(e.target.value))}
        >
          {CACHE_CHOICES.map((c) => (
            <option key={c.value} value={c.value}>
              {c.label}
            </option>
          ))}
        </select>
      </label>
      <p className="hint">
        The cache a call uses when it does not choose one itself. {choice?.hint}
      </p>
      <label>
        Semantic cache threshold
        <input
          type="number"
          name="semanticCacheMinSimilarity"
          min={MIN_THRESHOLD}
          max={MAX_THRESHOLD}
          step={0.01}
          placeholder="Deployment default"
          value={threshold}
          onChange={(e) => setThreshold(e.target.value)}
        />
      </label>
      <p className="hint">
        How similar a question must be to an earlier one (the cosine of their embeddings) for the
        semantic cache to answer it with that one&apos;s answer, for every call of the tenant that
        uses it: from 0.5 to 1, higher is stricter (fewer, closer matches). Empty or 0: the
        deployment&apos;s default.
      </p>
      <button type="submit" className="primary" disabled={busy}>
        Save settings
      </button>
      {saved && <p role="status">Settings saved. Calls follow them within about 30 seconds.</p>}
      <ErrorBox error={error} />
    </form>
  );
}

/** The kinds of personal data and secrets model-proxy finds in prompts, in the order offered. */
const PII_KINDS: Array<{ kind: PiiKind; label: string; example: string }> = [
  { kind: PiiKind.EMAIL, label: "Email addresses", example: "jane@example.com" },
  { kind: PiiKind.PHONE, label: "Phone numbers", example: "+44 20 7946 0958" },
  { kind: PiiKind.CREDIT_CARD, label: "Payment card numbers", example: "Luhn-valid" },
  { kind: PiiKind.IBAN, label: "IBANs", example: "with a valid check sum" },
  { kind: PiiKind.IP_ADDRESS, label: "IP addresses", example: "IPv4 or IPv6" },
  { kind: PiiKind.US_SSN, label: "US social security numbers", example: "123-45-6789" },
  {
    kind: PiiKind.SECRET,
    label: "API keys and secrets",
    example: "provider keys, tokens, JWTs, private keys",
  },
];

/** What the guardrails do with a kind of personal data in a prompt. */
type PiiAction = "off" | "redact" | "block";

const PII_ACTIONS: PiiAction[] = ["off", "redact", "block"];

/** A term list's text (one term a line) as the list to send: lines trimmed, blank ones dropped. */
function termsOf(text: string): string[] {
  return text
    .split("\n")
    .map((t) => t.trim())
    .filter((t) => t !== "");
}

/**
 * The tenant's guardrails: per kind of personal data, whether prompts have it redacted or are
 * refused, and the terms prompts and answers may not contain. Saved as a whole (update_mask
 * "guardrails"); the term lists are shown again as auth stored them (trimmed, without
 * duplicates).
 */
function GuardrailsForm(props: {
  initial: TenantSettings | undefined;
  onSaved: (settings: TenantSettings | undefined) => void;
}) {
  const { onSaved } = props;
  const initial = props.initial?.guardrails;
  const [redact, setRedact] = useState<PiiKind[]>(initial?.redactPii ?? []);
  const [block, setBlock] = useState<PiiKind[]>(initial?.blockPii ?? []);
  const [terms, setTerms] = useState((initial?.blockedTerms ?? []).join("\n"));
  const [outputTerms, setOutputTerms] = useState((initial?.blockedOutputTerms ?? []).join("\n"));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const [saved, setSaved] = useState(false);

  // A kind in both lists is refused (model-proxy blocks it), so it shows as "block".
  const actionOf = (kind: PiiKind): PiiAction =>
    block.includes(kind) ? "block" : redact.includes(kind) ? "redact" : "off";
  const setAction = (kind: PiiKind, action: PiiAction) => {
    const without = (list: PiiKind[]) => list.filter((k) => k !== kind);
    setRedact(action === "redact" ? [...without(redact), kind] : without(redact));
    setBlock(action === "block" ? [...without(block), kind] : without(block));
  };

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setSaved(false);
    setBusy(true);
    try {
      const res = await api.auth.updateTenantSettings({
        settings: {
          guardrails: {
            redactPii: redact,
            blockPii: block,
            blockedTerms: termsOf(terms),
            blockedOutputTerms: termsOf(outputTerms),
          },
        },
        // Only the guardrails: the call log and cache defaults stay as they are.
        updateMask: { paths: ["guardrails"] },
      });
      const stored = res.settings?.guardrails;
      setTerms((stored?.blockedTerms ?? []).join("\n"));
      setOutputTerms((stored?.blockedOutputTerms ?? []).join("\n"));
      onSaved(res.settings);
      setSaved(true);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="settings guardrails" onSubmit={(e) => void save(e)} aria-label="Guardrails">
      <h3>Guardrails</h3>
      <p className="hint">
        What the tenant&apos;s model calls may send to a provider and get back. They apply to every
        model call of everyone in the tenant, however it is made: chats and comparisons here, the
        OpenAI-compatible API, API keys, workflows and sessions. No call can turn them off.
      </p>
      <fieldset>
        <legend>Personal data and secrets in prompts</legend>
        {PII_KINDS.map((k) => (
          <div
            key={k.kind}
            className="pii-row"
            role="radiogroup"
            aria-label={k.label}
            data-pii={PiiKind[k.kind]}
          >
            <span>
              {k.label} <span className="muted">({k.example})</span>
            </span>
            {PII_ACTIONS.map((a) => (
              <label key={a} className="check">
                <input
                  type="radio"
                  name={`pii-${PiiKind[k.kind]}`}
                  value={a}
                  checked={actionOf(k.kind) === a}
                  onChange={() => setAction(k.kind, a)}
                />
                {a}
              </label>
            ))}
          </div>
        ))}
      </fieldset>
      <p className="hint">
        Redact: replaced in the prompt by a placeholder such as <code>[EMAIL]</code> before it
        leaves for a provider; the call goes on, and the model sees only the placeholder. Block: a
        prompt holding one is refused with an error before any provider is asked. Found by patterns
        and check sums, so names, street addresses and free-form descriptions are not: less risk,
        not anonymity.
      </p>
      <div className="terms">
        <div>
          <label>
            Blocked prompt terms (one per line)
            <textarea
              name="blockedTerms"
              rows={5}
              spellCheck={false}
              value={terms}
              onChange={(e) => setTerms(e.target.value)}
            />
          </label>
          <p className="hint">
            Words or phrases a prompt may not contain (whole words, any case): the call is refused
            with an error before any provider is asked.
          </p>
        </div>
        <div>
          <label>
            Blocked answer terms (one per line)
            <textarea
              name="blockedOutputTerms"
              rows={5}
              spellCheck={false}
              value={outputTerms}
              onChange={(e) => setOutputTerms(e.target.value)}
            />
          </label>
          <p className="hint">
            Words or phrases an answer may not contain (whole words, any case): the answer is
            withheld and ends as filtered (finish reason <code>content_filter</code>). Streamed
            answers hold back their last few characters until they cannot start such a phrase.
          </p>
        </div>
      </div>
      <p className="hint">Up to 500 terms in each list, of at most 100 characters each.</p>
      <button type="submit" className="primary" disabled={busy}>
        Save guardrails
      </button>
      {saved && <p role="status">Guardrails saved. Calls follow them within about 30 seconds.</p>}
      <ErrorBox error={error} />
    </form>
  );
}
