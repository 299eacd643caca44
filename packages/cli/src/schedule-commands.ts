// schedules create / list / get / update / pause / resume / delete: runs the workflow engine
// starts by itself, once at a time or on a cron expression, as the user who created them
// (RunService CreateSchedule, ListSchedules, GetSchedule, UpdateSchedule, PauseSchedule,
// ResumeSchedule, DeleteSchedule). What a schedule runs is the RunSpec `ensemble run` builds, from
// the same flags (run-commands.ts).
import { clone, create, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  RunService,
  RunSpecSchema,
  ScheduleSchema,
  type CreateScheduleRequestSchema,
  type RunSpec,
  type Schedule,
} from "@ensemble/proto";
import type { Context } from "./context.js";
import { table, when } from "./output.js";
import {
  addRunSpecOptions,
  buildSpec,
  runLabels,
  parseDuration,
  readInput,
  runMode,
  runTimeout,
  specSummary,
  variables,
  type RunSpecOptions,
} from "./run-commands.js";
import { UsageError } from "./session.js";

// The same bounds as the schedule requests' validation rules in run.proto, checked here so that a
// bad flag is a usage error (exit 2) naming the flag rather than an INVALID_ARGUMENT.
const MAX_NAME = 128;
const MAX_REASON = 256;
const CRON_SHAPE = /^(@(yearly|annually|monthly|weekly|daily|hourly)|\S+(\s+\S+){4,5})$/;
const ZONE_SHAPE = /^[A-Za-z][A-Za-z0-9_+/-]*$/;
/** Schedules asked for per ListSchedules call while paging (PageRequest allows 500). */
const PAGE_SIZE = 200;
/** Characters of the input shown by `get` (the whole spec is in --json). */
const INPUT_CHARS = 200;

const CRON_EXPECTED =
  "expected five fields (minute hour day-of-month month day-of-week), six with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly";
const AT_EXPECTED =
  "expected an ISO time such as 2030-06-01T09:00:00Z (without a zone: local time) or a time from now such as +10m, +2h, +1d";

interface WhenOptions {
  cron?: string;
  tz?: string;
  at?: string;
}

type WhenInit = MessageInitShape<typeof CreateScheduleRequestSchema>["when"];

/** --at: an ISO time, or "+10m" / "+2h" / "+1d" from now; it must be in the future. */
function atTime(raw: string): Timestamp {
  const text = raw.trim();
  const now = Date.now();
  let ms: number;
  if (text.startsWith("+")) {
    try {
      ms = now + parseDuration("--at", text.slice(1));
    } catch {
      throw new UsageError(`--at ${raw}: ${AT_EXPECTED}`);
    }
  } else {
    // Date.parse alone takes "1" or "June 1" too; an ISO date first keeps the meaning plain.
    ms = /^\d{4}-\d\d-\d\d/.test(text) ? Date.parse(text) : Number.NaN;
    if (Number.isNaN(ms)) throw new UsageError(`--at ${raw}: ${AT_EXPECTED}`);
  }
  if (ms <= now) {
    throw new UsageError(
      `--at ${raw}: ${new Date(ms).toISOString()} is not in the future; give a later time`,
    );
  }
  return timestampFromMs(ms);
}

/** --cron / --tz / --at as the schedule's time; undefined when none is given. */
function whenOf(opts: WhenOptions): WhenInit | undefined {
  if (opts.cron !== undefined && opts.at !== undefined) {
    throw new UsageError("--cron and --at contradict each other: give one");
  }
  if (opts.tz !== undefined && opts.cron === undefined) {
    throw new UsageError("--tz is the time zone of a --cron expression: give --cron with it");
  }
  if (opts.at !== undefined) return { case: "at", value: atTime(opts.at) };
  if (opts.cron === undefined) return undefined;
  const expression = opts.cron.trim();
  if (!CRON_SHAPE.test(expression) || expression.length > 128) {
    throw new UsageError(`--cron ${JSON.stringify(opts.cron)}: ${CRON_EXPECTED}`);
  }
  const timeZone = opts.tz?.trim() ?? "";
  if (timeZone !== "") {
    let known = ZONE_SHAPE.test(timeZone) && timeZone.length <= 64;
    try {
      if (known) new Intl.DateTimeFormat("en-US", { timeZone });
    } catch {
      known = false;
    }
    if (!known) {
      throw new UsageError(
        `--tz ${opts.tz}: expected an IANA time zone such as Europe/Berlin or America/New_York (default UTC)`,
      );
    }
  }
  return { case: "cron", value: { expression, timeZone } };
}

