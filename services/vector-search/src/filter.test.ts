import { create, fromJson, type JsonObject } from "@bufbuild/protobuf";
import { MetadataFilterSchema } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { compileFilter, valuesAt } from "./filter.js";

const filter = (json: JsonObject) => compileFilter(fromJson(MetadataFilterSchema, json))!;

const doc: JsonObject = {
  source: "wiki",
  year: 2021,
  tags: ["a", "b"],
  author: { name: "Ada", age: 36 },
  refs: [{ id: 1 }, { id: 7 }],
  nothing: null,
};

describe("filter", () => {
  it("paths - dotted, through arrays of objects", () => {
    expect(valuesAt(doc, "author.name")).toEqual(["Ada"]);
    expect(valuesAt(doc, "refs.id")).toEqual([1, 7]);
    expect(valuesAt(doc, "missing.x")).toEqual([]);
  });

  it("eq and in - scalars, array elements, nested fields", () => {
    expect(filter({ must: [{ field: "source", eq: "wiki" }] })(doc)).toBe(true);
    expect(filter({ must: [{ field: "source", eq: "web" }] })(doc)).toBe(false);
    expect(filter({ must: [{ field: "tags", eq: "b" }] })(doc)).toBe(true);
    expect(filter({ must: [{ field: "author.name", in: { values: ["Bob", "Ada"] } }] })(doc)).toBe(
      true,
    );
    expect(filter({ must: [{ field: "year", in: { values: ["2021"] } }] })(doc)).toBe(false);
    expect(filter({ must: [{ field: "refs.id", eq: 7 }] })(doc)).toBe(true);
  });

  it("ranges - numbers numerically, strings lexicographically, other types never match", () => {
    expect(filter({ must: [{ field: "year", range: { gte: 2020, lt: 2022 } }] })(doc)).toBe(true);
    expect(filter({ must: [{ field: "year", range: { gt: 2021 } }] })(doc)).toBe(false);
    expect(filter({ must: [{ field: "source", range: { gt: "a", lt: "x" } }] })(doc)).toBe(true);
    expect(filter({ must: [{ field: "year", range: { gt: "1000" } }] })(doc)).toBe(false);
    expect(filter({ must: [{ field: "refs.id", range: { gt: 5 } }] })(doc)).toBe(true);
  });

  it("exists and must_not", () => {
    expect(filter({ must: [{ field: "nothing", exists: true }] })(doc)).toBe(true);
    expect(filter({ must: [{ field: "absent", exists: false }] })(doc)).toBe(true);
    expect(filter({ mustNot: [{ field: "source", eq: "wiki" }] })(doc)).toBe(false);
    expect(filter({ mustNot: [{ field: "absent", eq: 1 }] })(doc)).toBe(true);
  });

  it("empty filter - everything passes", () => {
    expect(compileFilter(create(MetadataFilterSchema))).toBeUndefined();
  });
});
