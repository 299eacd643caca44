// run (start a run and watch it), runs list / get / cancel / watch / artifact.
import { createHash } from "node:crypto";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fromJson, toJson, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, type Duration } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  ArtifactSchema,
  Category,
  RankCriterion,
  RunEventSchema,
  RunMode,
  RunSchema,
  RunService,
  RunStatus,
  RunView,
  StepStatus,
  WorkflowTemplateSchema,
  type Artifact,
  type RankingResult,
  type Run,
  type RunEvent,
  type RunSpec,
  type RunSpecSchema,
} from "@ensemble/proto";
import { parse as parseYaml } from "yaml";
import type { Context } from "./context.js";
import {
  bytes,
  collect,
  enumValue,
  keyValues,
  label,
  seconds,
  table,
  usd,
  when,
  type Io,
  type Output,
  type PairLimits,
} from "./output.js";
import { UsageError } from "./session.js";

/** The judge of `run --compare` when neither --judge nor --rank-by is given. */
const DEFAULT_JUDGE = "medium";

/** The flags that say what a run does (`run`, `schedules create` / `update`; addRunSpecOptions). */
export interface RunSpecOptions {
  template?: string;
  file?: string;
  model?: string;
  compare?: string;
  judge?: string;
  rankBy?: string;
  auto?: boolean;
  var: string[];
  system?: string;
  timeout?: string;
  /** --label key=value: the run's metadata (its calls' labels too). */
  label: string[];
}

interface RunOptions extends RunSpecOptions {
  detach?: boolean;
  quiet?: boolean;
  save?: string;
}

type SpecInit = MessageInitShape<typeof RunSpecSchema>;
/** What runs: a workflow (template or inline), one model, a comparison, or auto. */
export type RunModeInit = SpecInit["mode"];

/** "name=value" pairs (--var) -> { name: value }; else a UsageError. */
export function variables(pairs: string[]): Record<string, string> {
  return keyValues("--var", pairs);
}

/** RunSpec.metadata's bounds in run.proto (--label). */
const RUN_LABELS: PairLimits = { pairs: 32, keyChars: 64, valueChars: 1024 };

/** --label pairs as a run's metadata (bounded as RunSpec.metadata); else a UsageError. */
export function runLabels(pairs: string[], maxPairs = RUN_LABELS.pairs): Record<string, string> {
  return keyValues("--label", pairs, { ...RUN_LABELS, pairs: maxPairs });
}

/** "90s", "5m", "2h", "2d" -> ms (run --timeout, logs list --since). */
export function parseDuration(flag: string, raw: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(raw.trim());
  if (m === null) throw new UsageError(`${flag} ${raw}: expected a duration like 90s, 5m, 2h`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "s"];
  return Number(m[1]) * unit;
}

/**
 * The run's mode from -t / -f / -m / -c / --auto (with --var, --judge, --rank-by); undefined
 * when none of them is given (`run` then runs auto; `schedules update` keeps the schedule's).
 */
