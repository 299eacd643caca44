import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { InvalidArgumentError, PermissionDeniedError, type Principal } from "@ensemble/kit";
import { GetUsageRequestSchema, UsageDimension, UsageOperation } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import {
  dayStart,
  dedupeKeys,
  formatUsd,
  hourStart,
  monthOf,
  msUntilNextMonth,
  tenantSpendKey,
  userSpendKey,
  monthOfKey,
  apiKeySpendKey,
} from "./keys.js";
import { classifyWriteErrors } from "./ledger-writer.js";
import { addToRows, planUsageQuery, toResponse, type UsageRow } from "./usage-query.js";

const user = (roles = ["user"]): Principal => ({
  subject: "usr_1",
  tenantId: "ten_1",
  roles,
  kind: "user",
  expiresAt: new Date(Date.now() + 60_000),
});

const usageReq = (over: MessageInitShape<typeof GetUsageRequestSchema> = {}) =>
  create(GetUsageRequestSchema, {
    startTime: timestampFromDate(new Date("2025-01-01T00:00:00Z")),
    endTime: timestampFromDate(new Date("2025-02-01T00:00:00Z")),
    ...over,
  });

describe("accounting keys", () => {
  it("periods - UTC months, days and hours, also across a year boundary", () => {
    const t = Date.parse("2024-12-31T23:30:00Z");
    expect(monthOf(t)).toBe("202412");
    expect(msUntilNextMonth(t)).toBe(30 * 60_000);
    expect(dayStart(new Date(t)).toISOString()).toBe("2024-12-31T00:00:00.000Z");
    expect(hourStart(new Date(t + 29 * 60_000)).toISOString()).toBe("2024-12-31T23:00:00.000Z");
  });

  it("spend keys - any tenant, user or API key id makes a valid KV key that says its month", () => {
    for (const id of ["ten_1", "a.b c", "ü*>", ""]) {
      const t = tenantSpendKey("202501", id);
      const u = userSpendKey("202501", id, `${id}.x`);
      const a = apiKeySpendKey("202501", id, `${id}.x`);
      expect(a).not.toBe(u); // a user and a key with the same id count apart
      for (const k of [t, u, a]) {
        expect(k).toMatch(/^[-/_=.a-zA-Z0-9]+$/);
        expect(monthOfKey(k)).toBe("202501");
      }
    }
    // a dotted id cannot be mistaken for a tenant + user pair
    expect(tenantSpendKey("202501", "a.b")).not.toBe(userSpendKey("202501", "a", "b"));
  });

  it("dedupe keys - a step attempt or an idempotency key is unique per tenant; else the id is", () => {
    const base = {
      id: "c1",
      tenantId: "t1",
      runId: "",
      stepId: "",
      attempt: 0,
      idempotencyKey: "",
    };
    const step = { ...base, runId: "r", stepId: "s", attempt: 1 };
    expect(dedupeKeys(step).runKey).toBe(dedupeKeys({ ...step, id: "c2" }).runKey);
    expect(dedupeKeys(step).runKey).not.toBe(dedupeKeys({ ...step, attempt: 2 }).runKey);
    expect(dedupeKeys(step).runKey).not.toBe(dedupeKeys({ ...step, tenantId: "t2" }).runKey);
    expect(dedupeKeys(base).runKey).not.toBe(dedupeKeys({ ...base, id: "c2" }).runKey);
    const idem = { ...base, idempotencyKey: "k" };
    expect(dedupeKeys(idem).idemKey).toBe(dedupeKeys({ ...idem, id: "c9" }).idemKey);
    expect(dedupeKeys(idem).idemKey).not.toBe(dedupeKeys({ ...idem, tenantId: "t2" }).idemKey);
  });

  it("formatUsd - cents from a dollar up, small amounts exactly", () => {
    expect(formatUsd(12.5)).toBe("$12.50");
    expect(formatUsd(0.000123)).toBe("$0.000123");
    expect(formatUsd(0)).toBe("$0");
  });

  it("classifyWriteErrors - duplicates are recorded already, refused documents are set aside, anything else is retried", () => {
    const we = (code: number, index: number) => ({ code, index });
    expect(classifyWriteErrors({ writeErrors: [we(11000, 0), we(11000, 2)] })).toEqual({
      duplicates: [0, 2],
      rejected: [],
    });
    expect(classifyWriteErrors({ writeErrors: [we(11000, 0), we(121, 1)] })).toEqual({
      duplicates: [0],
      rejected: [1],
    });
    // a primary stepping down mid-batch: retry the batch
    expect(classifyWriteErrors({ writeErrors: [we(11000, 0), we(189, 1)] })).toBeUndefined();
    expect(classifyWriteErrors(new Error("connection reset"))).toBeUndefined();
  });
});

