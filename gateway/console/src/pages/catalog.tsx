// Catalog: models with capabilities and prices (prompt cache prices "—" when unset: the input
// price applies), prompt addons, workflow templates; a template runs from here with its
// declared variables (StartRun, WORKFLOW mode), then opens its live view.
import { AddonGroup, Capability, type WorkflowTemplate } from "@ensemble/proto";
import { useState } from "react";
import type { FormEvent } from "react";
import { api, errorText } from "../api";
import { loadAddons, loadModels, loadTemplates } from "../models";
import { useRouter } from "../router";
import { ErrorBox, Guard, enumLabel, useLoad } from "../ui";

type Tab = "models" | "addons" | "templates";

export function CatalogPage() {
  const [tab, setTab] = useState<Tab>("models");
  return (
    <div>
      <h1>Catalog</h1>
      <div className="tabs" role="tablist">
        {(["models", "addons", "templates"] as const).map((t) => (
          <button
            key={t}
            type="button"
            role="tab"
            aria-selected={tab === t}
            onClick={() => setTab(t)}
          >
            {t[0]!.toUpperCase() + t.slice(1)}
          </button>
        ))}
      </div>
      {tab === "models" && <Models />}
      {tab === "addons" && <Addons />}
      {tab === "templates" && <Templates />}
    </div>
  );
}

function Models() {
  const models = useLoad(loadModels, []);
  // What this deployment can call (model-proxy's answer): the catalog also lists models whose
  // provider has no key here. Unknown while loading or when it fails: no claim either way.
  const callable = useLoad(() => api.proxy.listCallableModels({}), []).data;
  return (
    <Guard loaded={models} empty={(m) => m.length === 0} emptyText="No models in the catalog.">
      {(list) => (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th>Model</th>
                <th>Provider</th>
                <th>Capabilities</th>
                <th>Context</th>
                <th>$ / M input</th>
                <th title="Input read from the provider's prompt cache; — when it costs the input price">
                  $ / M cached input
                </th>
                <th title="Input written to the provider's prompt cache; — when it costs the input price">
                  $ / M cache write
                </th>
                <th>$ / M output</th>
                <th>Here</th>
              </tr>
            </thead>
            <tbody>
              {list.map((m) => (
                <tr key={m.id} data-model={m.id}>
                  <td>
                    <strong>{m.id}</strong>
                    {m.aliases.map((a) => {
                      const by = callable?.aliases[a];
                      return (
                        <span key={a} className="tag">
                          {by !== undefined && by !== m.id ? `${a} → ${by}` : a}
                        </span>
                      );
                    })}
                  </td>
                  <td>{m.provider}</td>
                  <td>{m.capabilities.map((c) => enumLabel(Capability, c)).join(", ")}</td>
                  <td>{m.contextWindow.toLocaleString()}</td>
                  <td data-price="input">{m.inputPricePerMtok}</td>
                  <td data-price="cached-input">{m.cachedInputPricePerMtok ?? "—"}</td>
                  <td data-price="cache-write">{m.cacheWritePricePerMtok ?? "—"}</td>
                  <td data-price="output">{m.outputPricePerMtok}</td>
                  <td data-callable={m.id}>
                    {callable === undefined
                      ? ""
                      : callable.models.some((c) => c.id === m.id)
                        ? "callable"
                        : "no provider configured"}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Guard>
  );
}

function Addons() {
  const addons = useLoad(loadAddons, []);
  return (
    <Guard loaded={addons} empty={(a) => a.length === 0} emptyText="No prompt addons.">
      {(list) => (
        <ul className="cards">
          {list.map((a) => (
            <li key={a.id} className="card">
              <strong>{a.name || a.id}</strong>{" "}
              <span className="tag">{enumLabel(AddonGroup, a.group)}</span>
              <p>{a.description}</p>
            </li>
          ))}
        </ul>
      )}
    </Guard>
  );
}

function Templates() {
  const templates = useLoad(loadTemplates, []);
  const [open, setOpen] = useState<string>();
  return (
    <Guard loaded={templates} empty={(t) => t.length === 0} emptyText="No workflow templates.">
      {(list) => (
        <ul className="cards">
          {list.map((t) => (
            <li key={t.id} className="card" data-template={t.id}>
              <strong>{t.name || t.id}</strong>{" "}
              <span className="muted">
                v{t.version} · {t.steps.length} steps
              </span>
              <p>{t.description}</p>
              {open === t.id ? (
                <RunTemplate template={t} onClose={() => setOpen(undefined)} />
              ) : (
                <button type="button" onClick={() => setOpen(t.id)}>
                  Run…
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
    </Guard>
  );
}

function RunTemplate({ template, onClose }: { template: WorkflowTemplate; onClose: () => void }) {
  const { go } = useRouter();
  const [input, setInput] = useState("");
  const [vars, setVars] = useState(() => templateDefaults(template));
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const res = await api.runs.startRun({ spec: { input, mode: templateMode(template, vars) } });
      if (res.run !== undefined) go(`/runs/${res.run.id}`);
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <form onSubmit={(e) => void submit(e)} aria-label={`Run ${template.name || template.id}`}>
      <label>
        Input
        <textarea
          name="input"
          rows={2}
          required
          value={input}
          onChange={(e) => setInput(e.target.value)}
        />
      </label>
      <TemplateVariables template={template} value={vars} onChange={setVars} />
      <ErrorBox error={error} />
      <button type="submit" className="primary" disabled={busy}>
        {busy ? "Starting…" : "Start run"}
      </button>{" "}
      <button type="button" onClick={onClose}>
        Close
      </button>
    </form>
  );
}

/** A template's declared inputs with their defaults, as the variables of a run. */
export function templateDefaults(template: WorkflowTemplate): Record<string, string> {
  return Object.fromEntries(template.inputs.map((i) => [i.name, i.defaultValue]));
}

/** The WORKFLOW mode of a run spec for a registry template (empty variables take defaults). */
export function templateMode(template: WorkflowTemplate, vars: Record<string, string>) {
  const variables = Object.fromEntries(Object.entries(vars).filter(([, v]) => v !== ""));
  return {
    case: "workflow" as const,
    value: { definition: { case: "templateId" as const, value: template.id }, variables },
  };
}

/** One field per declared input of a template ({{vars.<name>}}). */
export function TemplateVariables(props: {
  template: WorkflowTemplate;
  value: Record<string, string>;
  onChange: (value: Record<string, string>) => void;
}) {
  const { value, onChange } = props;
  return (
    <>
      {props.template.inputs.map((v) => (
        <label key={v.name}>
          {v.name}
          {v.required ? " *" : ""} <span className="muted">{v.description}</span>
          <input
            name={v.name}
            required={v.required}
            value={value[v.name] ?? ""}
            onChange={(e) => onChange({ ...value, [v.name]: e.target.value })}
          />
        </label>
      ))}
    </>
  );
}
