// The categorizer's fast classifier on the labelled prompts in bench/data/categorizer.jsonl,
// in-process, without the judge: accuracy per class, the confusion matrix and overall accuracy
// of the category (and of the main modality), on the training split (the prompts the weights
// were adjusted against), the held-out split (every 5th prompt, never tuned on) and all; then
// the decision latency p50/p99 over many rounds. Baseline: always answering the majority class.
//
// `semantic` mode: route accuracy on a labelled set of intents that only example utterances
// reveal (SEMANTIC_SET below), every piece a real process (simulator, auth, registry,
// model-proxy, vector-search, two categorizers on one database: one without vector-search, one
// with it). One tenant, the same routes, the same prompts; figures without and with semantic
// routing, and the ratio.
//
//   node bench/dist/categorizer.js [rounds=50]
//   node bench/dist/categorizer.js semantic
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { classifyFast, type CategoryLetter } from "@ensemble/categorizer";
import { createClient } from "@ensemble/kit";
import { AuthService, CategorizerService, JudgePolicy, Modality } from "@ensemble/proto";
import {
  freePort,
  repoRoot,
  ServerProcess,
  startAuthProcess,
  startCategorizerProcess,
  startModelProxyProcess,
  startMongo,
  startNats,
  startRegistryProcess,
  startVectorSearchProcess,
  uniqueName,
  type MeshProcess,
  type RunningServer,
} from "@ensemble/testkit";
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
const semanticMode = process.argv[2] === "semantic";

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

function fastBench(): void {
  const train = rows.filter((_, i) => !heldOut(i));
  const held = rows.filter((_, i) => heldOut(i));
  console.log(
    `categorizer fast classifier (no judge), ${rows.length} labelled prompts from ${file}`,
  );
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
}

// ---- semantic mode

interface SemanticRoute {
  id: string;
  model: string;
  examples: string[];
}

/**
 * Four intents a tenant's admin routes by example (no keyword or category tells them apart:
 * they are everyday M-class text), and prompts labelled with the route they belong to; "" =
 * none of them (the global routes decide, and a semantic route catching it is a mistake).
 * Written for this bench by the author of the feature, so treat the figures as an upper bound.
 */
const SEMANTIC_ROUTES: SemanticRoute[] = [
  {
    id: "billing-support",
    model: "sim-medium",
    examples: [
      "I want a refund for my subscription",
      "Why was I charged twice this month?",
      "How do I get my money back for an order?",
      "My invoice shows the wrong amount",
      "Cancel my plan and stop billing my card",
      "Update the credit card on my account",
    ],
  },
  {
    id: "it-helpdesk",
    model: "sim-fast",
    examples: [
      "I forgot my password and cannot log in",
      "How do I reset my password?",
      "The VPN keeps disconnecting from the office network",
      "My laptop will not turn on",
      "Outlook does not sync my email",
      "The printer on the third floor is not working",
    ],
  },
  {
    id: "hr-policy",
    model: "sim-fast",
    examples: [
      "How many vacation days do I have left?",
      "What is the parental leave policy?",
      "How do I request sick leave?",
      "When is the next payroll date?",
      "Can I work remotely on Fridays?",
      "How do I enrol in the health insurance plan?",
    ],
  },
  {
    id: "legal-review",
    model: "sim-thinking",
    examples: [
      "Review this NDA for unusual clauses",
      "Is this non-compete clause enforceable?",
      "Check the contract for liability limits",
      "Summarise the termination clause of this agreement",
      "Does this contract renew automatically?",
      "Flag risky indemnity terms in the agreement",
    ],
  },
];

