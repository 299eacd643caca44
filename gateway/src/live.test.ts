import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { Caller } from "./authn.js";
import { LiveCalls } from "./live.js";

const caller = (tenantId: string, subject: string, extra: Partial<Caller> = {}): Caller => ({
  principal: {
    tenantId,
    subject,
    roles: [],
    kind: "user",
    sessionId: `sess-${subject}`,
    expiresAt: new Date(Date.now() + 60_000),
  },
  token: "t",
  limitKey: subject,
  ...extra,
});

const bearer = (v: string) => new Headers({ authorization: `Bearer ${v}`, cookie: "not kept" });

describe("live calls", () => {
  it("live - a change ends only the calls of that user, session or key that are now refused; auth unreachable ends nothing", async () => {
    let answer: Code | undefined = Code.Unauthenticated;
    const seen: string[] = [];
    const live = new LiveCalls({
      authenticate: (headers: Headers) => {
        seen.push(`${headers.get("authorization")}|${headers.get("cookie")}`);
        return answer === undefined
          ? Promise.resolve(undefined)
          : Promise.reject(new ConnectError("this access token was revoked", answer));
      },
    });
    const ended: string[] = [];
    live.track(caller("t1", "u1"), bearer("a"), (m) => ended.push(`a:${m}`));
    live.track(caller("t2", "u1"), bearer("b"), (m) => ended.push(`b:${m}`));
    const stop = live.track(caller("t1", "u1"), bearer("c"), (m) => ended.push(`c:${m}`));
    live.track(caller("t1", "u2", { apiKey: { id: "k1", scopes: [] } }), bearer("d"), (m) =>
      ended.push(`d:${m}`),
    );
    stop(); // c ended by itself
    expect(live.size).toBe(3);

    answer = Code.Unavailable; // auth down: not a revocation
    await live.changed({ kind: "user", tenantId: "t1", id: "u1" });
    expect(ended).toEqual([]);
    answer = undefined; // still accepted: runs on
    await live.changed({ kind: "session", tenantId: "t1", id: "sess-u1" });
    expect(ended).toEqual([]);

    answer = Code.Unauthenticated;
    await live.changed({ kind: "session", tenantId: "t1", id: "sess-u1" });
    expect(ended).toEqual(["a:this access token was revoked"]);
    await live.changed({ kind: "api-key", tenantId: "t1", id: "k1" });
    expect(ended).toEqual(["a:this access token was revoked", "d:this access token was revoked"]);
    expect(live.size).toBe(1); // t2's call: another tenant
    // Only the credential is kept and checked, never other headers.
    expect(seen.every((s) => s.endsWith("|null"))).toBe(true);
  });
});