function checkName(flag: string, name: string): string {
  if (name.trim() === "") throw new UsageError(`${flag}: expected a non-empty name`);
  if (name.length > MAX_NAME) {
    throw new UsageError(`${flag}: ${name.length} characters; at most ${MAX_NAME}`);
  }
  return name;
}

/** The schedule's time for people: "0 9 * * 1-5 (Europe/Berlin)", "at 2030-06-01T09:00:00Z". */
function whenText(s: Schedule): string {
  switch (s.when.case) {
    case "cron":
      return `${s.when.value.expression} (${s.when.value.timeZone || "UTC"})`;
    case "at":
      return `at ${when(s.when.value)}`;
    default:
      return "-";
  }
}

/**
 * paused (by a user, or by the engine after occurrences in a row that started no run), error
 * (its latest occurrence started no run), done (a one-time schedule that fired, or a cron
 * expression with no occurrence left), else active.
 */
function stateOf(s: Schedule): "paused" | "error" | "done" | "active" {
  if (s.paused) return "paused";
  if (s.lastError !== "") return "error";
  return s.nextFireTime === undefined ? "done" : "active";
}

/** One line, at most `max` characters. */
function oneLine(text: string, max: number): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}

/** A "name  value" row when there is a value, else none. */
function rowIf(name: string, value: string): Array<[string, string]> {
  return value === "" ? [] : [[name, value]];
}

/** One schedule as "name  value" lines. */
function describeSchedule(s: Schedule): string {
  const spec = s.spec;
  const rows: Array<[string, string]> = [
    ["id", s.id],
    ["name", s.name],
    ["user", s.userId || "-"],
    ["when", whenText(s)],
    ["state", stateOf(s)],
    ...rowIf("paused", s.paused ? `since ${when(s.pauseTime)}` : ""),
    ...rowIf("pause reason", s.paused ? s.pauseReason || "-" : ""),
    ["next fire", when(s.nextFireTime)],
    ["last fire", when(s.lastFireTime)],
    ["last run", s.lastRunId || "-"],
    ["fires", String(s.fireCount)],
    ["last error", s.lastError || "-"],
    ["runs", specSummary(spec)],
    ["input", spec !== undefined ? oneLine(spec.input, INPUT_CHARS) || "-" : "-"],
    ...rowIf("system", oneLine(spec?.system ?? "", INPUT_CHARS)),
    ...rowIf("timeout", spec?.timeout !== undefined ? `${Number(spec.timeout.seconds)}s` : ""),
    ["created", when(s.createTime)],
    ["updated", when(s.updateTime)],
  ];
  const width = Math.max(...rows.map(([name]) => name.length)) + 2;
  return rows.map(([n, v]) => `${n.padEnd(width)}${v}`).join("\n");
}

function scheduleRow(s: Schedule, withUser: boolean): string[] {
  return [
    s.id,
    ...(withUser ? [s.userId] : []),
    s.name,
    whenText(s),
    when(s.nextFireTime),
    when(s.lastFireTime),
    String(s.fireCount),
    stateOf(s),
  ];
}

/** The gateway's errors for these calls, in words. */
function explain(err: unknown, about: { id?: string; all?: boolean; what?: string } = {}): unknown {
  const e = ConnectError.from(err);
  switch (e.code) {
    case Code.NotFound:
      return about.id !== undefined
        ? new Error(`no schedule ${about.id} of yours (\`ensemble schedules list\` shows them)`)
        : err;
    case Code.PermissionDenied:
      return about.all === true
        ? new ConnectError(
            `only a tenant admin can list every user's schedules (--all; with an API key, one with the admin scope): ${e.rawMessage}`,
            Code.PermissionDenied,
          )
        : err;
    case Code.FailedPrecondition:
      // The engine says why (a one-time schedule's time passed while it was paused, ...).
      return about.id !== undefined && /new time/.test(e.rawMessage)
        ? new ConnectError(
            `${e.rawMessage} (\`ensemble schedules update ${about.id} --at TIME\` or \`--cron EXPR\`)`,
            Code.FailedPrecondition,
          )
        : err;
    case Code.Unimplemented:
      return new Error(
        `the workflow engine behind the gateway does not support ${about.what ?? "schedules"} yet (${e.rawMessage})`,
      );
    default:
      return err;
  }
}

/** The schedule an answer carries, else an error. */
function scheduleOf(res: { schedule?: Schedule | undefined }): Schedule {
  if (res.schedule === undefined) throw new Error("the gateway returned no schedule");
  return res.schedule;
}

