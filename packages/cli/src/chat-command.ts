// chat: one message (argument or stdin) or, on a terminal with no message, a conversation;
// the answer streams from ModelProxyService.StreamChat as the model writes it.
import { createInterface } from "node:readline/promises";
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ChatRole, FinishReason, ModelProxyService, type ChatMessageSchema } from "@ensemble/proto";
import type { Context } from "./context.js";
import { collect, keyValues, usd, type Output, type PairLimits } from "./output.js";
import { UsageError, type Gateway } from "./session.js";

type MessageInit = MessageInitShape<typeof ChatMessageSchema>;

interface ChatOptions {
  model: string;
  system?: string;
  temperature?: string;
  maxTokens?: string;
  log?: boolean;
  label: string[];
}

/** ChatRequest.metadata's bounds in modelproxy.proto (--label). */
const CHAT_LABELS: PairLimits = { pairs: 16, keyChars: 64, valueChars: 256 };

function text(role: ChatRole, content: string): MessageInit {
  return { role, content: [{ part: { case: "text", value: content } }] };
}

function number(flag: string, raw: string | undefined, integer: boolean): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new UsageError(`${flag} ${raw}: expected a${integer ? "n integer" : " number"}`);
  }
  return n;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  let all = "";
  for await (const chunk of stream) all += String(chunk);
  return all.trim();
}

/** Streams one answer; returns its text. `metadata`: the call's labels (--label). */
async function ask(
  gw: Gateway,
  out: Output,
  opts: ChatOptions,
  metadata: Record<string, string>,
  messages: MessageInit[],
): Promise<string> {
  const temperature = number("--temperature", opts.temperature, false);
  const maxTokens = number("--max-tokens", opts.maxTokens, true);
  const stream = gw.client(ModelProxyService).streamChat({
    chat: {
      model: opts.model,
      messages,
      ...(temperature !== undefined ? { temperature } : {}),
      ...(maxTokens !== undefined ? { maxTokens } : {}),
      ...(opts.log === true ? { log: true } : {}),
      metadata,
    },
  });
  let answer = "";
  let finishReason = FinishReason.UNSPECIFIED;
  let summary: {
    id?: string;
    model?: string | undefined;
    provider?: string | undefined;
    inputTokens?: number;
    cachedInputTokens?: number;
    outputTokens?: number;
    reasoningTokens?: number;
    costUsd?: number;
    latencyMs?: number | undefined;
  } = {};
  for await (const res of stream) {
    const event = res.event;
    if (event.case === "delta") {
      answer += event.value.content;
      if (out.json) out.line({ delta: event.value.content });
      else out.write(event.value.content);
    } else if (event.case === "start") {
      summary = { id: event.value.id, model: event.value.servedBy?.model };
    } else if (event.case === "end") {
      const usage = event.value.usage;
      finishReason = event.value.finishReason;
      summary = {
        ...summary,
        model: event.value.servedBy?.model ?? summary.model,
        provider: event.value.servedBy?.provider,
        inputTokens: Number(usage?.inputTokens ?? 0n),
        // Parts of the input and of the output, not on top of them.
        cachedInputTokens: Number(usage?.cachedInputTokens ?? 0n),
        outputTokens: Number(usage?.outputTokens ?? 0n),
        reasoningTokens: Number(usage?.reasoningTokens ?? 0n),
        costUsd: usage?.costUsd ?? 0,
        latencyMs: event.value.latency !== undefined ? durationMs(event.value.latency) : undefined,
      };
    }
  }
  if (out.json) out.line({ done: { ...summary, content: answer } });
  else {
    out.write("\n");
    if (out.interactive) {
      out.notice(
        `— ${summary.model ?? opts.model}, ${summary.outputTokens ?? 0} tokens, ${usd(summary.costUsd ?? 0)}`,
      );
    }
    // Where to read it back (on stderr: stdout holds only the answer).
    if (opts.log === true && summary.id !== undefined)
      out.notice(`logged: ensemble logs get ${summary.id}`);
  }
  // Else an empty (or cut) answer would go unexplained. A streamed answer may have been sent up
  // to the withheld part.
  if (finishReason === FinishReason.CONTENT_FILTER) {
    out.notice(
      `${answer === "" ? "the answer" : "the rest of the answer"} was withheld by a content filter (the tenant's guardrails, see ensemble tenant settings; or the provider's)`,
    );
  }
  return answer;
}

export function registerChatCommand(program: Command, ctx: Context): void {
  program
    .command("chat")
    .description(
      "chat with a model; the answer streams as it is written (no message on a terminal: a conversation)",
    )
    .argument("[message...]", "what to say (default: read from stdin)")
    .option("-m, --model <model>", "model id or role alias (fast, thinking, ...) or auto", "fast")
    .option("-s, --system <prompt>", "system prompt")
    .option("-t, --temperature <n>", "sampling temperature, 0 to 2")
    .option("--max-tokens <n>", "longest answer in tokens")
    .option("--log", "keep the request and the answer in the call log (read back: ensemble logs)")
    .option(
      "--label <key=value>",
      "label the call in the usage ledger, e.g. team=search (repeatable; see ensemble usage --by label:team)",
      collect,
      [],
    )
    .addHelpText(
      "after",
      `\nExamples:\n  ensemble chat "Explain JetStream in one sentence"\n  echo "Summarise this" | ensemble chat -m thinking\n  ensemble chat --label team=search --label env=prod "Hi"   # usage per team: ensemble usage --by label:team\n  ensemble chat --json "Hi"   # NDJSON: {"delta":...} lines, then {"done":{...}}\n  ensemble chat --log "Hi"    # kept in the call log: ensemble logs get <id> (the id is on stderr)`,
    )
    .action(async (words: string[], opts: ChatOptions) => {
      // Checked before a message is read or a conversation starts.
      const metadata = keyValues("--label", opts.label, CHAT_LABELS);
      const { gw, out } = ctx.get();
      const history: MessageInit[] = [];
      if (opts.system !== undefined) history.push(text(ChatRole.SYSTEM, opts.system));
      let message = words.join(" ").trim();
      if (message === "" && out.io.stdin.isTTY !== true) message = await readAll(out.io.stdin);
      if (message !== "") {
        await ask(gw, out, opts, metadata, [...history, text(ChatRole.USER, message)]);
        return;
      }
      if (out.io.stdin.isTTY !== true)
        throw new UsageError("chat: no message (give one or pipe it on stdin)");
      // A conversation on the terminal: the history goes with every turn.
      out.notice(`chatting with ${opts.model} at ${gw.url}; an empty line or Ctrl-D ends`);
      const rl = createInterface({ input: out.io.stdin, output: out.io.stderr, terminal: true });
      try {
        for (;;) {
          const line = (await rl.question("> ").catch(() => "")).trim();
          if (line === "") break;
          history.push(text(ChatRole.USER, line));
          const answer = await ask(gw, out, opts, metadata, history);
          history.push(text(ChatRole.ASSISTANT, answer));
        }
      } finally {
        rl.close();
      }
    });
}
