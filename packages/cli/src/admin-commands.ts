// keys create/list/get/update/roll/revoke, models, usage.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  ApiKeyScope,
  AuthService,
  ModelProxyService,
  ModelRole,
  RegistryService,
  UsageDimension,
  UsageOperation,
  type ApiKey,
  type ApiKeyLimits,
  type ApiKeyLimitsSchema,
  type Usage,
} from "@ensemble/proto";
import type { Context } from "./context.js";
import {
  collect,
  enumValue,
  keyValues,
  label,
  table,
  usd,
  when,
  type Output,
  type PairLimits,
} from "./output.js";
import { UsageError, type Gateway } from "./session.js";

/** "30d", "12h", "90m" -> ms; else a UsageError naming `flag` and saying what it expects. */
function durationFlagMs(flag: string, raw: string, expected: string): number {
  const m = /^(\d+)([mhd])$/.exec(raw.trim());
  if (m === null) throw new UsageError(`${flag} ${raw}: expected ${expected}`);
  return Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "m"];
}

function ttlMs(raw: string): number {
  return durationFlagMs("--ttl", raw, "a lifetime like 90m, 12h, 30d");
}

// RollApiKeyRequest.previous_valid_for's bound in auth.proto, checked here so that too long a
// --grace is a usage error (exit 2) naming the flag rather than an INVALID_ARGUMENT from auth.
const MAX_GRACE_MS = 7 * 86_400_000;

/** "1h", "90m", "7d" -> ms (0 allowed: the old secret stops now); at most 7 days. */
function graceMs(raw: string): number {
  const expected = "how long the old secret keeps working, like 90m, 1h, 7d (at most 7d)";
  const ms = durationFlagMs("--grace", raw, expected);
  if (ms > MAX_GRACE_MS) {
    throw new UsageError(`--grace ${raw}: the old secret may keep working at most 7d (168h)`);
  }
  return ms;
}

// The same bounds as ApiKeyLimits' validation rules in auth.proto, checked here so that a bad
// flag is a usage error (exit 2) naming the flag rather than an INVALID_ARGUMENT from auth.
const MAX_BUDGET_USD = 1_000_000_000;
const MAX_MODELS = 100;
const MAX_MODEL_NAME = 128;
const MAX_RPM = 1_000_000;
const MAX_TPM = 1_000_000_000;

/** "5", "12.50", "$5" -> USD per month; else a UsageError saying what is expected. */
function budgetUsd(raw: string): number {
  const text = raw.trim().replace(/^\$/, "");
  const value = Number(text);
  if (!/^(\d+(\.\d*)?|\.\d+)$/.test(text) || value > MAX_BUDGET_USD) {
    throw new UsageError(
      `--budget ${raw}: expected USD per month, a number from 0 to ${MAX_BUDGET_USD} such as 5 or 12.50 (0 blocks paid calls)`,
    );
  }
  return value;
}

/** "60" -> 60 (--rpm) or "90000" -> 90000 (--tpm): a whole number within the proto's bounds. */
function perMinute(flag: "--rpm" | "--tpm", raw: string): number {
  const max = flag === "--rpm" ? MAX_RPM : MAX_TPM;
  const what = flag === "--rpm" ? "requests" : "tokens";
  const text = raw.trim();
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > max) {
    throw new UsageError(
      `${flag} ${raw}: expected ${what} per minute, a whole number from 1 to ${max} such as ${flag === "--rpm" ? 60 : 90000}`,
    );
  }
  return value;
}

/** A --flag / --no-flag pair as commander gives it: undefined (neither), null (--no-flag), a value. */
function orRemoved<T>(
  raw: string | false | undefined,
  parse: (raw: string) => T,
): T | null | undefined {
  return raw === undefined ? undefined : raw === false ? null : parse(raw);
}

/** One limit after an update: the key's own when not named, none when removed, else the new one. */
function kept<T>(given: T | null | undefined, current: T | undefined): T | undefined {
  return given === undefined ? current : given === null ? undefined : given;
}