const SPEC_FLAGS = "-t, -f, -m, -c, --auto, --var, --system, --timeout";

const CREATE_HELP = `
A cron expression has five fields (minute hour day-of-month month day-of-week), six with
seconds first, or is one of @hourly @daily @weekly @monthly @yearly; --tz reads it in an IANA
time zone (default UTC). --at runs it once: an ISO time (without a zone: local time) or a time
from now (+90s, +10m, +2h, +1d). The run flags are those of \`ensemble run\`; each occurrence
starts the run as you, as \`ensemble run -d\` would (watch it with \`ensemble runs watch\`).
After 5 occurrences in a row that started no run (its template or model left the catalog ...)
the engine pauses the schedule and says why (\`ensemble schedules get\`; webhooks: schedule-paused).

Examples:
  ensemble schedules create daily-report --cron "0 9 * * 1-5" --tz Europe/Berlin -t research_report "Our market this week"
  ensemble schedules create reminder --at +2h -m fast "Write a haiku about deadlines"
  ensemble schedules create launch --at 2030-06-01T09:00:00Z -f launch.yaml --var audience=press "Announce it"
  ensemble --json schedules create ping --cron "*/5 * * * *" -m fast "ping" | jq -r .id`;

const UPDATE_HELP = `
Only what you give changes (UpdateSchedule with an update_mask naming it): --name the name;
--cron / --at the time, counted from now (a paused schedule stays paused); INPUT or a run flag
(${SPEC_FLAGS}) what it runs. The engine replaces the run spec as a whole, so the CLI reads
the schedule first and keeps each part you do not give: INPUT alone keeps the mode, system
prompt and timeout; -m MODEL alone keeps the input; --var alone sets those variables of the
schedule's workflow and keeps its others (give -t or -f again to set the variables from scratch).

Examples:
  ensemble schedules update sch_0f3c... --name weekly-report --cron "0 9 * * 1" --tz Europe/Berlin
  ensemble schedules update sch_0f3c... --at +1d
  ensemble schedules update sch_0f3c... -m thinking
  ensemble schedules update sch_0f3c... --var audience=managers
  ensemble schedules update sch_0f3c... "A new question for every occurrence"`;

