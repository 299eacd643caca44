// Costing a call at the catalog's prices, prompt-cache prices included.
import { create } from "@bufbuild/protobuf";
import { ModelSchema } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { costOf } from "./catalog.js";

const priced = create(ModelSchema, {
  id: "m",
  inputPricePerMtok: 1,
  outputPricePerMtok: 4,
  cachedInputPricePerMtok: 0.1,
  cacheWritePricePerMtok: 1.25,
  cacheWrite1hPricePerMtok: 2,
});
const plain = create(ModelSchema, { id: "p", inputPricePerMtok: 1, outputPricePerMtok: 4 });

describe("costOf", () => {
  it("bills input and output at their prices", () => {
    expect(costOf(priced, { inputTokens: 1_000_000, outputTokens: 500_000 })).toBeCloseTo(3, 9);
  });

  it("bills cached input at the cached price and cache writes at the write price", () => {
    const cost = costOf(priced, {
      inputTokens: 1_000_000,
      cachedInputTokens: 600_000,
      cacheWriteInputTokens: 300_000,
      outputTokens: 0,
    });
    // 100k uncached at 1, 600k read at 0.1, 300k written at 1.25.
    expect(cost).toBeCloseTo(0.1 + 0.06 + 0.375, 9);
  });

  it("one-hour cache writes at their own price; without one, at the write price", () => {
    const t = {
      inputTokens: 1_000_000,
      cacheWriteInputTokens: 1_000_000,
      cacheWrite1hInputTokens: 400_000,
      outputTokens: 0,
    };
    expect(costOf(priced, t)).toBeCloseTo(0.6 * 1.25 + 0.4 * 2, 9);
    const noHour = create(ModelSchema, { ...priced, cacheWrite1hPricePerMtok: undefined });
    expect(costOf(noHour, t)).toBeCloseTo(1.25, 9);
  });

  it("without cache prices, cached and written input cost the input price", () => {
    const t = { inputTokens: 2_000_000, cachedInputTokens: 1_000_000, outputTokens: 0 };
    expect(costOf(plain, t)).toBeCloseTo(2, 9);
    expect(costOf(plain, { ...t, cacheWriteInputTokens: 1_000_000 })).toBeCloseTo(2, 9);
  });

  it("a provider reporting more cached than input tokens is never billed below zero input", () => {
    const cost = costOf(priced, {
      inputTokens: 100,
      cachedInputTokens: 1_000,
      cacheWriteInputTokens: 50,
      outputTokens: 0,
    });
    expect(cost).toBeCloseTo((100 * 0.1) / 1e6, 15);
  });
});
