// A deliberately simple, documented tokenizer: a token is a run of word characters or one
// punctuation character; whitespace is not a token. It is not OpenAI's BPE, but it is stable,
// cheap, and the same rule counts prompts, completions and streamed chunks, so usage always adds up.
const TOKEN = /[\p{L}\p{N}_]+|[^\p{L}\p{N}_\s]/gu;
// The same tokens with their leading whitespace, so the pieces concatenate back to the text.
const PIECE = /\s*(?:[\p{L}\p{N}_]+|[^\p{L}\p{N}_\s])/gu;

export function countTokens(text: string): number {
  return tokens(text).length;
}

/** The tokens themselves, for prompt caching (which compares prompts token by token). */
export function tokens(text: string): string[] {
  return text.match(TOKEN) ?? [];
}

export function tokenPieces(text: string): string[] {
  return text.match(PIECE) ?? [];
}

/** Lower-cased word tokens, for embeddings. */
export function words(text: string): string[] {
  return (text.toLowerCase().match(/[\p{L}\p{N}_]+/gu) ?? []).filter((w) => w.length > 0);
}
