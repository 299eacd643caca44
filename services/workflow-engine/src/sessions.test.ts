import { create } from "@bufbuild/protobuf";
import { ChatRole, ContentPartSchema, SessionMessageStatus } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { contextPath, estimateTokens, titleOf } from "./sessions.js";
import type { MessageDoc } from "./sessions.store.js";
import { encode } from "./store.js";

function msg(id: string, parentId: string, text: string, status = SessionMessageStatus.COMPLETE) {
  const doc: MessageDoc = {
    tenantId: "t",
    userId: "u",
    sessionId: "s",
    id,
    parentId,
    role: id.startsWith("u") ? ChatRole.USER : ChatRole.ASSISTANT,
    content:
      text === ""
        ? []
        : [
            encode(
              ContentPartSchema,
              create(ContentPartSchema, { part: { case: "text", value: text } }),
            ),
          ],
    status,
    runId: "",
    model: "",
    latencyMs: 0,
    simulated: false,
    createTime: new Date(0),
  };
  return doc;
}

// u1 - a1 - u2 - a2
//         \- u3 - a3 (failed)
const tree = new Map(
  [
    msg("u1", "", "first"),
    msg("a1", "u1", "first answer"),
    msg("u2", "a1", "second"),
    msg("a2", "u2", "second answer"),
    msg("u3", "a1", "other branch"),
    msg("a3", "u3", "", SessionMessageStatus.FAILED),
  ].map((m) => [m.id, m]),
);
const ids = (ms: MessageDoc[]) => ms.map((m) => m.id);

describe("sessions", () => {
  it("contextPath - the branch from the root to the parent, oldest first, nothing of other branches", () => {
    expect(ids(contextPath(tree, "a2", 50, 1e9))).toEqual(["u1", "a1", "u2", "a2"]);
    expect(ids(contextPath(tree, "a1", 50, 1e9))).toEqual(["u1", "a1"]);
    expect(ids(contextPath(tree, "", 50, 1e9))).toEqual([]);
  });

  it("contextPath - a failed reply is left out; the newest messages are kept within both bounds", () => {
    expect(ids(contextPath(tree, "a3", 50, 1e9))).toEqual(["u1", "a1", "u3"]);
    expect(ids(contextPath(tree, "a2", 2, 1e9))).toEqual(["u2", "a2"]);
    const last = estimateTokens([
      create(ContentPartSchema, { part: { case: "text", value: "second answer" } }),
    ]);
    expect(ids(contextPath(tree, "a2", 50, last))).toEqual(["a2"]);
    expect(ids(contextPath(tree, "a2", 50, last - 1))).toEqual([]);
  });

  it("titleOf - the first line, shortened; images alone get a name", () => {
    expect(titleOf("  Plan a trip\nto Rome  ", 0)).toBe("Plan a trip");
    const long = titleOf("x".repeat(100), 0);
    expect(long.length).toBe(60);
    expect(long.endsWith("…")).toBe(true);
    expect(titleOf("", 1)).toBe("Image");
  });
});
