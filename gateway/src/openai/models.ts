// GET /v1/models and GET /v1/models/{id}: what a client can name in a call here, in OpenAI's
// shape (`owned_by` is the provider): model-proxy's callable models (those a deployment
// serves), the aliases it answers (owned by the provider of the model that answers each, e.g.
// `fast` by the simulator when no OpenAI key is configured), and `auto` when the categorizer is.
import type { ListCallableModelsResponse, Model } from "@ensemble/proto";
import { AUTO_MODEL } from "../auto.js";

export interface OpenAiModel {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
}

function modelJson(id: string, model: Model | undefined, ownedBy?: string): OpenAiModel {
  return {
    id,
    object: "model",
    created: model?.createTime !== undefined ? Number(model.createTime.seconds) : 0,
    owned_by: ownedBy ?? model?.provider ?? "",
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

export function modelListJson(models: readonly OpenAiModel[]): unknown {
  return { object: "list", data: models };
}
