import { describe, expect, it } from "vitest";
import { uniqueName } from "./names.js";

describe("uniqueName", () => {
  it("uniqueName - never repeats", () => {
    const names = Array.from({ length: 5_000 }, () => uniqueName("runs"));
    expect(new Set(names).size).toBe(names.length);
  });

  it("uniqueName - valid for MongoDB databases and NATS streams/buckets whatever the prefix", () => {
    for (const prefix of ["runs", "Registry Models", "a.b*c>d/e", "9lives", "", "x".repeat(100)]) {
      const name = uniqueName(prefix);
      expect(name).toMatch(/^[a-z][a-z0-9_]*$/);
      expect(name.length).toBeLessThanOrEqual(40);
    }
    expect(uniqueName("Registry Models")).toMatch(/^registry_models_/);
  });
});