/** "fast, sim-embed" -> ["fast", "sim-embed"] (duplicates dropped); else a UsageError. */
function modelNames(raw: string): string[] {
  const names = [...new Set(raw.split(",").map((s) => s.trim()))].filter((s) => s !== "");
  if (names.length === 0) {
    throw new UsageError(
      `--models ${JSON.stringify(raw)}: expected catalog model ids or aliases, comma-separated, e.g. fast,sim-embed`,
    );
  }
  if (names.length > MAX_MODELS) {
    throw new UsageError(`--models: at most ${MAX_MODELS} models (${names.length} given)`);
  }
  const long = names.find((n) => n.length > MAX_MODEL_NAME);
  if (long !== undefined) {
    throw new UsageError(
      `--models: ${long.slice(0, 40)}...: a model name has at most ${MAX_MODEL_NAME} characters`,
    );
  }
  return names;
}

/** The models a key may call, for people: "all" or "fast,sim-embed". */
function modelsText(limits: ApiKeyLimits | undefined): string {
  return limits === undefined || limits.models.length === 0 ? "all" : limits.models.join(",");
}

/** A key's monthly limit, for people: "-" (none) or "$5.00". */
function budgetText(limits: ApiKeyLimits | undefined): string {
  const v = limits?.monthlyLimitUsd;
  if (v === undefined) return "-";
  // Whole cents as $5.00; a finer limit in full rather than rounded to something it is not.
  const cents = Math.round(v * 100);
  return Math.abs(v * 100 - cents) < 1e-6 ? `$${(cents / 100).toFixed(2)}` : `$${v}`;
}

/** A key's pace, for people: "-" (none), "60 rpm", "60 rpm, 9000 tpm". */
function rateText(limits: ApiKeyLimits | undefined): string {
  const parts = [
    ...(limits?.requestsPerMinute !== undefined ? [`${limits.requestsPerMinute} rpm`] : []),
    ...(limits?.tokensPerMinute !== undefined ? [`${limits.tokensPerMinute} tpm`] : []),
  ];
  return parts.length === 0 ? "-" : parts.join(", ");
}

/**
 * This UTC calendar month as [start, end): the period model-proxy counts a key's spend over and
 * holds against its monthly budget.
 */
function thisMonth(now: number): { start: number; end: number } {
  const d = new Date(now);
  return {
    start: Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1),
    end: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1),
  };
}

// A slow model-proxy must not hold up the keys themselves, which come from auth.
const SPEND_TIMEOUT_MS = 10_000;

/** USD spent this month per API key id, or why it is not known. */
type MonthSpend = { byKey: Map<string, number> } | { unknown: string };

/**
 * This month's spend per API key, from one GetUsage call grouped by key. `scope` is whose usage
 * is counted: the caller's own (GetUsage's default), the tenant's (all_users, admin), or one
 * user's key. Never throws: when model-proxy cannot answer, the keys are still worth printing.
 */
async function monthSpend(
  gw: Gateway,
  scope: { allUsers: boolean } | { userId: string; apiKeyId: string },
): Promise<MonthSpend> {
  const { start, end } = thisMonth(Date.now());
  try {
    const res = await gw.client(ModelProxyService).getUsage(
      {
        startTime: timestampFromMs(start),
        endTime: timestampFromMs(end),
        groupBy: [UsageDimension.API_KEY],
        ...scope,
      },
      { timeoutMs: SPEND_TIMEOUT_MS },
    );
    return { byKey: new Map(res.buckets.map((b) => [b.apiKeyId, b.usage?.costUsd ?? 0])) };
  } catch (err) {
    const e = ConnectError.from(err);
    return { unknown: `${Code[e.code]}: ${e.rawMessage}` };
  }
}

/** A key's spend from `spend`: USD, or null when unknown. */
function spentBy(spend: MonthSpend, key: ApiKey): number | null {
  return "unknown" in spend ? null : (spend.byKey.get(key.id) ?? 0);
}

function warnSpendUnknown(out: Output, spend: MonthSpend): void {
  if ("unknown" in spend) {
    out.notice(`note: this month's spend is unknown (shown as ?): ${spend.unknown}`);
  }
}

/** A key's spend this month, for people: "$1.23", "<$0.01 of $5.00", "? of $5.00". */
function spentText(spent: number | null, limits: ApiKeyLimits | undefined): string {
  const amount =
    spent === null
      ? "?"
      : spent === 0
        ? "$0.00"
        : // A few chat calls cost fractions of a cent: say that there was spend, not "$0.00".
          spent < 0.005
          ? "<$0.01"
          : `$${spent.toFixed(2)}`;
  return limits?.monthlyLimitUsd === undefined ? amount : `${amount} of ${budgetText(limits)}`;
}