export async function runMode(opts: RunSpecOptions): Promise<RunModeInit | undefined> {
  const chosen = [
    opts.template,
    opts.file,
    opts.model,
    opts.compare,
    opts.auto ? "auto" : undefined,
  ].filter((v) => v !== undefined);
  if (chosen.length > 1) {
    throw new UsageError("choose one of --template, --file, --model, --compare, --auto");
  }
  if (opts.compare === undefined && (opts.judge !== undefined || opts.rankBy !== undefined)) {
    throw new UsageError("--judge and --rank-by rank the answers of --compare");
  }
  const vars = variables(opts.var);
  let mode: RunModeInit | undefined;
  if (opts.template !== undefined) {
    mode = {
      case: "workflow",
      value: { definition: { case: "templateId", value: opts.template }, variables: vars },
    };
  } else if (opts.file !== undefined) {
    let doc: unknown;
    try {
      const text = await readFile(opts.file, "utf8");
      doc = opts.file.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
    } catch (err) {
      throw new UsageError(
        `--file ${opts.file}: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    // A file may hold the template itself or { template: ... } / { workflow: ... }.
    const obj = (doc ?? {}) as Record<string, unknown>;
    const raw = (obj["template"] ?? obj["workflow"] ?? obj) as JsonValue;
    let inline;
    try {
      inline = fromJson(WorkflowTemplateSchema, raw);
    } catch (err) {
      throw new UsageError(
        `--file ${opts.file}: not a workflow (ensemble.registry.v1.WorkflowTemplate in protobuf JSON): ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    mode = {
      case: "workflow",
      value: { definition: { case: "inline", value: inline }, variables: vars },
    };
  } else if (opts.model !== undefined) {
    mode = { case: "model", value: { model: opts.model } };
  } else if (opts.compare !== undefined) {
    const models = opts.compare
      .split(",")
      .map((m) => m.trim())
      .filter((m) => m !== "");
    if (models.length < 2)
      throw new UsageError("--compare: name at least two models, comma-separated");
    const by = (opts.rankBy ?? "")
      .split(",")
      .filter((c) => c.trim() !== "")
      .map((c) => enumValue(RankCriterion, "--rank-by", c));
    if (opts.rankBy !== undefined && by.length === 0)
      throw new UsageError("--rank-by: name at least one criterion, comma-separated");
    // With neither, the catalog's medium model judges (the bare role aliases are a catalog rule).
    const judgeModel = opts.judge ?? (by.length > 0 ? "" : DEFAULT_JUDGE);
    mode = { case: "compare", value: { models, ranking: { judgeModel, by } } };
  } else if (opts.auto === true) {
    mode = { case: "auto", value: {} };
  }
  return mode;
}

/** --timeout as the spec's deadline. */
export function runTimeout(raw: string): Duration {
  return durationFromMs(parseDuration("--timeout", raw));
}

/** The RunSpec the flags describe (auto when no mode is given), with `input` as the task. */
export async function buildSpec(input: string, opts: RunSpecOptions): Promise<SpecInit> {
  return {
    input,
    mode: (await runMode(opts)) ?? { case: "auto", value: {} },
    ...(opts.system !== undefined ? { system: opts.system } : {}),
    ...(opts.timeout !== undefined ? { timeout: runTimeout(opts.timeout) } : {}),
    metadata: runLabels(opts.label),
  };
}

/** The task: the words given, else stdin when it is not a terminal; empty when neither has one. */
export async function readInput(words: string[], io: Io): Promise<string> {
  let input = words.join(" ").trim();
  if (input === "" && io.stdin.isTTY !== true) {
    for await (const chunk of io.stdin) input += String(chunk);
    input = input.trim();
  }
  return input;
}

/**
 * Adds the flags that say what a run does, as `run` has them (read them with RunSpecOptions).
 * `autoIsDefault`: false where no mode flag means something else (`schedules update` keeps one).
 */
export function addRunSpecOptions(cmd: Command, autoIsDefault = true): Command {
  return cmd
    .option("-t, --template <id>", "a workflow template from the registry (see the catalog)")
    .option("-f, --file <path>", "an inline workflow: YAML or JSON WorkflowTemplate")
    .option("-m, --model <model>", "one model answers")
    .option("-c, --compare <models>", "comma-separated models answer in parallel, then a ranking")
    .option(
      "--judge <model>",
      `with --compare: the model that ranks the answers (default: ${DEFAULT_JUDGE}, unless --rank-by is given)`,
    )
    .option(
      "--rank-by <criteria>",
      "with --compare: rank by latency, cost, shortest, longest, time-to-first-token (comma-separated, first counts most; with --judge they break its ties)",
    )
    .option("--auto", `the categorizer picks the route${autoIsDefault ? " (the default)" : ""}`)
    .option("--var <name=value>", "a workflow variable (repeatable)", collect, [])
    .option("--system <prompt>", "system prompt for every step")
    .option("--timeout <duration>", "the run's deadline, e.g. 90s, 10m")
    .option(
      "--label <key=value>",
      "label the run and its model calls, e.g. team=search (repeatable; see ensemble usage --by label:team)",
      collect,
      [],
    );
}

/** What a spec runs, in a few words: "model sim-fast", "template research_report (a=b)", ... */
export function specSummary(spec: RunSpec | undefined): string {
  const mode = spec?.mode;
  switch (mode?.case) {
    case "workflow": {
      const def = mode.value.definition;
      const what =
        def.case === "templateId"
          ? `template ${def.value}`
          : def.case === "inline"
            ? `inline workflow ${def.value.id || def.value.name || ""}`.trimEnd()
            : "workflow";
      const vars = Object.entries(mode.value.variables).map(([k, v]) => `${k}=${v}`);
      return vars.length > 0 ? `${what} (${vars.join(", ")})` : what;
    }
    case "model":
      return `model ${mode.value.model}`;
    case "compare": {
      const r = mode.value.ranking;
      const how = [
        ...(r?.judgeModel ? [`judged by ${r.judgeModel}`] : []),
        ...((r?.by.length ?? 0) > 0
          ? [`by ${r!.by.map((c) => label(RankCriterion, c).replaceAll("_", "-")).join(",")}`]
          : []),
      ];
      return `compare ${mode.value.models.join(",")}${how.length > 0 ? ` (${how.join(", ")})` : ""}`;
    }
    default:
      return "auto";
  }
}

/** Prints a run's progress as its events arrive: one line per step change, a count of steps done. */
class Progress {
  readonly #out: Output;
  readonly #quiet: boolean;
  #total = 0;
  #done = 0;
  readonly #names = new Map<string, string>();

  constructor(out: Output, quiet: boolean) {
    this.#out = out;
    this.#quiet = quiet;
  }

  /** The run's steps and their names; what is done is counted from the events, which replay from the start. */
  snapshot(run: Run): void {
    this.#total = Math.max(this.#total, run.steps.length);
    for (const step of run.steps) this.#names.set(step.stepId, step.name || step.stepId);
  }

  #say(text: string): void {
    if (!this.#quiet) this.#out.notice(text);
  }

  #count(): string {
    return this.#total > 0 ? `[${this.#done}/${this.#total}]` : `[${this.#done}]`;
  }

  event(e: RunEvent): void {
    const step = this.#names.get(e.stepId) ?? e.stepId;
    const p = e.payload;
    switch (p.case) {
      case "created":
        this.#total = Math.max(this.#total, p.value.plan.length);
        for (const s of p.value.plan) this.#names.set(s.stepId, s.name || s.stepId);
        this.#say(
          `run ${e.runId} created${p.value.templateId ? ` (template ${p.value.templateId})` : ""}`,
        );
        break;
      case "classified": {
        this.#total = Math.max(this.#total, p.value.plan.length);
        for (const s of p.value.plan) this.#names.set(s.stepId, s.name || s.stepId);
        const c = p.value.classification;
        this.#say(
          c !== undefined
            ? `classified: category ${label(Category, c.category)}, route ${c.routeId || "-"} (confidence ${c.confidence.toFixed(2)})`
            : "classified",
        );
        break;
      }
      case "stepStarted": {
        const name = p.value.name || step;
        const models = p.value.model || p.value.models.join(", ");
        this.#say(
          `${this.#count()} ▶ ${e.stepId}${name !== e.stepId ? ` (${name})` : ""}${models ? ` on ${models}` : ""}`,
        );
        break;
      }
      case "stepCompleted":
        this.#done += 1;
        this.#say(
          `${this.#count()} ✓ ${e.stepId} ${seconds(p.value.latency)}, ${Number(p.value.usage?.outputTokens ?? 0n)} tokens`,
        );
        break;
      case "stepFailed":
        this.#say(
          `${this.#count()} ✗ ${e.stepId}: ${p.value.error?.message ?? "failed"}${p.value.willRetry ? " (retrying)" : ""}${p.value.fallbackModel ? ` (falling back to ${p.value.fallbackModel})` : ""}`,
        );
        break;
      case "completed":
        this.#say(`completed in ${seconds(p.value.latency)}, ${usd(p.value.usage?.costUsd ?? 0)}`);
        break;
      case "failed":
        this.#say(`failed: ${p.value.error?.message ?? "unknown error"}`);
        break;
      case "cancelled":
        this.#say("cancelled");
        break;
      default:
        break;
    }
  }
}

