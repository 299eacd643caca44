import { Code, ConnectError } from "@connectrpc/connect";
import { captureLogs } from "@ensemble/testkit";
import { describe, expect, it } from "vitest";
import { toOpenAiError } from "./errors.js";

const logs = captureLogs({ level: "warn" });
const chat = { modelRoute: true, param: (p: string) => p.replace(/^chat\./, "") };

describe("openai errors", () => {
  it("status - gRPC codes become the HTTP statuses and types OpenAI clients expect", () => {
    const cases: Array<[Code, number, string, string | null]> = [
      [Code.InvalidArgument, 400, "invalid_request_error", null],
      [Code.Unauthenticated, 401, "authentication_error", "invalid_api_key"],
      [Code.PermissionDenied, 403, "permission_error", "permission_denied"],
      [Code.NotFound, 404, "invalid_request_error", "model_not_found"],
      [Code.ResourceExhausted, 429, "requests", "rate_limit_exceeded"],
      [Code.Unavailable, 503, "server_error", "unavailable"],
      [Code.DeadlineExceeded, 504, "server_error", "timeout"],
      [Code.Internal, 500, "server_error", null],
    ];
    for (const [code, status, type, errorCode] of cases) {
      const e = toOpenAiError(new ConnectError("m", code), chat, logs.logger);
      expect([e.status, e.type, e.code], Code[code]).toEqual([status, type, errorCode]);
      expect(Object.keys(e.body().error).sort()).toEqual(["code", "message", "param", "type"]);
    }
  });

  it("invalid argument - the field path of a contract violation becomes the param", () => {
    const e = toOpenAiError(
      new ConnectError(
        "chat.temperature: value must be less than or equal to 2",
        Code.InvalidArgument,
      ),
      chat,
      logs.logger,
    );
    expect(e.param).toBe("temperature");
    expect(e.message).toBe("temperature: value must be less than or equal to 2");
    const viaTrailer = toOpenAiError(
      new ConnectError("bad", Code.InvalidArgument),
      {
        ...chat,
        trailers: new Headers({ "x-invalid-field": "chat.model" }),
      },
      logs.logger,
    );
    expect(viaTrailer.param).toBe("model");
    const guarded = toOpenAiError(
      new ConnectError(
        "blocked by the tenant's guardrails: messages[0].content[0] contains an email address",
        Code.InvalidArgument,
      ),
      { ...chat, trailers: new Headers({ "x-invalid-field": "messages[0].content[0]" }) },
      logs.logger,
    );
    expect([guarded.status, guarded.code, guarded.param]).toEqual([
      400,
      "content_policy_violation",
      "messages[0].content[0]",
    ]);
  });

  it("resource exhausted - a rate limit carries Retry-After, a budget says insufficient_quota and not to retry", () => {
    const limited = toOpenAiError(
      new ConnectError("slow down", Code.ResourceExhausted),
      {
        ...chat,
        trailers: new Headers({ "retry-after-ms": "1500" }),
      },
      logs.logger,
    );
    expect(limited.code).toBe("rate_limit_exceeded");
    expect(limited.headers).toEqual({ "retry-after": "2", "retry-after-ms": "1500" });
    // The gateway's own limit (admit) carries the wait on the error itself, not in trailers.
    const own = toOpenAiError(
      new ConnectError(
        "rate limit exceeded",
        Code.ResourceExhausted,
        new Headers({ "retry-after-ms": "300" }),
      ),
      chat,
      logs.logger,
    );
    expect([own.status, own.code, own.headers["retry-after"]]).toEqual([
      429,
      "rate_limit_exceeded",
      "1",
    ]);
    // model-proxy's budget refusal also says when the month ends (retry-after-ms): no Retry-After
    // here, or the SDKs would retry it.
    const budget = toOpenAiError(
      new ConnectError("monthly budget exceeded: your limit ...", Code.ResourceExhausted),
      { ...chat, trailers: new Headers({ "retry-after-ms": "864000000" }) },
      logs.logger,
    );
    expect([budget.status, budget.type, budget.code]).toEqual([
      429,
      "insufficient_quota",
      "insufficient_quota",
    ]);
    expect(budget.headers).toEqual({ "x-should-retry": "false" });
    // An API key's own pace is a rate limit, whatever the key is called.
    const paced = toOpenAiError(
      new ConnectError(
        'rate limit exceeded: API key "budget-bot" allows 3 requests per minute',
        Code.ResourceExhausted,
      ),
      { ...chat, trailers: new Headers({ "retry-after-ms": "20000" }) },
      logs.logger,
    );
    expect([paced.code, paced.headers["retry-after"]]).toEqual(["rate_limit_exceeded", "20"]);
  });

  it("secrets - upstream details of internal and transport failures never reach the client", () => {
    const secret = "mongodb://admin:hunter2@10.0.0.5:27017 refused";
    for (const code of [Code.Internal, Code.Unknown, Code.Unavailable, Code.DataLoss]) {
      const e = toOpenAiError(new ConnectError(secret, code), chat, logs.logger);
      expect(JSON.stringify(e.body())).not.toContain("hunter2");
    }
    const crash = toOpenAiError(new TypeError(secret), chat, logs.logger);
    expect(crash.status).toBe(500);
    expect(crash.message).toBe("internal error");
  });
});
