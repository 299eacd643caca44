// The failure explainer (the original system's "workers failed" AI): when a run fails and
// EXPLAINER_MODEL is set, one short model call turns the technical cause into two or three
// sentences for the user — what went wrong and what to try. It runs once per failed run, by the
// replica that claimed the run's end, as the run's user (so it is billed and visible in usage
// like any call, attributed to the run's step "explain"). It never makes things worse: a slow or
// failing explainer leaves the explanation empty and the run fails with its technical cause.
import type { GrpcClient } from "@ensemble/kit";
import { ChatRole, type ModelProxyService, type RunError } from "@ensemble/proto";
import { callMetadata } from "./executor.js";
import type { TokenSource } from "./tokens.js";

export interface ExplainerDeps {
  modelProxy: Pick<GrpcClient<typeof ModelProxyService>, "streamChat">;
  tokens: TokenSource;
  model: string;
  timeoutMs: number;
}

export interface FailedRun {
  tenantId: string;
  userId: string;
  /** The API key the run was started with ("" = none): the explanation is billed to it too. */
  apiKeyId: string;
  runId: string;
  sessionId: string;
  /** The run's input (what the user asked), shortened. */
  input: string;
  error: RunError;
  /** The run's metadata: the explanation's call carries its labels, as the steps' calls do. */
  metadata?: Readonly<Record<string, string>>;
}

const SYSTEM = [
  "You explain to a user of an AI platform why their request failed.",
  "Write at most three short sentences in plain language: what went wrong, then what they can try.",
  "Do not invent details that are not in the error. No greetings, no markdown.",
].join(" ");

const MAX_INPUT_CHARS = 500;
const MAX_EXPLANATION_CHARS = 600;

export function explainerPrompt(run: FailedRun): string {
  const e = run.error;
  return [
    `Request: ${run.input.slice(0, MAX_INPUT_CHARS)}`,
    `Error code: ${e.code}`,
    `Error: ${e.message}`,
    ...(e.stepId !== "" ? [`Failed step: ${e.stepId}`] : []),
    `Retrying later may help: ${e.retryable ? "yes" : "no"}`,
  ].join("\n");
}

export class FailureExplainer {
  readonly #d: ExplainerDeps;

  constructor(deps: ExplainerDeps) {
    this.#d = deps;
  }

  get model(): string {
    return this.#d.model;
  }

  /** The explanation, or "" when the explainer could not answer in time. */
  async explain(run: FailedRun): Promise<string> {
    try {
      const token = await this.#d.tokens.forUser(
        run.tenantId,
        run.userId,
        run.apiKeyId,
        `run:${run.runId}`,
      );
      const stream = this.#d.modelProxy.streamChat(
        {
          chat: {
            model: this.#d.model,
            messages: [
              { role: ChatRole.SYSTEM, content: [{ part: { case: "text", value: SYSTEM } }] },
              {
                role: ChatRole.USER,
                content: [{ part: { case: "text", value: explainerPrompt(run) } }],
              },
            ],
            maxTokens: 200,
            attribution: {
              runId: run.runId,
              stepId: "explain",
              sessionId: run.sessionId,
              attempt: 0,
            },
            metadata: callMetadata(run.metadata, "workflow-explainer"),
          },
        },
        { headers: { authorization: `Bearer ${token}` }, timeoutMs: this.#d.timeoutMs },
      );
      let text = "";
      for await (const item of stream) {
        if (item.event.case === "delta") text += item.event.value.content;
      }
      return text.trim().slice(0, MAX_EXPLANATION_CHARS);
    } catch {
      return "";
    }
  }
}