export function registerScheduleCommands(program: Command, ctx: Context): void {
  const schedules = program
    .command("schedules")
    .description(
      "runs started for you once at a time or on a cron expression: create, list, get, update, pause, resume, delete",
    )
    .addHelpText(
      "after",
      `\nA schedule starts the run \`ensemble run\` would (same flags) at each occurrence, as you.
See \`ensemble schedules create --help\`.`,
    );

  const createCmd = schedules
    .command("create")
    .description("schedule a run: once (--at) or on a cron expression (--cron)")
    .argument("<name>", `what it is for (at most ${MAX_NAME} characters)`)
    .argument("[input...]", "the question or task (default: read from stdin)")
    .option("--cron <expression>", 'fire on this cron expression, e.g. "0 9 * * 1-5"')
    .option("--tz <zone>", "with --cron: the IANA time zone it is read in (default UTC)")
    .option("--at <time>", "fire once, at an ISO time or a time from now (+10m, +2h, +1d)");
  addRunSpecOptions(createCmd)
    .addHelpText("after", CREATE_HELP)
    .action(async (name: string, words: string[], opts: RunSpecOptions & WhenOptions) => {
      // Bad values are refused before anything is sent.
      checkName("<name>", name);
      const at = whenOf(opts);
      if (at === undefined) {
        throw new UsageError("when: give --cron EXPRESSION (with --tz ZONE) or --at TIME");
      }
      const { gw, out } = ctx.get();
      const input = await readInput(words, out.io);
      if (input === "") {
        throw new UsageError("schedules create: no input (give it after the name, or on stdin)");
      }
      const spec = await buildSpec(input, opts);
      const s = scheduleOf(
        await gw
          .client(RunService)
          .createSchedule({ name, spec, when: at })
          .catch((err: unknown) => {
            throw explain(err);
          }),
      );
      out.result(
        toJson(ScheduleSchema, s),
        () => `schedule ${s.id} created\n${describeSchedule(s)}`,
      );
    });

  schedules
    .command("list")
    .description("your schedules (with --all, the tenant's), by next fire time")
    .option("--all", "every user's schedules in the tenant (admin)")
    .option("-n, --limit <n>", "at most this many (default: all)")
    .addHelpText(
      "after",
      `\nstate: active; paused (by a user, or by the engine after 5 occurrences in a row that started no
run: \`ensemble schedules get\` says why); error (the latest occurrence started no run); done
(a one-time schedule that has fired).

Examples:
  ensemble schedules list
  ensemble schedules list --all -n 50
  ensemble --json schedules list | jq -r '.schedules[] | select(.paused) | .id'`,
    )
    .action(async (opts: { all?: boolean; limit?: string }) => {
      let limit = Number.POSITIVE_INFINITY;
      if (opts.limit !== undefined) {
        limit = Number(opts.limit);
        if (!/^\d+$/.test(opts.limit.trim()) || limit < 1) {
          throw new UsageError(`--limit ${opts.limit}: expected a whole number, 1 or more`);
        }
      }
      const { gw, out } = ctx.get();
      const allUsers = opts.all === true;
      const runs = gw.client(RunService);
      const found: Schedule[] = [];
      let token = "";
      do {
        const res = await runs
          .listSchedules({
            allUsers,
            page: { pageSize: Math.min(PAGE_SIZE, limit - found.length), pageToken: token },
          })
          .catch((err: unknown) => {
            throw explain(err, { all: allUsers });
          });
        found.push(...res.schedules);
        token = res.page?.nextPageToken ?? "";
      } while (token !== "" && found.length < limit);
      out.result(
        { schedules: found.map((s) => toJson(ScheduleSchema, s)), nextPageToken: token },
        () =>
          table(
            [
              "id",
              ...(allUsers ? ["user"] : []),
              "name",
              "when",
              "next fire",
              "last fire",
              "fires",
              "state",
            ],
            found.map((s) => scheduleRow(s, allUsers)),
          ),
      );
      if (!out.json && found.length === 0) {
        out.notice(
          'no schedules yet; add one with `ensemble schedules create NAME --cron "0 9 * * *" -m MODEL "..."`',
        );
      }
      if (!out.json && token !== "") out.notice("(more schedules: raise --limit)");
    });

  schedules
    .command("get")
    .description(
      "one schedule: its time, state, what it runs, its last run and error, why it is paused",
    )
    .argument("<id>", "the schedule's id (sch_..., from `ensemble schedules list`)")
    .addHelpText(
      "after",
      `\nExamples:\n  ensemble schedules get sch_0f3c...\n  ensemble --json schedules get sch_0f3c... | jq .spec   # the whole Schedule in protobuf JSON`,
    )
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      const s = scheduleOf(
        await gw
          .client(RunService)
          .getSchedule({ scheduleId: id })
          .catch((err: unknown) => {
            throw explain(err, { id });
          }),
      );
      out.result(toJson(ScheduleSchema, s), () => describeSchedule(s));
    });

  const updateCmd = schedules
    .command("update")
    .description("rename a schedule, give it a new time, or change what it runs")
    .argument("<id>", "the schedule's id (sch_..., from `ensemble schedules list`)")
    .argument("[input...]", "a new question or task")
    .option("--name <name>", "a new name")
    .option("--cron <expression>", "a new cron expression")
    .option("--tz <zone>", "with --cron: the IANA time zone it is read in (default UTC)")
    .option("--at <time>", "fire once instead, at an ISO time or a time from now (+10m, +2h, +1d)");
  addRunSpecOptions(updateCmd, false)
    .addHelpText("after", UPDATE_HELP)
    .action(
      async (
        id: string,
        words: string[],
        opts: RunSpecOptions & WhenOptions & { name?: string },
      ) => {
        if (opts.name !== undefined) checkName("--name", opts.name);
        const at = whenOf(opts);
        const input = words.join(" ").trim();
        const specGiven =
          input !== "" ||
          [
            opts.template,
            opts.file,
            opts.model,
            opts.compare,
            opts.judge,
            opts.rankBy,
            opts.auto,
            opts.system,
            opts.timeout,
          ].some((v) => v !== undefined) ||
          opts.var.length > 0 ||
          opts.label.length > 0;
        if (opts.name === undefined && at === undefined && !specGiven) {
          throw new UsageError(
            `nothing to change: give --name, --cron / --at, or what to run (INPUT, ${SPEC_FLAGS})`,
          );
        }
        // Every flag is checked before anything is read or sent.
        const mode = specGiven ? await runMode(opts) : undefined;
        const vars = variables(opts.var);
        const labels = opts.label.length > 0 ? runLabels(opts.label) : undefined;
        const timeout = opts.timeout !== undefined ? runTimeout(opts.timeout) : undefined;
        const { gw, out } = ctx.get();
        const runs = gw.client(RunService);
        const paths: string[] = [];
        if (opts.name !== undefined) paths.push("name");
        if (at !== undefined) paths.push("when");
        let spec: RunSpec | undefined;
        if (specGiven) {
          paths.push("spec");
          // UpdateSchedule replaces the spec as a whole: start from the schedule's, so that the
          // parts not given here (and those no flag sets: attachments, addons) stay; --label
          // replaces the labels.
          // (A change made between the two calls would be overwritten; fine for a person's command.)
          const current = scheduleOf(
            await runs.getSchedule({ scheduleId: id }).catch((err: unknown) => {
              throw explain(err, { id });
            }),
          );
          spec =
            current.spec !== undefined ? clone(RunSpecSchema, current.spec) : create(RunSpecSchema);
          if (input !== "") spec.input = input;
          if (mode !== undefined) {
            spec.mode = create(RunSpecSchema, { mode }).mode;
          } else if (opts.var.length > 0) {
            if (spec.mode.case !== "workflow") {
              throw new UsageError(
                `--var sets workflow variables, and schedule ${id} runs ${specSummary(current.spec)}: give -t or -f with them`,
              );
            }
            Object.assign(spec.mode.value.variables, vars);
          }
          if (opts.system !== undefined) spec.system = opts.system;
          if (timeout !== undefined) spec.timeout = timeout;
          // The labels given replace the schedule's (its runs carry exactly these).
          if (labels !== undefined) spec.metadata = labels;
        }
        const s = scheduleOf(
          await runs
            .updateSchedule({
              scheduleId: id,
              ...(opts.name !== undefined ? { name: opts.name } : {}),
              ...(spec !== undefined ? { spec } : {}),
              ...(at !== undefined ? { when: at } : {}),
              updateMask: { paths },
            })
            .catch((err: unknown) => {
              throw explain(err, { id, what: "changing schedules" });
            }),
        );
        out.result(
          toJson(ScheduleSchema, s),
          () => `schedule ${s.id} updated\n${describeSchedule(s)}`,
        );
      },
    );

  schedules
    .command("pause")
    .description("stop a schedule firing until it is resumed; it keeps its run and history")
    .argument("<id>", "the schedule's id (sch_..., from `ensemble schedules list`)")
    .option("--reason <text>", `why (shown by get; at most ${MAX_REASON} characters)`)
    .addHelpText(
      "after",
      `\nPausing tells the tenant's webhooks that want schedule-paused. Pausing a paused schedule
changes nothing.

Examples:
  ensemble schedules pause sch_0f3c... --reason "holidays"
  ensemble schedules resume sch_0f3c...`,
    )
    .action(async (id: string, opts: { reason?: string }) => {
      const reason = opts.reason ?? "";
      if (reason.length > MAX_REASON) {
        throw new UsageError(`--reason: ${reason.length} characters; at most ${MAX_REASON}`);
      }
      const { gw, out } = ctx.get();
      const s = scheduleOf(
        await gw
          .client(RunService)
          .pauseSchedule({ scheduleId: id, reason })
          .catch((err: unknown) => {
            throw explain(err, { id, what: "pausing schedules" });
          }),
      );
      out.result(
        toJson(ScheduleSchema, s),
        () => `schedule ${s.id} paused\n${describeSchedule(s)}`,
      );
    });

  schedules
    .command("resume")
    .description("let a paused schedule fire again, from its next occurrence after now")
    .argument("<id>", "the schedule's id (sch_..., from `ensemble schedules list`)")
    .addHelpText(
      "after",
      `\nOccurrences that fell while it was paused are not fired. A one-time schedule whose time passed
while it was paused cannot resume: give it a new time (ensemble schedules update ID --at TIME).

Example:
  ensemble schedules resume sch_0f3c...`,
    )
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      const s = scheduleOf(
        await gw
          .client(RunService)
          .resumeSchedule({ scheduleId: id })
          .catch((err: unknown) => {
            throw explain(err, { id, what: "resuming schedules" });
          }),
      );
      out.result(
        toJson(ScheduleSchema, s),
        () => `schedule ${s.id} resumed\n${describeSchedule(s)}`,
      );
    });

  schedules
    .command("delete")
    .description("delete a schedule; runs it already started go on")
    .argument("<id>", "the schedule's id (sch_..., from `ensemble schedules list`)")
    .addHelpText("after", `\nExample:\n  ensemble schedules delete sch_0f3c...`)
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      await gw
        .client(RunService)
        .deleteSchedule({ scheduleId: id })
        .catch((err: unknown) => {
          throw explain(err, { id });
        });
      out.result({ deleted: id }, () => `schedule ${id} deleted`);
    });
}