/** A compare run's ranking, best first: who answered, and why there. */
function rankingLines(ranking: RankingResult): string[] {
  const how = [
    ...(ranking.judgeModel !== "" ? [`judged by ${ranking.judgeModel}`] : []),
    ...(ranking.by.length > 0
      ? [`by ${ranking.by.map((c) => label(RankCriterion, c).replaceAll("_", "-")).join(", ")}`]
      : []),
  ];
  return [
    `ranking (${how.join(", ")}):`,
    ...ranking.ranked.map(
      (r) => `  ${r.rank}. ${r.model}${r.rationale !== "" ? `: ${r.rationale}` : ""}`,
    ),
    ...(ranking.rationale !== "" ? [ranking.rationale] : []),
  ];
}

/** The run's result files (the output step's), else every step's. */
function artifactsOf(run: Run): Artifact[] {
  return run.artifacts.length > 0 ? run.artifacts : run.steps.flatMap((s) => s.artifacts);
}

/** One line per artifact, with the command that saves it. */
function artifactLines(run: Run): string[] {
  return artifactsOf(run).map(
    (a) =>
      `artifact ${a.id}: ${a.mimeType}, ${bytes(a.sizeBytes)} (save: ensemble runs artifact ${run.id} ${a.id})`,
  );
}

/** "<id>.<ext>"; the id comes from the server, so only portable characters reach the file system. */
function fileName(a: Artifact): string {
  const sub = /^[\w.+-]+\/([\w.-]+)/.exec(a.mimeType.toLowerCase())?.[1];
  const ext = sub === "jpeg" ? "jpg" : sub === undefined || sub === "octet-stream" ? "bin" : sub;
  return `${a.id.replace(/[^\w.-]/g, "_")}.${ext}`;
}

