import { describe, expect, it } from "vitest";
import { pluginInputs } from "./plugins.js";
import { renderTemplate } from "@ensemble/workflow";

const scope = {
  input: 'say "hi"\nthen leave',
  vars: { tone: "dry" },
  outputs: { draft: 'a {quoted} "draft"' },
};
const render = (text: string) => renderTemplate(text, scope);

describe("plugin inputs", () => {
  it("plugin inputs - a JSON object prompt is rendered string by string, so values with quotes and newlines stay intact", () => {
    expect(
      pluginInputs(
        '{"text": "{{steps.draft.output}}", "limit": 3, "opts": {"tone": "{{vars.tone}}", "tags": ["{{input}}", true]}}',
        render,
      ),
    ).toEqual({
      text: 'a {quoted} "draft"',
      limit: 3,
      opts: { tone: "dry", tags: ['say "hi"\nthen leave', true] },
    });
  });

  it("plugin inputs - any other prompt is rendered into text; an empty one sends the run's input", () => {
    expect(pluginInputs("Tone {{vars.tone}}: {{steps.draft.output}}", render)).toEqual({
      text: 'Tone dry: a {quoted} "draft"',
    });
    expect(pluginInputs("", render)).toEqual({ text: 'say "hi"\nthen leave' });
    // Not an object (an array, or broken JSON): plain text.
    expect(pluginInputs('["{{vars.tone}}"]', render)).toEqual({ text: '["dry"]' });
    expect(pluginInputs('{"text": {{input}}', render)).toEqual({
      text: '{"text": say "hi"\nthen leave',
    });
  });
});
