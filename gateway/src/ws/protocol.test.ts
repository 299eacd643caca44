import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { errorFrame, FrameError, parseFrame } from "./protocol.js";

function refused(text: string): FrameError {
  try {
    parseFrame(text);
  } catch (err) {
    if (err instanceof FrameError) return err;
    throw err;
  }
  throw new Error("frame was accepted");
}

describe("ws protocol", () => {
  it("parseFrame - watch_run takes WatchRunRequest fields beside id and type, in either case", () => {
    const a = parseFrame('{"id":"1","type":"watch_run","run_id":"run_x","after_sequence":3}');
    const b = parseFrame('{"id":"1","type":"watch_run","runId":"run_x","afterSequence":"3"}');
    for (const f of [a, b]) {
      expect(f.type).toBe("watch_run");
      if (f.type !== "watch_run") return;
      expect(f.request.runId).toBe("run_x");
      expect(f.request.afterSequence).toBe(3n);
    }
  });

  it("parseFrame - run decodes a RunRequest; chat keeps the OpenAI body; ping needs no id", () => {
    const run = parseFrame(
      JSON.stringify({
        id: "r",
        type: "run",
        request: { spec: { input: "hi", model: { model: "fast" } } },
      }),
    );
    expect(run.type === "run" && run.request.spec?.mode.case).toBe("model");
    const chat = parseFrame('{"id":"c","type":"chat","request":{"model":"fast","messages":[]}}');
    expect(chat).toMatchObject({ type: "chat", id: "c", body: { model: "fast" } });
    expect(parseFrame('{"type":"ping"}')).toEqual({ type: "ping" });
    expect(parseFrame('{"id":"1","type":"cancel"}')).toEqual({ type: "cancel", id: "1" });
    expect(parseFrame('{"type":"auth","token":"t"}')).toEqual({ type: "auth", token: "t" });
    expect(parseFrame('{"id":"a","type":"auth","token":"t"}')).toEqual({
      type: "auth",
      id: "a",
      token: "t",
    });
  });

  it("parseFrame - every malformed frame is a FrameError, with the id when there was one", () => {
    expect(refused("{nope").code).toBe(Code.InvalidArgument);
    expect(refused("[1]").message).toContain("object");
    expect(refused('{"id":"1"}').id).toBe("1");
    expect(refused('{"id":"1","type":"teleport"}').message).toContain("unknown type");
    expect(refused('{"type":"watch_run","run_id":"x"}').message).toContain("needs an id");
    expect(refused('{"id":"a b","type":"ping"}').message).toContain("id must be");
    expect(refused(`{"id":"${"x".repeat(65)}","type":"ping"}`).code).toBe(Code.InvalidArgument);
    const bad = refused('{"id":"w","type":"watch_run","run_id":"x","after_sequence":"soon"}');
    expect(bad.id).toBe("w");
    expect(bad.message).toMatch(/^watch_run: /);
    expect(refused('{"id":"r","type":"run","request":"go"}').message).toContain("RunRequest");
    expect(refused('{"id":"r","type":"run","request":{},"extra":1}').message).toContain("extra");
    expect(refused('{"id":"c","type":"cancel","why":1}').message).toContain("why");
    expect(refused('{"type":"auth"}').message).toContain("auth needs token");
    expect(refused('{"type":"auth","token":""}').code).toBe(Code.InvalidArgument);
    expect(refused('{"id":"a","type":"auth","token":7}').id).toBe("a");
    expect(refused('{"type":"auth","token":"t","user":"x"}').message).toContain("user");
  });

  it("errorFrame - gRPC code names in lower case, optional fields only when set", () => {
    expect(JSON.parse(errorFrame("1", Code.NotFound, "run not found"))).toEqual({
      id: "1",
      type: "error",
      code: "not_found",
      message: "run not found",
    });
    expect(
      JSON.parse(
        errorFrame(undefined, Code.ResourceExhausted, "slow down", { retryAfterMs: 12.2 }),
      ),
    ).toEqual({
      type: "error",
      code: "resource_exhausted",
      message: "slow down",
      retry_after_ms: 13,
    });
  });
});
