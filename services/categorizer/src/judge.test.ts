import { Modality } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { combine, parseVerdict } from "./judge.js";

describe("judge - parsing", () => {
  it("reads the JSON object, even wrapped in prose or a fence", () => {
    const v = parseVerdict(
      'Sure:\n```json\n{"category":"h","modality":"code","domain_tags":["DevOps"],"confidence":0.9,"reason":"many parts"}\n```',
    );
    expect(v).toEqual({
      category: "H",
      modality: Modality.CODE,
      domainTags: ["devops"],
      confidence: 0.9,
      reason: "many parts",
    });
  });

  it("anything else is no verdict", () => {
    expect(
      parseVerdict('[simulated sim-fast] You said: "classify". Simulated answer 1a2b.'),
    ).toBeUndefined();
    expect(parseVerdict('{"category":"X"}')).toBeUndefined();
    expect(parseVerdict("{not json}")).toBeUndefined();
  });
});

describe("judge - combining", () => {
  it("a confident judge overturns an unsure feature decision", () => {
    const mixed = combine(
      { probabilities: { L: 0.3, M: 0.45, H: 0.25 } },
      { category: "L", modality: undefined, domainTags: [], confidence: 0.9, reason: "" },
      0.6,
    );
    expect(mixed.category).toBe("L");
    expect(mixed.probabilities.L + mixed.probabilities.M + mixed.probabilities.H).toBeCloseTo(
      1,
      10,
    );
  });

  it("a weak judge does not overturn a confident feature decision", () => {
    const mixed = combine(
      { probabilities: { L: 0.02, M: 0.95, H: 0.03 } },
      { category: "H", modality: undefined, domainTags: [], confidence: 0.4, reason: "" },
      0.5,
    );
    expect(mixed.category).toBe("M");
  });
});
