import { describe, expect, it } from "vitest";
import { PROMPT_CACHE_TTL_MS, PromptCache } from "./prompt-cache.js";

/** A prompt of `n` tokens; `from` makes it differ from others. */
function prompt(n: number, from = 0): string[] {
  return Array.from({ length: n }, (_, i) => `t${from + i}`);
}

function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 0;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe("prompt cache memory", () => {
  it("prompt cache - automatic: the longest 128-token boundary sent before, from 1024 tokens", () => {
    const cache = new PromptCache();
    expect(cache.automatic("k", prompt(1300))).toBe(0);
    expect(cache.automatic("k", prompt(1300))).toBe(1280);
    // Shares 1100 tokens with the first: the boundary under that.
    expect(cache.automatic("k", [...prompt(1100), ...prompt(300, 5000)])).toBe(1024);
    // A longer prompt reads what it shares, then its own boundaries are there too.
    expect(cache.automatic("k", prompt(1500))).toBe(1280);
    expect(cache.automatic("k", prompt(1500))).toBe(1408);
    // Under 1024 tokens nothing is cached, however often it is sent.
    cache.automatic("k", prompt(1000, 9000));
    expect(cache.automatic("k", prompt(1000, 9000))).toBe(0);
  });

  it("prompt cache - isolated by scope (key and model)", () => {
    const cache = new PromptCache();
    cache.automatic("key-a model", prompt(1100));
    expect(cache.automatic("key-b model", prompt(1100))).toBe(0);
    expect(cache.automatic("key-a other-model", prompt(1100))).toBe(0);
    expect(cache.automatic("key-a model", prompt(1100))).toBe(1024);
  });

  it("prompt cache - a prefix expires 5 minutes after it was last sent", () => {
    const c = clock();
    const cache = new PromptCache({ now: c.now });
    cache.automatic("k", prompt(1100));
    c.advance(PROMPT_CACHE_TTL_MS - 1);
    expect(cache.automatic("k", prompt(1100))).toBe(1024);
    // That read restarted the 5 minutes.
    c.advance(PROMPT_CACHE_TTL_MS - 1);
    expect(cache.automatic("k", prompt(1100))).toBe(1024);
    c.advance(PROMPT_CACHE_TTL_MS);
    expect(cache.automatic("k", prompt(1100))).toBe(0);
  });

  it("prompt cache - bounded: the least recently sent prefixes are dropped", () => {
    const unbounded = new PromptCache();
    const bounded = new PromptCache({ maxEntries: 2 });
    for (const cache of [unbounded, bounded]) {
      for (const from of [0, 10_000, 20_000]) cache.automatic("k", prompt(1100, from));
    }
    expect(unbounded.automatic("k", prompt(1100, 0))).toBe(1024);
    expect(bounded.automatic("k", prompt(1100, 20_000))).toBe(1024);
    expect(bounded.automatic("k", prompt(1100, 0))).toBe(0);
  });

  it("prompt cache - explicit breakpoints: written, then read from the last one remembered", () => {
    const c = clock();
    const cache = new PromptCache({ now: c.now });
    const two = [
      { length: 1100, ttl: "1h" as const },
      { length: 1500, ttl: "5m" as const },
    ];
    expect(cache.explicit("k", prompt(1600), two)).toEqual({
      read: 0,
      written: { "1h": 1100, "5m": 400 },
      uncached: 100,
    });
    expect(cache.explicit("k", prompt(1600), two)).toEqual({
      read: 1500,
      written: { "1h": 0, "5m": 0 },
      uncached: 100,
    });
    // Ten minutes on, only the 1-hour breakpoint is left: read, and the later one written again.
    c.advance(10 * 60_000);
    expect(cache.explicit("k", prompt(1600), two)).toEqual({
      read: 1100,
      written: { "1h": 0, "5m": 400 },
      uncached: 100,
    });
    // Below 1024 tokens a breakpoint is ignored: nothing written, nothing read.
    const small = [{ length: 1000, ttl: "5m" as const }];
    cache.explicit("k", prompt(1200, 7000), small);
    expect(cache.explicit("k", prompt(1200, 7000), small)).toEqual({
      read: 0,
      written: { "1h": 0, "5m": 0 },
      uncached: 1200,
    });
  });
});