/** Where downloaded artifacts go: into a directory, each under its own name, or to one file. */
type SaveTarget = { dir: string } | { file: string };

interface Saved {
  path: string;
  artifact: Artifact;
}

/**
 * Downloads artifacts with GetArtifact into a directory (each under its own name) or to one
 * file, checks them against their SHA-256 and says on stderr what was saved.
 */
async function saveArtifacts(
  out: Output,
  runs: Client<typeof RunService>,
  runId: string,
  ids: string[],
  target: SaveTarget,
): Promise<Saved[]> {
  if ("file" in target && ids.length > 1) {
    throw new UsageError(
      `--output ${target.file}: the run has ${ids.length} artifacts; name a directory (or one artifact)`,
    );
  }
  if ("dir" in target) await mkdir(target.dir, { recursive: true });
  const saved: Saved[] = [];
  for (const artifactId of ids) {
    const res = await runs.getArtifact({ runId, artifactId });
    if (res.artifact === undefined) throw new Error("the gateway returned no artifact");
    const artifact = res.artifact;
    const sum = createHash("sha256").update(res.data).digest("hex");
    if (artifact.sha256 !== "" && sum !== artifact.sha256) {
      throw new Error(`artifact ${artifactId}: the download does not match its SHA-256`);
    }
    const path = "file" in target ? target.file : join(target.dir, fileName(artifact));
    await writeFile(path, res.data);
    out.notice(`saved ${path} (${artifact.mimeType}, ${bytes(res.data.length)})`);
    saved.push({ path, artifact });
  }
  return saved;
}

