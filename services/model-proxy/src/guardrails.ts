// A tenant's guardrails (auth's TenantSettings.guardrails), applied to every model call of the
// tenant before any provider is asked: personal data and secrets in prompts replaced by a
// placeholder ("[EMAIL]") or refused, prompts with a blocked term refused, and answers with a
// blocked term withheld (finish reason CONTENT_FILTER). The prompt a provider, the response
// cache and the call log see is the guarded one.
//
// Detection is by pattern, validated where the kind has a check (Luhn for card numbers, mod 97
// for IBANs, libphonenumber for phone numbers, node:net for IP addresses). Every pattern has
// bounded repetitions and starts at a word boundary, so a hostile prompt costs time linear in
// its length: the rules run on model-proxy's event loop for every tenant's calls.
import { isIP } from "node:net";
import { parsePhoneNumberFromString } from "libphonenumber-js/max";
import { clone } from "@bufbuild/protobuf";
import { InvalidArgumentError, type Metrics } from "@ensemble/kit";
import {
  ChatRequestSchema,
  ChatRole,
  PiiKind,
  type ChatRequest,
  type ContentPart,
  type Guardrails,
} from "@ensemble/proto";
import { Counter } from "prom-client";

interface Span {
  kind: PiiKind;
  start: number;
  end: number;
}

type Detector = (text: string) => Span[];

/** Spans of every match of `pattern` (global) that `valid` accepts. */
function byPattern(kind: PiiKind, pattern: RegExp, valid?: (match: string) => boolean): Detector {
  return (text) => {
    const spans: Span[] = [];
    for (const m of text.matchAll(pattern)) {
      if (valid === undefined || valid(m[0])) {
        spans.push({ kind, start: m.index, end: m.index + m[0].length });
      }
    }
    return spans;
  };
}

