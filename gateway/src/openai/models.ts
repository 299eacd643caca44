// GET /v1/models and GET /v1/models/{id}: the registry's catalog in OpenAI's shape
// (`owned_by` is the provider).
import type { Model } from "@ensemble/proto";

export interface OpenAiModel {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
}

export function modelJson(model: Model): OpenAiModel {
  return {
    id: model.id,
    object: "model",
    created: model.createTime !== undefined ? Number(model.createTime.seconds) : 0,
    owned_by: model.provider,
  };
}

export function modelListJson(models: readonly Model[]): unknown {
  return { object: "list", data: models.map(modelJson) };
}
