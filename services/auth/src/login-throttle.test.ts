import { describe, expect, it } from "vitest";
import { clientAddress } from "./login-throttle.js";

describe("auth login throttle", () => {
  it("client address - the entry the gateway appended (the last), none without the header", () => {
    expect(clientAddress(new Headers({ "x-forwarded-for": "1.2.3.4" }))).toBe("1.2.3.4");
    expect(clientAddress(new Headers({ "x-forwarded-for": "6.6.6.6, 10.0.0.7" }))).toBe("10.0.0.7");
    expect(clientAddress(new Headers({ "x-forwarded-for": " " }))).toBeUndefined();
    expect(clientAddress(new Headers())).toBeUndefined();
  });
});
