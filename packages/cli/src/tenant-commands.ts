// tenant settings: the defaults a tenant's admins set for everyone in it (auth's
// GetTenantSettings / UpdateTenantSettings): whether every chat is kept in the call log, the
// response cache calls use when they do not choose one, how similar a question must be for the
// semantic cache to answer it, and the guardrails every model call of the tenant passes (personal
// data redacted or refused, terms refused in prompts or withheld in answers). model-proxy applies
// them within its BUDGET_CACHE_MS.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  AuthService,
  DefaultCache,
  PiiKind,
  type Guardrails,
  type TenantSettings,
} from "@ensemble/proto";
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

/** --redact-pii / --block-pii's words, in the order the help lists them. */
const PII_WORDS: Record<string, PiiKind> = {
  email: PiiKind.EMAIL,
  phone: PiiKind.PHONE,
  "credit-card": PiiKind.CREDIT_CARD,
  iban: PiiKind.IBAN,
  "ip-address": PiiKind.IP_ADDRESS,
  "us-ssn": PiiKind.US_SSN,
  secret: PiiKind.SECRET,
};
const PII_LIST = Object.keys(PII_WORDS).join(", ");

/** The placeholder model-proxy puts in place of a redacted kind: [EMAIL], [CREDIT_CARD], ... */
function placeholder(kind: PiiKind): string {
  return `[${PiiKind[kind] ?? String(kind)}]`;
}

// UpdateTenantSettings' update_mask paths.
const LOG_CALLS = "log_calls";
const DEFAULT_CACHE = "default_cache";
const GUARDRAILS = "guardrails";
const SEMANTIC_THRESHOLD = "semantic_cache_min_similarity";

/** The semantic cache threshold's bounds (auth refuses others; 0 is the deployment's default). */
const MIN_THRESHOLD = 0.5;
const MAX_THRESHOLD = 1;

/** protovalidate's limits on a guardrail term list (auth refuses more). */
const MAX_TERMS = 500;
const MAX_TERM_LENGTH = 100;

function cacheWord(value: DefaultCache): string {
  return Object.keys(CACHE_WORDS).find((w) => CACHE_WORDS[w] === value) ?? String(value);
}

