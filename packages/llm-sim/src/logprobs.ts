import { fnv1a, stableHash } from "./hash.js";

/** OpenAI's upper bound for `top_logprobs`. */
export const MAX_TOP_LOGPROBS = 20;

export interface TopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

/** One entry of `choices[].logprobs.content`, in OpenAI's key order. */
export interface TokenLogprob extends TopLogprob {
  top_logprobs: TopLogprob[];
}

/** Common tokens that fill the alternatives once a token's own variants run out. */
const FILLERS = [
  " the",
  " a",
  " and",
  " of",
  " to",
  " in",
  " is",
  " it",
  " that",
  ".",
  ",",
  "\n",
  " I",
  " you",
  " for",
  " on",
  " with",
  " as",
  " this",
  " was",
  " be",
];
const PUNCTUATION = [".", ",", ":", ";", "!", "?", '"', "'", "-", "(", ")"];
const WORD = /^[\p{L}\p{N}_]+$/u;

function bytesOf(token: string): number[] {
  return [...Buffer.from(token, "utf8")];
}

/** Tokens a model could plausibly have picked instead of `piece`: variants of it, then fillers. */
function alternatives(piece: string, count: number, seed: number): string[] {
  const lead = /^\s*/.exec(piece)?.[0] ?? "";
  const core = piece.slice(lead.length);
  const spaced = (lead === "" ? " " : "") + core;
  const variants: string[] = [];
  if (WORD.test(core)) {
    const lower = core.toLowerCase();
    const capital = lower.charAt(0).toUpperCase() + lower.slice(1);
    variants.push(lead + (core === lower ? capital : lower), spaced, lead + core.toUpperCase());
    variants.push(lead + core + "s");
    if (core.length > 1) variants.push(lead + core.slice(0, -1));
    variants.push(lead + core + "ing");
  } else {
    variants.push(spaced, ...PUNCTUATION.map((p) => lead + p));
  }
  // The fillers start at a place picked by the seed, so positions do not all share them.
  const from = seed % FILLERS.length;
  const fillers = [...FILLERS.slice(from), ...FILLERS.slice(0, from)];
  const out: string[] = [];
  const seen = new Set([piece]);
  for (const t of [...variants, ...fillers]) {
    if (out.length >= count) break;
    if (t === "" || seen.has(t)) continue;
    seen.add(t);
    out.push(t);
  }
  for (let k = 1; out.length < count; k++) {
    const t = `${piece}${k}`;
    if (!seen.has(t)) out.push(t);
  }
  return out;
}

/**
 * The logprob entry of the answer's piece at `index`: a pure function of (the answer's hash,
 * index, piece). The chosen token has probability in (0.5, 1), most often close to 1; each
 * alternative takes 30-60% of the probability left, so alternatives are sorted below it. The
 * chosen token leads its own `top_logprobs`, as OpenAI's do, and a longer list only extends a
 * shorter one.
 */
function entry(hash: string, index: number, piece: string, top: number): TokenLogprob {
  const seed = parseInt(stableHash([hash, index, piece]).slice(0, 8), 16);
  const draw = (k: number): number => fnv1a(String(k), seed) / 0x100000000;
  const u = draw(0);
  const rest = Math.max(1e-6, 0.5 * u * u);
  const logprob = Math.log1p(-rest);
  const chosen = { token: piece, logprob, bytes: bytesOf(piece) };
  const tops: TopLogprob[] = [];
  if (top > 0) {
    tops.push(chosen);
    const probs: number[] = [];
    let left = rest;
    for (let k = 1; k < MAX_TOP_LOGPROBS; k++) {
      const p = left * (0.3 + 0.3 * draw(k));
      probs.push(p);
      left -= p;
    }
    probs.sort((a, b) => b - a);
    alternatives(piece, top - 1, seed).forEach((token, k) => {
      tops.push({ token, logprob: Math.log(probs[k] ?? left), bytes: bytesOf(token) });
    });
  }
  return { ...chosen, top_logprobs: tops };
}

/**
 * `choices[].logprobs.content` for the answer's pieces (one entry per token, in order), each
 * with `top` entries in its `top_logprobs` (0 to 20).
 */
export function tokenLogprobs(
  pieces: readonly string[],
  hash: string,
  top: number,
): TokenLogprob[] {
  return pieces.map((piece, i) => entry(hash, i, piece, top));
}
