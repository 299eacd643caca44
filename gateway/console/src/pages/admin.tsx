// Admin (tenant admins only): users and roles, API keys (the secret is shown once, at
// creation), and monthly budgets for the tenant and per user.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ApiKeyScope, BudgetScope, Role, type User } from "@ensemble/proto";
import { useState } from "react";
import type { FormEvent } from "react";
import { api, errorText } from "../api";
import { useSession } from "../session";
import { ErrorBox, Guard, enumLabel, fmtTime, useLoad } from "../ui";

export function AdminPage() {
  return (
    <div className="admin">
      <h1>Admin</h1>
      <ApiKeys />
      <Users />
      <Budgets />
    </div>
  );
}

function ApiKeys() {
  const keys = useLoad(
    () =>
      api.auth
        .listApiKeys({ allUsers: true, includeRevoked: true, page: { pageSize: 200 } })
        .then((r) => r.apiKeys),
    [],
  );
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<ApiKeyScope[]>([ApiKeyScope.READ, ApiKeyScope.WRITE]);
  const [secret, setSecret] = useState<string>();
  const [error, setError] = useState<string>();

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    try {
      const res = await api.auth.createApiKey({ name, scopes });
      setSecret(res.secret);
      setName("");
      keys.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };
  const revoke = async (id: string) => {
    setError(undefined);
    try {
      await api.auth.revokeApiKey({ id });
      keys.reload();
    } catch (err) {
      setError(errorText(err));
    }
  };

  return (
    <section aria-label="API keys">
      <h2>API keys</h2>
      <form className="inline" onSubmit={(e) => void create(e)} aria-label="Create API key">
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
        <button type="submit" className="primary">
          Create key
        </button>
      </form>
      {secret !== undefined && (
        <div className="secret" role="status">
          <p>Copy this key now: it is shown only once.</p>
          <code data-testid="api-key-secret">{secret}</code>{" "}
          <button type="button" onClick={() => void navigator.clipboard?.writeText(secret)}>
            Copy
          </button>{" "}
          <button type="button" onClick={() => setSecret(undefined)}>
            Done
          </button>
        </div>
      )}
      <ErrorBox error={error} />
      <Guard loaded={keys} empty={(k) => k.length === 0} emptyText="No API keys.">
        {(list) => (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Key</th>
                  <th>Scopes</th>
                  <th>Created</th>
                  <th>Last used</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {list.map((k) => (
                  <tr key={k.id} data-key={k.name}>
                    <td>{k.name}</td>
                    <td>
                      <code>{k.prefix}…</code>
                    </td>
                    <td>{k.scopes.map((s) => enumLabel(ApiKeyScope, s)).join(", ")}</td>
                    <td>{fmtTime(k.createTime)}</td>
                    <td>{fmtTime(k.lastUsedTime)}</td>
                    <td>
                      {k.revokeTime !== undefined && timestampMs(k.revokeTime) > 0 ? (
                        "revoked"
                      ) : (
                        <button
                          type="button"
                          onClick={() => void revoke(k.id)}
                          aria-label={`Revoke ${k.name}`}
                        >
                          Revoke
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
