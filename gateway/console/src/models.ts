// Catalog look-ups shared by the chat, compare and catalog pages.
import type { Classification, Model, PromptAddon } from "@ensemble/proto";
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

/** Models that can answer a chat (the catalog also holds embedding, image and video models). */
export function loadChatModels(): Promise<Model[]> {
  return loadModels().then((models) =>
    models.filter((m) => m.capabilities.includes(Capability.CHAT)),
  );
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