/** Every artifact of the run (see artifactsOf); failing with a clear message when it has none. */
function saveAll(
  out: Output,
  runs: Client<typeof RunService>,
  run: Run,
  target: SaveTarget,
): Promise<Saved[]> {
  const ids = artifactsOf(run).map((a) => a.id);
  if (ids.length === 0) {
    throw new Error(
      `run ${run.id} has no artifacts${run.status !== RunStatus.COMPLETED ? ` (it is ${label(RunStatus, run.status)})` : ""}`,
    );
  }
  return saveArtifacts(out, runs, run.id, ids, target);
}

/** The end of a run as a person reads it; sets the exit code of a run that did not complete. */
function finish(out: Output, run: Run | undefined, quiet = false): void {
  if (run === undefined) return;
  if (run.status !== RunStatus.COMPLETED) process.exitCode = 1;
  if (out.json) return;
  if (run.status === RunStatus.COMPLETED && run.ranking !== undefined && !quiet)
    out.notice(rankingLines(run.ranking).join("\n"));
  if (run.status === RunStatus.COMPLETED) {
    out.write(run.output.endsWith("\n") ? run.output : `${run.output}\n`);
    const lines = artifactLines(run);
    if (lines.length > 0 && !quiet) out.notice(lines.join("\n"));
  } else
    out.notice(
      `run ${run.id} ${label(RunStatus, run.status)}${run.error ? `: ${run.error.message}` : ""}`,
    );
}

async function follow(
  out: Output,
  quiet: boolean,
  stream: AsyncIterable<{
    item:
      | { case: "run"; value: Run }
      | { case: "event"; value: RunEvent }
      | { case: undefined; value?: undefined };
  }>,
): Promise<Run | undefined> {
  const progress = new Progress(out, quiet);
  let last: Run | undefined;
  for await (const res of stream) {
    if (res.item.case === "run") {
      last = res.item.value;
      progress.snapshot(last);
      if (out.json) out.line({ run: toJson(RunSchema, last) });
    } else if (res.item.case === "event") {
      if (out.json) out.line({ event: toJson(RunEventSchema, res.item.value) });
      else progress.event(res.item.value);
    }
  }
  return last;
}

function runRow(run: Run): string[] {
  const what =
    run.spec?.mode.case === "workflow"
      ? run.templateId || "inline workflow"
      : run.spec?.mode.case === "model"
        ? run.spec.mode.value.model
        : run.spec?.mode.case === "compare"
          ? run.spec.mode.value.models.join(",")
          : "auto";
  return [
    run.id,
    label(RunStatus, run.status),
    label(RunMode, run.mode),
    what,
    when(run.createTime),
    seconds(run.latency),
    usd(run.usage?.costUsd ?? 0),
  ];
}

function describe(run: Run): string {
  const lines = [
    `run ${run.id}: ${label(RunStatus, run.status)} (${label(RunMode, run.mode)}${run.templateId ? `, template ${run.templateId}` : ""})`,
    `created ${when(run.createTime)}, latency ${seconds(run.latency)}, tokens ${Number(run.usage?.totalTokens ?? 0n)}, cost ${usd(run.usage?.costUsd ?? 0)}`,
  ];
  if (run.scheduleId !== "") lines.push(`started by schedule ${run.scheduleId}`);
  if (run.error !== undefined) lines.push(`error: ${run.error.message}`);
  if (run.steps.length > 0) {
    lines.push(
      "",
      table(
        ["step", "name", "status", "model", "latency", "tokens"],
        run.steps.map((s) => [
          s.stepId,
          s.name || "-",
          label(StepStatus, s.status),
          s.model || s.models.join(","),
          seconds(s.latency),
          String(Number(s.usage?.outputTokens ?? 0n)),
        ]),
      ),
    );
  }
  if (run.ranking !== undefined) lines.push("", ...rankingLines(run.ranking));
  if (run.output !== "") lines.push("", run.output);
  const artifacts = artifactLines(run);
  if (artifacts.length > 0) lines.push("", ...artifacts);
  return lines.join("\n");
}