const SEMANTIC_SET: Array<{ text: string; route: string }> = [
  {
    route: "billing-support",
    text: "I was charged twice for my subscription, can I get my money back?",
  },
  { route: "billing-support", text: "The amount on my invoice is wrong" },
  { route: "billing-support", text: "Please refund my last order" },
  { route: "billing-support", text: "How can I cancel my plan before the next billing date?" },
  { route: "billing-support", text: "I need to change the credit card used for billing" },
  { route: "billing-support", text: "Why did you charge my card this month?" },
  { route: "billing-support", text: "Where do I see the invoice for my subscription?" },
  { route: "billing-support", text: "Can I get a refund if I cancel my subscription today?" },
  { route: "it-helpdesk", text: "I cannot log in because I forgot my password" },
  { route: "it-helpdesk", text: "reset password for my account please" },
  { route: "it-helpdesk", text: "VPN disconnecting every few minutes" },
  { route: "it-helpdesk", text: "my laptop does not turn on after the update" },
  { route: "it-helpdesk", text: "email is not syncing in Outlook on my phone" },
  { route: "it-helpdesk", text: "the office printer is not working again" },
  { route: "it-helpdesk", text: "I am locked out, how do I reset my login password?" },
  { route: "it-helpdesk", text: "The VPN will not connect from home" },
  { route: "hr-policy", text: "how many vacation days are left for me this year" },
  { route: "hr-policy", text: "what does the parental leave policy say about fathers" },
  { route: "hr-policy", text: "I am sick today, how do I request leave" },
  { route: "hr-policy", text: "when do we get paid, what is the payroll date" },
  { route: "hr-policy", text: "is remote work allowed on Fridays" },
  { route: "hr-policy", text: "how can I enrol my family in the health insurance" },
  { route: "hr-policy", text: "request vacation days for August" },
  { route: "hr-policy", text: "What is the policy for sick leave?" },
  { route: "legal-review", text: "please review the NDA attached for anything unusual" },
  { route: "legal-review", text: "is the non-compete in my contract enforceable" },
  { route: "legal-review", text: "what are the liability limits in this contract" },
  { route: "legal-review", text: "summarise the termination clause for me" },
  { route: "legal-review", text: "will this agreement renew automatically each year" },
  { route: "legal-review", text: "are the indemnity terms in this agreement risky" },
  { route: "legal-review", text: "check this contract for a termination clause" },
  { route: "legal-review", text: "can you review the clauses of this NDA" },
  { route: "", text: "What's the capital of Peru?" },
  { route: "", text: "Write a haiku about autumn leaves" },
  { route: "", text: "Prove that the square root of 2 is irrational." },
  { route: "", text: "Explain how a binary search works" },
  { route: "", text: "Translate 'good morning' into Spanish" },
  { route: "", text: "Write a Python function that reverses a linked list" },
  { route: "", text: "Summarise the plot of Hamlet in three sentences" },
  { route: "", text: "What is the boiling point of water at sea level?" },
  { route: "", text: "Draw a picture of a cat wearing a hat" },
  { route: "", text: "Give me a recipe for pancakes" },
  {
    route: "",
    text: "Research the history of the printing press and write a report with sources",
  },
  { route: "", text: "How do vaccines train the immune system?" },
  { route: "", text: "Compare TCP and UDP" },
  { route: "", text: "Suggest names for a coffee shop" },
  { route: "", text: "What year did the Berlin Wall fall?" },
  { route: "", text: "Write a cover letter for a junior developer job" },
];

const PASSWORD = "correct-Horse-battery-9";
/**
 * The service's default embedding alias; model-proxy with only the simulator answers it with
 * sim-embed (deterministic hashed words: closer when words are shared).
 */
const EMBEDDING_MODEL = "embedding";

