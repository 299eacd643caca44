// The `ensemble` program: global options, the commands, and one place that turns every failure
// into a message and an exit code (0 ok, 1 the call or the run failed, 2 bad usage).
import { Code, ConnectError } from "@connectrpc/connect";
import { Command, CommanderError, Option } from "commander";
import { registerAdminCommands } from "./admin-commands.js";
import { registerAuthCommands } from "./auth-commands.js";
import { registerChatCommand } from "./chat-command.js";
import { Context, DEFAULT_URL } from "./context.js";
import { registerLogsCommands } from "./logs-commands.js";
import type { Io } from "./output.js";
import { registerRunCommands } from "./run-commands.js";
import { registerScheduleCommands } from "./schedule-commands.js";
import { NotLoggedInError, UsageError } from "./session.js";
import { registerTenantCommands } from "./tenant-commands.js";
import { VERSION } from "./version.js";
import { registerWebhookCommands } from "./webhook-commands.js";

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export function buildProgram(io: Io): { program: Command; ctx: Context } {
  const ctx = new Context(io);
  const program = new Command("ensemble")
    .description(
      "Operate Ensemble from a terminal: log in, chat, run workflows (now or on a schedule), manage keys, usage, the tenant's settings and webhooks.",
    )
    .version(VERSION, "-V, --version")
    .addOption(new Option("--url <url>", `the gateway (env ENSEMBLE_URL, default ${DEFAULT_URL})`))
    .addOption(
      new Option(
        "--api-key <key>",
        "use an API key instead of the logged-in session (env ENSEMBLE_API_KEY)",
      ),
    )
    .option("--json", "machine-readable output (JSON; streams as NDJSON)")
    // Settings every subcommand inherits (they are copied when a command is added).
    .exitOverride()
    .showSuggestionAfterError(true)
    .showHelpAfterError("(add --help for usage)")
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    })
    .addHelpText(
      "after",
      `\nStart with:\n  ensemble login -e you@example.com       (or: ensemble signup -e ...)\n  ensemble chat "Hello"\n  ensemble run -t research_report "Your topic"\n\nCredentials: $XDG_CONFIG_HOME/ensemble/credentials.json (mode 0600). Docs: packages/cli/README.md`,
    );
  ctx.bind(program);
  registerAuthCommands(program, ctx);
  registerChatCommand(program, ctx);
  registerRunCommands(program, ctx);
  registerScheduleCommands(program, ctx);
  registerAdminCommands(program, ctx);
  registerLogsCommands(program, ctx);
  registerTenantCommands(program, ctx);
  registerWebhookCommands(program, ctx);
  return { program, ctx };
}

function describeConnectError(err: ConnectError, url: string): string {
  switch (err.code) {
    case Code.Unauthenticated:
      return `not signed in or the credentials were refused (${err.rawMessage}): run \`ensemble login\`, or pass --api-key`;
    case Code.PermissionDenied:
      return `permission denied: ${err.rawMessage}`;
    case Code.Unavailable:
      return /ECONNREFUSED|ENOTFOUND|fetch failed|EAI_AGAIN|socket/i.test(err.rawMessage)
        ? `cannot reach the gateway at ${url} (${err.rawMessage}); check --url / ENSEMBLE_URL`
        : `unavailable: ${err.rawMessage}`;
    default:
      return `${Code[err.code]}: ${err.rawMessage}`;
  }
}

/** Runs the CLI with `argv` (without node and the script) and returns the exit code. */
export async function run(argv: string[], io: Io): Promise<number> {
  const { program, ctx } = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : EXIT_OK;
  } catch (thrown) {
    // Errors raised inside a call (e.g. no session, found by the credential interceptor) arrive
    // wrapped in a ConnectError; report the original.
    const err =
      thrown instanceof ConnectError &&
      (thrown.cause instanceof NotLoggedInError || thrown.cause instanceof UsageError)
        ? thrown.cause
        : thrown;
    if (err instanceof CommanderError) {
      // Commander has already printed its message (and the hint); --help and --version end here too.
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    if (err instanceof UsageError) {
      io.stderr.write(`error: ${err.message}\n(add --help for usage)\n`);
      return EXIT_USAGE;
    }
    if (err instanceof NotLoggedInError) {
      io.stderr.write(`error: ${err.message}\n`);
      return EXIT_FAILED;
    }
    if (err instanceof ConnectError) {
      let url = "the gateway";
      try {
        url = ctx.get().gw.url;
      } catch {
        // the URL itself was the problem; already reported as usage
      }
      io.stderr.write(`error: ${describeConnectError(err, url)}\n`);
      return EXIT_FAILED;
    }
    io.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT_FAILED;
  }
}