export function registerRunCommands(program: Command, ctx: Context): void {
  const runCmd = program
    .command("run")
    .description(
      "start a run (template, workflow file, one model, a comparison, or auto) and watch it",
    )
    .argument("[input...]", "the question or task (default: read from stdin)");
  addRunSpecOptions(runCmd)
    .option(
      "-d, --detach",
      "start the run, print its id and return (watch later: ensemble runs watch <id>)",
    )
    .option("-q, --quiet", "no progress lines, only the output")
    .option(
      "--save <dir>",
      "when the run completes, save its artifacts (images) into this directory",
    )
    .addHelpText(
      "after",
      `\nExamples:\n  ensemble run -t research_report "The impact of remote work on city centres"\n  ensemble run -m fast --label team=search --label customer=acme "Draft a reply"\n  ensemble run -m image --save . "A red fox in the snow"\n  ensemble run -f my-workflow.yaml --var audience=engineers "Write the release notes"\n  ensemble run -c fast,thinking "Is P = NP?"\n  ensemble run -c fast,medium --rank-by cost,latency "Summarise RFC 9110 in one line"\n  ensemble run --json -t research_report "..."   # NDJSON: {"run":...} and {"event":...} lines`,
    )
    .action(async (words: string[], opts: RunOptions) => {
      runLabels(opts.label); // checked before the input is read
      const { gw, out } = ctx.get();
      const input = await readInput(words, out.io);
      if (input === "") throw new UsageError("run: no input (give it as arguments or on stdin)");
      const spec = await buildSpec(input, opts);
      const runs = gw.client(RunService);
      if (opts.detach === true) {
        if (opts.save !== undefined)
          throw new UsageError(
            "--save waits for the run to complete; it cannot be used with --detach",
          );
        const res = await runs.startRun({ spec });
        out.result(
          res.run !== undefined ? toJson(RunSchema, res.run) : {},
          () => res.run?.id ?? "",
        );
        return;
      }
      const run = await follow(out, opts.quiet === true, runs.run({ spec }));
      finish(out, run, opts.quiet === true);
      if (opts.save !== undefined && run?.status === RunStatus.COMPLETED)
        await saveAll(out, runs, run, { dir: opts.save });
    });

  const runsCmd = program
    .command("runs")
    .description("list, inspect, watch, cancel and delete runs; save their artifacts");

  runsCmd
    .command("list")
    .description("your recent runs, newest first")
    .option("-n, --limit <n>", "how many", "20")
    .option(
      "--status <status>",
      "only runs in this status (pending, running, completed, failed, cancelled)",
    )
    .option("--schedule <schedule-id>", "only runs this schedule started")
    .option("--label <key=value>", "only runs with this label (repeatable: every one)", collect, [])
    .addHelpText(
      "after",
      `\nExamples:\n  ensemble runs list --status failed\n  ensemble runs list --schedule sch_0123 -n 5\n  ensemble runs list --label team=search`,
    )
    .action(
      async (opts: { limit: string; status?: string; schedule?: string; label: string[] }) => {
        const metadata = runLabels(opts.label, 8);
        const { gw, out } = ctx.get();
        const limit = Number(opts.limit);
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
          throw new UsageError(`--limit ${opts.limit}: expected a whole number from 1 to 1000`);
        }
        const statuses: RunStatus[] = [];
        if (opts.status !== undefined) {
          const value = (RunStatus as unknown as Record<string, number>)[opts.status.toUpperCase()];
          if (value === undefined || value === 0)
            throw new UsageError(`--status ${opts.status}: unknown status`);
          statuses.push(value);
        }
        const res = await gw.client(RunService).listRuns({
          page: { pageSize: limit },
          statuses,
          view: RunView.BASIC,
          scheduleId: opts.schedule ?? "",
          metadata,
        });
        out.result({ runs: res.runs.map((r) => toJson(RunSchema, r)) }, () =>
          table(
            ["id", "status", "mode", "what", "created", "latency", "cost"],
            res.runs.map(runRow),
          ),
        );
      },
    );

  runsCmd
    .command("get")
    .description("one run with its steps, output and artifacts")
    .argument("<run-id>")
    .action(async (runId: string) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(RunService).getRun({ runId, view: RunView.FULL });
      if (res.run === undefined) throw new Error("the gateway returned no run");
      const run = res.run;
      out.result(toJson(RunSchema, run), () => describe(run));
    });

  runsCmd
    .command("watch")
    .description("follow a run's events from its start (replayed), then live, until it ends")
    .argument("<run-id>")
    .option("-q, --quiet", "no progress lines, only the output")
    .action(async (runId: string, opts: { quiet?: boolean }) => {
      const { gw, out } = ctx.get();
      const runs = gw.client(RunService);
      await follow(out, opts.quiet === true, runs.watchRun({ runId, includeSnapshot: true }));
      const res = await runs.getRun({ runId, view: RunView.FULL });
      if (out.json && res.run !== undefined) out.line({ run: toJson(RunSchema, res.run) });
      finish(out, res.run, opts.quiet === true);
    });

  runsCmd
    .command("artifact")
    .description("save a file a run produced (an image), or all of them")
    .argument("<run-id>")
    .argument("[artifact-id]", "one artifact (default: all of the run's)")
    .option(
      "-o, --output <path>",
      "the file to write, or a directory to save into (default: <artifact-id>.<ext> here)",
    )
    .addHelpText(
      "after",
      `\nExamples:\n  ensemble runs artifact <run-id>              # all of them, into the current directory\n  ensemble runs artifact <run-id> -o images/   # all of them, into images/\n  ensemble runs artifact <run-id> <artifact-id> -o fox.png`,
    )
    .action(async (runId: string, artifactId: string | undefined, opts: { output?: string }) => {
      const { gw, out } = ctx.get();
      const runs = gw.client(RunService);
      const path = opts.output;
      const target: SaveTarget =
        path === undefined
          ? { dir: "." }
          : path.endsWith("/") || (await stat(path).catch(() => undefined))?.isDirectory() === true
            ? { dir: path }
            : { file: path };
      let saved: Saved[];
      if (artifactId !== undefined) {
        saved = await saveArtifacts(out, runs, runId, [artifactId], target);
      } else {
        const res = await runs.getRun({ runId, view: RunView.FULL });
        if (res.run === undefined) throw new Error("the gateway returned no run");
        saved = await saveAll(out, runs, res.run, target);
      }
      out.result(
        {
          saved: saved.map((s) => ({ path: s.path, artifact: toJson(ArtifactSchema, s.artifact) })),
        },
        () => "",
      );
    });

  runsCmd
    .command("cancel")
    .description("cancel a run that has not ended")
    .argument("<run-id>")
    .option("--reason <text>", "why (kept on the run)")
    .action(async (runId: string, opts: { reason?: string }) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(RunService).cancelRun({ runId, reason: opts.reason ?? "" });
      out.result(res.run !== undefined ? toJson(RunSchema, res.run) : {}, () =>
        res.run !== undefined
          ? `run ${res.run.id}: ${label(RunStatus, res.run.status)}`
          : "cancelled",
      );
    });

  runsCmd
    .command("delete")
    .description("delete a run that has ended, with its artifacts and events (its usage stays)")
    .argument("<run-id>")
    .action(async (runId: string) => {
      const { gw, out } = ctx.get();
      await gw.client(RunService).deleteRun({ runId });
      out.result({ deleted: runId }, () => `run ${runId} deleted`);
    });
}
