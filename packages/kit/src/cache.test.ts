import { describe, expect, it } from "vitest";
import { TtlCache } from "./cache.js";

describe("kit TtlCache", () => {
  it("reuses a value for its TTL, shares a load between callers, and never keeps a failure", async () => {
    let now = 1_000;
    let loads = 0;
    const cache = new TtlCache<string>({ ttlMs: 100, now: () => now });
    const load = (value: string) => () => {
      loads += 1;
      return Promise.resolve(value);
    };
    const [a, b] = await Promise.all([cache.get("k", load("one")), cache.get("k", load("two"))]);
    expect([a, b, loads]).toEqual(["one", "one", 1]);
    now += 99;
    expect(await cache.get("k", load("three"))).toBe("one");
    now += 1;
    expect(await cache.get("k", load("four"))).toBe("four");
    expect(loads).toBe(2);

    await expect(
      cache.get("bad", () => Promise.reject(new Error("registry down"))),
    ).rejects.toThrow("registry down");
    expect(await cache.get("bad", load("recovered"))).toBe("recovered");
  });

  it("starts over beyond maxEntries rather than growing without bound", async () => {
    const cache = new TtlCache<number>({ ttlMs: 60_000, maxEntries: 2 });
    let loads = 0;
    const load = () => Promise.resolve(++loads);
    await cache.get("a", load);
    await cache.get("b", load);
    await cache.get("c", load); // clears a and b
    expect(await cache.get("a", load)).toBe(4);
  });
});
