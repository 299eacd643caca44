// tenant settings: the defaults a tenant's admins set for everyone in it (auth's
// GetTenantSettings / UpdateTenantSettings): whether every chat is kept in the call log, and the
// response cache calls use when they do not choose one. model-proxy applies them within its
// BUDGET_CACHE_MS.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import { AuthService, DefaultCache, type TenantSettings } from "@ensemble/proto";
import type { Context } from "./context.js";
import { when } from "./output.js";
import { UsageError } from "./session.js";

/** --cache's words, in the order the help lists them; "default" is the deployment's default. */
const CACHE_WORDS: Record<string, DefaultCache> = {
  default: DefaultCache.UNSPECIFIED,
  off: DefaultCache.OFF,
  exact: DefaultCache.EXACT,
  semantic: DefaultCache.SEMANTIC,
};

function cacheWord(value: DefaultCache): string {
  return Object.keys(CACHE_WORDS).find((w) => CACHE_WORDS[w] === value) ?? String(value);
}

/** "on" / "off" -> true / false; else a UsageError. */
function onOff(raw: string): boolean {
  const text = raw.trim().toLowerCase();
  if (text === "on") return true;
  if (text === "off") return false;
  throw new UsageError(`--log-calls ${raw}: expected on or off`);
}

/** "exact" -> DefaultCache.EXACT, ...; else a UsageError listing the words. */
function cacheValue(raw: string): DefaultCache {
  const value = CACHE_WORDS[raw.trim().toLowerCase()];
  if (value === undefined) {
    throw new UsageError(`--cache ${raw}: expected one of ${Object.keys(CACHE_WORDS).join(", ")}`);
  }
  return value;
}

function settingsJson(s: TenantSettings | undefined): Record<string, unknown> {
  return {
    logCalls: s?.logCalls ?? false,
    defaultCache: cacheWord(s?.defaultCache ?? DefaultCache.UNSPECIFIED),
    updateTime: s?.updateTime !== undefined ? when(s.updateTime) : null,
    updatedBy: s?.updatedBy !== undefined && s.updatedBy !== "" ? s.updatedBy : null,
  };
}

/** The settings as "name  value" lines. */
function describeSettings(s: TenantSettings | undefined): string {
  const cache = s?.defaultCache ?? DefaultCache.UNSPECIFIED;
  const rows: Array<[string, string]> = [
    ["log calls", s?.logCalls === true ? "on (every chat is kept in the call log)" : "off"],
    [
      "cache",
      cache === DefaultCache.UNSPECIFIED
        ? "default (the deployment's)"
        : cacheWord(cache) + (cache === DefaultCache.SEMANTIC ? " (and similar questions)" : ""),
    ],
    [
      "changed",
      s?.updateTime === undefined
        ? "never (the defaults apply)"
        : `${when(s.updateTime)} by user ${s.updatedBy || "?"}`,
    ],
  ];
  return rows.map(([name, value]) => `${name.padEnd(11)}${value}`).join("\n");
}

/** PERMISSION_DENIED from UpdateTenantSettings, saying who may change the settings. */
function explainDenied(err: unknown): unknown {
  const e = ConnectError.from(err);
  if (e.code !== Code.PermissionDenied) return err;
  return new ConnectError(
    `only a tenant admin can change the tenant's settings (with an API key, one with the admin scope): ${e.rawMessage}`,
    Code.PermissionDenied,
  );
}

export function registerTenantCommands(program: Command, ctx: Context): void {
  const tenant = program
    .command("tenant")
    .description("your tenant's settings (admins change them)");

  tenant
    .command("settings")
    .description("print the tenant's settings; with --log-calls / --cache, change them (admin)")
    .option(
      "--log-calls <on|off>",
      "on: keep every chat of the tenant in the call log, as if each were sent with log: true",
    )
    .option(
      "--cache <mode>",
      "the response cache calls use when they do not choose: default (the deployment's), off, exact (identical requests), semantic (identical and similar ones)",
    )
    .addHelpText(
      "after",
      `\nEveryone in the tenant may read the settings; changing them needs a tenant admin (and, with an
API key, its admin scope). The setting not given is kept. model-proxy applies a change within
its BUDGET_CACHE_MS (30s by default). Kept chats are listed by \`ensemble logs list\`.

Examples:
  ensemble tenant settings
  ensemble tenant settings --log-calls on
  ensemble tenant settings --cache semantic
  ensemble tenant settings --log-calls off --cache default
  ensemble --json tenant settings | jq .logCalls`,
    )
    .action(async (opts: { logCalls?: string; cache?: string }) => {
      // Bad values are refused before anything is asked.
      const logCalls = opts.logCalls !== undefined ? onOff(opts.logCalls) : undefined;
      const cache = opts.cache !== undefined ? cacheValue(opts.cache) : undefined;
      const { gw, out } = ctx.get();
      const auth = gw.client(AuthService);
      if (logCalls === undefined && cache === undefined) {
        const res = await auth.getTenantSettings({});
        out.result(settingsJson(res.settings), () => describeSettings(res.settings));
        return;
      }
      // UpdateTenantSettings replaces the settings as a whole: keep the one not given as it is
      // now. (An admin changing it between the two calls would be overwritten; acceptable for a
      // command a person runs.)
      const current =
        logCalls === undefined || cache === undefined
          ? (await auth.getTenantSettings({})).settings
          : undefined;
      const res = await auth
        .updateTenantSettings({
          settings: {
            logCalls: logCalls ?? current?.logCalls ?? false,
            defaultCache: cache ?? current?.defaultCache ?? DefaultCache.UNSPECIFIED,
          },
        })
        .catch((err: unknown) => {
          throw explainDenied(err);
        });
      out.result(settingsJson(res.settings), () => `updated\n${describeSettings(res.settings)}`);
      if (!out.json) {
        out.notice("model-proxy applies the change within its BUDGET_CACHE_MS (30s by default).");
      }
    });
}
