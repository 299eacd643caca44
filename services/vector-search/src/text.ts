// Text processing before embedding: markup stripping, the normaliser, the tokenizer and the
// chunker. Pure functions, configured per collection (ChunkingConfig in the contract).
//
// The tokenizer is deliberately model-independent: a token is a run of at most 8 letters or
// digits, or one other non-space character. On English prose that counts about as many tokens as
// OpenAI's BPE encodings do, a little more on long words, so a chunk of N of our tokens fits a
// model taking N BPE tokens with room to spare; it needs no vocabulary (the exact encodings cost
// ~70 MB of memory, see model-proxy) and gives the same chunks whatever model embeds them.
import { ChunkStrategy, type ChunkingConfig } from "@ensemble/proto";

export const DEFAULT_CHUNK_SIZE = 512;
export const DEFAULT_CHUNK_OVERLAP = 64;
const MAX_WORD_PIECE = 8;

export interface TextOptions {
  strategy: ChunkStrategy;
  chunkSize: number;
  chunkOverlap: number;
  lowercase: boolean;
  normalize: boolean;
  stripMarkup: boolean;
}

/** The contract's zero values resolved to the service's defaults. */
export function textOptions(c: ChunkingConfig | undefined): TextOptions {
  const chunkSize = c?.chunkSize || DEFAULT_CHUNK_SIZE;
  return {
    strategy:
      c === undefined || c.strategy === ChunkStrategy.UNSPECIFIED
        ? ChunkStrategy.TOKENS
        : c.strategy,
    chunkSize,
    // 0 is the default: 64 tokens for the default size, an eighth of a smaller explicit size.
    chunkOverlap: c?.chunkOverlap || Math.min(DEFAULT_CHUNK_OVERLAP, Math.floor(chunkSize / 8)),
    lowercase: c?.lowercase ?? false,
    normalize: !(c?.disableNormalization ?? false),
    stripMarkup: c?.stripMarkup ?? false,
  };
}

const ENTITIES: Record<string, string> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
  nbsp: " ",
};

/** Drops HTML tags (and script/style bodies) and Markdown syntax, keeping the readable text. */
export function stripMarkup(text: string): string {
  let t = text
    .replace(/<!--[\s\S]*?-->/g, " ")
    .replace(/<(script|style)\b[^>]*>[\s\S]*?<\/\1\s*>/gi, " ")
    // Block-level tags end a paragraph; inline tags vanish.
    .replace(
      /<\/?(p|div|section|article|h[1-6]|li|ul|ol|table|tr|blockquote|pre)\b[^>]*>/gi,
      "\n\n",
    )
    .replace(/<br\s*\/?>/gi, "\n")
    .replace(/<[^>]+>/g, "")
    .replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (m, e: string) => {
      if (e.startsWith("#x") || e.startsWith("#X")) return safeChar(parseInt(e.slice(2), 16), m);
      if (e.startsWith("#")) return safeChar(parseInt(e.slice(1), 10), m);
      return ENTITIES[e.toLowerCase()] ?? m;
    });
  t = t
    .replace(/^```[^\n]*$/gm, "")
    .replace(/!\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/\[([^\]]+)\]\([^)]*\)/g, "$1")
    .replace(/^\s{0,3}#{1,6}\s+/gm, "")
    .replace(/^\s{0,3}>\s?/gm, "")
    .replace(/^\s{0,3}([-*+]|\d+[.)])\s+/gm, "")
    .replace(/^\s{0,3}([-*_]\s*){3,}$/gm, "")
    .replace(/(\*\*|__)(?=\S)([^\n]*?\S)\1/g, "$2")
    .replace(/(^|[^\w*])[*_](?=\S)([^\n*_]*?\S)[*_](?!\w)/g, "$1$2")
    .replace(/`([^`\n]+)`/g, "$1");
  return t;
}

function safeChar(code: number, fallback: string): string {
  return Number.isFinite(code) && code > 0 && code <= 0x10ffff
    ? String.fromCodePoint(code)
    : fallback;
}

/**
 * Unicode NFKC, control characters dropped, runs of spaces and tabs collapsed to one space,
 * line ends trimmed, three or more line breaks reduced to one blank line (paragraphs survive).
 */
export function normalize(text: string): string {
  return (
    text
      .normalize("NFKC")
      .replace(/\r\n?/g, "\n")
      // eslint-disable-next-line no-control-regex
      .replace(/[\u0000-\u0008\u000b\u000e-\u001f\u007f\u200b\ufeff]/g, "")
      .replace(/[^\S\n]+/g, " ")
      .replace(/ ?\n ?/g, "\n")
      .replace(/\n{3,}/g, "\n\n")
      .trim()
  );
}

/** A token: [start, end) in the text it came from. */
export interface Span {
  start: number;
  end: number;
}

const TOKEN_RE = /[\p{L}\p{N}\p{M}]+|[^\s\p{L}\p{N}\p{M}]/gu;

/** Tokens of `text` (see the file comment for what a token is). */
export function tokenize(text: string, from = 0, to = text.length): Span[] {
  const out: Span[] = [];
  TOKEN_RE.lastIndex = from;
  for (let m = TOKEN_RE.exec(text); m !== null && m.index < to; m = TOKEN_RE.exec(text)) {
    const end = Math.min(m.index + m[0].length, to);
    if (m[0].length === 1 || end - m.index <= MAX_WORD_PIECE) {
      out.push({ start: m.index, end });
      continue;
    }
    for (let s = m.index; s < end; s += MAX_WORD_PIECE) {
      out.push({ start: s, end: Math.min(s + MAX_WORD_PIECE, end) });
    }
  }
  return out;
}

export function countTokens(text: string): number {
  return tokenize(text).length;
}

export interface Chunk {
  /** The chunk as stored and returned in hits. */
  text: string;
  /** What is sent to the embedding model (lower-cased when configured). */
  embedText: string;
  tokens: number;
}

/** A unit of packing (sentence or paragraph) with its tokens. */
interface Unit {
  tokens: Span[];
}

/** Windows of `size` tokens advancing by size - overlap. */
function windows(tokens: Span[], size: number, overlap: number): Span[][] {
  if (tokens.length === 0) return [];
  const out: Span[][] = [];
  const step = Math.max(1, size - overlap);
  for (let i = 0; ; i += step) {
    out.push(tokens.slice(i, i + size));
    if (i + size >= tokens.length) break;
  }
  return out;
}

/**
 * Greedy packing of units into chunks of at most `size` tokens; a unit larger than `size` is cut
 * into token windows. The next chunk starts with the previous chunk's trailing whole units that
 * fit in `overlap` tokens, so context carries across a boundary without cutting a sentence.
 */
function pack(units: Unit[], size: number, overlap: number): Span[][] {
  const pieces: Unit[] = [];
  for (const u of units) {
    if (u.tokens.length <= size) pieces.push(u);
    else for (const w of windows(u.tokens, size, overlap)) pieces.push({ tokens: w });
  }
  const out: Span[][] = [];
  let current: Unit[] = [];
  let count = 0;
  let fresh = 0; // units in `current` not carried over from the previous chunk
  for (const p of pieces) {
    if (count + p.tokens.length > size && fresh > 0) {
      out.push(current.flatMap((u) => u.tokens));
      const carried: Unit[] = [];
      let carriedCount = 0;
      for (let i = current.length - 1; i >= 0; i--) {
        const n = current[i]!.tokens.length;
        if (carriedCount + n > overlap || carriedCount + n + p.tokens.length > size) break;
        carried.unshift(current[i]!);
        carriedCount += n;
      }
      current = carried;
      count = carriedCount;
      fresh = 0;
    }
    current.push(p);
    count += p.tokens.length;
    fresh++;
  }
  if (fresh > 0) out.push(current.flatMap((u) => u.tokens));
  return out;
}

/** Sentence ends: terminal punctuation (with closing quotes/brackets) then space, or a line break. */
function sentenceBounds(text: string): Span[] {
  const out: Span[] = [];
  const re = /[.!?\u3002\uff01\uff1f]+["'\u201d\u2019)\]]*(?=\s|$)|\n/g;
  let start = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const end = m.index + m[0].length;
    if (text.slice(start, end).trim() !== "") out.push({ start, end });
    start = end;
  }
  if (text.slice(start).trim() !== "") out.push({ start, end: text.length });
  return out;
}

function paragraphBounds(text: string): Span[] {
  const out: Span[] = [];
  const re = /\n[^\S\n]*\n\s*/g;
  let start = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (text.slice(start, m.index).trim() !== "") out.push({ start, end: m.index });
    start = m.index + m[0].length;
  }
  if (text.slice(start).trim() !== "") out.push({ start, end: text.length });
  return out;
}