describe("accounting usage report", () => {
  it("access - all_users and another user's usage need the admin role", () => {
    expect(() => planUsageQuery(user(), usageReq({ allUsers: true }))).toThrow(
      PermissionDeniedError,
    );
    expect(() => planUsageQuery(user(), usageReq({ userId: "usr_2" }))).toThrow(
      PermissionDeniedError,
    );
    expect(planUsageQuery(user(), usageReq()).filter).toMatchObject({
      tenantId: "ten_1",
      userId: "usr_1",
    });
    const admin = planUsageQuery(user(["user", "admin"]), usageReq({ allUsers: true }));
    expect(admin.filter).not.toHaveProperty("userId");
    expect(admin.filter).toMatchObject({ tenantId: "ten_1" });
  });

  it("request - DAY and HOUR together are refused", () => {
    expect(() =>
      planUsageQuery(user(), usageReq({ groupBy: [UsageDimension.DAY, UsageDimension.HOUR] })),
    ).toThrow(InvalidArgumentError);
  });

  it("buckets - grouped, sorted by the dimensions in order, mean latency of successful calls", () => {
    const rows = new Map<string, UsageRow>();
    const fields = planUsageQuery(
      user(),
      usageReq({ groupBy: [UsageDimension.DAY, UsageDimension.MODEL] }),
    ).fields;
    const d2 = new Date("2025-01-02T00:00:00Z");
    const d1 = new Date("2025-01-01T00:00:00Z");
    const doc = { status: "OK", cacheHit: false, inputTokens: 10, outputTokens: 5 };
    addToRows(rows, fields, { ...doc, day: d2, model: "b", costUsd: 1, latencyMs: 100 });
    addToRows(rows, fields, { ...doc, day: d2, model: "b", costUsd: 2, latencyMs: 300 });
    addToRows(rows, fields, {
      ...doc,
      day: d2,
      model: "b",
      status: "UNAVAILABLE",
      latencyMs: 9_000,
    });
    addToRows(rows, fields, { ...doc, day: d2, model: "a", cacheHit: true, latencyMs: 1 });
    addToRows(rows, fields, { ...doc, day: d1, model: "z", costUsd: 0.5, latencyMs: 50 });
    const res = toResponse(fields, [...rows.values()]);
    expect(res.buckets.map((b) => [b.periodStart?.seconds, b.model])).toEqual([
      [BigInt(d1.getTime() / 1000), "z"],
      [BigInt(d2.getTime() / 1000), "a"],
      [BigInt(d2.getTime() / 1000), "b"],
    ]);
    const b = res.buckets[2];
    expect(b?.requests).toBe(3n);
    expect(b?.errors).toBe(1n);
    expect(b?.usage?.costUsd).toBe(3);
    expect(b?.usage?.totalTokens).toBe(45n);
    expect(Number(b?.meanLatency?.nanos ?? 0) / 1e6).toBe(200);
    expect(res.buckets[1]?.cacheHits).toBe(1n);
    expect(b?.userId).toBe(""); // not a requested dimension
    expect(res.totalRequests).toBe(5n);
    expect(res.total?.costUsd).toBe(3.5);
  });

  it("buckets - no group_by gives one total bucket, also when nothing was used", () => {
    const res = toResponse([], []);
    expect(res.buckets).toHaveLength(1);
    expect(res.buckets[0]?.requests).toBe(0n);
    expect(res.totalRequests).toBe(0n);
    expect(
      toResponse(
        ["operation"],
        [
          {
            values: [UsageOperation.EMBED],
            requests: 1,
            errors: 0,
            cacheHits: 0,
            inputTokens: 3,
            outputTokens: 0,
            cachedInputTokens: 0,
            cacheWriteInputTokens: 0,
            reasoningTokens: 0,
            costUsd: 0,
            okLatencyMs: 0,
            okCount: 0,
          },
        ],
      ).buckets[0]?.operation,
    ).toBe(UsageOperation.EMBED);
  });
});
