// The categorizer's fast classifier on the labelled prompts in bench/data/categorizer.jsonl,
// in-process, without the judge: accuracy per class, the confusion matrix and overall accuracy
// of the category (and of the main modality), on the training split (the prompts the weights
// were adjusted against), the held-out split (every 5th prompt, never tuned on) and all; then
// the decision latency p50/p99 over many rounds. Baseline: always answering the majority class.
//
//   node bench/dist/categorizer.js [rounds=50]
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { classifyFast, type CategoryLetter } from "@ensemble/categorizer";
import { Modality } from "@ensemble/proto";
import { summarise } from "./stats.js";

interface Labelled {
  id: string;
  text: string;
  attachments?: string[];
  category: CategoryLetter;
  modality: string;
}

const MODALITY_LABEL: Partial<Record<Modality, string>> = {
  [Modality.TEXT]: "text",
  [Modality.IMAGE_INPUT]: "image_input",
  [Modality.IMAGE_GENERATION]: "image_generation",
  [Modality.CODE]: "code",
  [Modality.VIDEO]: "video",
};

const file = fileURLToPath(new URL("../data/categorizer.jsonl", import.meta.url));
const rows: Labelled[] = readFileSync(file, "utf8")
  .split("\n")
  .filter((l) => l.trim() !== "")
  .map((l) => JSON.parse(l) as Labelled);
const rounds = Number(process.argv[2] ?? 50);

/** Every 5th prompt (5th, 10th, ...) is held out. */
const heldOut = (i: number) => (i + 1) % 5 === 0;

function report(name: string, subset: Labelled[]): void {
  const classes: CategoryLetter[] = ["L", "M", "H"];
  const confusion: Record<CategoryLetter, Record<CategoryLetter, number>> = {
    L: { L: 0, M: 0, H: 0 },
    M: { L: 0, M: 0, H: 0 },
    H: { L: 0, M: 0, H: 0 },
  };
  let modalityRight = 0;
  const modalities = new Map<string, { right: number; total: number }>();
  for (const row of subset) {
    const d = classifyFast({ text: row.text, attachmentMimeTypes: row.attachments ?? [] });
    confusion[row.category][d.category]++;
    const got = MODALITY_LABEL[d.modality] ?? "other";
    const m = modalities.get(row.modality) ?? { right: 0, total: 0 };
    m.total++;
    if (got === row.modality) {
      m.right++;
      modalityRight++;
    }
    modalities.set(row.modality, m);
  }
  const right = classes.reduce((s, c) => s + confusion[c][c], 0);
  const counts = classes.map((c) => classes.reduce((s, p) => s + confusion[c][p], 0));
  const majority = Math.max(...counts);
  const pct = (a: number, b: number) => `${((100 * a) / Math.max(1, b)).toFixed(1)}%`;

  console.log(`\n== ${name}: ${subset.length} prompts`);
  console.log("category accuracy per class (recall):");
  classes.forEach((c, i) => {
    console.log(
      `  ${c}  ${pct(confusion[c][c], counts[i] ?? 0).padStart(6)}  (${confusion[c][c]}/${counts[i]})`,
    );
  });
  console.log("confusion matrix (rows: label, columns: predicted):");
  console.log(`        ${classes.map((c) => c.padStart(5)).join("")}`);
  for (const c of classes) {
    console.log(`    ${c}   ${classes.map((p) => String(confusion[c][p]).padStart(5)).join("")}`);
  }
  console.log(
    `category accuracy: ${pct(right, subset.length)} (${right}/${subset.length}); majority-class baseline ${pct(majority, subset.length)}; ratio ${(right / Math.max(1, majority)).toFixed(2)}x`,
  );
  console.log(
    `main modality accuracy: ${pct(modalityRight, subset.length)} (${[...modalities.entries()]
      .map(([k, v]) => `${k} ${v.right}/${v.total}`)
      .join(", ")})`,
  );
}

const train = rows.filter((_, i) => !heldOut(i));
const held = rows.filter((_, i) => heldOut(i));
console.log(`categorizer fast classifier (no judge), ${rows.length} labelled prompts from ${file}`);
report("training split (4 of 5)", train);
report("held-out split (every 5th, not tuned on)", held);
report("all", rows);

// ---- latency: one decision at a time, every prompt, many rounds (after a warm-up round)
for (const row of rows)
  classifyFast({ text: row.text, attachmentMimeTypes: row.attachments ?? [] });
const samples: number[] = [];
const wallStart = performance.now();
for (let r = 0; r < rounds; r++) {
  for (const row of rows) {
    const t0 = performance.now();
    classifyFast({ text: row.text, attachmentMimeTypes: row.attachments ?? [] });
    samples.push(performance.now() - t0);
  }
}
const s = summarise("decision", samples, performance.now() - wallStart);
console.log(
  `\n== decision latency (${s.calls} decisions): p50 ${s.p50.toFixed(3)} ms, p90 ${s.p90.toFixed(3)} ms, p99 ${s.p99.toFixed(3)} ms, mean ${s.mean.toFixed(3)} ms; target p50 <= 2 ms: ${s.p50 <= 2 ? "met" : "NOT met"} (${(2 / Math.max(s.p50, 1e-6)).toFixed(0)}x under)`,
);