/** A key as JSON; `spent` (list, get): its spend this month, null when unknown. */
function keyJson(key: ApiKey, spent?: number | null): Record<string, unknown> {
  return {
    id: key.id,
    name: key.name,
    prefix: key.prefix,
    scopes: key.scopes.map((s) => label(ApiKeyScope, s)),
    userId: key.userId,
    limits: {
      models: key.limits?.models ?? [],
      monthlyLimitUsd: key.limits?.monthlyLimitUsd ?? null,
      requestsPerMinute: key.limits?.requestsPerMinute ?? null,
      tokensPerMinute: key.limits?.tokensPerMinute ?? null,
    },
    ...(spent !== undefined ? { spentThisMonthUsd: spent } : {}),
    created: when(key.createTime),
    expires: key.expireTime !== undefined ? when(key.expireTime) : null,
    lastUsed: key.lastUsedTime !== undefined ? when(key.lastUsedTime) : null,
    revoked: key.revokeTime !== undefined ? when(key.revokeTime) : null,
    rolled: key.rollTime !== undefined ? when(key.rollTime) : null,
    // Set after a roll with a grace, while the old secret still works.
    previousSecretExpires:
      key.previousSecretExpireTime !== undefined ? when(key.previousSecretExpireTime) : null,
  };
}

/** A "name  value" line of describeKey when there is a value, else none. */
function rowIf(name: string, value: string | undefined): Array<[string, string]> {
  return value === undefined ? [] : [[name, value]];
}

/** One key as "name  value" lines (keys get, keys update); `spent` (keys get) as in keyJson. */
function describeKey(key: ApiKey, spent?: number | null): string {
  const rows: Array<[string, string]> = [
    ["id", key.id],
    ["name", key.name],
    ["prefix", key.prefix],
    ["scopes", key.scopes.map((s) => label(ApiKeyScope, s)).join(",")],
    ["models", modelsText(key.limits)],
    ["budget/month", budgetText(key.limits)],
    ...(spent !== undefined
      ? [["spent/month", spentText(spent, key.limits)] satisfies [string, string]]
      : []),
    ["requests/min", key.limits?.requestsPerMinute?.toString() ?? "-"],
    ["tokens/min", key.limits?.tokensPerMinute?.toString() ?? "-"],
    ["created", when(key.createTime)],
    ["expires", when(key.expireTime)],
    ["last used", when(key.lastUsedTime)],
    ...rowIf("rolled", key.rollTime !== undefined ? when(key.rollTime) : undefined),
    ...rowIf(
      "old secret",
      key.previousSecretExpireTime !== undefined
        ? `works until ${when(key.previousSecretExpireTime)}`
        : undefined,
    ),
    ["state", key.revokeTime !== undefined ? `revoked ${when(key.revokeTime)}` : "active"],
  ];
  return rows.map(([name, value]) => `${name.padEnd(13)}${value}`).join("\n");
}

/**
 * Names in --models that nothing callable here answers: a key limited to a misspelt model can
 * call nothing, so say so (a notice, not an error: the catalog may gain the model later).
 * Best effort: when model-proxy cannot be asked, nothing is said.
 */
async function warnUnknownModels(gw: Gateway, out: Output, names: string[]): Promise<void> {
  let known: Set<string>;
  try {
    const res = await gw.client(ModelProxyService).listCallableModels({});
    known = new Set([...res.models.map((m) => m.id), ...Object.keys(res.aliases)]);
  } catch {
    return;
  }
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length > 0) {
    out.notice(
      `note: nothing callable here is named ${unknown.join(", ")}; the key cannot call ${unknown.length === 1 ? "it" : "them"} (see \`ensemble models\`)`,
    );
  }
}

/** GetUsageRequest.metadata's and metadata_key's bounds in modelproxy.proto (--label, --by). */
const USAGE_LABELS: PairLimits = { pairs: 8, keyChars: 64, valueChars: 256 };
const LABEL_DIMENSION = "label:";
const BY_CHOICES = "day, hour, model, user, api-key, provider, operation, label:<key>";

/**
 * --by "day,label:team" -> the dimensions in order and the label key grouped by ("" when none).
 * GetUsage has one metadata_key, so at most one label:<key>; else a UsageError.
 */
