import { Modality } from "@ensemble/proto";
import { describe, expect, it } from "vitest";
import { classifyFast, extractFeatures, score } from "./features.js";

describe("fast classifier - categories", () => {
  it("M - a short factual question is simple, with confidence", () => {
    const d = classifyFast({ text: "What's the capital of Canada?" });
    expect(d.category).toBe("M");
    expect(d.confidence).toBeGreaterThan(0.7);
    expect(d.reasons[0]).toMatch(/^category M/);
  });

  it("M - rewriting given text is simple", () => {
    expect(classifyFast({ text: "Rephrase this more politely: 'I need it now.'" }).category).toBe(
      "M",
    );
  });

  it("L - a proof request needs deep reasoning, and the reason names the cue", () => {
    const d = classifyFast({ text: "Prove that the square root of 3 is irrational." });
    expect(d.category).toBe("L");
    expect(d.reasons[0]).toContain("prove");
  });

  it("L - hard debugging of a concurrency bug needs deep reasoning", () => {
    const d = classifyFast({
      text: "Our Java service hits a deadlock intermittently when two threads update the cache. Why does it happen and what is the root cause?",
    });
    expect(d.category).toBe("L");
  });

  it("H - several deliverables make a workflow", () => {
    const d = classifyFast({
      text: "For our product launch, write a press release, a landing page, three social media posts and an email sequence, then review everything for tone.",
    });
    expect(d.category).toBe("H");
    expect(d.reasons[0]).toMatch(/several deliverables/);
  });

  it("H - a software project with tests, docs and deployment is a workflow", () => {
    const d = classifyFast({
      text: "Build a URL shortener: a Go backend, a database schema, unit tests, a Dockerfile and a README.",
    });
    expect(d.category).toBe("H");
    expect(d.modalities).toContain(Modality.CODE);
  });

  it("probabilities form a distribution and the confidence is the winner's", () => {
    const d = classifyFast({ text: "Tell me about whales." });
    const { L, M, H } = d.probabilities;
    expect(L + M + H).toBeCloseTo(1, 10);
    expect(d.confidence).toBe(Math.max(L, M, H));
  });
});

describe("fast classifier - modalities", () => {
  it("text - plain prose is text", () => {
    expect(classifyFast({ text: "Who wrote Middlemarch?" }).modality).toBe(Modality.TEXT);
  });

  it("image input - an image attachment makes image input", () => {
    const d = classifyFast({ text: "What is written here?", attachmentMimeTypes: ["image/png"] });
    expect(d.modality).toBe(Modality.IMAGE_INPUT);
    expect(d.reasons.join(" ")).toContain("1 image attachment");
  });

  it("image generation - asking to draw something is image generation, not image input", () => {
    const d = classifyFast({ text: "Draw a watercolor picture of a fox in the snow." });
    expect(d.modality).toBe(Modality.IMAGE_GENERATION);
    expect(d.modalities).not.toContain(Modality.IMAGE_INPUT);
    expect(d.category).toBe("M");
  });

  it("code - a code fence is code", () => {
    const d = classifyFast({ text: "What does this print?\n```python\nprint(sum(range(4)))\n```" });
    expect(d.modality).toBe(Modality.CODE);
    expect(d.domainTags).toContain("code");
  });

  it("video - asking for a clip is video", () => {
    const d = classifyFast({
      text: "Generate a short video of a hummingbird drinking from a flower.",
    });
    expect(d.modality).toBe(Modality.VIDEO);
  });

  it("image input and code together: the image is the main modality, both are listed", () => {
    const d = classifyFast({
      text: "Turn this screenshot into a React component.",
      attachmentMimeTypes: ["image/png"],
    });
    expect(d.modalities).toEqual([Modality.IMAGE_INPUT, Modality.CODE]);
  });

  it("'the plot' of a novel is not an image reference", () => {
    expect(classifyFast({ text: "Summarize the plot of Emma." }).modality).toBe(Modality.TEXT);
  });
});

describe("fast classifier - signals", () => {
  it("domain tags name the subject areas", () => {
    const d = classifyFast({ text: "Is this clause in my lease contract legal under GDPR?" });
    expect(d.domainTags).toContain("legal");
  });

  it("an explicit length is read from the text", () => {
    expect(classifyFast({ text: "Write an essay of 1,200 words on tides." }).requestedWords).toBe(
      1200,
    );
  });

  it("a very long input is scanned only in its head, and stays fast", () => {
    const text =
      "Please summarise the following notes. " + "lorem ipsum dolor sit amet ".repeat(40_000);
    const started = performance.now();
    const d = classifyFast({ text });
    expect(performance.now() - started).toBeLessThan(200);
    expect(d.category).toBeDefined();
  });

  it("score - every feature at zero leaves only the biases, M the most likely", () => {
    const { features } = extractFeatures({ text: "" });
    for (const f of Object.values(features)) f.value = 0;
    const s = score(features);
    expect(s.probabilities.M).toBeGreaterThan(s.probabilities.L);
    expect(s.probabilities.M).toBeGreaterThan(s.probabilities.H);
  });
});
