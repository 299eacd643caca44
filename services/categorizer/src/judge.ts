// The LLM judge: asked through model-proxy (with the caller's token, so the caller's budget and
// tenant apply) for a structured opinion when the feature classifier is unsure. Its answer is
// parsed strictly; anything else (prose, a simulator's echo, a timeout) leaves the feature
// classifier's decision in place, with a reason saying so.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { GrpcClient } from "@ensemble/kit";
import {
  ChatRole,
  Modality,
  ResponseFormat_Type,
  UsageSchema,
  type ModelProxyService,
  type Usage,
} from "@ensemble/proto";
import { z } from "zod";
import type { CategoryLetter, FastDecision } from "./features.js";

export interface JudgeVerdict {
  category: CategoryLetter;
  modality: Modality | undefined;
  domainTags: string[];
  confidence: number;
  reason: string;
}

const MODALITY_NAMES: Record<string, Modality> = {
  text: Modality.TEXT,
  image_input: Modality.IMAGE_INPUT,
  image_generation: Modality.IMAGE_GENERATION,
  code: Modality.CODE,
  video: Modality.VIDEO,
};

const verdictSchema = z.object({
  category: z.enum(["L", "M", "H", "l", "m", "h"]),
  modality: z.string().optional(),
  domain_tags: z.array(z.string().min(1).max(64)).max(16).optional(),
  confidence: z.number().min(0).max(1).optional(),
  reason: z.string().max(2000).optional(),
});

export const JUDGE_SYSTEM_PROMPT = `You classify requests sent to an AI platform. Answer with one JSON object only:
{"category": "L" | "M" | "H", "modality": "text" | "image_input" | "image_generation" | "code" | "video", "domain_tags": [lower-case subject areas], "confidence": number between 0 and 1, "reason": one short sentence}
Categories:
- L: needs deep reasoning (proofs, tricky analysis, multi-constraint planning, hard debugging).
- M: simple or medium (facts, rewrites, short answers, everyday code, one image or clip).
- H: several deliverables or steps (a report with research and review, a campaign, a project).
Modality: what the request needs most (image_input when images or videos come with it).`;

/** The verdict in a judge's answer, or undefined when the answer is not the expected JSON. */
export function parseVerdict(text: string): JudgeVerdict | undefined {
  const start = text.indexOf("{");
  const end = text.lastIndexOf("}");
  if (start < 0 || end <= start) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(text.slice(start, end + 1));
  } catch {
    return undefined;
  }
  const parsed = verdictSchema.safeParse(json);
  if (!parsed.success) return undefined;
  const v = parsed.data;
  return {
    category: v.category.toUpperCase() as CategoryLetter,
    modality: v.modality === undefined ? undefined : MODALITY_NAMES[v.modality.toLowerCase()],
    domainTags: (v.domain_tags ?? []).map((t) => t.toLowerCase()),
    confidence: v.confidence ?? 0.8,
    reason: v.reason ?? "",
  };
}

/**
 * Mixes the judge into the features' probabilities: the judge's distribution puts its
 * confidence on its category and spreads the rest evenly; `weight` is the judge's share.
 */
export function combine(
  fast: Pick<FastDecision, "probabilities">,
  verdict: JudgeVerdict,
  weight: number,
): { category: CategoryLetter; probabilities: Record<CategoryLetter, number>; confidence: number } {
  const letters: CategoryLetter[] = ["L", "M", "H"];
  const probabilities = { L: 0, M: 0, H: 0 };
  for (const c of letters) {
    const judge = c === verdict.category ? verdict.confidence : (1 - verdict.confidence) / 2;
    probabilities[c] = (1 - weight) * fast.probabilities[c] + weight * judge;
  }
  const category = letters.reduce(
    (best, c) => (probabilities[c] > probabilities[best] ? c : best),
    verdict.category,
  );
  return { category, probabilities, confidence: probabilities[category] };
}

export interface JudgeAnswer {
  text: string;
  usage: Usage;
}

/** Asks the judge; throws a ConnectError when model-proxy fails. */
export async function askJudge(
  modelProxy: GrpcClient<typeof ModelProxyService>,
  opts: {
    model: string;
    text: string;
    attachmentMimeTypes: readonly string[];
    token: string;
    timeoutMs: number;
  },
): Promise<JudgeAnswer> {
  // A judge reads a bounded excerpt: classification does not need a whole book.
  const excerpt =
    opts.text.length > 8_000
      ? `${opts.text.slice(0, 6_000)}\n[...]\n${opts.text.slice(-2_000)}`
      : opts.text;
  const attachments =
    opts.attachmentMimeTypes.length > 0
      ? `\n\nAttachments: ${opts.attachmentMimeTypes.join(", ")}`
      : "";
  const res = await modelProxy.chat(
    {
      model: opts.model,
      messages: [
        {
          role: ChatRole.SYSTEM,
          content: [{ part: { case: "text", value: JUDGE_SYSTEM_PROMPT } }],
        },
        {
          role: ChatRole.USER,
          content: [{ part: { case: "text", value: `Request:\n${excerpt}${attachments}` } }],
        },
      ],
      temperature: 0,
      maxTokens: 300,
      responseFormat: { type: ResponseFormat_Type.JSON_OBJECT },
      metadata: { feature: "categorizer-judge" },
    },
    { headers: { authorization: `Bearer ${opts.token}` }, timeoutMs: opts.timeoutMs },
  );
  const text = (res.message?.content ?? [])
    .map((p) => (p.part.case === "text" ? p.part.value : ""))
    .join("");
  return { text, usage: res.usage ?? create(UsageSchema) };
}

/** A short, secret-free description of why the judge call failed. */
export function judgeFailure(err: unknown): string {
  if (err instanceof ConnectError) return Code[err.code];
  return err instanceof Error ? err.name : "error";
}