function usageGrouping(raw: string): { groupBy: UsageDimension[]; labelKey: string } {
  const groupBy: UsageDimension[] = [];
  const keys: string[] = [];
  for (const word of raw.split(",").map((s) => s.trim())) {
    if (word === "") continue;
    if (word.toLowerCase().startsWith(LABEL_DIMENSION)) {
      const key = word.slice(LABEL_DIMENSION.length).trim();
      if (key === "" || key.length > USAGE_LABELS.keyChars) {
        throw new UsageError(
          `--by ${word}: expected label:<key>, a key of 1 to ${USAGE_LABELS.keyChars} characters, e.g. label:team`,
        );
      }
      keys.push(key);
      groupBy.push(UsageDimension.METADATA);
      continue;
    }
    let dim: UsageDimension;
    try {
      dim = enumValue(UsageDimension, "--by", word);
    } catch {
      throw new UsageError(`--by ${word}: expected one of ${BY_CHOICES}`);
    }
    // The API's word for it; the CLI's names the label.
    if (dim === UsageDimension.METADATA) {
      throw new UsageError(
        `--by ${word}: name the label to group by, as label:<key>, e.g. label:team`,
      );
    }
    groupBy.push(dim);
  }
  if (keys.length > 1) {
    throw new UsageError(
      `--by: at most one label:<key> (usage is grouped by one label at a time; ${keys.map((k) => LABEL_DIMENSION + k).join(", ")} given)`,
    );
  }
  return { groupBy, labelKey: keys[0] ?? "" };
}

/**
 * A Usage's figures for `usage`: cached and cache-write input tokens are parts of the input
 * tokens, reasoning tokens part of the output tokens (not on top of them).
 */
function tokenFigures(u: Usage | undefined) {
  return {
    inputTokens: Number(u?.inputTokens ?? 0n),
    cachedInputTokens: Number(u?.cachedInputTokens ?? 0n),
    cacheWriteInputTokens: Number(u?.cacheWriteInputTokens ?? 0n),
    outputTokens: Number(u?.outputTokens ?? 0n),
    reasoningTokens: Number(u?.reasoningTokens ?? 0n),
    costUsd: u?.costUsd ?? 0,
  };
}

/** "1200 of 2000 input tokens cached (60%)", for the usage total line. */
function cachedShare(t: { inputTokens: number; cachedInputTokens: number }): string {
  const share = t.inputTokens > 0 ? Math.round((t.cachedInputTokens / t.inputTokens) * 100) : 0;
  return `${t.cachedInputTokens} of ${t.inputTokens} input tokens cached (${share}%)`;
}

/** A catalog price for people: 0.10, 2.50, and in full when finer than cents (0.025, 0.275). */
function perMtok(value: number): string {
  const cents = value.toFixed(2);
  return Number(cents) === value ? cents : String(Number(value.toFixed(6)));
}

