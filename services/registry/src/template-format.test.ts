import { readFile } from "node:fs/promises";
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { WorkflowTemplateSchema } from "@ensemble/proto";
import { validateTemplate } from "@ensemble/workflow";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

describe("template format documentation", () => {
  it("template validation - the example in the README is a valid template", async () => {
    const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
    const block = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)]
      .map((m) => m[1] ?? "")
      .find((text) => text.startsWith("templates:"));
    expect(block).toBeDefined();
    const doc = parse(block ?? "") as { templates: JsonValue[] };
    const example = fromJson(WorkflowTemplateSchema, doc.templates[0] ?? null);
    expect(example.steps).toHaveLength(5);
    expect(validateTemplate(example)).toEqual([]);
  });
});
