import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  InvalidArgumentError,
  isUnexpected,
  NotFoundError,
  ResourceExhaustedError,
  toConnectError,
  UnauthenticatedError,
} from "./errors.js";

describe("errors", () => {
  it("errors - domain errors keep their message and map to their code", () => {
    const err = toConnectError(new NotFoundError("model gpt-x not found"));
    expect(err.code).toBe(Code.NotFound);
    expect(err.rawMessage).toBe("model gpt-x not found");
    expect(toConnectError(new UnauthenticatedError("missing access token")).code).toBe(
      Code.Unauthenticated,
    );
    expect(isUnexpected(err)).toBe(false);
  });

  it("errors - field and retry hints travel as metadata", () => {
    const invalid = toConnectError(new InvalidArgumentError("bad id", { field: "model.id" }));
    expect(invalid.code).toBe(Code.InvalidArgument);
    expect(invalid.metadata.get("x-invalid-field")).toBe("model.id");
    const limited = toConnectError(
      new ResourceExhaustedError("budget exceeded", { retryAfterMs: 1500.2 }),
    );
    expect(limited.metadata.get("retry-after-ms")).toBe("1501");
  });

  it("errors - a ConnectError passes through unchanged", () => {
    const original = new ConnectError("slow down", Code.ResourceExhausted);
    expect(toConnectError(original)).toBe(original);
  });

  it("errors - an unknown error becomes INTERNAL without its message, keeping it as cause", () => {
    const secret = new Error("connect ECONNREFUSED 10.1.2.3:27017 password=x");
    const err = toConnectError(secret);
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toBe("internal error");
    expect(err.message).not.toContain("10.1.2.3");
    expect(err.cause).toBe(secret);
    expect(isUnexpected(err)).toBe(true);
    expect(toConnectError("a string").rawMessage).toBe("internal error");
  });
});
