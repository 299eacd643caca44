// Input rules live in the contract (protovalidate annotations); this is the one place that
// checks them. Bad input is INVALID_ARGUMENT with the field path in the message and the full
// list of violations as a `buf.validate.Violations` error detail, never an INTERNAL.
import { create, type DescEnum, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { pathToString, type Path } from "@bufbuild/protobuf/reflect";
import {
  createValidator,
  RuntimeError,
  violationsToProto,
  type Violation,
} from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";

// The validator caches compiled rules per message type, so one per process.
const validator = createValidator();

/**
 * Compiles the rules of a request type now. protovalidate compiles a type's CEL rules on its
 * first check, which made each method's first call after start-up ~100-250 ms slower (measured:
 * 117 of the 280 ms of model-proxy's first Chat); servers pay it before they listen instead. A
 * contract whose rules do not compile stops the service here, not at its first request.
 */
export function prepareValidation(schema: DescMessage): void {
  const result = validator.validate(schema, create(schema));
  if (result.kind === "error") {
    throw new Error(`the contract rules of ${schema.typeName} do not compile`, {
      cause: result.error,
    });
  }
}

/** "name: value length must be at least 1 characters" (no rule id: that is for machines). */
export function describeViolation(violation: Violation): string {
  const path = pathToString(violation.field);
  const message = enumMessage(violation) ?? violation.message;
  return path.length > 0 ? `${path}: ${message}` : message;
}

/**
 * Enum rules name the values a caller may send instead of protovalidate's "must not be in list
 * [0]" (the contracts' way of saying "required") or "must be one of the defined enum values".
 */
function enumMessage(violation: Violation): string | undefined {
  const unspecified =
    violation.ruleId === "enum.not_in" && violation.message === "must not be in list [0]";
  if (!unspecified && violation.ruleId !== "enum.defined_only") return undefined;
  const values = enumOf(violation.field)?.values.filter((v) => v.number !== 0);
  if (values === undefined || values.length === 0) return undefined;
  return `must be one of ${values.map((v) => v.name).join(", ")}`;
}

/** The enum of the field a path ends at (through list items and map values). */
function enumOf(path: Path): DescEnum | undefined {
  for (let i = path.length - 1; i >= 0; i--) {
    const item = path[i];
    if (item === undefined) return undefined;
    if (item.kind === "list_sub" || item.kind === "map_sub") continue;
    return item.kind === "field" ? item.enum : undefined;
  }
  return undefined;
}

/**
 * Checks a request against its contract's rules. Returns undefined when valid, else the error
 * to send. Rules that fail to compile are a bug in the contract: INTERNAL, with the cause kept
 * for the log. A rule whose CEL expression fails on this request's values (a timestamp
 * difference beyond CEL's duration range, a division by zero) is the request's: INVALID_ARGUMENT.
 */
export function validateMessage<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
): ConnectError | undefined {
  const result = validator.validate(schema, message);
  switch (result.kind) {
    case "valid":
      return undefined;
    case "invalid": {
      const [first, ...rest] = result.violations.map(describeViolation);
      const text =
        rest.length === 0
          ? (first ?? "invalid request")
          : `${first}, and ${rest.length} more violation${rest.length > 1 ? "s" : ""}`;
      const [value, desc] = violationsToProto(result.violations);
      return new ConnectError(
        text,
        Code.InvalidArgument,
        undefined,
        [{ desc, value }],
        result.error,
      );
    }
    case "error":
      if (result.error instanceof RuntimeError && result.error.cause !== undefined) {
        return new ConnectError(
          `the request's values are out of the range its rules can check: ${result.error.message}`,
          Code.InvalidArgument,
          undefined,
          undefined,
          result.error,
        );
      }
      return new ConnectError("internal error", Code.Internal, undefined, undefined, result.error);
  }
}
