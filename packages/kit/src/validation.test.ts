import { create, createFileRegistry, setExtension } from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FieldOptionsSchema,
  FileDescriptorProtoSchema,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import {
  field,
  FieldRulesSchema,
  file_buf_validate_validate,
} from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code } from "@connectrpc/connect";
import {
  CreateCollectionRequestSchema,
  GetUsageRequestSchema,
  type UsageDimension,
} from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { prepareValidation, validateMessage } from "./validation.js";

/** A message type whose one field carries the CEL rule `expression`. */
function typeWithRule(expression: string) {
  const options = create(FieldOptionsSchema);
  setExtension(options, field, create(FieldRulesSchema, { cel: [{ id: "r", expression }] }));
  const file = create(FileDescriptorProtoSchema, {
    name: "rule_test.proto",
    package: "ruletest",
    syntax: "proto3",
    dependency: ["buf/validate/validate.proto"],
    messageType: [
      {
        name: "Probe",
        field: [
          {
            name: "text",
            jsonName: "text",
            number: 1,
            type: FieldDescriptorProto_Type.STRING,
            label: FieldDescriptorProto_Label.OPTIONAL,
            options,
          },
        ],
      },
    ],
  });
  const registry = createFileRegistry(file, (name) =>
    name === "buf/validate/validate.proto" ? file_buf_validate_validate : undefined,
  );
  const schema = registry.getMessage("ruletest.Probe");
  if (schema === undefined) throw new Error("no ruletest.Probe");
  return schema;
}

const usage = (start: string, end: string) =>
  create(GetUsageRequestSchema, {
    startTime: timestampFromDate(new Date(start)),
    endTime: timestampFromDate(new Date(end)),
  });

describe("kit validation", () => {
  it("prepare - rules are compiled before the first request; rules that do not compile stop the start", () => {
    const good = typeWithRule("this.size() < 5 ? '' : 'too long'");
    prepareValidation(good);
    const tooLong = validateMessage(good, create(good, { text: "abcdefgh" }));
    expect(tooLong?.code).toBe(Code.InvalidArgument);
    expect(tooLong?.rawMessage).toBe("text: too long");

    const broken = typeWithRule("this.size( <");
    expect(() => prepareValidation(broken)).toThrow(
      "the contract rules of ruletest.Probe do not compile",
    );
  });

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