/** The Luhn check of a card number's digits. */
export function luhn(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

/** ISO 13616's check: the IBAN rearranged, letters as numbers, mod 97 = 1. */
export function ibanValid(raw: string): boolean {
  const iban = raw.replace(/ /g, "");
  if (iban.length < 15 || iban.length > 34) return false;
  const rearranged = iban.slice(4) + iban.slice(0, 4);
  let rest = 0;
  for (const ch of rearranged) {
    const code = ch.charCodeAt(0);
    const value = code >= 65 ? String(code - 55) : ch;
    for (const digit of value) rest = (rest * 10 + (digit.charCodeAt(0) - 48)) % 97;
  }
  return rest === 1;
}

const SECRET_PATTERNS = [
  // OpenAI and Anthropic (sk-, sk-proj-, sk-ant-...)
  String.raw`sk-[A-Za-z0-9_-]{20,256}`,
  // AWS access key ids
  String.raw`(?:AKIA|ASIA)[0-9A-Z]{16}`,
  // GitHub tokens
  String.raw`gh[pousr]_[A-Za-z0-9]{36,255}`,
  String.raw`github_pat_[A-Za-z0-9_]{22,255}`,
  // Slack
  String.raw`xox[abprs]-[A-Za-z0-9-]{10,255}`,
  // Google API keys
  String.raw`AIza[0-9A-Za-z_-]{35}`,
  // Stripe secret and restricted keys
  String.raw`[rs]k_(?:live|test)_[A-Za-z0-9]{16,255}`,
  // Ensemble's own API keys
  String.raw`ens_[A-Za-z0-9]{4,32}_[A-Za-z0-9_-]{20,128}`,
  // JSON Web Tokens
  String.raw`eyJ[A-Za-z0-9_-]{5,4096}\.eyJ[A-Za-z0-9_-]{5,16384}\.[A-Za-z0-9_-]{10,4096}`,
];

const PEM_BEGIN = /-----BEGIN (?:[A-Z]{1,10} )?PRIVATE KEY-----/g;
const PEM_END = /^-----END (?:[A-Z]{1,10} )?PRIVATE KEY-----/;

/**
 * PEM private keys: from a BEGIN line to the next END line. The next END is searched once and
 * reused while BEGINs come before it, so a prompt of many BEGINs costs one pass.
 */
function privateKeys(text: string): Span[] {
  const spans: Span[] = [];
  let end = -2; // not searched yet
  let after = 0;
  for (const m of text.matchAll(PEM_BEGIN)) {
    if (m.index < after) continue;
    let tail: RegExpExecArray | null = null;
    // END lines only move forward: each is looked at once, whatever the number of BEGINs.
    while (tail === null) {
      if (end !== -1 && end < m.index) end = text.indexOf("-----END ", m.index);
      if (end === -1) break;
      tail = PEM_END.exec(text.slice(end, end + 48));
      if (tail === null) end = text.indexOf("-----END ", end + 1);
    }
    if (tail === null) break;
    after = end + tail[0].length;
    spans.push({ kind: PiiKind.SECRET, start: m.index, end: after });
  }
  return spans;
}

const DETECTORS: Record<Exclude<PiiKind, PiiKind.UNSPECIFIED>, Detector> = {
  [PiiKind.EMAIL]: byPattern(
    PiiKind.EMAIL,
    /\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b/g,
  ),
  // Candidates by a bounded pattern, each validated by libphonenumber (its own text scanner
  // costs ~1 µs per character of any prompt; this costs that only per candidate).
  [PiiKind.PHONE]: byPattern(
    PiiKind.PHONE,
    /(?<![\w+])(?:\+|\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\(?\d{1,5}\)?){2,7}(?!\w)/g,
    (m) =>
      m.replace(/\D/g, "").length >= 7 && parsePhoneNumberFromString(m, "US")?.isValid() === true,
  ),
  [PiiKind.CREDIT_CARD]: byPattern(PiiKind.CREDIT_CARD, /\b(?:\d[ -]?){12,18}\d\b/g, (m) => {
    const digits = m.replace(/[ -]/g, "");
    return digits.length >= 13 && digits.length <= 19 && luhn(digits);
  }),
  [PiiKind.IBAN]: byPattern(PiiKind.IBAN, /\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b/g, ibanValid),
  [PiiKind.IP_ADDRESS]: (text) => [
    ...byPattern(
      PiiKind.IP_ADDRESS,
      /(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)/g,
    )(text),
    ...byPattern(
      PiiKind.IP_ADDRESS,
      /(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])/g,
      (m) => isIP(m) === 6,
    )(text),
  ],
  [PiiKind.US_SSN]: byPattern(
    PiiKind.US_SSN,
    /\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b/g,
  ),
  [PiiKind.SECRET]: (text) => [
    ...byPattern(
      PiiKind.SECRET,
      new RegExp(String.raw`\b(?:${SECRET_PATTERNS.join("|")})`, "g"),
    )(text),
    ...privateKeys(text),
  ],
};

/** Placeholder and words of each kind, for answers and error messages. */
const KINDS: Record<
  Exclude<PiiKind, PiiKind.UNSPECIFIED>,
  { placeholder: string; noun: string }
> = {
  [PiiKind.EMAIL]: { placeholder: "[EMAIL]", noun: "an email address" },
  [PiiKind.PHONE]: { placeholder: "[PHONE]", noun: "a phone number" },
  [PiiKind.CREDIT_CARD]: { placeholder: "[CREDIT_CARD]", noun: "a payment card number" },
  [PiiKind.IBAN]: { placeholder: "[IBAN]", noun: "an IBAN" },
  [PiiKind.IP_ADDRESS]: { placeholder: "[IP_ADDRESS]", noun: "an IP address" },
  [PiiKind.US_SSN]: { placeholder: "[US_SSN]", noun: "a social security number" },
  [PiiKind.SECRET]: { placeholder: "[SECRET]", noun: "an API key or secret" },
};

/** The label of a kind in metrics ("email", "credit_card"). */
export function kindLabel(kind: PiiKind): string {
  return (PiiKind[kind] ?? String(kind)).toLowerCase();
}

/**
 * Whole-word, any-case matching of a list of terms. Spaces inside a term match up to four
 * whitespace characters, so a match is at most `maxLength` characters long (what a stream holds
 * back before sending).
 */
export class TermMatcher {
  readonly maxLength: number;
  readonly #pattern: RegExp;

