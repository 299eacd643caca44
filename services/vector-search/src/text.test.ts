import { ChunkStrategy, ChunkingConfigSchema } from "@ensemble/proto";
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { chunkText, countTokens, normalize, stripMarkup, textOptions, tokenize } from "./text.js";

const opts = (init: Parameters<typeof create<typeof ChunkingConfigSchema>>[1] = {}) =>
  textOptions(create(ChunkingConfigSchema, init));

describe("text", () => {
  it("normalise - NFKC, control characters, collapsed spaces, paragraphs kept", () => {
    expect(normalize("  ﬁne\u00a0\u00a0 ｔｅｘｔ\t\there \r\n\r\n\r\n\r\nnext\u0007 para  ")).toBe(
      "fine text here\n\nnext para",
    );
    expect(normalize("line one  \n  line two")).toBe("line one\nline two");
  });

  it("strip markup - HTML tags, script bodies, entities, Markdown syntax", () => {
    const html = stripMarkup(
      "<p>Tom &amp; <b>Jerry</b></p><script>alert(1)</script><p>x&#39;s</p>",
    );
    expect(normalize(html)).toBe("Tom & Jerry\n\nx's");
    const md = stripMarkup(
      "# Title\n\nSome **bold** and _em_ text with [a link](http://x.y) and `code`.\n- item",
    );
    expect(normalize(md)).toBe("Title\n\nSome bold and em text with a link and code.\nitem");
  });

  it("tokenizer - words, punctuation, long words in pieces of at most 8", () => {
    const t = "Hello, world! internationalisation";
    expect(tokenize(t).map((s) => t.slice(s.start, s.end))).toEqual([
      "Hello",
      ",",
      "world",
      "!",
      "internat",
      "ionalisa",
      "tion",
    ]);
    expect(countTokens("")).toBe(0);
  });

  it("defaults - tokens strategy, 512 tokens, 64 overlap, normalised", () => {
    const o = textOptions(undefined);
    expect(o).toMatchObject({
      strategy: ChunkStrategy.TOKENS,
      chunkSize: 512,
      chunkOverlap: 64,
      normalize: true,
      lowercase: false,
    });
    expect(opts({ chunkSize: 40 }).chunkOverlap).toBe(5);
  });

  it("token windows - sizes bounded, consecutive chunks overlap by the configured tokens", () => {
    const words = Array.from({ length: 100 }, (_, i) => `w${i}`).join(" ");
    const chunks = chunkText(words, opts({ chunkSize: 30, chunkOverlap: 10 }));
    expect(chunks.map((c) => c.tokens)).toEqual([30, 30, 30, 30, 20]);
    expect(chunks[0]!.text.startsWith("w0 ")).toBe(true);
    expect(chunks[1]!.text.startsWith("w20 ")).toBe(true);
    expect(chunks.at(-1)!.text.endsWith("w99")).toBe(true);
  });

  it("sentences - packed whole up to the size, a long sentence cut, overlap by whole sentences", () => {
    const text = "One two three. Four five six! Seven eight nine? Ten eleven twelve.";
    const chunks = chunkText(
      text,
      opts({ strategy: ChunkStrategy.SENTENCES, chunkSize: 8, chunkOverlap: 4 }),
    );
    expect(chunks.map((c) => c.text)).toEqual([
      "One two three. Four five six!",
      "Four five six! Seven eight nine?",
      "Seven eight nine? Ten eleven twelve.",
    ]);
    const long = chunkText(
      `${"a ".repeat(20)}end.`,
      opts({ strategy: ChunkStrategy.SENTENCES, chunkSize: 10, chunkOverlap: 1 }),
    );
    expect(long.every((c) => c.tokens <= 10)).toBe(true);
  });

  it("paragraphs - blank-line separated, packed, never split inside when they fit", () => {
    const text = "Alpha beta.\n\nGamma delta.\n\n\n\nEpsilon zeta eta theta iota kappa.";
    const chunks = chunkText(
      text,
      opts({ strategy: ChunkStrategy.PARAGRAPHS, chunkSize: 7, chunkOverlap: 1 }),
    );
    expect(chunks.map((c) => c.text)).toEqual([
      "Alpha beta.\n\nGamma delta.",
      "Epsilon zeta eta theta iota kappa.",
    ]);
  });

  it("none and lowercase - one chunk; the embedded text is lower-cased, the stored text is not", () => {
    const [c] = chunkText(
      "  Hello   World ",
      opts({ strategy: ChunkStrategy.NONE, lowercase: true }),
    );
    expect(c).toMatchObject({ text: "Hello World", embedText: "hello world" });
    const [raw] = chunkText(
      "  Hello   World ",
      opts({ strategy: ChunkStrategy.NONE, disableNormalization: true }),
    );
    expect(raw!.text).toBe("  Hello   World ");
    expect(chunkText(" <b></b> ", opts({ stripMarkup: true }))).toEqual([]);
  });
});
