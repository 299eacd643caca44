// logs list / get: the chats model-proxy kept in its call log (ListCallLogs, GetCallLog). Only
// chats sent with log: true (`ensemble chat --log`, `"log": true` on the OpenAI routes), or of a
// tenant whose admins turned on log_calls (`ensemble tenant settings --log-calls on`) or that the
// operator listed in CALL_LOG_TENANTS, are kept, for a while.
import { toJson } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  CallLogSchema,
  CallLogSummarySchema,
  ChatRole,
  FinishReason,
  ModelProxyService,
  type CallLog,
  type CallLogSummary,
  type ChatMessage,
  type ToolCall,
} from "@ensemble/proto";
import type { Context } from "./context.js";
import { label, seconds, table, usd, when } from "./output.js";
import { parseDuration } from "./run-commands.js";
import { UsageError } from "./session.js";

/** ListCallLogs' largest page (PageRequest.page_size). */
const MAX_LIMIT = 500;
const PREVIEW = 60;

const EMPTY_HINT =
  'Only chats sent with log: true are kept (ensemble chat --log, or "log": true in the body of POST /v1/chat/completions), for a limited time; a tenant admin can keep every chat of the tenant with `ensemble tenant settings --log-calls on`.';

interface ListOptions {
  model?: string;
  errors?: boolean;
  allUsers?: boolean;
  user?: string;
  key?: string;
  since?: string;
  limit: string;
}

/** "fast→sim-fast", or one name when the model asked for answered. */
function modelText(c: CallLogSummary): string {
  if (c.requestedModel === "" || c.requestedModel === c.model) return c.model || "-";
  return `${c.requestedModel}→${c.model || "-"}`;
}

/** One line, at most `max` characters. */
function oneLine(text: string, max: number): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}

function row(c: CallLogSummary, allUsers: boolean): string[] {
  return [
    when(c.time),
    c.id,
    ...(allUsers ? [c.userId] : []),
    modelText(c),
    c.status,
    seconds(c.latency),
    `${Number(c.inputTokens)}/${Number(c.outputTokens)}`,
    usd(c.costUsd),
    oneLine(c.questionPreview, PREVIEW) || "-",
  ];
}

const ROLES: Record<number, string> = {
  [ChatRole.SYSTEM]: "system",
  [ChatRole.USER]: "user",
  [ChatRole.ASSISTANT]: "assistant",
  [ChatRole.TOOL]: "tool",
  [ChatRole.DEVELOPER]: "developer",
};

/** A message's text, each image as "[image]". */
function textOf(m: ChatMessage | undefined): string {
  return (m?.content ?? [])
    .map((p) => (p.part.case === "text" ? p.part.value : "[image]"))
    .join("\n");
}

/** "[tool call NAME (id ID)]" and its arguments, pretty when they are valid JSON. */
function toolCallText(t: ToolCall): string {
  let args = t.arguments;
  try {
    args = JSON.stringify(JSON.parse(t.arguments), null, 2);
  } catch {
    // models may produce invalid JSON; show it as the text it is
  }
  return `[tool call ${t.name}${t.id !== "" ? ` (id ${t.id})` : ""}]\n${args}`;
}

function messageBlock(heading: string, m: ChatMessage | undefined): string[] {
  const text = textOf(m);
  const calls = (m?.toolCalls ?? []).map(toolCallText);
  return [`[${heading}]`, ...(text !== "" ? [text] : []), ...calls, ""];
}

/** A logged call as a person reads it: its figures, then the conversation and the answer. */
function describe(call: CallLog): string {
  const s = call.summary;
  const res = call.response;
  const provider = res?.servedBy?.provider ?? "";
  const facts: Array<[string, string]> = [
    ["time", when(s?.time)],
    ["model", `${s !== undefined ? modelText(s) : "-"}${provider !== "" ? ` (${provider})` : ""}`],
    ["user", s?.userId || "-"],
    ["api key", s?.apiKeyId || "-"],
    [
      "latency",
      `${seconds(s?.latency)}${res?.timeToFirstToken !== undefined ? ` (first token ${seconds(res.timeToFirstToken)})` : ""}`,
    ],
    ["tokens", `${Number(s?.inputTokens ?? 0n)} in, ${Number(s?.outputTokens ?? 0n)} out`],
    ["cost", usd(s?.costUsd ?? 0)],
    ["streaming", s?.streaming === true ? "yes" : "no"],
    ["cache hit", s?.cacheHit === true ? "yes" : "no"],
    ...(res !== undefined && res.finishReason !== FinishReason.UNSPECIFIED
      ? [["finish", label(FinishReason, res.finishReason)] as [string, string]]
      : []),
    ...(call.error !== "" ? [["error", call.error] as [string, string]] : []),
  ];
  const lines = [
    `call ${s?.id ?? ""}: ${s?.status ?? "-"}`,
    ...facts.map(([name, value]) => `${name.padEnd(11)}${value}`),
    "",
  ];
  if (call.request === undefined) lines.push("(the request was too large to keep)", "");
  for (const m of call.request?.messages ?? []) {
    const who = [
      ROLES[m.role] ?? label(ChatRole, m.role),
      ...(m.name !== "" ? [m.name] : []),
      ...(m.toolCallId !== "" ? [`answers ${m.toolCallId}`] : []),
    ].join(" ");
    lines.push(...messageBlock(who, m));
  }
  if (res === undefined) lines.push(`(no answer${call.error !== "" ? ": the call failed" : ""})`);
  else {
    if (res.reasoning !== "") lines.push("[reasoning]", res.reasoning, "");
    lines.push(...messageBlock("answer", res.message));
  }
  return lines.join("\n").trimEnd();
}