function piiWord(value: PiiKind): string {
  return Object.keys(PII_WORDS).find((w) => PII_WORDS[w] === value) ?? String(value);
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

/** "0.92" -> 0.92; "default" (or 0) -> 0, the deployment's; else a UsageError saying the range. */
function thresholdValue(raw: string): number {
  const text = raw.trim().toLowerCase();
  if (text === "default") return 0;
  const value = /^\d*\.?\d+$/.test(text) ? Number(text) : NaN;
  if (value === 0 || (value >= MIN_THRESHOLD && value <= MAX_THRESHOLD)) return value;
  throw new UsageError(
    `--semantic-threshold ${raw}: expected a number from ${MIN_THRESHOLD} to ${MAX_THRESHOLD} (how similar a question must be to a cached one), or default`,
  );
}

/** A threshold for people: "0.92", or "default (the deployment's)" for 0. */
function thresholdText(value: number): string {
  return value === 0 ? "default (the deployment's)" : String(value);
}

/** A comma-separated list's non-empty pieces, trimmed. */
function pieces(raw: string): string[] {
  return raw
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
}

/**
 * "email,phone" -> [EMAIL, PHONE] (case and _/- alike, duplicates dropped); "all" -> every kind;
 * "none" -> []; else a UsageError listing the words.
 */
function piiKinds(flag: string, raw: string): PiiKind[] {
  const words = pieces(raw).map((w) => w.toLowerCase().replace(/_/g, "-"));
  if (words.length === 0) {
    throw new UsageError(
      `${flag} ${JSON.stringify(raw)}: expected a list of ${PII_LIST}; or all, or none`,
    );
  }
  const unknown = words.find((w) => PII_WORDS[w] === undefined && w !== "all" && w !== "none");
  if (unknown !== undefined) {
    throw new UsageError(`${flag} ${unknown}: expected one of ${PII_LIST} (or all, or none)`);
  }
  if (words.includes("none")) {
    if (words.length > 1) throw new UsageError(`${flag} ${raw}: none cannot go with other kinds`);
    return [];
  }
  if (words.includes("all")) return Object.values(PII_WORDS);
  return [...new Set(words.map((w) => PII_WORDS[w]!))];
}

/** "project x, codename" -> ["project x", "codename"]; "none" -> []; else a UsageError. */
function terms(flag: string, raw: string): string[] {
  const list = pieces(raw);
  if (list.length === 0) {
    throw new UsageError(
      `${flag} ${JSON.stringify(raw)}: expected words or phrases separated by commas, or none`,
    );
  }
  if (list.length === 1 && list[0]!.toLowerCase() === "none") return [];
  const long = list.find((t) => t.length > MAX_TERM_LENGTH);
  if (long !== undefined) {
    throw new UsageError(
      `${flag}: "${long.slice(0, 20)}...": a term has at most ${MAX_TERM_LENGTH} characters`,
    );
  }
  if (list.length > MAX_TERMS) {
    throw new UsageError(`${flag}: ${list.length} terms; at most ${MAX_TERMS}`);
  }
  return list;
}

function guardrailsJson(g: Guardrails | undefined): Record<string, unknown> {
  return {
    redactPii: (g?.redactPii ?? []).map(piiWord),
    blockPii: (g?.blockPii ?? []).map(piiWord),
    blockedTerms: g?.blockedTerms ?? [],
    blockedOutputTerms: g?.blockedOutputTerms ?? [],
  };
}

function settingsJson(s: TenantSettings | undefined): Record<string, unknown> {
  return {
    logCalls: s?.logCalls ?? false,
    defaultCache: cacheWord(s?.defaultCache ?? DefaultCache.UNSPECIFIED),
    semanticCacheMinSimilarity: s?.semanticCacheMinSimilarity ?? 0,
    guardrails: guardrailsJson(s?.guardrails),
    updateTime: s?.updateTime !== undefined ? when(s.updateTime) : null,
    updatedBy: s?.updatedBy !== undefined && s.updatedBy !== "" ? s.updatedBy : null,
  };
}

/** A list for people: "none", or the items with what they do. */
function described(items: string[], effect: string): string {
  return items.length === 0 ? "none" : `${items.join(", ")} (${effect})`;
}

/** The settings as "name  value" lines. */
function describeSettings(s: TenantSettings | undefined): string {
  const cache = s?.defaultCache ?? DefaultCache.UNSPECIFIED;
  const g = s?.guardrails;
  const redact = g?.redactPii ?? [];
  const quoted = (list: string[] | undefined) => (list ?? []).map((t) => JSON.stringify(t));
  const rows: Array<[string, string]> = [
    ["log calls", s?.logCalls === true ? "on (every chat is kept in the call log)" : "off"],
    [
      "cache",
      cache === DefaultCache.UNSPECIFIED
        ? "default (the deployment's)"
        : cacheWord(cache) + (cache === DefaultCache.SEMANTIC ? " (and similar questions)" : ""),
    ],
    ["semantic threshold", thresholdText(s?.semanticCacheMinSimilarity ?? 0)],
    [
      "redact pii",
      described(
        redact.map(piiWord),
        `replaced in prompts by ${redact.map(placeholder).join(", ")} before a provider sees them`,
      ),
    ],
    ["block pii", described((g?.blockPii ?? []).map(piiWord), "prompts holding one are refused")],
    ["block terms", described(quoted(g?.blockedTerms), "prompts holding one are refused")],
    [
      "block output terms",
      described(quoted(g?.blockedOutputTerms), "answers holding one are withheld"),
    ],
    [
      "changed",
      s?.updateTime === undefined
        ? "never (the defaults apply)"
        : `${when(s.updateTime)} by user ${s.updatedBy || "?"}`,
    ],
  ];
  const width = Math.max(...rows.map(([name]) => name.length)) + 2;
  return rows.map(([name, value]) => `${name.padEnd(width)}${value}`).join("\n");
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

interface SettingsOptions {
  logCalls?: string;
  cache?: string;
  semanticThreshold?: string;
  redactPii?: string;
  blockPii?: string;
  blockTerms?: string;
  blockOutputTerms?: string;
}

export function registerTenantCommands(program: Command, ctx: Context): void {
  const tenant = program
    .command("tenant")
    .description("your tenant's settings (admins change them)");

  tenant
    .command("settings")
    .description(
      "print the tenant's settings; with --log-calls, --cache, --semantic-threshold or a guardrail flag, change them (admin)",
    )
    .option(
      "--log-calls <on|off>",
      "on: keep every chat of the tenant in the call log, as if each were sent with log: true",
    )
    .option(
      "--cache <mode>",
      "the response cache calls use when they do not choose: default (the deployment's), off, exact (identical requests), semantic (identical and similar ones)",
    )
    .option(
      "--semantic-threshold <value>",
      "the semantic cache's threshold for the tenant's calls: how similar (0.5 to 1, the cosine of the questions' embeddings) a question must be to a cached one to get its answer (higher: fewer, closer matches); or default (the deployment's, model-proxy's CACHE_SEMANTIC_MIN_SIMILARITY)",
    )
    .option(
      "--redact-pii <kinds>",
      `replace these kinds of personal data in prompts by a placeholder ([EMAIL]) before a provider sees them: comma-separated, of ${PII_LIST}; or all, or none`,
    )
    .option(
      "--block-pii <kinds>",
      "refuse prompts holding these kinds (the same words; a kind also in --redact-pii is refused)",
    )
    .option(
      "--block-terms <terms>",
      "refuse prompts holding one of these words or phrases (comma-separated; whole words, any case), or none",
    )
    .option(
      "--block-output-terms <terms>",
      "withhold answers holding one of these words or phrases (comma-separated), or none",
    )
    .addHelpText(
      "after",
      `\nEveryone in the tenant may read the settings; changing them needs a tenant admin (and, with an
API key, its admin scope). Only what you give changes; a guardrail flag replaces that one list
(none empties it) and keeps the others. model-proxy applies a change within its BUDGET_CACHE_MS
(30s by default), to every model call of the tenant. Kept chats are listed by \`ensemble logs list\`.

Guardrails find personal data by patterns and checksums (names and street addresses are not
found): reduced risk, not anonymity. A refused prompt fails with "blocked by the tenant's
guardrails"; a withheld answer is empty, with finish reason content filter.

Examples:
  ensemble tenant settings
  ensemble tenant settings --log-calls on
  ensemble tenant settings --cache semantic
  ensemble tenant settings --cache semantic --semantic-threshold 0.92
  ensemble tenant settings --semantic-threshold default
  ensemble tenant settings --log-calls off --cache default
  ensemble tenant settings --redact-pii email,phone,credit-card --block-pii secret
  ensemble tenant settings --block-terms "project x,codename" --block-output-terms none
  ensemble --json tenant settings | jq .guardrails`,
    )
    .action(async (opts: SettingsOptions) => {
      // Bad values are refused before anything is asked.
      const logCalls = opts.logCalls !== undefined ? onOff(opts.logCalls) : undefined;
      const cache = opts.cache !== undefined ? cacheValue(opts.cache) : undefined;
      const threshold =
        opts.semanticThreshold !== undefined ? thresholdValue(opts.semanticThreshold) : undefined;
      const redactPii =
        opts.redactPii !== undefined ? piiKinds("--redact-pii", opts.redactPii) : undefined;
      const blockPii =
        opts.blockPii !== undefined ? piiKinds("--block-pii", opts.blockPii) : undefined;
      const blockedTerms =
        opts.blockTerms !== undefined ? terms("--block-terms", opts.blockTerms) : undefined;
      const blockedOutputTerms =
        opts.blockOutputTerms !== undefined
          ? terms("--block-output-terms", opts.blockOutputTerms)
          : undefined;
      const guardrailsGiven = [redactPii, blockPii, blockedTerms, blockedOutputTerms].some(
        (v) => v !== undefined,
      );
      const { gw, out } = ctx.get();
      const auth = gw.client(AuthService);
      const current = (await auth.getTenantSettings({})).settings;
      if (
        logCalls === undefined &&
        cache === undefined &&
        threshold === undefined &&
        !guardrailsGiven
      ) {
        out.result(settingsJson(current), () => describeSettings(current));
        return;
      }
      // update_mask names only what changes, so a change never overwrites another admin's
      // change to the rest. The guardrails change as a whole: the lists not given are sent as
      // they are now (a change to those between the two calls would be overwritten; acceptable
      // for a command a person runs). The fields outside the mask are sent as they are too, for
      // an auth service that predates update_mask and replaces the settings as a whole.
      const paths: string[] = [];
      if (logCalls !== undefined) paths.push(LOG_CALLS);
      if (cache !== undefined) paths.push(DEFAULT_CACHE);
      if (threshold !== undefined) paths.push(SEMANTIC_THRESHOLD);
      if (guardrailsGiven) paths.push(GUARDRAILS);
      const now = current?.guardrails;
      const res = await auth
        .updateTenantSettings({
          settings: {
            logCalls: logCalls ?? current?.logCalls ?? false,
            defaultCache: cache ?? current?.defaultCache ?? DefaultCache.UNSPECIFIED,
            semanticCacheMinSimilarity: threshold ?? current?.semanticCacheMinSimilarity ?? 0,
            guardrails: {
              redactPii: redactPii ?? now?.redactPii ?? [],
              blockPii: blockPii ?? now?.blockPii ?? [],
              blockedTerms: blockedTerms ?? now?.blockedTerms ?? [],
              blockedOutputTerms: blockedOutputTerms ?? now?.blockedOutputTerms ?? [],
            },
          },
          updateMask: { paths },
        })
        .catch((err: unknown) => {
          throw explainDenied(err);
        });
      if (guardrailsGiven && res.settings?.guardrails === undefined) {
        // An auth service that knows nothing of guardrails drops them without a word.
        throw new Error(
          `the guardrails were not saved: the auth service behind ${gw.url} does not support them yet${
            logCalls !== undefined || cache !== undefined ? " (--log-calls / --cache were)" : ""
          }`,
        );
      }
      if (
        threshold !== undefined &&
        threshold !== 0 &&
        (res.settings?.semanticCacheMinSimilarity ?? 0) === 0
      ) {
        // Nor does one that knows nothing of the semantic cache threshold.
        throw new Error(
          `--semantic-threshold was not saved: the auth service behind ${gw.url} does not support it yet`,
        );
      }
      out.result(settingsJson(res.settings), () => `updated\n${describeSettings(res.settings)}`);
      if (!out.json) {
        out.notice("model-proxy applies the change within its BUDGET_CACHE_MS (30s by default).");
      }
    });
}