  constructor(terms: readonly string[]) {
    const parts = terms.map((t) =>
      t
        .split(/\s+/)
        .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
        .join(String.raw`\s{1,4}`),
    );
    // Longer first, so "project falcon x" wins over "project falcon" at the same place.
    parts.sort((a, b) => b.length - a.length);
    this.#pattern = new RegExp(
      String.raw`(?<![\p{L}\p{N}_])(?:${parts.join("|")})(?![\p{L}\p{N}_])`,
      "giu",
    );
    this.maxLength = Math.max(0, ...terms.map((t) => t.length + 3 * (t.split(/\s+/).length - 1)));
  }

  /**
   * The first match in `text` starting at or after `from`. With `complete` false (a stream still
   * running), a match that reaches the end of `text` is not counted: the next characters may
   * continue the word ("confidential" / "confidentiality").
   */
  find(text: string, from = 0, complete = true): { start: number; term: string } | undefined {
    const re = this.#pattern;
    re.lastIndex = from;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      if (complete || m.index + m[0].length < text.length) return { start: m.index, term: m[0] };
    }
    return undefined;
  }
}

/** A tenant's guardrails, compiled once per settings read. */
export interface CompiledGuardrails {
  /** PII kinds to replace, and to refuse (refusal wins). */
  redact: readonly PiiKind[];
  block: readonly PiiKind[];
  blockedTerms: TermMatcher | undefined;
  blockedOutputTerms: TermMatcher | undefined;
}

export const NO_GUARDRAILS: CompiledGuardrails = {
  redact: [],
  block: [],
  blockedTerms: undefined,
  blockedOutputTerms: undefined,
};

export function compileGuardrails(g: Guardrails | undefined): CompiledGuardrails {
  if (g === undefined) return NO_GUARDRAILS;
  const known = (k: PiiKind) => k !== PiiKind.UNSPECIFIED && k in DETECTORS;
  const block = g.blockPii.filter(known);
  return {
    redact: g.redactPii.filter((k) => known(k) && !block.includes(k)),
    block,
    blockedTerms: g.blockedTerms.length > 0 ? new TermMatcher(g.blockedTerms) : undefined,
    blockedOutputTerms:
      g.blockedOutputTerms.length > 0 ? new TermMatcher(g.blockedOutputTerms) : undefined,
  };
}

/** Whether any rule applies to prompts. */
export function guardsInput(g: CompiledGuardrails): boolean {
  return g.redact.length > 0 || g.block.length > 0 || g.blockedTerms !== undefined;
}

/** `ensemble_model_proxy_guardrail_actions_total{action, rule}`; a no-op without metrics. */
export class GuardrailStats {
  readonly #counter: Counter<"action" | "rule"> | undefined;

  constructor(metrics?: Metrics) {
    this.#counter =
      metrics === undefined
        ? undefined
        : new Counter({
            name: "ensemble_model_proxy_guardrail_actions_total",
            help: "What tenants' guardrails did: action redact (per value replaced), block (a refused call) or withhold (an answer held back), by rule (a PII kind, term, output_term).",
            labelNames: ["action", "rule"] as const,
            registers: [metrics.registry],
          });
  }

  count(action: "redact" | "block" | "withhold", rule: string, n = 1): void {
    this.#counter?.inc({ action, rule }, n);
  }
}

/** The prefix of every refusal; the gateway answers it as OpenAI's content_policy_violation. */
export const BLOCKED_PREFIX = "blocked by the tenant's guardrails";

/**
 * One prompt text through the input rules: refused (InvalidArgumentError naming `where` and what
 * was found) or returned with the kinds to redact replaced by placeholders.
 */
export function guardText(
  g: CompiledGuardrails,
  text: string,
  where: string,
  stats: GuardrailStats,
  /** How the message names the text ("the user message (messages[2].content[0])"). */
  label = where,
): string {
  const term = g.blockedTerms?.find(text);
  if (term !== undefined) {
    stats.count("block", "term");
    throw new InvalidArgumentError(
      `${BLOCKED_PREFIX}: ${label} contains the blocked term "${term.term}"`,
      { field: where },
    );
  }
  for (const kind of g.block) {
    if (DETECTORS[kind as keyof typeof DETECTORS](text).length > 0) {
      stats.count("block", kindLabel(kind));
      throw new InvalidArgumentError(
        `${BLOCKED_PREFIX}: ${label} contains ${KINDS[kind as keyof typeof KINDS].noun}, which may not be sent to a model provider`,
        { field: where },
      );
    }
  }
  if (g.redact.length === 0) return text;
  const spans = g.redact
    .flatMap((kind) => DETECTORS[kind as keyof typeof DETECTORS](text))
    .sort((a, b) => a.start - b.start || b.end - a.end);
  if (spans.length === 0) return text;
  let out = "";
  let at = 0;
  for (const span of spans) {
    if (span.start < at) continue; // inside a span already replaced
    out += text.slice(at, span.start) + KINDS[span.kind as keyof typeof KINDS].placeholder;
    at = span.end;
    stats.count("redact", kindLabel(span.kind));
  }
  return out + text.slice(at);
}

