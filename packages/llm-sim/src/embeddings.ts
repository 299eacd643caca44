import { fnv1a } from "./hash.js";
import { words } from "./tokenizer.js";

export const DEFAULT_DIMENSIONS = 256;

/**
 * Hashed bag of words plus character trigrams, L2-normalised. Texts that share words share
 * coordinates, so their cosine similarity is higher than that of texts with no words in common;
 * trigrams make "cats" and "cat" a little close too. Deterministic for (text, dimensions).
 */
export function embed(text: string, dimensions: number = DEFAULT_DIMENSIONS): number[] {
  const v = new Array<number>(dimensions).fill(0);
  const add = (feature: string, weight: number): void => {
    const h = fnv1a(feature);
    const sign = (fnv1a(feature, 0x9747b28c) & 1) === 0 ? 1 : -1;
    v[h % dimensions] = (v[h % dimensions] ?? 0) + sign * weight;
  };
  for (const w of words(text)) {
    add(`w:${w}`, 1);
    const padded = `^${w}$`;
    for (let i = 0; i + 3 <= padded.length; i++) add(`g:${padded.slice(i, i + 3)}`, 0.25);
  }
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  if (norm === 0) {
    // No words at all (e.g. only punctuation): a fixed unit vector rather than NaNs.
    v[fnv1a(text) % dimensions] = 1;
    return v;
  }
  return v.map((x) => x / norm);
}

export function cosine(a: readonly number[], b: readonly number[]): number {
  let dot = 0;
  for (let i = 0; i < a.length; i++) dot += (a[i] ?? 0) * (b[i] ?? 0);
  return dot;
}

/** OpenAI's encoding_format "base64": little-endian float32 values. */
export function toBase64(v: readonly number[]): string {
  const buf = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => buf.writeFloatLE(x, i * 4));
  return buf.toString("base64");
}
