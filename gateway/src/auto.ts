// `model: "auto"` on a chat: the categorizer picks the model, on every way into the gateway
// (ModelProxyService Chat and StreamChat over Connect, gRPC and gRPC-web, /v1/chat/completions,
// the WebSocket chat). Only model routes to models that chat: a chat is one model's text answer
// (a request for an image is answered in words; /v1/images/generations and image runs draw).
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import type { GrpcClient } from "@ensemble/kit";
import {
  Category,
  ChatRole,
  type CategorizerService,
  type ChatRequestSchema,
} from "@ensemble/proto";

/** The model name that asks the categorizer to choose. */
export const AUTO_MODEL = "auto";

type ChatRequestInit = MessageInitShape<typeof ChatRequestSchema>;

/** The categorizer's decision, as the OpenAI and WebSocket answers show it (`routing`). */
export interface AutoRouting {
  model: string;
  /** The contract's JSON name (CATEGORY_L), not the generated enum's short one (L). */
  category: string;
  route_id: string;
  confidence: number;
  reasons: string[];
}

/** What the categorizer is asked about a chat: the last user message and its attachments. */
export function classifyInput(request: ChatRequestInit): {
  text: string;
  attachmentMimeTypes: string[];
} {
  const messages = request.messages ?? [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m?.role !== ChatRole.USER) continue;
    let text = "";
    const attachmentMimeTypes: string[] = [];
    for (const p of m.content ?? []) {
      if (p.part?.case === "text") text += p.part.value;
      else if (p.part?.case === "image")
        attachmentMimeTypes.push(p.part.value.mimeType || "image/*");
    }
    return { text: text === "" ? " " : text, attachmentMimeTypes };
  }
  return { text: " ", attachmentMimeTypes: [] };
}

/** Asks the categorizer which model answers `request`. */
export async function routeAuto(
  categorizer: GrpcClient<typeof CategorizerService>,
  request: ChatRequestInit,
  options: CallOptions,
): Promise<AutoRouting> {
  const res = await categorizer.classify(
    { ...classifyInput(request), allowedKinds: { model: true }, chatOnly: true },
    options,
  );
  const c = res.classification;
  const target = c?.route?.target;
  if (c === undefined || target?.case !== "model") {
    throw new ConnectError("the categorizer chose no model for this request", Code.Unavailable);
  }
  return {
    model: target.value,
    category: `CATEGORY_${Category[c.category] ?? "UNSPECIFIED"}`,
    route_id: c.routeId,
    confidence: c.confidence,
    reasons: c.reasons,
  };
}
