import { Code, ConnectError } from "@connectrpc/connect";
import { TimeoutError } from "@nats-io/transport-node";
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

  it("errors - MongoDB or NATS not answering is UNAVAILABLE naming which, without the driver's text", () => {
    const mongo = Object.assign(new Error("connection <monitor> to 10.1.2.3:27017 timed out"), {
      name: "MongoServerSelectionError",
    });
    const fromMongo = toConnectError(mongo);
    expect([fromMongo.code, fromMongo.rawMessage]).toEqual([
      Code.Unavailable,
      "MongoDB is not answering right now; try again shortly",
    ]);
    expect(fromMongo.cause).toBe(mongo);
    expect(isUnexpected(fromMongo)).toBe(false);
    // A NATS request timeout, also when wrapped by the code that made the request.
    const wrapped = new Error("could not publish", { cause: new TimeoutError() });
    const fromNats = toConnectError(wrapped);
    expect([fromNats.code, fromNats.rawMessage]).toEqual([
      Code.Unavailable,
      "NATS is not answering right now; try again shortly",
    ]);
    // Other timeouts are not a dependency's (AbortSignal.timeout's DOMException, a plain error).
    expect(toConnectError(new DOMException("timed out", "TimeoutError")).code).toBe(Code.Internal);
    expect(toConnectError(new Error("timeout")).code).toBe(Code.Internal);
  });
});
