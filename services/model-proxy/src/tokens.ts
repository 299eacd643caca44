// Token counts: exact with OpenAI's own encodings (gpt-tokenizer: o200k_base, cl100k_base) for
// the OpenAI family, a stated estimate (characters / 4) for every other model. Chats add
// OpenAI's per-message overhead (3 tokens per message, 1 per name, 3 to prime the reply) and a
// fixed 85 tokens per image (a low-detail image; high detail costs more, so images make a count
// an estimate). The encodings are loaded on first use: each costs 20-50 MB of memory, which a
// proxy that never counts exactly (no OpenAI models, no CountTokens calls) should not carry.
import { modelToEncodingMap } from "gpt-tokenizer/mapping";
import type { ChatMessage, Model } from "@ensemble/proto";

export interface TokenCount {
  tokens: number;
  exact: boolean;
  tokenizer: string;
}

const IMAGE_TOKENS = 85;
const ESTIMATE = "estimate:chars/4";

type Encoder = (text: string) => number;
const LOADERS: Record<string, () => Promise<Encoder>> = {
  o200k_base: async () => (await import("gpt-tokenizer/encoding/o200k_base")).countTokens,
  cl100k_base: async () => (await import("gpt-tokenizer/encoding/cl100k_base")).countTokens,
};
const loaded = new Map<string, Promise<Encoder>>();

function encoder(encoding: string): Promise<Encoder> {
  let e = loaded.get(encoding);
  if (e === undefined) {
    e = (LOADERS[encoding] as () => Promise<Encoder>)();
    loaded.set(encoding, e);
  }
  return e;
}

/** The encoding of an OpenAI-family model, or undefined when only an estimate is possible. */
function encodingOf(model: Model): string | undefined {
  // OpenRouter and friends name OpenAI models "openai/<id>".
  const id = model.providerModelId.startsWith("openai/")
    ? model.providerModelId.slice("openai/".length)
    : model.providerModelId;
  const known = (modelToEncodingMap as Record<string, string | undefined>)[id];
  if (known !== undefined && LOADERS[known] !== undefined) return known;
  if (model.provider === "openai" && /^(gpt-4o|gpt-4\.1|gpt-5|o[1-9]|chatgpt)/.test(id))
    return "o200k_base";
  return undefined;
}

/** A quick estimate for hot paths (budgets, tpm limits): characters / 4, images at 85. */
export function estimateChatTokens(messages: readonly ChatMessage[]): number {
  let chars = 0;
  let images = 0;
  for (const m of messages) {
    for (const p of m.content) {
      if (p.part.case === "text") chars += p.part.value.length;
      else if (p.part.case === "image") images += 1;
    }
    for (const t of m.toolCalls) chars += t.name.length + t.arguments.length;
  }
  return Math.ceil(chars / 4) + messages.length * 3 + 3 + images * IMAGE_TOKENS;
}

export function estimateTextTokens(text: string): number {
  return Math.ceil(text.length / 4);
}

export async function countText(model: Model, text: string): Promise<TokenCount> {
  const encoding = encodingOf(model);
  if (encoding === undefined)
    return { tokens: estimateTextTokens(text), exact: false, tokenizer: ESTIMATE };
  const encode = await encoder(encoding);
  return { tokens: encode(text), exact: true, tokenizer: encoding };
}

export async function countChat(
  model: Model,
  messages: readonly ChatMessage[],
): Promise<TokenCount> {
  const encoding = encodingOf(model);
  if (encoding === undefined) {
    return { tokens: estimateChatTokens(messages), exact: false, tokenizer: ESTIMATE };
  }
  const encode = await encoder(encoding);
  let tokens = 3; // every reply is primed with <|start|>assistant<|message|>
  let exact = true;
  for (const m of messages) {
    tokens += 3;
    if (m.name !== "") tokens += 1 + encode(m.name);
    for (const p of m.content) {
      if (p.part.case === "text") tokens += encode(p.part.value);
      else if (p.part.case === "image") {
        tokens += IMAGE_TOKENS;
        exact = false;
      }
    }
    for (const t of m.toolCalls) tokens += encode(t.name) + encode(t.arguments);
  }
  return { tokens, exact, tokenizer: encoding };
}