export function registerLogsCommands(program: Command, ctx: Context): void {
  const logs = program
    .command("logs")
    .description("the call log: chats kept with their request and answer (chat --log, log: true)");

  logs
    .command("list")
    .description("logged calls, newest first: your own, or (admin) the tenant's")
    .option("--model <model>", "only calls that asked for or were answered by this model")
    .option("--errors", "only failed calls")
    .option("--all-users", "every user of the tenant (admin)")
    .option("--user <id>", "only this user's calls (another user's: admin)")
    .option("--key <id>", "only calls made with this API key")
    .option("--since <duration>", "only calls in the last duration, e.g. 90m, 1h, 2d")
    .option("-n, --limit <n>", `how many, 1 to ${MAX_LIMIT}`, "20")
    .addHelpText(
      "after",
      `\nOnly chats sent with log: true are kept (ensemble chat --log, or "log": true on
POST /v1/chat/completions), or every chat of a tenant whose admins turned it on
(ensemble tenant settings --log-calls on) or that is in model-proxy's CALL_LOG_TENANTS.

Examples:
  ensemble chat --log -m fast "Why is the sky blue?"
  ensemble logs list
  ensemble logs list --errors --since 2d
  ensemble logs list --all-users --model sim-fast -n 100
  ensemble --json logs list | jq -r '.calls[].id'`,
    )
    .action(async (opts: ListOptions) => {
      const { gw, out } = ctx.get();
      const limit = Number(opts.limit);
      if (!/^\d+$/.test(opts.limit.trim()) || limit < 1 || limit > MAX_LIMIT) {
        throw new UsageError(
          `--limit ${opts.limit}: expected a whole number from 1 to ${MAX_LIMIT}`,
        );
      }
      const since =
        opts.since !== undefined
          ? { startTime: timestampFromMs(Date.now() - parseDuration("--since", opts.since)) }
          : {};
      const res = await gw.client(ModelProxyService).listCallLogs({
        page: { pageSize: limit },
        model: opts.model ?? "",
        errorsOnly: opts.errors === true,
        allUsers: opts.allUsers === true,
        userId: opts.user ?? "",
        apiKeyId: opts.key ?? "",
        ...since,
      });
      const next = res.page?.nextPageToken ?? "";
      // Another user's calls (or everyone's) carry a user column.
      const users = opts.allUsers === true || opts.user !== undefined;
      out.result(
        { calls: res.calls.map((c) => toJson(CallLogSummarySchema, c)), nextPageToken: next },
        () =>
          table(
            [
              "time",
              "id",
              ...(users ? ["user"] : []),
              "model",
              "status",
              "latency",
              "tokens in/out",
              "cost",
              "question",
            ],
            res.calls.map((c) => row(c, users)),
          ),
      );
      if (!out.json && res.calls.length === 0) {
        const filtered = [opts.model, opts.errors, opts.user, opts.key, opts.since].some(
          (f) => f !== undefined,
        );
        out.notice(`${filtered ? "no logged calls match" : "no logged calls yet"}. ${EMPTY_HINT}`);
      }
      if (!out.json && next !== "")
        out.notice(`(more calls: raise --limit, or narrow with --since / --model)`);
    });

  logs
    .command("get")
    .description("one logged call: its figures, the messages sent and the answer")
    .argument("<id>", "the call's id (chatcmpl-..., from `ensemble logs list`)")
    .addHelpText(
      "after",
      `\nExamples:\n  ensemble logs get chatcmpl-0f3c...\n  ensemble --json logs get chatcmpl-0f3c...   # the whole CallLog (request and response) in protobuf JSON`,
    )
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      let call: CallLog | undefined;
      try {
        call = (await gw.client(ModelProxyService).getCallLog({ id })).call;
      } catch (err) {
        const e = ConnectError.from(err);
        if (e.code === Code.NotFound) {
          throw new Error(
            `no logged call ${id}: it was not logged, has expired, or is not yours (ensemble logs list shows yours)`,
          );
        }
        throw err;
      }
      if (call === undefined) throw new Error("the gateway returned no call");
      const found = call;
      out.result(toJson(CallLogSchema, found), () => describe(found));
    });
}
