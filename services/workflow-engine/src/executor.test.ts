import { describe, expect, it } from "vitest";
import { callMetadata } from "./executor.js";

describe("callMetadata", () => {
  it("labels a run's calls with what fits a call: at most 16 pairs of at most 256 characters, feature included", () => {
    expect(callMetadata({ team: "search" })).toEqual({ feature: "workflow", team: "search" });
    expect(callMetadata({ feature: "digest" }, "workflow-explainer")).toEqual({
      feature: "digest",
    });
    const many = Object.fromEntries(
      Array.from({ length: 20 }, (_, i) => [`k${String(i).padStart(2, "0")}`, "v"]),
    );
    // A run's own feature that is too long for a call gives way to the engine's, and the
    // pairs still fit the call's limit (it was 17 pairs, refused by model-proxy).
    const out = callMetadata({ ...many, feature: "x".repeat(300), note: "y".repeat(257) });
    expect(Object.keys(out)).toHaveLength(16);
    expect(out["feature"]).toBe("workflow");
    expect(out["note"]).toBeUndefined();
    expect(out["k00"]).toBe("v");
    expect(out["k15"]).toBeUndefined();
  });
});
