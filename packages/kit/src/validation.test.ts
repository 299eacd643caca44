import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import {
  CreateCollectionRequestSchema,
  GetUsageRequestSchema,
  type UsageDimension,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { validateMessage } from "./validation.js";

const usage = (start: string, end: string) =>
  create(GetUsageRequestSchema, {
    startTime: timestampFromDate(new Date(start)),
    endTime: timestampFromDate(new Date(end)),
  });

describe("kit validation", () => {
  it("cel - a message rule that holds passes, one that fails names its message", () => {
    expect(validateMessage(GetUsageRequestSchema, usage("2026-11-01", "2026-11-30"))).toBe(
      undefined,
    );
    const inverted = validateMessage(GetUsageRequestSchema, usage("2026-11-30", "2026-11-01"));
    expect(inverted?.code).toBe(Code.InvalidArgument);
    expect(inverted?.rawMessage).toBe(
      "end_time must be after start_time and at most 400 days later",
    );
  });

  it("cel - a rule that cannot be evaluated on the request's values is INVALID_ARGUMENT, not INTERNAL", () => {
    // end_time - start_time over ~10,000 years is outside CEL's duration range: the rule errors.
    const err = validateMessage(GetUsageRequestSchema, usage("0001-01-01", "9999-12-31"));
    expect(err?.code).toBe(Code.InvalidArgument);
    expect(err?.rawMessage).toMatch(/out of the range its rules can check: .*out of range/);
  });

  it("enums - an unset or unknown enum value names the values the caller may send", () => {
    const unset = validateMessage(
      CreateCollectionRequestSchema,
      create(CreateCollectionRequestSchema, { collection: { id: "c", dimensions: 8 } }),
    );
    expect(unset?.rawMessage).toBe(
      "collection.metric: must be one of DISTANCE_METRIC_COSINE, DISTANCE_METRIC_DOT, DISTANCE_METRIC_L2",
    );
    const unknown = validateMessage(GetUsageRequestSchema, {
      ...usage("2026-11-01", "2026-11-30"),
      groupBy: [77 as UsageDimension],
    });
    expect(unknown?.code).toBe(Code.InvalidArgument);
    expect(unknown?.rawMessage).toMatch(/^group_by\[0\]: must be one of USAGE_DIMENSION_DAY, /);
  });
});