/** Units of spans, each tokenized in place; a paragraph too large is split into sentences. */
function unitsOf(text: string, bounds: Span[], size: number, sentences: boolean): Unit[] {
  const out: Unit[] = [];
  for (const b of bounds) {
    const tokens = tokenize(text, b.start, b.end);
    if (tokens.length === 0) continue;
    if (tokens.length > size && !sentences) {
      const inner = sentenceBounds(text.slice(b.start, b.end)).map((s) => ({
        start: s.start + b.start,
        end: s.end + b.start,
      }));
      out.push(...unitsOf(text, inner, size, true));
    } else {
      out.push({ tokens });
    }
  }
  return out;
}

/** The text as it is stored: markup stripped and normalised as configured. */
export function prepare(text: string, o: TextOptions): string {
  let t = text;
  if (o.stripMarkup) t = stripMarkup(t);
  if (o.normalize) t = normalize(t);
  return t;
}

/** Prepares and chunks a document. An empty result means there was no text left to embed. */
export function chunkText(raw: string, o: TextOptions): Chunk[] {
  const text = prepare(raw, o);
  const toChunk = (spans: Span[]): Chunk => {
    const t = text.slice(spans[0]!.start, spans.at(-1)!.end);
    return { text: t, embedText: o.lowercase ? t.toLowerCase() : t, tokens: spans.length };
  };
  if (o.strategy === ChunkStrategy.NONE) {
    if (text.trim() === "") return [];
    return [
      { text, embedText: o.lowercase ? text.toLowerCase() : text, tokens: countTokens(text) },
    ];
  }
  let groups: Span[][];
  switch (o.strategy) {
    case ChunkStrategy.SENTENCES:
      groups = pack(
        unitsOf(text, sentenceBounds(text), o.chunkSize, true),
        o.chunkSize,
        o.chunkOverlap,
      );
      break;
    case ChunkStrategy.PARAGRAPHS:
      groups = pack(
        unitsOf(text, paragraphBounds(text), o.chunkSize, false),
        o.chunkSize,
        o.chunkOverlap,
      );
      break;
    default:
      groups = windows(tokenize(text), o.chunkSize, o.chunkOverlap);
  }
  return groups.filter((g) => g.length > 0).map(toChunk);
}
