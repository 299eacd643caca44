// GET /v1/models and GET /v1/models/{id}: what a client can name in a call here, in OpenAI's
// shape (`owned_by` is the provider): model-proxy's callable models (those a deployment
// serves), the aliases it answers (owned by the provider of the model that answers each, e.g.
// `fast` by the simulator when no OpenAI key is configured), and `auto` when the categorizer is.
import type { ListCallableModelsResponse, Model } from "@ensemble/proto";
import { AUTO_MODEL } from "../auto.js";

/**
 * One model in OpenAI's shape and, in the same object, Anthropic's (`type`, `display_name`,
 * `created_at`), so both SDKs' `models.list()` read it; each ignores the other's fields.
 */
export interface OpenAiModel {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
  type: "model";
  display_name: string;
  created_at: string;
}

function modelJson(id: string, model: Model | undefined, ownedBy?: string): OpenAiModel {
  const created = model?.createTime !== undefined ? Number(model.createTime.seconds) : 0;
  return {
    id,
    object: "model",
    created,
    owned_by: ownedBy ?? model?.provider ?? "",
    type: "model",
    display_name: id === model?.id ? model.displayName || id : id,
    created_at: new Date(created * 1000).toISOString(),
  };
}

/** `auto` (with a categorizer), then the aliases, then the models, each group by id. */
export function callableModels(res: ListCallableModelsResponse, auto: boolean): OpenAiModel[] {
  const byId = new Map(res.models.map((m) => [m.id, m]));
  const aliases = Object.entries(res.aliases)
    .filter(([alias]) => !byId.has(alias))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([alias, id]) => modelJson(alias, byId.get(id)));
  return [
    ...(auto ? [modelJson(AUTO_MODEL, undefined, "ensemble")] : []),
    ...aliases,
    ...res.models.map((m) => modelJson(m.id, m)),
  ];
}

/** The list, with Anthropic's paging fields (everything fits one page). */
export function modelListJson(models: readonly OpenAiModel[]): unknown {
  return {
    object: "list",
    data: models,
    has_more: false,
    first_id: models[0]?.id ?? null,
    last_id: models.at(-1)?.id ?? null,
  };
}
