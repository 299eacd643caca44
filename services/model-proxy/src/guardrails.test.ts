import { create } from "@bufbuild/protobuf";
import { ChatRequestSchema, ChatRole, GuardrailsSchema, PiiKind } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import {
  compileGuardrails,
  guardChat,
  guardText,
  GuardrailStats,
  OutputGuard,
  TermMatcher,
} from "./guardrails.js";

const stats = new GuardrailStats();

function redact(kind: PiiKind, text: string): string {
  const g = compileGuardrails(create(GuardrailsSchema, { redactPii: [kind] }));
  return guardText(g, text, "text", stats);
}

describe("guardrails", () => {
  it("pii - each kind is replaced where it is, and look-alikes are left alone", () => {
    const cases: Array<[PiiKind, string[], string[]]> = [
      [PiiKind.EMAIL, ["jane.doe+news@mail.example.co.uk"], ["a@b", "user@localhost"]],
      [
        PiiKind.PHONE,
        ["+44 20 7946 0958", "(415) 555-0132", "+1 415-555-0132"],
        ["2026-11-29 at 10:30", "order 1234567890", "version 1.2.3"],
      ],
      [
        PiiKind.CREDIT_CARD,
        ["4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005"],
        ["4111 1111 1111 1112", "1234 5678"],
      ],
      [
        PiiKind.IBAN,
        ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
        ["GB82 WEST 1234 5698 7654 33"],
      ],
      [PiiKind.IP_ADDRESS, ["10.0.0.1", "2001:db8::1"], ["10:30:00", "999.1.1.1", "v1.2.3.4.5"]],
      [PiiKind.US_SSN, ["123-45-6789"], ["000-12-3456", "123-00-6789"]],
      [
        PiiKind.SECRET,
        [
          "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
          "AKIAIOSFODNN7EXAMPLE",
          `ghp_${"a".repeat(36)}`,
          `ens_abcd1234_${"x".repeat(40)}`,
          "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlc2lnbmF0dXJl",
          "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
        ],
        ["sk-short", "the task-list"],
      ],
    ];
    for (const [kind, found, ignored] of cases) {
      const placeholder = `[${PiiKind[kind]}]`;
      for (const value of found) {
        expect(redact(kind, `before ${value} after`), value).toBe(`before ${placeholder} after`);
      }
      for (const value of ignored) {
        expect(redact(kind, `before ${value} after`), value).toBe(`before ${value} after`);
      }
    }
  });

  it("pii - several kinds in one text; a kind both redacted and blocked is refused", () => {
    const g = compileGuardrails(
      create(GuardrailsSchema, {
        redactPii: [PiiKind.EMAIL, PiiKind.PHONE, PiiKind.SECRET],
        blockPii: [PiiKind.SECRET],
      }),
    );
    expect(guardText(g, "mail a.b@example.com or call +44 20 7946 0958", "x", stats)).toBe(
      "mail [EMAIL] or call [PHONE]",
    );
    expect(() => guardText(g, "key AKIAIOSFODNN7EXAMPLE", "messages[1].content[0]", stats)).toThrow(
      "blocked by the tenant's guardrails: messages[1].content[0] contains an API key or secret",
    );
  });

  it("terms - whole words, any case, any spacing; special characters are literal", () => {
    const m = new TermMatcher(["pineapple", "Project Falcon", "c++", "a.b"]);
    expect(m.find("I like PineApple.")?.term).toBe("PineApple");
    expect(m.find("I like pineapples")).toBeUndefined();
    expect(m.find("the project\n  falcon plan")?.term).toBe("project\n  falcon");
    expect(m.find("we write c++ daily")?.term).toBe("c++");
    expect(m.find("axb is not a.b's twin")?.term).toBe("a.b");
    expect(m.find("axb")).toBeUndefined();
    // A stream: a match reaching the end of what arrived is not decided yet.
    expect(m.find("I like pineapple", 0, false)).toBeUndefined();
    expect(m.find("I like pineapple!", 0, false)?.term).toBe("pineapple");
  });

  it("output - however an answer is cut into chunks, no part of a blocked term is sent, and all before it is", () => {
    const matcher = new TermMatcher(["pineapple"]);
    const answers = [
      ["I said pineapple now.", true],
      ["I said pineapples now.", false],
      ["Pineapple", true],
      ["no fruit here at all", false],
    ] as const;
    for (const [answer, blocked] of answers) {
      for (let size = 1; size <= answer.length; size++) {
        const guard = new OutputGuard(matcher);
        let sent = "";
        let result: string | undefined;
        for (let i = 0; i < answer.length && result === undefined; i += size) {
          const r = guard.push(answer.slice(i, i + size));
          result = r.blocked;
          sent += r.send;
        }
        if (result === undefined) {
          const r = guard.end();
          result = r.blocked;
          sent += r.send;
        }
        expect(result !== undefined, `${answer} / ${size}`).toBe(blocked);
        if (blocked) {
          expect(sent, `${answer} / ${size}`).toBe(
            answer.slice(0, answer.toLowerCase().indexOf("pineapple")),
          );
        } else expect(sent).toBe(answer);
      }
    }
  });

  it("chat - every text part and earlier tool call is guarded in a copy; no rule, no copy", () => {
    const req = create(ChatRequestSchema, {
      model: "m",
      messages: [
        { role: ChatRole.SYSTEM, content: [{ part: { case: "text", value: "admin is x@y.org" } }] },
        {
          role: ChatRole.ASSISTANT,
          toolCalls: [{ id: "1", name: "send", arguments: '{"to":"jane@example.com"}' }],
        },
      ],
    });
    const g = compileGuardrails(create(GuardrailsSchema, { redactPii: [PiiKind.EMAIL] }));
    const out = guardChat(g, req, stats);
    expect(out.messages[0]?.content[0]?.part.value).toBe("admin is [EMAIL]");
    expect(out.messages[1]?.toolCalls[0]?.arguments).toBe('{"to":"[EMAIL]"}');
    expect(req.messages[0]?.content[0]?.part.value).toBe("admin is x@y.org");
    const none = compileGuardrails(create(GuardrailsSchema, { blockedOutputTerms: ["x"] }));
    expect(guardChat(none, req, stats)).toBe(req);
  });
});