/**
 * A chat request with its prompts guarded: every text part and every earlier tool call's
 * arguments, in every message (system prompts and tool results too). The request itself when
 * no rule applies to prompts. Images are not inspected.
 */
export function guardChat(
  g: CompiledGuardrails,
  req: ChatRequest,
  stats: GuardrailStats,
): ChatRequest {
  if (!guardsInput(g)) return req;
  const out = clone(ChatRequestSchema, req);
  const last = out.messages.length - 1;
  out.messages.forEach((m, i) => {
    // Chat screens show messages, not indexes: "the last user message (messages[2].content[0])".
    const role = (ChatRole[m.role] ?? "").toLowerCase();
    const which = `the ${i === last ? "last " : ""}${role === "" ? "" : `${role} `}message`;
    m.content.forEach((part, j) => {
      if (part.part.case === "text") {
        const where = `messages[${i}].content[${j}]`;
        part.part.value = guardText(g, part.part.value, where, stats, `${which} (${where})`);
      }
    });
    m.toolCalls.forEach((call, j) => {
      const where = `messages[${i}].tool_calls[${j}]`;
      call.arguments = guardText(
        g,
        call.arguments,
        where,
        stats,
        `a tool call in ${which} (${where})`,
      );
    });
  });
  return out;
}

/** Texts (embedding inputs, an image prompt) guarded one by one; `field` names the list. */
export function guardTexts(
  g: CompiledGuardrails,
  texts: readonly string[],
  field: string,
  stats: GuardrailStats,
): string[] {
  if (!guardsInput(g)) return [...texts];
  return texts.map((t, i) => guardText(g, t, texts.length === 1 ? field : `${field}[${i}]`, stats));
}

/** The text parts of a message, joined (what output rules read). */
export function textOfParts(parts: readonly ContentPart[]): string {
  let text = "";
  for (const p of parts) if (p.part.case === "text") text += p.part.value;
  return text;
}

/** The call log's note on an answer withheld for `term`. */
export function withheldNote(term: string): string {
  return `answer withheld by the tenant's guardrails: it contained the blocked term "${term}"`;
}

/** The blocked output term in a whole answer, if any (counted as withheld). */
export function withheldFor(
  g: CompiledGuardrails,
  answer: string,
  stats: GuardrailStats,
): string | undefined {
  const found = g.blockedOutputTerms?.find(answer);
  if (found !== undefined) stats.count("withhold", "output_term");
  return found?.term;
}

/**
 * A streamed answer's text through the output rules: text is released only once no blocked
 * term can start in it, so none is ever partly sent. `push` returns what may be sent now and,
 * once a term is found, `blocked` (what came before the term is still sent, however the answer
 * was cut into chunks); `end` the rest.
 */
export class OutputGuard {
  readonly #matcher: TermMatcher;
  #text = "";
  #sent = 0;

  constructor(matcher: TermMatcher) {
    this.#matcher = matcher;
  }

  push(delta: string): GuardedText {
    this.#text += delta;
    return this.#release(false);
  }

  end(): GuardedText {
    return this.#release(true);
  }

  #release(complete: boolean): GuardedText {
    const from = Math.max(0, this.#sent - this.#matcher.maxLength);
    const found = this.#matcher.find(this.#text, from, complete);
    const safe =
      found !== undefined
        ? found.start
        : complete
          ? this.#text.length
          : this.#text.length - this.#matcher.maxLength;
    const upTo = Math.max(this.#sent, safe);
    const send = this.#text.slice(this.#sent, upTo);
    this.#sent = upTo;
    return found !== undefined ? { send, blocked: found.term } : { send };
  }
}

/** What the output guard lets out now, and the blocked term once one was found. */
export interface GuardedText {
  send: string;
  blocked?: string;
}