async function semanticBench(): Promise<void> {
  const stops: Array<() => Promise<unknown>> = [];
  const servers: RunningServer[] = [];
  try {
    const nats = await startNats();
    servers.push(nats);
    const mongo = await startMongo();
    servers.push(mongo);
    // The test kit's process starters read these (outside vitest).
    process.env["NATS_URL"] = nats.url;
    process.env["MONGODB_URL"] = mongo.url;
    delete process.env["VECTOR_SEARCH_ADDR"];

    const simPort = await freePort();
    const sim = new ServerProcess(
      "simulator",
      process.execPath,
      [
        join(repoRoot, "packages/llm-sim/dist/cli.js"),
        "--port",
        String(simPort),
        "--latency-ms",
        "0",
      ],
      process.env,
    );
    stops.push(() => sim.stop());
    await sim.waitForLine(/listening/, 30_000);

    const track = <P extends MeshProcess>(proc: P): P => {
      stops.push(() => proc.stop());
      return proc;
    };
    const auth = track(await startAuthProcess());
    const registry = track(await startRegistryProcess({ jwksUrl: auth.jwksUrl }));
    const proxy = track(
      await startModelProxyProcess({
        jwksUrl: auth.jwksUrl,
        authAddress: auth.address,
        registryAddress: registry.address,
        simulatorUrl: `http://127.0.0.1:${simPort}/v1`,
      }),
    );
    const vectors = track(
      await startVectorSearchProcess({
        jwksUrl: auth.jwksUrl,
        modelProxyAddress: proxy.address,
      }),
    );
    // Two categorizers on one database: the same routes, with and without vector-search.
    const database = uniqueName("categorizer");
    const common = { jwksUrl: auth.jwksUrl, registryAddress: registry.address };
    const off = track(
      await startCategorizerProcess({
        ...common,
        modelProxyAddress: proxy.address,
        env: { MONGODB_DB: database, VECTOR_SEARCH_ADDR: "" },
      }),
    );
    const on = track(
      await startCategorizerProcess({
        ...common,
        modelProxyAddress: proxy.address,
        env: {
          MONGODB_DB: database,
          VECTOR_SEARCH_ADDR: vectors.address,
          CATEGORIZER_EMBEDDING_MODEL: EMBEDDING_MODEL,
        },
      }),
    );

    const authClient = createClient(AuthService, auth.address);
    const signup = await authClient.signup({
      email: `bench-semantic-${Date.now()}@example.com`,
      password: PASSWORD,
      tenant: { case: "tenantName", value: "semantic bench" },
    });
    const token = signup.tokens?.accessToken ?? "";
    const call = { headers: { authorization: `Bearer ${token}` } };
    const withSemantic = createClient(CategorizerService, on.address);
    const withoutSemantic = createClient(CategorizerService, off.address);
    /** minSimilarity 0 = the service's default threshold. */
    async function putRoutes(minSimilarity: number) {
      for (const r of SEMANTIC_ROUTES) {
        await withSemantic.upsertRoute(
          {
            route: {
              id: r.id,
              name: r.id,
              enabled: true,
              examples: r.examples,
              match: { minSimilarity },
              target: { target: { case: "model", value: r.model } },
            },
          },
          call,
        );
      }
    }
    await putRoutes(0);
    const semanticIds = new Set(SEMANTIC_ROUTES.map((r) => r.id));

    async function measure(client: typeof withSemantic) {
      let right = 0;
      let intentsRight = 0;
      let othersCaught = 0;
      const ms: number[] = [];
      const misses: string[] = [];
      // One warm-up call: the first reads routes and catalog.
      await client.classify({ text: "hello", judge: JudgePolicy.NEVER }, call);
      const wall = performance.now();
      for (const row of SEMANTIC_SET) {
        const t0 = performance.now();
        const res = await client.classify({ text: row.text, judge: JudgePolicy.NEVER }, call);
        ms.push(performance.now() - t0);
        const got = res.classification?.routeId ?? "";
        const ok = row.route === "" ? !semanticIds.has(got) : got === row.route;
        if (ok) right++;
        if (ok && row.route !== "") intentsRight++;
        if (row.route === "" && semanticIds.has(got)) othersCaught++;
        if (!ok)
          misses.push(
            `${JSON.stringify(row.text)}: want ${row.route || "(no semantic route)"}, got ${got}`,
          );
      }
      return {
        right,
        intentsRight,
        othersCaught,
        misses,
        latency: summarise("classify", ms, performance.now() - wall),
      };
    }

    const intents = SEMANTIC_SET.filter((r) => r.route !== "").length;
    const others = SEMANTIC_SET.length - intents;
    const pct = (a: number, b: number) => `${((100 * a) / Math.max(1, b)).toFixed(1)}%`;
    console.log(
      `categorizer semantic routing: ${SEMANTIC_ROUTES.length} tenant routes with ${SEMANTIC_ROUTES.reduce((n, r) => n + r.examples.length, 0)} examples (embedding model "${EMBEDDING_MODEL}", sim-embed here; threshold: the service default, CATEGORIZER_SEMANTIC_THRESHOLD), ${SEMANTIC_SET.length} labelled prompts (${intents} of those intents, ${others} others)`,
    );
    const results = [
      {
        name: "without semantic routing (no VECTOR_SEARCH_ADDR)",
        r: await measure(withoutSemantic),
      },
      { name: "with semantic routing", r: await measure(withSemantic) },
    ];
    for (const { name, r } of results) {
      console.log(`\n== ${name}`);
      console.log(
        `route accuracy: ${pct(r.right, SEMANTIC_SET.length)} (${r.right}/${SEMANTIC_SET.length}); intents routed right ${r.intentsRight}/${intents}; other prompts wrongly caught by a semantic route ${r.othersCaught}/${others}`,
      );
      console.log(
        `Classify round trip: p50 ${r.latency.p50.toFixed(2)} ms, p99 ${r.latency.p99.toFixed(2)} ms`,
      );
      for (const m of r.misses.slice(0, 12)) console.log(`  miss ${m}`);
      if (r.misses.length > 12) console.log(`  ... ${r.misses.length - 12} more`);
    }
    const [base, sem] = results.map((x) => x.r.right);
    console.log(
      `\nroute accuracy with / without semantic routing: ${pct(sem ?? 0, SEMANTIC_SET.length)} / ${pct(base ?? 0, SEMANTIC_SET.length)}; ratio ${((sem ?? 0) / Math.max(1, base ?? 0)).toFixed(2)}x`,
    );

    // The threshold trades paraphrases caught against unrelated prompts caught (the routes'
    // own min_similarity, on the same examples).
    console.log("\n== threshold sweep (the routes' min_similarity), with semantic routing");
    for (const threshold of [0.3, 0.4, 0.5, 0.6]) {
      await putRoutes(threshold);
      const r = await measure(withSemantic);
      console.log(
        `  min_similarity ${threshold.toFixed(2)}: route accuracy ${pct(r.right, SEMANTIC_SET.length)}; intents ${r.intentsRight}/${intents}; others wrongly caught ${r.othersCaught}/${others}`,
      );
    }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    for (const s of servers.reverse()) await s.stop().catch(() => undefined);
  }
}

if (semanticMode) await semanticBench();
else fastBench();
