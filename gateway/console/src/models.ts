// Look-ups shared by several pages: the catalog (the catalog page shows all of it, the pickers
// only what can be called here), workflow templates, and the tenant's users' emails.
import type { Classification, Model, PromptAddon, User, WorkflowTemplate } from "@ensemble/proto";
import { Capability, Category } from "@ensemble/proto";
import { api } from "./api";

let modelsPromise: Promise<Model[]> | undefined;
let addonsPromise: Promise<PromptAddon[]> | undefined;

export function loadModels(): Promise<Model[]> {
  modelsPromise ??= api.registry.listModels({ page: { pageSize: 200 } }).then(
    (r) => r.models.filter((m) => m.enabled),
    (err: unknown) => {
      modelsPromise = undefined;
      throw err;
    },
  );
  return modelsPromise;
}

let templatesPromise: Promise<WorkflowTemplate[]> | undefined;

export function loadTemplates(): Promise<WorkflowTemplate[]> {
  templatesPromise ??= api.registry.listTemplates({ page: { pageSize: 100 } }).then(
    (r) => r.templates,
    (err: unknown) => {
      templatesPromise = undefined;
      throw err;
    },
  );
  return templatesPromise;
}

/** A model picker's option text: "Sim Fast (fast)". */
export function modelLabel(m: Model): string {
  return `${m.displayName || m.id}${m.aliases.length > 0 ? ` (${m.aliases.join(", ")})` : ""}`;
}

/**
 * User id -> email, to name who owns or created something (admins). Empty when the list cannot
 * be read: the user id names them then.
 */
export function loadUserEmails(): Promise<Map<string, string>> {
  return api.auth
    .listUsers({ includeDisabled: true, page: { pageSize: 200 } })
    .then((r) => r.users)
    .catch(() => [] as User[])
    .then((users) => new Map(users.map((u) => [u.id, u.email])));
}

let chatModelsPromise: Promise<Model[]> | undefined;

/**
 * Models that can answer a chat here: model-proxy's callable ones (a deployment serves their
 * provider), each with the aliases it answers here (`fast` is sim-fast's without an OpenAI key).
 */
export function loadChatModels(): Promise<Model[]> {
  chatModelsPromise ??= api.proxy.listCallableModels({ capability: Capability.CHAT }).then(
    (r) =>
      r.models.map((m) => ({
        ...m,
        aliases: Object.entries(r.aliases)
          .filter(([, id]) => id === m.id)
          .map(([alias]) => alias),
      })),
    (err: unknown) => {
      chatModelsPromise = undefined;
      throw err;
    },
  );
  return chatModelsPromise;
}

let callablePromise: Promise<{ ids: string[]; aliases: Record<string, string> }> | undefined;

/**
 * Every model callable here, whatever it does (chat, embeddings, images), with the aliases that
 * each answers: what an API key's model limits can usefully name.
 */
export function loadCallableModels(): Promise<{ ids: string[]; aliases: Record<string, string> }> {
  callablePromise ??= api.proxy.listCallableModels({}).then(
    (r) => ({ ids: r.models.map((m) => m.id), aliases: r.aliases }),
    (err: unknown) => {
      callablePromise = undefined;
      throw err;
    },
  );
  return callablePromise;
}

export function loadAddons(): Promise<PromptAddon[]> {
  addonsPromise ??= api.registry.listAddons({ page: { pageSize: 200 } }).then(
    (r) => r.addons.filter((a) => a.enabled),
    (err: unknown) => {
      addonsPromise = undefined;
      throw err;
    },
  );
  return addonsPromise;
}

/** "L · gpt-4o-mini · 82% — reasons" for the categorizer's decision. */
export function describeRoute(c: Classification): { summary: string; reasons: string[] } {
  const target =
    c.route?.target.case === "model"
      ? `model ${c.route.target.value}`
      : c.route?.target.case === "templateId"
        ? `workflow ${c.route.target.value}`
        : c.route?.target.case === "compare"
          ? "compare"
          : "—";
  return {
    summary: `category ${Category[c.category] ?? "?"} → ${target} (confidence ${Math.round(
      c.confidence * 100,
    )}%)`,
    reasons: c.reasons,
  };
}
