// Provider prompt caching, shared by the three APIs: which prompt prefixes a (key, model) sent
// recently. Usage reports the cached part, so it follows real request history, as at the
// providers, rather than a fixed figure.
import { createHash } from "node:crypto";

/** How long a prefix stays cached after it was last sent (Anthropic's default, OpenAI's 5-10 min). */
export const PROMPT_CACHE_TTL_MS = 5 * 60_000;
/**
 * The shortest prefix cached: OpenAI's minimum, Anthropic's for its larger models, and Gemini
 * 2.5 Flash's for implicit caching.
 */
export const MIN_CACHED_TOKENS = 1024;
/** OpenAI caches in steps of 128 tokens from MIN_CACHED_TOKENS. */
export const CACHE_STEP_TOKENS = 128;

/** An Anthropic `cache_control` breakpoint: the prompt's first `length` tokens, kept for `ttl`. */
export interface Breakpoint {
  length: number;
  ttl: "5m" | "1h";
}

const TTL_MS: Readonly<Record<Breakpoint["ttl"], number>> = {
  "5m": PROMPT_CACHE_TTL_MS,
  "1h": 60 * 60_000,
};

/** What Anthropic bills for a prompt with breakpoints, in tokens. */
export interface BreakpointUsage {
  read: number;
  written: Record<Breakpoint["ttl"], number>;
  /** The tokens after the last breakpoint read or written: Anthropic's `input_tokens`. */
  uncached: number;
}

export interface PromptCacheOptions {
  /** The clock, in ms; Date.now by default. */
  now?: () => number;
  /** Prefixes remembered at most; the least recently sent are dropped first. */
  maxEntries?: number;
}

export class PromptCache {
  // Prefix key -> when it expires. A Map iterates in insertion order, and a prefix is
  // re-inserted each time it is sent, so the first entry is always the one to drop.
  private readonly expiries = new Map<string, number>();
  private readonly now: () => number;
  private readonly maxEntries: number;

  constructor(opts: PromptCacheOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.maxEntries = opts.maxEntries ?? 10_000;
  }

  /**
   * Automatic caching (OpenAI, Gemini): the cached tokens are the longest prefix at a boundary
   * (1024, 1152, 1280, ... tokens) that `scope` sent before; then every boundary of this prompt
   * is remembered. A prompt under 1024 tokens is neither read nor remembered.
   */
  automatic(scope: string, prompt: readonly string[]): number {
    const lengths: number[] = [];
    for (let n = MIN_CACHED_TOKENS; n <= prompt.length; n += CACHE_STEP_TOKENS) lengths.push(n);
    const keys = prefixKeys(scope, prompt, lengths);
    const hit = keys.findLastIndex((k) => this.has(k));
    for (const k of keys) this.remember(k, PROMPT_CACHE_TTL_MS);
    return lengths[hit] ?? 0;
  }

  /**
   * Explicit caching (Anthropic): from the last breakpoint to the first, the first one `scope`
   * sent before is read; the breakpoints after it are written (each with its own TTL). Those
   * under the minimum are ignored, as Anthropic ignores them. `breakpoints` in prompt order.
   */
  explicit(
    scope: string,
    prompt: readonly string[],
    breakpoints: readonly Breakpoint[],
  ): BreakpointUsage {
    const marks = breakpoints.filter((b) => b.length >= MIN_CACHED_TOKENS);
    const keys = prefixKeys(
      scope,
      prompt,
      marks.map((b) => b.length),
    );
    const hit = keys.findLastIndex((k) => this.has(k));
    let at = marks[hit]?.length ?? 0;
    const usage: BreakpointUsage = { read: at, written: { "5m": 0, "1h": 0 }, uncached: 0 };
    // The one read is refreshed (a read restarts its TTL); the earlier ones are left as they are.
    marks.forEach((b, i) => {
      if (i < hit) return;
      if (i > hit) {
        usage.written[b.ttl] += b.length - at;
        at = b.length;
      }
      this.remember(keys[i]!, TTL_MS[b.ttl]);
    });
    usage.uncached = prompt.length - at;
    return usage;
  }

  private has(key: string): boolean {
    const expires = this.expiries.get(key);
    if (expires === undefined) return false;
    if (expires > this.now()) return true;
    this.expiries.delete(key);
    return false;
  }

  private remember(key: string, ttlMs: number): void {
    this.expiries.delete(key);
    this.expiries.set(key, this.now() + ttlMs);
    for (const oldest of this.expiries.keys()) {
      if (this.expiries.size <= this.maxEntries) break;
      this.expiries.delete(oldest);
    }
  }
}

/**
 * One key per prefix length (ascending), in one pass: a running sha256 over the scope and the
 * tokens, read at each length. Each token is JSON-encoded so that the encoding of a sequence is
 * unambiguous; the scope is hashed in, so the memory never holds an API key.
 */
function prefixKeys(
  scope: string,
  prompt: readonly string[],
  lengths: readonly number[],
): string[] {
  const hash = createHash("sha256").update(JSON.stringify(scope));
  const keys: string[] = [];
  let at = 0;
  for (const n of lengths) {
    hash.update(
      prompt
        .slice(at, n)
        .map((t) => JSON.stringify(t))
        .join(""),
    );
    at = n;
    keys.push(hash.copy().digest("base64url"));
  }
  return keys;
}