export function registerAdminCommands(program: Command, ctx: Context): void {
  const keys = program
    .command("keys")
    .description(
      "API keys: create (shown once), list, get, update (name, limits), roll (new secret), revoke",
    );

  keys
    .command("create")
    .description("create an API key; its secret is printed once and never again")
    .argument("<name>", "what the key is for")
    .option("--scope <scopes>", "comma-separated: read, write, admin (default read,write)")
    .option("--ttl <lifetime>", "expires after e.g. 90d (default: never)")
    .option(
      "--models <ids>",
      "comma-separated catalog model ids or aliases the key may call (default: every model)",
    )
    .option(
      "--budget <usd>",
      "USD the key may spend per calendar month (UTC), e.g. 5; 0 blocks paid calls (default: no limit of its own)",
    )
    .option(
      "--rpm <n>",
      "model calls per minute the key may make, 1 or more (default: no limit of its own)",
    )
    .option(
      "--tpm <n>",
      "tokens per minute the key's model calls may use, 1 or more (default: no limit of its own)",
    )
    .addHelpText(
      "after",
      `\nThe key's limits come on top of its owner's and the tenant's budgets. Over --rpm or --tpm,\nmodel-proxy refuses a call with ResourceExhausted and says when to retry.\n\nExample:\n  ensemble keys create ci --models fast,sim-embed --budget 5 --rpm 60 --tpm 90000`,
    )
    .action(
      async (
        name: string,
        opts: {
          scope?: string;
          ttl?: string;
          models?: string;
          budget?: string;
          rpm?: string;
          tpm?: string;
        },
      ) => {
        const scopes = (opts.scope ?? "")
          .split(",")
          .filter((s) => s.trim() !== "")
          .map((s) => enumValue(ApiKeyScope, "--scope", s));
        const ttl = opts.ttl !== undefined ? durationFromMs(ttlMs(opts.ttl)) : undefined;
        const models = opts.models !== undefined ? modelNames(opts.models) : undefined;
        const budget = opts.budget !== undefined ? budgetUsd(opts.budget) : undefined;
        const rpm = opts.rpm !== undefined ? perMinute("--rpm", opts.rpm) : undefined;
        const tpm = opts.tpm !== undefined ? perMinute("--tpm", opts.tpm) : undefined;
        const { gw, out } = ctx.get();
        const res = await gw.client(AuthService).createApiKey({
          name,
          scopes,
          ...(ttl !== undefined ? { ttl } : {}),
          ...(models !== undefined || budget !== undefined || rpm !== undefined || tpm !== undefined
            ? {
                limits: {
                  models: models ?? [],
                  ...(budget !== undefined ? { monthlyLimitUsd: budget } : {}),
                  ...(rpm !== undefined ? { requestsPerMinute: rpm } : {}),
                  ...(tpm !== undefined ? { tokensPerMinute: tpm } : {}),
                },
              }
            : {}),
        });
        if (res.apiKey === undefined) throw new Error("auth returned no key");
        const key = res.apiKey;
        if (models !== undefined) await warnUnknownModels(gw, out, models);
        out.result({ ...keyJson(key), secret: res.secret }, () => {
          out.notice("The secret is shown only now; store it safely (e.g. as ENSEMBLE_API_KEY).");
          return `${res.secret}\n(id ${key.id}, name ${key.name}; models: ${modelsText(key.limits)}; budget/month: ${budgetText(key.limits)}; rate: ${rateText(key.limits)})`;
        });
      },
    );

  keys
    .command("list")
    .description("your API keys (never their secrets), with what each has spent this month")
    .option("--all", "every user's keys in the tenant (admin)")
    .option("--revoked", "include revoked keys")
    .action(async (opts: { all?: boolean; revoked?: boolean }) => {
      const { gw, out } = ctx.get();
      const allUsers = opts.all === true;
      // The spend of the same users' keys as those listed: the caller's own, or with --all (which
      // auth allows admins only) the tenant's. Asked at the same time as the keys.
      const [res, spend] = await Promise.all([
        gw.client(AuthService).listApiKeys({
          allUsers,
          includeRevoked: opts.revoked === true,
          page: { pageSize: 100 },
        }),
        monthSpend(gw, { allUsers }),
      ]);
      warnSpendUnknown(out, spend);
      out.result({ apiKeys: res.apiKeys.map((k) => keyJson(k, spentBy(spend, k))) }, () =>
        table(
          [
            "id",
            "name",
            "prefix",
            "scopes",
            "models",
            "spent (month)",
            "rate",
            "created",
            "last used",
            "state",
          ],
          res.apiKeys.map((k) => [
            k.id,
            k.name,
            k.prefix,
            k.scopes.map((s) => label(ApiKeyScope, s)).join(","),
            modelsText(k.limits),
            spentText(spentBy(spend, k), k.limits),
            rateText(k.limits),
            when(k.createTime),
            when(k.lastUsedTime),
            k.revokeTime !== undefined ? "revoked" : "active",
          ]),
        ),
      );
    });

  keys
    .command("get")
    .description(
      "one API key (never its secret): scopes, limits, this month's spend, when it was last used",
    )
    .argument("<key-id>")
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(AuthService).getApiKey({ id });
      if (res.apiKey === undefined) throw new Error("auth returned no key");
      const key = res.apiKey;
      // By the key's owner: an admin may be looking at another user's key.
      const spend = await monthSpend(gw, { userId: key.userId, apiKeyId: key.id });
      warnSpendUnknown(out, spend);
      const spent = spentBy(spend, key);
      out.result(keyJson(key, spent), () => describeKey(key, spent));
    });

  const update = keys
    .command("update")
    .description("rename an API key or change its limits")
    .argument("<key-id>")
    .option("--name <name>", "a new name")
    .option("--models <ids>", "comma-separated catalog model ids or aliases the key may call")
    .option("--all-models", "let the key call every model")
    .option("--budget <usd>", "USD the key may spend per calendar month (UTC); 0 blocks paid calls")
    .option("--no-budget", "remove the key's own monthly limit")
    .option("--rpm <n>", "model calls per minute the key may make, 1 or more")
    .option("--no-rpm", "remove the key's own requests-per-minute limit")
    .option("--tpm <n>", "tokens per minute the key's model calls may use, 1 or more")
    .option("--no-tpm", "remove the key's own tokens-per-minute limit")
    .addHelpText(
      "after",
      `\nThe part of the limits not named is kept: --budget alone keeps the models and the per-minute\nlimits, --rpm alone keeps the models, the budget and the tokens per minute. model-proxy applies\nnew limits within its BUDGET_CACHE_MS (30s by default).\n\nExamples:\n  ensemble keys update <key-id> --budget 20\n  ensemble keys update <key-id> --rpm 120 --no-tpm\n  ensemble keys update <key-id> --all-models --no-budget --no-rpm --no-tpm`,
    );
  // --budget and --no-budget set the same value (the last one given wins in commander); record
  // which were given so that both together are refused rather than one silently ignored. The
  // same for --rpm / --no-rpm and --tpm / --no-tpm.
  const limitFlags = { budget: new Set<string>(), rpm: new Set<string>(), tpm: new Set<string>() };
  for (const [limit, given] of Object.entries(limitFlags)) {
    update.on(`option:${limit}`, () => given.add(`--${limit}`));
    update.on(`option:no-${limit}`, () => given.add(`--no-${limit}`));
  }
  update.action(
    async (
      id: string,
      opts: {
        name?: string;
        models?: string;
        allModels?: boolean;
        budget?: string | false;
        rpm?: string | false;
        tpm?: string | false;
      },
    ) => {
      if (opts.models !== undefined && opts.allModels === true) {
        throw new UsageError("--models and --all-models contradict each other: give one");
      }
      for (const [limit, given] of Object.entries(limitFlags)) {
        if (given.size > 1) {
          throw new UsageError(`--${limit} and --no-${limit} contradict each other: give one`);
        }
      }
      if (opts.name !== undefined && opts.name.trim() === "") {
        throw new UsageError("--name: expected a non-empty name");
      }
      // undefined: keep what the key has; null: remove the key's own limit.
      const models =
        opts.allModels === true
          ? []
          : opts.models !== undefined
            ? modelNames(opts.models)
            : undefined;
      const budget = orRemoved(opts.budget, budgetUsd);
      const rpm = orRemoved(opts.rpm, (raw) => perMinute("--rpm", raw));
      const tpm = orRemoved(opts.tpm, (raw) => perMinute("--tpm", raw));
      const limitsGiven =
        models !== undefined || budget !== undefined || rpm !== undefined || tpm !== undefined;
      if (opts.name === undefined && !limitsGiven) {
        throw new UsageError(
          "nothing to change: give --name or a limit (--models / --all-models, --budget / --no-budget, --rpm / --no-rpm, --tpm / --no-tpm)",
        );
      }
      const { gw, out } = ctx.get();
      const auth = gw.client(AuthService);
      let limits: MessageInitShape<typeof ApiKeyLimitsSchema> | undefined;
      if (limitsGiven) {
        // UpdateApiKey replaces the limits as a whole: keep the part not named from the key as
        // it is now. (Someone changing that part between the two calls would be overwritten;
        // acceptable for a command a person runs.)
        const current =
          models === undefined || budget === undefined || rpm === undefined || tpm === undefined
            ? (await auth.getApiKey({ id })).apiKey?.limits
            : undefined;
        const keptBudget = kept(budget, current?.monthlyLimitUsd);
        const keptRpm = kept(rpm, current?.requestsPerMinute);
        const keptTpm = kept(tpm, current?.tokensPerMinute);
        limits = {
          models: models ?? current?.models ?? [],
          ...(keptBudget !== undefined ? { monthlyLimitUsd: keptBudget } : {}),
          ...(keptRpm !== undefined ? { requestsPerMinute: keptRpm } : {}),
          ...(keptTpm !== undefined ? { tokensPerMinute: keptTpm } : {}),
        };
      }
      const res = await auth.updateApiKey({
        id,
        ...(opts.name !== undefined ? { name: opts.name } : {}),
        ...(limits !== undefined ? { limits } : {}),
      });
      if (res.apiKey === undefined) throw new Error("auth returned no key");
      const key = res.apiKey;
      if (models !== undefined && models.length > 0) await warnUnknownModels(gw, out, models);
      out.result(keyJson(key), () => `updated ${key.id}\n${describeKey(key)}`);
    },
  );

  keys
    .command("roll")
    .description(
      "give an API key a new secret, printed once; its id, name, scopes, limits and usage stay",
    )
    .argument("<key-id>")
    .option(
      "--grace <duration>",
      "how long the old secret keeps working, e.g. 1h, at most 7d (default: it stops now)",
    )
    .addHelpText(
      "after",
      `\nRolling replaces a secret that may have leaked, or rotates it on a schedule, without a new key:\nthe key keeps its id, scopes, limits and usage history. With --grace the old secret keeps\nworking until then, so that its clients can switch without an outage; without it the old secret\nstops at once (a gateway may still accept it for its key cache time, 30 s by default). Only the\nlatest old secret is kept: rolling again ends the grace of the one before.\n\nExamples:\n  ensemble keys roll <key-id> --grace 1h\n  ensemble keys roll <key-id>\n  ensemble --json keys roll <key-id> --grace 7d | jq -r .secret`,
    )
    .action(async (id: string, opts: { grace?: string }) => {
      const grace = opts.grace !== undefined ? graceMs(opts.grace) : 0;
      const { gw, out } = ctx.get();
      const res = await gw.client(AuthService).rollApiKey({
        id,
        ...(grace > 0 ? { previousValidFor: durationFromMs(grace) } : {}),
      });
      if (res.apiKey === undefined) throw new Error("auth returned no key");
      const key = res.apiKey;
      out.result({ ...keyJson(key), secret: res.secret }, () => {
        out.notice("The secret is shown only now; store it safely (e.g. as ENSEMBLE_API_KEY).");
        const old =
          key.previousSecretExpireTime !== undefined
            ? `the old secret works until ${when(key.previousSecretExpireTime)}`
            : "the old secret no longer works";
        return `${res.secret}\n(id ${key.id}, name ${key.name}; ${old})`;
      });
    });

  keys
    .command("revoke")
    .description("revoke an API key (refused everywhere within the gateway's key cache time)")
    .argument("<key-id>")
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(AuthService).revokeApiKey({ id });
      out.result(res.apiKey !== undefined ? keyJson(res.apiKey) : { id }, () => `revoked ${id}`);
    });

  program
    .command("models")
    .description("the model catalog: ids, providers, roles, context windows and prices")
    .option("--provider <name>", "only this provider's models")
    .option("--role <role>", "only models with this role (fast, medium, thinking, ...)")
    .action(async (opts: { provider?: string; role?: string }) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(RegistryService).listModels({
        provider: opts.provider ?? "",
        ...(opts.role !== undefined ? { role: enumValue(ModelRole, "--role", opts.role) } : {}),
        page: { pageSize: 500 },
      });
      out.result(
        {
          models: res.models.map((m) => ({
            id: m.id,
            provider: m.provider,
            displayName: m.displayName,
            aliases: m.aliases,
            roles: m.roles.map((r) => label(ModelRole, r)),
            contextWindow: m.contextWindow,
            inputPricePerMtok: m.inputPricePerMtok,
            outputPricePerMtok: m.outputPricePerMtok,
            // Unset means the input price: left out rather than repeated, as the catalog has it.
            ...(m.cachedInputPricePerMtok !== undefined
              ? { cachedInputPricePerMtok: m.cachedInputPricePerMtok }
              : {}),
            ...(m.cacheWritePricePerMtok !== undefined
              ? { cacheWritePricePerMtok: m.cacheWritePricePerMtok }
              : {}),
            enabled: m.enabled,
          })),
        },
        () =>
          table(
            ["id", "provider", "roles", "context", "$/Mtok in", "cached in", "$/Mtok out"],
            res.models.map((m) => [
              m.id,
              m.provider,
              m.roles.map((r) => label(ModelRole, r)).join(",") || "-",
              String(m.contextWindow),
              perMtok(m.inputPricePerMtok),
              m.cachedInputPricePerMtok !== undefined ? perMtok(m.cachedInputPricePerMtok) : "-",
              perMtok(m.outputPricePerMtok),
            ]),
          ),
      );
    });

  program
    .command("usage")
    .description("tokens, requests and cost over a period, grouped (default: by day and model)")
    .option("--days <n>", "the last n days", "30")
    .option(
      "--by <dimensions>",
      "comma-separated: day, hour, model, user, api-key, provider, operation, label:<key> (the calls' value of that label; one label at most)",
      "day,model",
    )
    .option(
      "--label <key=value>",
      "only calls labelled so, e.g. team=search (repeatable: calls holding every one, at most 8)",
      collect,
      [],
    )
    .option("--all-users", "the whole tenant (admin)")
    .addHelpText(
      "after",
      `\nLabels are what callers put on their calls: ensemble chat --label, ensemble run --label (a run's\nlabels go on its steps' calls, with feature=workflow), ChatRequest.metadata, the OpenAI API's\n\`metadata\` and \`user\`. Calls without the label grouped by are shown as -.\n\nExamples:\n  ensemble usage --by day,label:team\n  ensemble usage --all-users --by label:team --label env=prod\n  ensemble usage --days 7 --by model --label team=search --label feature=workflow`,
    )
    .action(async (opts: { days: string; by: string; label: string[]; allUsers?: boolean }) => {
      const days = Number(opts.days);
      if (!Number.isInteger(days) || days < 1 || days > 400) {
        throw new UsageError(`--days ${opts.days}: expected a whole number from 1 to 400`);
      }
      const { groupBy, labelKey } = usageGrouping(opts.by);
      const metadata = keyValues("--label", opts.label, USAGE_LABELS);
      const { gw, out } = ctx.get();
      const now = Date.now();
      const res = await gw.client(ModelProxyService).getUsage({
        startTime: timestampFromMs(now - days * 86_400_000),
        endTime: timestampFromMs(now + 60_000),
        groupBy,
        allUsers: opts.allUsers === true,
        metadata,
        metadataKey: labelKey,
      });
      const buckets = res.buckets.map((b) => ({
        period: b.periodStart !== undefined ? when(b.periodStart) : null,
        model: b.model || null,
        userId: b.userId || null,
        apiKeyId: b.apiKeyId || null,
        provider: b.provider || null,
        operation:
          b.operation !== UsageOperation.UNSPECIFIED ? label(UsageOperation, b.operation) : null,
        // Grouped by a label: its value, "" for calls without it; else null, like the others.
        metadataValue: labelKey !== "" ? b.metadataValue : null,
        requests: Number(b.requests),
        errors: Number(b.errors),
        ...tokenFigures(b.usage),
      }));
      const total = { requests: Number(res.totalRequests), ...tokenFigures(res.total) };
      // One column per grouping, in the order asked for, then the figures.
      type Bucket = (typeof buckets)[number];
      const columns: Array<[string, (b: Bucket) => string | null]> = groupBy.map((d) => {
        switch (d) {
          case UsageDimension.DAY:
            return ["day", (b) => b.period?.slice(0, 10) ?? null];
          case UsageDimension.HOUR:
            return ["hour", (b) => b.period?.slice(0, 16).replace("T", " ") ?? null];
          case UsageDimension.MODEL:
            return ["model", (b) => b.model];
          case UsageDimension.USER:
            return ["user", (b) => b.userId];
          case UsageDimension.API_KEY:
            return ["api key", (b) => b.apiKeyId];
          case UsageDimension.PROVIDER:
            return ["provider", (b) => b.provider];
          case UsageDimension.METADATA:
            return [labelKey, (b) => b.metadataValue || null];
          default:
            return ["operation", (b) => b.operation];
        }
      });
      out.result({ buckets, total }, () =>
        [
          table(
            [
              ...columns.map(([name]) => name),
              "requests",
              "tokens in",
              "cached in",
              "tokens out",
              "reasoning",
              "cost",
            ],
            buckets.map((b) => [
              ...columns.map(([, value]) => value(b) ?? "-"),
              String(b.requests),
              String(b.inputTokens),
              String(b.cachedInputTokens),
              String(b.outputTokens),
              String(b.reasoningTokens),
              usd(b.costUsd),
            ]),
          ),
          "",
          `total: ${total.requests} requests, ${total.inputTokens + total.outputTokens} tokens, ${cachedShare(total)}, ${usd(total.costUsd)}`,
        ].join("\n"),
      );
    });
}
