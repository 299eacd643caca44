import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { GetTenantSettingsResponseSchema, PiiKind } from "@ensemble/proto";
import { toConnectError } from "@ensemble/kit";
import { captureLogs } from "@ensemble/testkit";
import { describe, expect, it } from "vitest";
import { TenantSettings } from "./tenant-settings.js";

const logs = captureLogs({ level: "warn" });

/** auth's GetTenantSettings answering with `answers` in turn (an Error is thrown). */
function auth(
  answers: Array<ReturnType<typeof create<typeof GetTenantSettingsResponseSchema>> | Error>,
) {
  return {
    getTenantSettings: () => {
      const next = answers.shift();
      if (next === undefined || next instanceof Error)
        return Promise.reject(next ?? new Error("none"));
      return Promise.resolve(next);
    },
  } as unknown as ConstructorParameters<typeof TenantSettings>[0];
}

describe("tenant settings", () => {
  it("auth down - refused while the tenant's guardrails are unknown; the last known ones apply once read", async () => {
    const down = new ConnectError("connect ECONNREFUSED", Code.Unavailable);
    const known = create(GetTenantSettingsResponseSchema, {
      settings: { guardrails: { redactPii: [PiiKind.EMAIL] } },
    });
    const settings = new TenantSettings(auth([down, known, down]), {
      ttlMs: 0,
      logger: logs.logger,
    });
    const first = await settings.get("t1", "token").catch((e: unknown) => toConnectError(e));
    expect(first).toBeInstanceOf(ConnectError);
    expect((first as ConnectError).code).toBe(Code.Unavailable);
    expect((first as ConnectError).rawMessage).toContain("guardrails");
    expect((await settings.get("t1", "token")).guardrails.redact).toEqual([PiiKind.EMAIL]);
    // auth down again: the last known guardrails still apply.
    expect((await settings.get("t1", "token")).guardrails.redact).toEqual([PiiKind.EMAIL]);
  });

  it("credentials - a token that may not read the settings is PERMISSION_DENIED, never the defaults", async () => {
    const denied = new ConnectError("no", Code.PermissionDenied);
    const settings = new TenantSettings(auth([denied]), { ttlMs: 0, logger: logs.logger });
    const err = await settings.get("t2", "token").catch((e: unknown) => toConnectError(e));
    expect((err as ConnectError).code).toBe(Code.PermissionDenied);
  });
});
