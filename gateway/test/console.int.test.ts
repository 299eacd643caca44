// The web console in a real browser (Debian's chromium driven by playwright-core) against the
// whole mesh as built processes: auth, registry, model-proxy, categorizer and the workflow
// engine behind a gateway that serves the built console (gateway/console/dist). The simulator
// streams slowly enough that a person would see answers grow. Each page is screenshotted into
// test-artifacts/console/.
import { once } from "node:events";
import { mkdirSync } from "node:fs";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import {
  AuthService,
  CategorizerService,
  ModelProxyService,
  RegistryService,
  RunService,
  SessionService,
} from "@ensemble/proto";
import { startServices, type MeshProcess, type Services } from "@ensemble/testkit";
import {
  chromium,
  type Browser,
  type BrowserContext,
  type Dialog,
  type Page,
} from "playwright-core";
import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, startGateway, type AuthProcess, type TestGateway } from "./harness.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const ARTIFACTS = join(repoRoot, "test-artifacts/console");
const PASSWORD = "correct-Horse-battery-9";

let sim: Simulator;
let services: Services<"categorizer" | "workflow">;
let auth: AuthProcess;
let registry: MeshProcess;
let proxy: MeshProcess;
let categorizer: MeshProcess;
let workflow: MeshProcess;
let gw: TestGateway;
let browser: Browser;
let alice: BrowserContext;
let page: Page;
/** Runs alice started, for the other tenant to look for. */
const aliceRuns: string[] = [];
/** A chat alice had logged, for the other tenant to look for. */
let aliceCall = "";
let aliceEmail = "";
/**
 * How long model-proxy reuses what it read from auth (budgets, limits, tenant settings): short,
 * so that a change of the tenant's settings reaches calls within the test.
 */
const SETTINGS_CACHE_MS = 1_000;

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  // Slow enough that an answer visibly streams (tens of deltas over a second or so).
  sim = await startSimulator({ defaults: { ttftMs: 50, tokensPerSecond: 150 } });
  services = await startServices({
    simulatorUrl: `${sim.url}/v1`,
    modelProxy: { env: { BUDGET_CACHE_MS: String(SETTINGS_CACHE_MS) } },
    categorizer: {},
    // Webhooks to the test's receiver on 127.0.0.1, retried quickly.
    workflow: { env: { WEBHOOK_ALLOW_PRIVATE: "true", WEBHOOK_RETRY_BASE_MS: "100" } },
  });
  ({ auth, registry, modelProxy: proxy, categorizer, workflow } = services);
  gw = await startGateway({
    jwksUrl: auth.jwksUrl,
    serviceToken: await auth.mintServiceToken("gateway"),
    consoleDir: join(repoRoot, "gateway/console/dist"),
    upstreams: [
      { name: "auth", services: [AuthService], address: auth.address },
      { name: "registry", services: [RegistryService], address: registry.address },
      { name: "model-proxy", services: [ModelProxyService], address: proxy.address },
      { name: "categorizer", services: [CategorizerService], address: categorizer.address },
      { name: "workflow", services: [RunService, SessionService], address: workflow.address },
    ],
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  alice = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await alice.newPage();
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await gw?.close();
  await services?.stop();
  await sim?.close();
});

// A failing step leaves a picture of what the page showed.
afterEach(async (ctx) => {
  if (ctx.task.result?.state === "fail" && page !== undefined) {
    await shot(page, `failed-${ctx.task.name.replace(/[^a-z0-9]+/gi, "-").slice(0, 60)}`);
  }
});

const shot = (p: Page, name: string) =>
  p.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

async function signup(p: Page, email: string): Promise<void> {
  await p.goto(gw.url);
  await p.getByRole("tab", { name: "Sign up" }).click();
  await p.getByLabel("Email").fill(email);
  await p.getByLabel("Password").fill(PASSWORD);
  await p.getByLabel("Organisation").fill(`org of ${email}`);
  await p.getByRole("button", { name: "Create account" }).click();
  await p.getByRole("button", { name: "Log out" }).waitFor();
}

/** A test run alone (`-t`) finds no one signed in: alice signs up then, as the first test does. */
async function asAlice(): Promise<void> {
  if (aliceEmail !== "") return;
  aliceEmail = `alice-${Date.now()}@example.com`;
  await signup(page, aliceEmail);
}

async function nav(p: Page, label: string): Promise<void> {
  await p.getByRole("navigation").getByRole("link", { name: label }).click();
}

// Browser-side snippets run with page.evaluate (as source text: this project has no DOM types).

/** Records every distinct text of the nodes matching `selector` into window.__texts. */
const recordTexts = (p: Page, selector: string) =>
  p.evaluate(`(() => {
    const seen = (window.__texts = []);
    const sample = () => {
      for (const n of document.querySelectorAll(${JSON.stringify(selector)})) {
        const t = n.textContent ?? "";
        if (t !== seen.at(-1)) seen.push(t);
      }
    };
    new MutationObserver(sample).observe(document.body, { subtree: true, childList: true, characterData: true });
  })()`);

const recorded = (p: Page) => p.evaluate<string[]>("window.__texts");

/** Records the state of every step of the run view, each time it changes, into window.__states. */
const recordSteps = (p: Page) =>
  p.evaluate(`(() => {
    const states = (window.__states = []);
    const sample = () => {
      const now = [...document.querySelectorAll("[data-step]")]
        .map((n) => n.getAttribute("data-step") + "=" + n.getAttribute("data-status"))
        .join(",");
      if (now !== states.at(-1)) states.push(now);
    };
    sample();
    new MutationObserver(sample).observe(document.body, { subtree: true, attributes: true, childList: true });
  })()`);

const storedSession = async (p: Page) =>
  JSON.parse(
    (await p.evaluate<string | null>('localStorage.getItem("ensemble.session")')) ?? "{}",
  ) as { accessToken: string; refreshToken: string; accessExpiresAt: number };

describe("console", () => {
  it("console - the gateway serves the app at / with SPA fallback, caching, and API paths untouched", async () => {
    const root = await fetch(`${gw.url}/`);
    expect(root.status).toBe(200);
    expect(root.headers.get("content-type")).toContain("text/html");
    expect(root.headers.get("cache-control")).toBe("no-cache");
    expect(root.headers.get("content-security-policy")).toContain("default-src 'self'");
    const html = await root.text();
    const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(asset).toBeDefined();
    const js = await fetch(`${gw.url}${asset}`);
    expect(js.status).toBe(200);
    expect(js.headers.get("cache-control")).toContain("immutable");
    expect(js.headers.get("content-type")).toContain("javascript");
    // Deep links get the app; revalidation answers 304.
    const deep = await fetch(`${gw.url}/runs/some-run`);
    expect(await deep.text()).toBe(html);
    const again = await fetch(`${gw.url}/`, {
      headers: { "if-none-match": root.headers.get("etag") ?? "" },
    });
    expect(again.status).toBe(304);
    // API and operational paths are not shadowed; missing files and traversal are 404s.
    expect((await fetch(`${gw.url}/live`)).status).toBe(200);
    expect((await fetch(`${gw.url}/v1/models`)).status).toBe(401);
    const connectGet = await fetch(`${gw.url}/ensemble.registry.v1.RegistryService/ListModels`);
    expect(connectGet.headers.get("content-type") ?? "").not.toContain("text/html");
    expect((await fetch(`${gw.url}/assets/missing.js`)).status).toBe(404);
    expect((await fetch(`${gw.url}/assets/..%2f..%2fpackage.json`)).status).toBe(404);
    expect((await fetch(`${gw.url}/..%2f..%2fpackage.json`)).status).toBe(404);
  });

  it("console - sign up, the session survives a reload, and an expired access token refreshes silently", async () => {
    // Nothing the page loads fails (the icon is inline: no /favicon.ico 404), nothing logs errors.
    const errors: string[] = [];
    const onConsole = (m: { type(): string; text(): string }) => {
      if (m.type() === "error") errors.push(m.text());
    };
    page.on("console", onConsole);
    await page.goto(gw.url);
    await shot(page, "01-login");
    aliceEmail = `alice-${Date.now()}@example.com`;
    await signup(page, aliceEmail);
    await page.getByText("(admin)").waitFor(); // the first user of a new tenant is its admin
    page.off("console", onConsole);
    expect(errors).toEqual([]);
    await page.reload();
    await page.getByRole("button", { name: "Log out" }).waitFor();

    // Pretend the access token expired: the next call refreshes it (and rotates the refresh token).
    const before = await storedSession(page);
    await page.evaluate(`(() => {
      const s = JSON.parse(localStorage.getItem("ensemble.session"));
      s.accessExpiresAt = Date.now() - 1000;
      localStorage.setItem("ensemble.session", JSON.stringify(s));
    })()`);
    await page.reload();
    await page.getByRole("button", { name: "Log out" }).waitFor();
    const after = await storedSession(page);
    expect(after.refreshToken).not.toBe(before.refreshToken);
    expect(after.accessExpiresAt).toBeGreaterThan(Date.now());
  }, 60_000);

  it("console - a token the gateway refuses after the user's role was set is refreshed, and the page carries on without a new login", async () => {
    await asAlice();
    const before = await storedSession(page);
    const call = async (method: string, body: unknown) =>
      fetch(`${gw.url}/ensemble.auth.v1.AuthService/${method}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${before.accessToken}`,
        },
        body: JSON.stringify(body),
      });
    const me = (await (await call("GetMe", {})).json()) as { user: { id: string } };
    // iat has whole seconds: the change must come in a later second than the token.
    await new Promise((r) => setTimeout(r, 1_100));
    // As another admin would (alice stays the tenant's admin): her token stops working.
    expect((await call("SetUserRole", { userId: me.user.id, role: "ROLE_ADMIN" })).status).toBe(
      200,
    );
    expect((await call("GetMe", {})).status).toBe(401);
    await nav(page, "Runs");
    await page.getByRole("heading", { name: "Runs" }).waitFor();
    await page.waitForTimeout(500);
    expect(await page.getByText(/session has expired/i).count()).toBe(0);
    await page.getByRole("button", { name: "Log out" }).waitFor();
    const after = await storedSession(page);
    expect(after.accessToken).not.toBe(before.accessToken);
    expect(after.refreshToken).not.toBe(before.refreshToken);
  }, 60_000);

  it("console - chat streams the answer token by token, with the categorizer's decision for auto", async () => {
    await nav(page, "Chat");
    await page.getByLabel("Model").selectOption("auto");
    await recordTexts(page, ".msg.assistant .text");
    await page.getByLabel("Message").fill(`What is the capital of France? (${Date.now()})`);
    await page.getByRole("button", { name: "Send" }).click();
    const reply = page.locator('.msg.assistant[data-streaming="false"]').last();
    await reply.waitFor({ timeout: 60_000 });
    const final = (await reply.locator(".text").textContent()) ?? "";
    expect(final.length).toBeGreaterThan(20);
    // Partial answers were on screen before the whole one: growing prefixes of it.
    const partials = (await recorded(page)).filter(
      (t) => t !== "" && t !== "…" && t !== final && final.startsWith(t),
    );
    expect(partials.length).toBeGreaterThan(2);
    await expect(reply.locator(".route summary").textContent()).resolves.toMatch(/auto: category/);
    await shot(page, "02-chat");
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, "02-chat-narrow");
    await page.setViewportSize({ width: 1280, height: 900 });
  }, 90_000);

  it("console - compare shows three answers side by side and a ranking", async () => {
    await nav(page, "Compare");
    const boxes = page.locator('fieldset input[name="model"]');
    await boxes.first().waitFor();
    // Only what can be called here is offered (only the simulator serves here), the first three
    // preselected.
    const offered = await Promise.all(
      (await boxes.all()).map(async (box) => (await box.getAttribute("value")) ?? ""),
    );
    expect(offered.length).toBeGreaterThanOrEqual(3);
    expect(offered.filter((v) => !v.startsWith("sim-"))).toEqual([]);
    await expect(page.locator('fieldset input[name="model"]:checked').count()).resolves.toBe(3);
    const wanted = ["sim-fast", "sim-medium", "sim-thinking"];
    for (const value of offered.filter((v) => !wanted.includes(v))) {
      await page.locator(`fieldset input[name="model"][value="${value}"]`).uncheck();
    }
    for (const model of wanted) {
      await page.locator(`fieldset input[name="model"][value="${model}"]`).check();
    }
    await expect(page.locator('fieldset input[name="model"]:checked').count()).resolves.toBe(3);
    await page.getByLabel("Prompt").fill(`Explain a hash map in two sentences (${Date.now()})`);
    await page.getByRole("button", { name: "Compare" }).click();
    await page.getByRole("region", { name: "Ranking" }).waitFor({ timeout: 60_000 });
    const answers = page.locator("article.answer");
    await expect(answers.count()).resolves.toBe(3);
    for (let i = 0; i < 3; i++) {
      const a = answers.nth(i);
      expect(((await a.locator(".text").textContent()) ?? "").length).toBeGreaterThan(10);
      await expect(a.locator(".facts").textContent()).resolves.toMatch(/latency.*tokens.*cost/);
      await expect(a.locator(".rank").textContent()).resolves.toMatch(/^#[123]$/);
    }
    const ranking = page.getByRole("region", { name: "Ranking" });
    await expect(ranking.locator("li").count()).resolves.toBe(3);
    await expect(ranking.textContent()).resolves.toMatch(/By criteria|Judge/);
    const href = await page.getByRole("link", { name: "Open this run" }).getAttribute("href");
    aliceRuns.push(href!.split("/").at(-1)!);
    await shot(page, "03-compare");
  }, 90_000);

  it("console - a template run's live view moves through its steps", async () => {
    await nav(page, "Catalog");
    // Only the simulator is configured here: its models are callable, the OpenAI ones are not,
    // and the alias of a real model shows the simulator's model that answers it.
    await page
      .locator('[data-callable="sim-fast"]')
      .filter({ hasText: /^callable$/ })
      .waitFor();
    await page
      .locator('[data-callable="gpt-4o-mini"]')
      .filter({ hasText: "no provider configured" })
      .waitFor();
    await page.getByText("fast → sim-fast").waitFor();
    // Prices per million tokens, the prompt cache's as deploy/config/models.yaml gives them:
    // "—" where a model has none of its own (the input price applies).
    const prices = async (model: string) =>
      Object.fromEntries(
        await Promise.all(
          (await page.locator(`tr[data-model="${model}"] td[data-price]`).all()).map(
            async (td) =>
              [
                (await td.getAttribute("data-price")) ?? "",
                (await td.textContent()) ?? "",
              ] as const,
          ),
        ),
      );
    await expect(prices("sim-fast")).resolves.toEqual({
      input: "0.1",
      "cached-input": "0.025",
      "cache-write": "0.125",
      output: "0.4",
    });
    await expect(prices("gpt-4o-mini")).resolves.toMatchObject({
      "cached-input": "0.075",
      "cache-write": "—",
    });
    await expect(prices("sim-embed")).resolves.toMatchObject({
      "cached-input": "—",
      "cache-write": "—",
    });
    await shot(page, "04-catalog");
    await page.getByRole("tab", { name: "Templates" }).click();
    const card = page.locator('[data-template="research_report"]');
    await card.getByRole("button", { name: "Run…" }).click();
    await card.getByLabel("Input").fill("The impact of remote work on city centres");
    await card.getByRole("button", { name: "Start run" }).click();
    await page.waitForURL(/\/runs\/[^/]+$/);
    aliceRuns.push(page.url().split("/").at(-1)!);
    // Record every step's state as the page shows it.
    await page.locator("[data-step]").first().waitFor();
    await recordSteps(page);
    await page.getByTestId("run-status").filter({ hasText: "completed" }).waitFor({
      timeout: 90_000,
    });
    await page.getByRole("region", { name: "Result" }).waitFor();
    const states = await page.evaluate<string[]>("window.__states");
    // It moved: a moment with a step running while another was still waiting, then all done.
    expect(states.some((s) => s.includes("=running") && s.includes("=pending"))).toBe(true);
    expect(states.at(-1)).not.toMatch(/=(pending|running|queued|failed)/);
    expect(states.at(-1)!.split(",").length).toBeGreaterThanOrEqual(6);
    await expect(
      page.getByRole("region", { name: "Events" }).locator("li").count(),
    ).resolves.toBeGreaterThan(6);
    await shot(page, "05-run-live");

    await nav(page, "Runs");
    await page.locator("table.runs tbody tr").first().waitFor();
    await expect(page.locator("table.runs tbody tr").count()).resolves.toBeGreaterThanOrEqual(2);
    await shot(page, "06-runs");
  }, 120_000);

  it("console - an image run's view shows the picture inline, with its type, size and a download", async () => {
    // No page starts a single-model run outside a chat; start it as a script would.
    const { accessToken } = await storedSession(page);
    const started = await fetch(`${gw.url}/${RunService.typeName}/StartRun`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
      body: JSON.stringify({ spec: { input: "A red fox in the snow", model: { model: "image" } } }),
    });
    expect(started.status).toBe(200);
    const runId = ((await started.json()) as { run: { id: string } }).run.id;
    await page.goto(`${gw.url}/runs/${runId}`);
    await page.getByTestId("run-status").filter({ hasText: "completed" }).waitFor({
      timeout: 60_000,
    });
    const result = page.getByRole("region", { name: "Result" });
    const img = result.locator('img[src^="blob:"]');
    await img.waitFor();
    // Decoded, not a broken-image icon (a CSP without blob: in img-src would leave it at 0).
    await expect
      .poll(
        () =>
          page.evaluate<number>(
            `document.querySelector('[aria-label="Result"] img[src^="blob:"]')?.naturalWidth ?? 0`,
          ),
        { timeout: 10_000 },
      )
      .toBeGreaterThan(0);
    expect(await img.isVisible()).toBe(true);
    await expect(img.getAttribute("alt")).resolves.toMatch(/\S/);
    await expect(result.locator("figcaption").textContent()).resolves.toMatch(
      /image\/png · [\d.]+ (B|KiB)/,
    );
    // The step that made it shows it too.
    await page.locator('[data-step] img[src^="blob:"]').first().waitFor();
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      result.getByRole("link", { name: "Download" }).click(),
    ]);
    expect(download.suggestedFilename()).toMatch(/\.png$/);
    await shot(page, "05b-run-image");

    // Deleted from its page (after confirming), it is gone from the list.
    page.once("dialog", (dialog) => void dialog.accept());
    await page.getByRole("button", { name: "Delete run" }).click();
    await page.waitForURL(/\/runs$/);
    await page.locator(`a[href$="/runs/${runId}"]`).waitFor({ state: "detached" });
    const gone = await fetch(`${gw.url}/${RunService.typeName}/GetRun`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
      body: JSON.stringify({ runId }),
    });
    expect(gone.status).toBe(404);
  }, 90_000);

  it("console - runs by label: the Runs page's label filter lists only the runs labelled so, each showing its labels", async () => {
    await asAlice();
    const { accessToken } = await storedSession(page);
    const stamp = Date.now();
    const start = async (input: string, team: string) => {
      const res = await fetch(`${gw.url}/${RunService.typeName}/StartRun`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify({
          spec: { input, model: { model: "sim-fast" }, metadata: { team } },
        }),
      });
      expect(res.status).toBe(200);
    };
    const red = `Red team question ${stamp}`;
    const blue = `Blue team question ${stamp}`;
    await start(red, "red");
    await start(blue, "blue");

    // Loaded afresh: the test before leaves the Runs page open, listed without these runs.
    await page.goto(`${gw.url}/runs`);
    const filters = page.getByRole("form", { name: "Filters" });
    const questions = page.locator("table.runs tbody tr td:first-child a");
    await questions.filter({ hasText: blue }).waitFor();
    await questions.filter({ hasText: red }).waitFor();

    await filters.getByLabel("Labelled").fill("team=red");
    await filters.getByLabel("Labelled").press("Enter");
    await expect.poll(() => questions.allTextContents(), { timeout: 10_000 }).toEqual([red]);
    await expect(page.locator("table.runs tbody tr").textContent()).resolves.toContain("team=red");
    await shot(page, "06b-runs-by-label");

    // A malformed filter is refused in the form; the list stays as it was.
    await filters.getByLabel("Labelled").fill("team");
    await filters.getByRole("button", { name: "Apply" }).click();
    await expect(page.getByRole("alert").textContent()).resolves.toMatch(/expected key=value/i);
    await expect(questions.allTextContents()).resolves.toEqual([red]);
  }, 60_000);

  it("console - asking the chat (auto) for a picture shows the picture in the reply", async () => {
    await nav(page, "Chat");
    await page.getByLabel("Model").selectOption("auto");
    await page
      .getByLabel("Message")
      .fill(`Generate an image of a red fox in the snow (${Date.now()})`);
    await page.getByRole("button", { name: "Send" }).click();
    const reply = page.locator('.msg.assistant[data-streaming="false"]').last();
    await reply.waitFor({ timeout: 60_000 });
    await reply.locator('img[src^="blob:"]').waitFor();
    await expect
      .poll(
        () =>
          page.evaluate<number>(
            `[...document.querySelectorAll('.msg.assistant img[src^="blob:"]')].at(-1)?.naturalWidth ?? 0`,
          ),
        { timeout: 10_000 },
      )
      .toBeGreaterThan(0);
    await expect(reply.locator("figcaption").textContent()).resolves.toMatch(/image\/png/);
    await shot(page, "02b-chat-image");
  }, 90_000);

  it("console - an admin creates an API key (shown once) that works, rolls it with an hour of grace, then revokes it", async () => {
    await nav(page, "Admin");
    const name = `ci-key-${Date.now()}`;
    await page.getByLabel("Name").fill(name);
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = (await page.getByTestId("api-key-secret").textContent()) ?? "";
    expect(secret).toMatch(/^ens_/);
    const row = page.locator(`tr[data-key="${name}"]`);
    await row.waitFor();
    // The list never shows the secret, only its prefix.
    expect(await page.locator("table").first().textContent()).not.toContain(secret);
    const me = (key = secret) =>
      fetch(`${gw.url}/${AuthService.typeName}/GetMe`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
        body: "{}",
      });
    expect((await me()).status).toBe(200);
    await shot(page, "07-admin");

    // Rolled with an hour of grace: a new secret with the key's prefix, shown once; the old one
    // keeps working meanwhile and the table says until when.
    const prefix = ((await row.locator('[data-col="key"] code').textContent()) ?? "").replace(
      /…$/,
      "",
    );
    expect(secret.startsWith(`${prefix}_`)).toBe(true);
    await expect(row.getByTestId("old-secret").count()).resolves.toBe(0);
    await page.getByRole("button", { name: `Roll ${name}` }).click();
    const roll = page.getByRole("form", { name: `Roll ${name}` });
    await roll.getByLabel("The old secret keeps working").selectOption({ label: "1 hour" });
    await roll.getByRole("button", { name: "Roll secret" }).click();
    await roll.waitFor({ state: "detached" });
    const shown = page.getByTestId("api-key-secret");
    await shown.filter({ hasNotText: secret }).waitFor();
    const rolled = (await shown.textContent()) ?? "";
    expect(rolled.startsWith(`${prefix}_`)).toBe(true);
    expect(rolled).not.toBe(secret);
    await expect(page.locator(".secret").textContent()).resolves.toMatch(
      /it is shown only once\..*The old secret works until /,
    );
    await row.getByTestId("old-secret").waitFor();
    await expect(row.getByTestId("old-secret").textContent()).resolves.toMatch(
      /^old secret until \S/,
    );
    expect(await page.locator("table").first().textContent()).not.toContain(rolled);
    expect((await me(rolled)).status).toBe(200);
    expect((await me(secret)).status).toBe(200);
    await shot(page, "07a-admin-key-rolled");
    // Once: after a reload the secret is nowhere on the page; the grace is still noted.
    await page.reload();
    await row.getByTestId("old-secret").waitFor();
    await expect(shown.count()).resolves.toBe(0);
    expect(await page.content()).not.toContain(rolled);

    // Revoking ends both secrets at once.
    await page.getByRole("button", { name: `Revoke ${name}` }).click();
    await row.getByText("revoked").waitFor();
    expect((await me()).status).toBe(401);
    expect((await me(rolled)).status).toBe(401);

    await nav(page, "Usage");
    await page.locator("figure.chart").first().waitFor({ timeout: 30_000 });
    await expect(page.locator("figure.chart").count()).resolves.toBeGreaterThanOrEqual(3);
    await shot(page, "08-usage");
    await nav(page, "Cluster");
    await page.getByRole("heading", { name: "Cluster" }).waitFor();
    await page.waitForSelector(".card, .empty, .error");
    await shot(page, "09-cluster");
  }, 60_000);

  it("console - an API key is created with limits, the table shows them and the month's spend, and Edit limits replaces them", async () => {
    await nav(page, "Admin");
    const name = `limited-${Date.now()}`;
    const create = page.getByRole("form", { name: "Create API key" });
    await create.getByLabel("Name").fill(name);
    // The models offered are those callable here, whatever they do (sim-embed embeds).
    await create.locator('input[name="keyModel"][value="sim-fast"]').check();
    await create.locator('input[name="keyModel"][value="sim-embed"]').check();
    await create.getByLabel("Monthly budget").fill("5");
    await create.getByLabel("Requests / minute").fill("60");
    await create.getByRole("button", { name: "Create key" }).click();
    const secret = (await page.getByTestId("api-key-secret").textContent()) ?? "";
    expect(secret).toMatch(/^ens_/);
    const row = page.locator(`tr[data-key="${name}"]`);
    const models = row.locator('[data-col="models"]');
    const budget = row.locator('[data-col="budget"]');
    const rate = row.locator('[data-col="rate"]');
    await row.waitFor();
    await expect(models.textContent()).resolves.toBe("sim-fast, sim-embed");
    // The budget column says what the key has spent of it this month: nothing yet.
    await expect(budget.textContent()).resolves.toBe("$0.00 of $5.00");
    await expect(rate.textContent()).resolves.toBe("60 rpm");
    // The form is ready for the next key.
    await expect(create.locator('input[name="keyModel"]:checked').count()).resolves.toBe(0);
    await expect(create.getByLabel("Monthly budget").inputValue()).resolves.toBe("");
    await expect(create.getByLabel("Requests / minute").inputValue()).resolves.toBe("");

    // A chat made with the key is its spend; the ledger is written in batches: reload until then.
    const chat = await fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${secret}` },
      body: JSON.stringify({
        model: "sim-fast",
        messages: [{ role: "user", content: "Spend a little of this key's budget" }],
      }),
    });
    expect(chat.status).toBe(200);
    for (let i = 0; i < 40; i++) {
      await page.reload();
      await row.waitFor();
      if ((await budget.textContent()) !== "$0.00 of $5.00") break;
      await new Promise((r) => setTimeout(r, 250));
    }
    // A simulator chat costs a fraction of a cent: shown as such, not as $0.00.
    await expect(budget.textContent()).resolves.toBe("<$0.01 of $5.00");
    await expect(budget.locator("span").getAttribute("title")).resolves.toMatch(
      /^\$0\.0\d+ this month \(UTC\)$/,
    );

    // Edit limits shows the key's limits; saving replaces them as a whole.
    await page.getByRole("button", { name: `Edit limits of ${name}` }).click();
    const edit = page.getByRole("form", { name: `Limits of ${name}` });
    await expect(edit.locator('input[name="keyModel"]:checked').count()).resolves.toBe(2);
    await expect(edit.getByLabel("Monthly budget").inputValue()).resolves.toBe("5");
    await expect(edit.getByLabel("Requests / minute").inputValue()).resolves.toBe("60");
    await edit.locator('input[name="keyModel"][value="sim-embed"]').uncheck();
    await edit.getByLabel("Monthly budget").fill("12.5");
    await edit.getByLabel("Tokens / minute").fill("90000");
    await shot(page, "07b-admin-key-limits");
    await edit.getByRole("button", { name: "Save limits" }).click();
    await edit.waitFor({ state: "detached" });
    await budget.filter({ hasText: "$12.50" }).waitFor();
    await expect(budget.textContent()).resolves.toBe("<$0.01 of $12.50");
    await expect(models.textContent()).resolves.toBe("sim-fast");
    // The requests per minute not touched are saved again with the rest.
    await expect(rate.textContent()).resolves.toBe("60 rpm, 90000 tpm");

    // A bad budget is refused in the form, and nothing changes.
    await page.getByRole("button", { name: `Edit limits of ${name}` }).click();
    await edit.getByLabel("Monthly budget").fill("-3");
    await edit.getByRole("button", { name: "Save limits" }).click();
    await expect(edit.getByRole("alert").textContent()).resolves.toMatch(/monthly budget must be/i);
    await edit.getByRole("button", { name: "Cancel" }).click();
    await edit.waitFor({ state: "detached" });
    await expect(budget.textContent()).resolves.toBe("<$0.01 of $12.50");
    await page.getByRole("button", { name: `Edit limits of ${name}` }).click();
    await edit.getByLabel("Requests / minute").fill("1.5");
    await edit.getByRole("button", { name: "Save limits" }).click();
    await expect(edit.getByRole("alert").textContent()).resolves.toMatch(
      /requests per minute must be a whole number/i,
    );
    await edit.getByRole("button", { name: "Cancel" }).click();
    await edit.waitFor({ state: "detached" });
    await expect(rate.textContent()).resolves.toBe("60 rpm, 90000 tpm");

    // Nothing checked and every field empty: the key is unlimited again, as auth now has it.
    await page.getByRole("button", { name: `Edit limits of ${name}` }).click();
    await edit.locator('input[name="keyModel"][value="sim-fast"]').uncheck();
    await edit.getByLabel("Monthly budget").fill("");
    await edit.getByLabel("Requests / minute").fill("");
    await edit.getByLabel("Tokens / minute").fill("");
    await edit.getByRole("button", { name: "Save limits" }).click();
    await edit.waitFor({ state: "detached" });
    await rate.filter({ hasText: "—" }).waitFor();
    await expect(models.textContent()).resolves.toBe("all");
    // Without a budget of its own, the key's spend stands alone.
    await expect(budget.textContent()).resolves.toBe("<$0.01");
    const { accessToken } = await storedSession(page);
    const listed = await fetch(`${gw.url}/${AuthService.typeName}/ListApiKeys`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
      body: "{}",
    });
    const keys = ((await listed.json()) as { apiKeys: Array<{ name: string; limits?: object }> })
      .apiKeys;
    expect(keys.find((k) => k.name === name)?.limits ?? {}).toEqual({});
  }, 60_000);

  it("console - usage by label: chats labelled through the OpenAI API show as a bar per team, and the label filter narrows every chart", async () => {
    await asAlice();
    const { accessToken } = await storedSession(page);
    const chat = async (metadata?: Record<string, string>) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify({
          model: "sim-fast",
          messages: [{ role: "user", content: "Count this call for my team" }],
          ...(metadata !== undefined ? { metadata } : {}),
        }),
      });
      expect(res.status).toBe(200);
    };
    await Promise.all([
      chat({ team: "alpha" }),
      chat({ team: "alpha" }),
      chat({ team: "beta", env: "prod" }),
      chat(),
    ]);

    await nav(page, "Usage");
    const labels = page.getByRole("form", { name: "Labels" });
    await labels.getByLabel("Cost by label").fill("team");
    await labels.getByLabel("Cost by label").press("Enter");
    const byTeam = page.getByRole("img", { name: "Cost by label: team" });
    /** The chart's bars as "label: N req", in the order shown. */
    const bars = async () => {
      const names = await byTeam.locator("text.chart-label").allTextContents();
      const values = await byTeam.locator("text.chart-value").allTextContents();
      return names.map((n, i) => `${n}: ${/(\d+) req$/.exec(values[i] ?? "")?.[1] ?? "?"} req`);
    };
    // The ledger is written in batches: apply again (which refreshes) until the calls are in.
    await expect
      .poll(
        async () => {
          await labels.getByRole("button", { name: "Apply" }).click();
          return (await bars()).sort();
        },
        { timeout: 20_000 },
      )
      .toEqual(
        // Calls without the label (this test's and, in a whole run, the other tests') as "(none)".
        expect.arrayContaining([
          "alpha: 2 req",
          "beta: 1 req",
          expect.stringMatching(/^\(none\): [1-9]\d* req$/),
        ]),
      );
    // The other charts are still there.
    await page.getByRole("img", { name: "Cost by model" }).waitFor();
    await shot(page, "08b-usage-by-label");

    // Only calls labelled env=prod: every chart counts beta's call alone.
    await labels.getByLabel("Only calls labelled").fill("env=prod");
    await labels.getByRole("button", { name: "Apply" }).click();
    await page.locator(".totals", { hasText: "only calls labelled env=prod" }).waitFor();
    await expect(bars()).resolves.toEqual(["beta: 1 req"]);
    await expect(page.locator(".totals").textContent()).resolves.toMatch(/^1 requests · /);
    // A short prompt, under the 1024 tokens a provider caches from: none of it cached.
    await expect(page.locator('.totals [data-total="cached"]').textContent()).resolves.toBe(
      "(0 cached, 0% of input)",
    );
    const byModel = page.getByRole("img", { name: "Cost by model" });
    await expect(byModel.locator("text.chart-value").allTextContents()).resolves.toEqual([
      expect.stringMatching(/ 1 req$/),
    ]);
    const tokensByModel = page.getByRole("region", { name: "Tokens by model" });
    await expect(tokensByModel.locator("th").allTextContents()).resolves.toEqual([
      "Model",
      "Requests",
      "Input",
      "Cached input",
      "Output",
      "Reasoning",
      "Cost",
    ]);
    await expect(tokensByModel.locator("tbody tr td").allTextContents()).resolves.toEqual([
      "sim-fast",
      "1",
      expect.stringMatching(/^[1-9]\d*$/),
      "0",
      expect.stringMatching(/^[1-9]\d*$/),
      "0",
      expect.stringMatching(/^\$/),
    ]);

    // A filter without "=" is refused in the form; one nothing holds says so.
    await labels.getByLabel("Only calls labelled").fill("env");
    await labels.getByRole("button", { name: "Apply" }).click();
    await expect(page.getByRole("alert").textContent()).resolves.toMatch(/expected key=value/i);
    await labels.getByLabel("Only calls labelled").fill("team=nobody");
    await labels.getByRole("button", { name: "Apply" }).click();
    await page.getByText("No calls labelled team=nobody in this period.").waitFor();
    await labels.getByLabel("Only calls labelled").fill("");
    await labels.getByRole("button", { name: "Apply" }).click();
    await byTeam.waitFor();
  }, 60_000);

  it("console - a long system prompt sent again is read from the provider's prompt cache: the Usage page, the logged call and the chat's reply show the cached input", async () => {
    await asAlice();
    const { accessToken } = await storedSession(page);
    // Over the 1024 tokens a provider caches from (one token per word here); unique, so that
    // nothing sent before shares its start.
    const nonce = Date.now();
    const system = `Case ${nonce}. ${Array.from({ length: 1200 }, (_, i) => `rule${i}`).join(" ")}`;
    type Answer = { id: string; usage: { prompt_tokens: number; completion_tokens: number } };
    const chat = async (question: string, log: boolean) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify({
          model: "sim-fast",
          messages: [
            { role: "system", content: system },
            { role: "user", content: question },
          ],
          metadata: { case: String(nonce) },
          ...(log ? { log: true } : {}),
        }),
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as Answer & {
        usage: { prompt_tokens_details: { cached_tokens: number } };
      };
      return { ...body, cached: body.usage.prompt_tokens_details.cached_tokens };
    };
    const first = await chat("Which rule comes first?", false);
    const second = await chat("Which rule comes last?", true);
    expect(first.cached).toBe(0);
    expect(second.cached).toBeGreaterThanOrEqual(1024);
    const input = first.usage.prompt_tokens + second.usage.prompt_tokens;
    const share = `${Math.round((second.cached / input) * 100)}%`;

    // The Usage page, only these two calls: the totals and the per-model table say how much
    // of their input came from the cache.
    await nav(page, "Usage");
    const labels = page.getByRole("form", { name: "Labels" });
    await labels.getByLabel("Only calls labelled").fill(`case=${nonce}`);
    // The ledger is written in batches: apply again (which refreshes) until both are in.
    await expect
      .poll(
        async () => {
          await labels.getByRole("button", { name: "Apply" }).click();
          return page.locator(".totals").textContent();
        },
        { timeout: 20_000 },
      )
      .toMatch(/^2 requests · /);
    await expect(page.locator('.totals [data-total="input"]').textContent()).resolves.toBe(
      `${input} input`,
    );
    await expect(page.locator('.totals [data-total="cached"]').textContent()).resolves.toBe(
      `(${second.cached} cached, ${share} of input)`,
    );
    const row = page.getByRole("region", { name: "Tokens by model" }).locator("tbody tr");
    await expect(row.locator("td").allTextContents()).resolves.toEqual([
      "sim-fast",
      "2",
      String(input),
      `${second.cached} (${share})`,
      String(first.usage.completion_tokens + second.usage.completion_tokens),
      "0",
      expect.stringMatching(/^\$/),
    ]);
    await shot(page, "08c-usage-cached");
    await labels.getByLabel("Only calls labelled").fill("");
    await labels.getByRole("button", { name: "Apply" }).click();

    // The logged call's figures: its cached input next to its input.
    // The log is written after the answer, off its path: load the call until it is there.
    const summary = page.locator('dl[aria-label="Summary"]');
    await expect
      .poll(
        async () => {
          await page.goto(`${gw.url}/logs/${encodeURIComponent(second.id)}`);
          await page.waitForSelector('dl[aria-label="Summary"], .error');
          return summary.count();
        },
        { timeout: 15_000 },
      )
      .toBe(1);
    await expect(summary.textContent()).resolves.toContain(
      `tokens${second.usage.prompt_tokens} in (${second.cached} cached), ${second.usage.completion_tokens} outcost`,
    );

    // The chat: a long first message, then a follow-up whose prompt starts with it. The first
    // reply says nothing of a cache; the second says how much of its input came from it.
    await nav(page, "Chat");
    await page.getByRole("button", { name: "New chat" }).click();
    await page.getByLabel("Model").selectOption("sim-fast");
    await page.getByLabel("Message").fill(`Case ${nonce} again. ${system}`);
    await page.getByRole("button", { name: "Send" }).click();
    const replies = page.locator('.msg.assistant[data-streaming="false"] .meta');
    await replies.first().waitFor({ timeout: 60_000 });
    await expect(replies.first().textContent()).resolves.toMatch(/ tokens · \$/);
    await page.getByLabel("Message").fill("Which rule comes last?");
    await page.getByRole("button", { name: "Send" }).click();
    await replies.nth(1).waitFor({ timeout: 60_000 });
    const meta = (await replies.nth(1).textContent()) ?? "";
    expect(meta).toMatch(/ \d+ tokens \((\d+) cached\) · \$/);
    expect(Number(/\((\d+) cached\)/.exec(meta)?.[1])).toBeGreaterThanOrEqual(1024);
    await shot(page, "02d-chat-cached");
  }, 90_000);

  it("console - the Logs page lists a chat sent with log: true and opens it with its question and answer", async () => {
    const { accessToken } = await storedSession(page);
    const chat = async (content: string, log: boolean) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify({
          model: "sim-fast",
          messages: [
            { role: "system", content: "Answer in one sentence." },
            { role: "user", content },
          ],
          ...(log ? { log: true } : {}),
        }),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as { id: string; choices: Array<{ message: { content: string } }> };
    };
    const question = `Remember the code word pineapple (${Date.now()})`;
    const logged = await chat(question, true);
    const unlogged = await chat("Not for the log", false);
    aliceCall = logged.id;

    await nav(page, "Logs");
    const row = page.locator(`tr[data-call="${logged.id}"]`);
    // The log is written after the answer, off its path: refresh until it is there.
    await expect
      .poll(
        async () => {
          await page.getByRole("button", { name: "Refresh" }).click();
          return row.count();
        },
        { timeout: 15_000 },
      )
      .toBe(1);
    const cells = await row.locator("td").allTextContents();
    expect(cells).toEqual([
      expect.stringMatching(/\d/), // time
      "sim-fast",
      "OK",
      expect.stringMatching(/^\d+ ms$|^[\d.]+ s$/),
      expect.stringMatching(/^[1-9]\d* \/ [1-9]\d*$/),
      expect.stringMatching(/^\$/),
      question,
    ]);
    await expect(page.locator(`tr[data-call="${unlogged.id}"]`).count()).resolves.toBe(0);
    await shot(page, "11-logs");

    // Filters: no failed calls; the whole tenant (alice is its admin) adds a user column.
    await page.getByLabel("errors only").check();
    await page.getByText("No logged calls match these filters.").waitFor();
    await expect(page.locator(".empty").textContent()).resolves.toContain("log: true");
    await page.getByLabel("errors only").uncheck();
    await page.getByLabel("all users").check();
    await page.locator("table.logs th", { hasText: "User" }).waitFor();
    await row.waitFor();
    await page.getByLabel("Model").fill("sim-medium");
    await page.getByText("No logged calls match these filters.").waitFor();
    await page.getByLabel("Model").fill("sim-fast");
    await row.waitFor();

    // A click on the row opens the call: its messages, its answer and its figures.
    await row.locator("td.preview").click();
    await page.waitForURL(new RegExp(`/logs/${logged.id}$`));
    const request = page.getByRole("region", { name: "Request" });
    await request.waitFor();
    await expect(request.locator(".msg").allTextContents()).resolves.toEqual([
      "systemAnswer in one sentence.",
      `user${question}`,
    ]);
    const answer = page.getByRole("region", { name: "Answer" });
    await expect(answer.locator(".text").textContent()).resolves.toBe(
      logged.choices[0]!.message.content,
    );
    expect(logged.choices[0]!.message.content).toContain("pineapple");
    const summary = page.locator('dl[aria-label="Summary"]');
    await expect(summary.textContent()).resolves.toMatch(/modelsim-fast \(simulator\)/);
    await expect(summary.textContent()).resolves.toMatch(/streamingno/);
    await shot(page, "12-log-call");

    // Reloaded, the deep link lands on the same call.
    await page.reload();
    await page.getByRole("region", { name: "Answer" }).locator(".text").waitFor();
    await page.getByRole("link", { name: "← All logs" }).click();
    await page.waitForURL(/\/logs$/);
  }, 60_000);

  it("console - an admin turns on the call log and the exact cache and sets the semantic cache threshold for the tenant: a threshold out of range refused, saved, shown after a reload, applied to chats", async () => {
    await nav(page, "Admin");
    const form = page.getByRole("form", { name: "Tenant settings" });
    const logCalls = form.getByLabel("Keep every chat in the call log");
    const cache = form.getByLabel("Default response cache");
    const threshold = form.getByLabel("Semantic cache threshold");
    const changed = page
      .getByRole("region", { name: "Tenant settings" })
      .getByTestId("settings-changed");
    await logCalls.waitFor();
    // Nothing set yet: the defaults.
    await expect(logCalls.isChecked()).resolves.toBe(false);
    await expect(cache.locator("option:checked").textContent()).resolves.toBe("Deployment default");
    await expect(threshold.inputValue()).resolves.toBe("");
    await expect(changed.textContent()).resolves.toBe("Never changed: the defaults apply.");

    await logCalls.check();
    await cache.selectOption({ label: "Exact" });
    // The explanation follows the choice.
    await form.getByText(/identical to an earlier one/).waitFor();
    // A threshold out of range: refused in the page, nothing sent.
    await threshold.fill("0.2");
    await form.getByRole("button", { name: "Save settings" }).click();
    await expect(form.getByRole("alert").textContent()).resolves.toMatch(
      /threshold must be a number from 0\.5 to 1/,
    );
    await expect(form.getByRole("status").count()).resolves.toBe(0);
    await expect(changed.textContent()).resolves.toBe("Never changed: the defaults apply.");
    await threshold.fill("0.92");
    await form.getByRole("button", { name: "Save settings" }).click();
    await expect(form.getByRole("status").textContent()).resolves.toMatch(/within about 30 s/);
    await expect(form.getByRole("alert").count()).resolves.toBe(0);
    const lastChanged = new RegExp(
      `^Last changed by ${aliceEmail.replaceAll(".", "\\.")} at .*\\d.*\\.$`,
    );
    await expect(changed.textContent()).resolves.toMatch(lastChanged);
    await shot(page, "07c-admin-tenant-settings");

    // Reloaded, the page shows them as saved; auth has them, by alice.
    await page.reload();
    await logCalls.waitFor();
    await expect(logCalls.isChecked()).resolves.toBe(true);
    await expect(cache.locator("option:checked").textContent()).resolves.toBe("Exact");
    await expect(threshold.inputValue()).resolves.toBe("0.92");
    await expect(changed.textContent()).resolves.toMatch(lastChanged);
    const { accessToken } = await storedSession(page);
    const call = async (method: string, body: unknown) => {
      const res = await fetch(`${gw.url}/${AuthService.typeName}/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify(body),
      });
      expect(res.status).toBe(200);
      return res.json() as Promise<Record<string, unknown>>;
    };
    const me = (await call("GetMe", {})) as { user: { id: string } };
    const { settings } = (await call("GetTenantSettings", {})) as {
      settings: { updateTime: string };
    };
    expect(Date.parse(settings.updateTime)).toBeGreaterThan(Date.now() - 60_000);
    expect(settings).toEqual({
      logCalls: true,
      defaultCache: "DEFAULT_CACHE_EXACT",
      semanticCacheMinSimilarity: 0.92,
      updateTime: settings.updateTime,
      updatedBy: me.user.id,
      // No guardrails yet: the lists are empty (left out of the JSON).
      guardrails: {},
    });

    // Once model-proxy's cache of settings has expired, a chat that asks for neither the log nor
    // the cache is logged, and the same question again is answered from the cache.
    await new Promise((r) => setTimeout(r, SETTINGS_CACHE_MS + 500));
    const ask = async (content: string) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify({ model: "sim-fast", messages: [{ role: "user", content }] }),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as { id: string; ensemble: { cache_hit: boolean } };
    };
    const question = `Logged without asking (${Date.now()})`;
    const first = await ask(question);
    expect(first.ensemble.cache_hit).toBe(false);
    // The answer is stored in the cache after it is sent: ask until it is there.
    let hit = await ask(question);
    for (let i = 0; i < 40 && !hit.ensemble.cache_hit; i++) {
      await new Promise((r) => setTimeout(r, 250));
      hit = await ask(question);
    }
    expect(hit.ensemble.cache_hit).toBe(true);

    await nav(page, "Logs");
    const firstRow = page.locator(`tr[data-call="${first.id}"]`);
    const hitRow = page.locator(`tr[data-call="${hit.id}"]`);
    await expect
      .poll(
        async () => {
          await page.getByRole("button", { name: "Refresh" }).click();
          return (await firstRow.count()) + (await hitRow.count());
        },
        { timeout: 15_000 },
      )
      .toBe(2);
    await expect(firstRow.locator("td.preview").textContent()).resolves.toBe(question);
    await expect(firstRow.locator(".tag").allTextContents()).resolves.toEqual([]);
    await expect(hitRow.locator(".tag").allTextContents()).resolves.toEqual(["cache"]);
  }, 60_000);

  it("console - an admin sets guardrails (redact emails, a blocked term): saved without undoing the other settings, shown after a reload, applied to chats", async () => {
    await nav(page, "Admin");
    const form = page.getByRole("form", { name: "Guardrails" });
    const email = form
      .getByRole("radiogroup", { name: "Email addresses" })
      .getByRole("radio", { name: "redact" });
    const terms = form.getByLabel("Blocked prompt terms");
    const outputTerms = form.getByLabel("Blocked answer terms");
    const defaults = page.getByRole("form", { name: "Tenant settings" });
    const logCalls = defaults.getByLabel("Keep every chat in the call log");
    const cache = defaults.getByLabel("Default response cache");
    await email.waitFor();
    // None yet: every kind off, no terms.
    await expect(form.getByRole("radio", { name: "off", checked: true }).count()).resolves.toBe(7);
    await expect(terms.inputValue()).resolves.toBe("");
    await expect(outputTerms.inputValue()).resolves.toBe("");

    // A term longer than auth takes: the server's refusal is shown, nothing is saved.
    await email.check();
    await terms.fill(`Project Nightingale\n${"x".repeat(101)}`);
    await form.getByRole("button", { name: "Save guardrails" }).click();
    await expect(form.getByRole("alert").textContent()).resolves.toMatch(
      /blocked_terms\[1\].*100 characters/,
    );
    await expect(form.getByRole("status").count()).resolves.toBe(0);

    // Blank lines and spaces around a term are dropped; the form shows the lists as saved.
    await terms.fill("  Project Nightingale  \n\nzebra crossing\n");
    await outputTerms.fill("marmalade");
    await form.getByRole("button", { name: "Save guardrails" }).click();
    await expect(form.getByRole("status").textContent()).resolves.toMatch(
      /Guardrails saved.*within about 30 s/,
    );
    await expect(form.getByRole("alert").count()).resolves.toBe(0);
    await expect(terms.inputValue()).resolves.toBe("Project Nightingale\nzebra crossing");
    await shot(page, "07d-admin-guardrails");
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, "07d-admin-guardrails-narrow");
    await page.setViewportSize({ width: 1280, height: 900 });

    // Reloaded: the guardrails as saved, and the call log and cache defaults of the test before
    // untouched by them.
    await page.reload();
    await email.waitFor();
    await expect(email.isChecked()).resolves.toBe(true);
    await expect(form.getByRole("radio", { name: "off", checked: true }).count()).resolves.toBe(6);
    await expect(terms.inputValue()).resolves.toBe("Project Nightingale\nzebra crossing");
    await expect(outputTerms.inputValue()).resolves.toBe("marmalade");
    await expect(logCalls.isChecked()).resolves.toBe(true);
    await expect(cache.locator("option:checked").textContent()).resolves.toBe("Exact");

    // Saving the defaults leaves the guardrails alone, and the other way round.
    await cache.selectOption({ label: "Off" });
    await defaults.getByRole("button", { name: "Save settings" }).click();
    await defaults.getByRole("status").waitFor();
    await page.reload();
    await email.waitFor();
    await expect(cache.locator("option:checked").textContent()).resolves.toBe("Off");
    await expect(email.isChecked()).resolves.toBe(true);
    await expect(terms.inputValue()).resolves.toBe("Project Nightingale\nzebra crossing");
    await expect(outputTerms.inputValue()).resolves.toBe("marmalade");
    const { accessToken } = await storedSession(page);
    const res = await fetch(`${gw.url}/${AuthService.typeName}/GetTenantSettings`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
      body: "{}",
    });
    expect(res.status).toBe(200);
    const { settings } = (await res.json()) as { settings: Record<string, unknown> };
    expect(settings).toMatchObject({
      logCalls: true,
      defaultCache: "DEFAULT_CACHE_OFF",
      guardrails: {
        redactPii: ["PII_KIND_EMAIL"],
        blockedTerms: ["Project Nightingale", "zebra crossing"],
        blockedOutputTerms: ["marmalade"],
      },
    });
    expect(settings["guardrails"]).not.toHaveProperty("blockPii");

    // Once model-proxy's cache of settings has expired: a chat with an email in it is answered
    // (the simulator repeats the question) with the placeholder in its place, and one with the
    // blocked term is refused, saying why.
    await new Promise((r) => setTimeout(r, SETTINGS_CACHE_MS + 500));
    await nav(page, "Chat");
    await page.getByRole("button", { name: "New chat" }).click();
    await page.getByLabel("Model").selectOption("sim-fast");
    const address = `jane.doe.${Date.now()}@example.com`;
    await page.getByLabel("Message").fill(`Please write to ${address} about the launch`);
    await page.getByRole("button", { name: "Send" }).click();
    const reply = page.locator('.msg.assistant[data-streaming="false"]').last();
    await reply.waitFor({ timeout: 60_000 });
    const answer = (await reply.locator(".text").textContent()) ?? "";
    expect(answer).toContain("Please write to [EMAIL] about the launch");
    expect(answer).not.toContain(address);
    // The question on screen is the user's own, as typed.
    await expect(page.locator(".msg.user .text").last().textContent()).resolves.toBe(
      `Please write to ${address} about the launch`,
    );

    await page.getByLabel("Message").fill("What is the status of project nightingale?");
    await page.getByRole("button", { name: "Send" }).click();
    const refused = page.locator(".msg.assistant").nth(1);
    await refused.locator(".error").waitFor({ timeout: 60_000 });
    await expect(refused.locator(".error").textContent()).resolves.toMatch(
      /^blocked by the tenant's guardrails/,
    );
    await expect(refused.locator(".text").textContent()).resolves.not.toMatch(/simulated/);
    await shot(page, "02c-chat-guardrails");
  }, 120_000);

  it("console - an admin adds a webhook (secret shown once), a run that ends is delivered signed, the deliveries show it, and Delete removes it", async () => {
    // A receiver as a tenant would run one: it keeps what it gets and answers 200.
    const received: Array<{ headers: IncomingHttpHeaders; body: string }> = [];
    const receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        received.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
        res.writeHead(200, { "content-type": "text/plain" }).end("ok");
      });
    });
    receiver.listen(0, "127.0.0.1");
    await once(receiver, "listening");
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks/console`;
    try {
      await nav(page, "Admin");
      const section = page.getByRole("region", { name: "Webhooks" });
      const form = section.getByRole("form", { name: "Create webhook" });
      await section.getByText("No webhooks.").waitFor();

      // What the engine refuses is said as it says it, and nothing is added.
      await form.getByLabel("Endpoint URL").fill("ftp://127.0.0.1/hooks");
      await form.getByRole("button", { name: "Create webhook" }).click();
      await expect(section.getByRole("alert").textContent()).resolves.toBe("url: must be https://");
      await expect(section.getByTestId("webhook-secret").count()).resolves.toBe(0);
      await expect(section.locator("table.webhooks").count()).resolves.toBe(0);

      // Only completed runs, with a description.
      await form.getByLabel("Endpoint URL").fill(url);
      await form.getByLabel("Description").fill("CI receiver");
      await form.getByRole("checkbox", { name: "run.completed" }).check();
      await form.getByRole("button", { name: "Create webhook" }).click();
      const shown = section.getByTestId("webhook-secret");
      await shown.waitFor();
      const secret = (await shown.textContent()) ?? "";
      expect(secret).toMatch(/^whsec_[A-Za-z0-9+/=]{20,}$/);
      const box = section.getByTestId("webhook-created");
      await expect(box.textContent()).resolves.toMatch(/Copy it now: it is shown only once\./);
      for (const header of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
        await box.getByText(header, { exact: true }).waitFor();
      }
      await box.getByText("standardwebhooks", { exact: true }).waitFor();
      await expect(section.getByRole("alert").count()).resolves.toBe(0);
      // The form is ready for the next endpoint.
      await expect(form.getByLabel("Endpoint URL").inputValue()).resolves.toBe("");
      await expect(form.getByRole("checkbox", { name: "run.completed" }).isChecked()).resolves.toBe(
        false,
      );

      const row = section.locator(`tr[data-webhook="${url}"]`);
      await row.waitFor();
      await expect(row.locator('[data-col="url"]').textContent()).resolves.toBe(url);
      await expect(row.locator('[data-col="events"]').textContent()).resolves.toBe("run.completed");
      await expect(row.locator('[data-col="description"]').textContent()).resolves.toBe(
        "CI receiver",
      );
      // The table tells secrets apart by their start, never shows them.
      const hint = ((await row.locator('[data-col="secret"]').textContent()) ?? "").replace(
        /…$/,
        "",
      );
      expect(hint).toMatch(/^whsec_.+/);
      expect(secret.startsWith(hint)).toBe(true);
      expect(hint.length).toBeLessThan(secret.length);
      expect(await section.locator("table.webhooks").textContent()).not.toContain(secret);
      await expect(row.textContent()).resolves.toContain(`by ${aliceEmail}`);
      await shot(page, "07e-admin-webhook-created");

      // Once: after a reload the secret is nowhere on the page; the endpoint is still listed.
      await page.reload();
      await row.waitFor();
      await expect(section.getByTestId("webhook-secret").count()).resolves.toBe(0);
      expect(await page.content()).not.toContain(secret);

      // Before any run has ended since, the endpoint has no deliveries.
      await page.getByRole("button", { name: `Deliveries of ${url}` }).click();
      const deliveries = page.getByRole("region", { name: `Deliveries of ${url}` });
      await deliveries.getByText("No deliveries yet").waitFor();

      // A comparison is a run: once it completes, the receiver is told, signed with the secret.
      await nav(page, "Compare");
      await page.locator('fieldset input[name="model"]:checked').first().waitFor();
      await page.getByLabel("Prompt").fill(`Name a prime number (${Date.now()})`);
      await page.getByRole("button", { name: "Compare" }).click();
      await page.getByRole("region", { name: "Ranking" }).waitFor({ timeout: 60_000 });
      const href = (await page.getByRole("link", { name: "Open this run" }).getAttribute("href"))!;
      const runId = href.split("/").at(-1)!;
      type Payload = { type: string; data: { runId: string; type: string } };
      const verifier = new Webhook(secret);
      let delivery: { headers: IncomingHttpHeaders; body: string; payload: Payload } | undefined;
      for (const until = Date.now() + 30_000; delivery === undefined;) {
        // Verifying throws for what was not signed with the secret (or is too old).
        delivery = received
          .map((r) => ({
            ...r,
            payload: verifier.verify(r.body, r.headers as Record<string, string>) as Payload,
          }))
          .find((r) => r.payload.data.runId === runId);
        if (delivery === undefined && Date.now() > until) {
          throw new Error(`no delivery for run ${runId} (${received.length} received)`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(delivery.payload.type).toBe("run.completed");
      expect(delivery.payload.data.type).toBe("RUN_EVENT_TYPE_COMPLETED");
      expect(delivery.headers["webhook-id"]).toMatch(/\S/);
      expect(delivery.headers["content-type"]).toContain("application/json");
      // Another secret does not verify it.
      expect(() =>
        new Webhook(`whsec_${Buffer.from("not the secret").toString("base64")}`).verify(
          delivery.body,
          delivery.headers as Record<string, string>,
        ),
      ).toThrow();
      // Only what it asked for: run.completed, each once.
      expect(
        received
          .map((r) => (JSON.parse(r.body) as Payload).type)
          .filter((t) => t !== "run.completed"),
      ).toEqual([]);

      // The deliveries say so, with the run linked to its page.
      await nav(page, "Admin");
      await page.getByRole("button", { name: `Deliveries of ${url}` }).click();
      const delivered = deliveries.locator(`tr[data-run="${runId}"]`);
      await delivered.waitFor();
      await expect(delivered.locator('[data-col="event"]').textContent()).resolves.toBe(
        "run.completed",
      );
      await expect(delivered.locator('[data-col="status"]').textContent()).resolves.toBe(
        "delivered",
      );
      await expect(delivered.locator('[data-col="attempts"]').textContent()).resolves.toBe("1");
      await expect(delivered.locator('[data-col="answer"]').textContent()).resolves.toBe(
        "HTTP 200",
      );
      await expect(delivered.locator('[data-col="next"]').textContent()).resolves.toBe("—");
      await shot(page, "07f-admin-webhook-deliveries");
      await delivered.getByRole("link", { name: runId }).click();
      await page.waitForURL(new RegExp(`/runs/${runId}$`));
      await page.getByTestId("run-status").filter({ hasText: "completed" }).waitFor();

      // Delete asks first: declined, the endpoint stays; accepted, it is gone (after a reload too).
      await nav(page, "Admin");
      await row.waitFor();
      const asked: string[] = [];
      page.once("dialog", (d) => {
        asked.push(d.message());
        void d.dismiss();
      });
      await page.getByRole("button", { name: `Delete ${url}` }).click();
      await expect.poll(() => asked.length).toBe(1);
      expect(asked[0]).toContain(url);
      // Nothing was deleted meanwhile: still listed, as the engine has it, after a reload.
      await page.waitForLoadState("networkidle");
      await page.reload();
      await row.waitFor();
      page.once("dialog", (d) => void d.accept());
      await page.getByRole("button", { name: `Delete ${url}` }).click();
      await section.getByText("No webhooks.").waitFor();
      await expect(row.count()).resolves.toBe(0);
      await page.reload();
      await section.getByText("No webhooks.").waitFor();
    } finally {
      receiver.close();
    }
  }, 120_000);

  it("console - schedules: a seconds cron on a model fires (its last run linked), pauses with a reason (kept over a reload), resumes, is renamed and deleted", async () => {
    await asAlice();
    await nav(page, "Schedules");
    await page.getByText("No schedules yet").waitFor();
    const form = page.getByRole("form", { name: "Create schedule" });
    const name = `every-second-${Date.now()}`;
    const row = page.locator(`tr[data-schedule="${name}"]`);
    const cell = (col: string) => row.locator(`[data-col="${col}"]`);
    const fires = async () => Number(await cell("fires").textContent());
    await form.getByLabel("Name").fill(name);
    await form.getByLabel("Input").fill("Say good morning to the team");
    await form.getByRole("combobox", { name: /^Model/ }).selectOption("sim-fast");

    // What the engine refuses is shown next to the field it names, and nothing is added.
    await form.getByLabel("Cron expression").fill("61 * * * *");
    await form.getByRole("button", { name: "Create schedule" }).click();
    await expect(form.getByRole("alert").textContent()).resolves.toMatch(
      /^cron\.expression: "61 \* \* \* \*" is not a valid cron expression/,
    );
    await expect(form.getByLabel("Cron expression").getAttribute("aria-invalid")).resolves.toBe(
      "true",
    );
    await expect(row.count()).resolves.toBe(0);

    // Six fields: every second.
    await form.getByLabel("Cron expression").fill("* * * * * *");
    await form.getByRole("button", { name: "Create schedule" }).click();
    await row.waitFor();
    await expect(form.getByRole("alert").count()).resolves.toBe(0);
    await expect(form.getByLabel("Name").inputValue()).resolves.toBe("");
    await expect(cell("name").textContent()).resolves.toBe(
      `${name}model sim-fast · Say good morning to the team`,
    );
    await expect(cell("when").textContent()).resolves.toBe("* * * * * * UTC");
    await expect(cell("state").textContent()).resolves.toBe("active");

    // It fires: the table reads itself again after each next fire, no reload needed.
    const lastRun = row.getByRole("link", { name: "last run" });
    await lastRun.waitFor({ timeout: 30_000 });
    expect(await fires()).toBeGreaterThanOrEqual(1);
    await expect(cell("last").textContent()).resolves.toMatch(/\d.*last run$/);
    const runId = (await lastRun.getAttribute("href"))!.split("/").at(-1)!;
    expect(runId).toMatch(/^run_/);
    // Its runs open under its row, the last one among them.
    await page.getByRole("button", { name: `Runs of ${name}`, exact: true }).click();
    const runs = page.getByRole("region", { name: `Runs of ${name}` });
    await runs.locator("tbody tr").first().waitFor();
    await shot(page, "13-schedules");
    await lastRun.click();
    await page.waitForURL(new RegExp(`/runs/${runId}$`));
    await page.getByTestId("run-status").filter({ hasText: "completed" }).waitFor({
      timeout: 30_000,
    });
    await expect(page.locator(".question").textContent()).resolves.toBe(
      "Say good morning to the team",
    );

    // Paused with a reason: shown as such, and it fires no more.
    await nav(page, "Schedules");
    await page.getByRole("button", { name: `Pause ${name}`, exact: true }).click();
    const pause = page.getByRole("form", { name: `Pause ${name}` });
    await pause.getByLabel("Reason (optional)").fill("the team is on holiday");
    await pause.getByRole("button", { name: "Pause schedule" }).click();
    await pause.waitFor({ state: "detached" });
    await cell("state")
      .filter({ hasText: /^paused/ })
      .waitFor();
    const paused = async () => {
      await expect(row.getByTestId("pause-reason").textContent()).resolves.toMatch(
        /^the team is on holiday · since .*\d/,
      );
      await expect(cell("next").textContent()).resolves.toBe("— (paused)");
      await expect(row.getAttribute("class")).resolves.toBe("warn");
      await expect(
        page.getByRole("button", { name: `Resume ${name}`, exact: true }).count(),
      ).resolves.toBe(1);
    };
    await paused();
    await shot(page, "13a-schedule-paused");
    await page.reload();
    await row.waitFor();
    await paused();
    const firesWhenPaused = await fires();
    await new Promise((r) => setTimeout(r, 3_000));
    await page.reload();
    await row.waitFor();
    expect(await fires()).toBe(firesWhenPaused);

    // Resumed: active again, and firing.
    await page.getByRole("button", { name: `Resume ${name}`, exact: true }).click();
    await cell("state")
      .filter({ hasText: /^active$/ })
      .waitFor();
    await expect(row.getByTestId("pause-reason").count()).resolves.toBe(0);
    await expect(row.getAttribute("class")).resolves.toBeNull();
    await expect.poll(fires, { timeout: 20_000 }).toBeGreaterThan(firesWhenPaused);

    // Renamed: the same schedule under its new name.
    const renamed = `${name}-renamed`;
    const renamedRow = page.locator(`tr[data-schedule="${renamed}"]`);
    await page.getByRole("button", { name: `Rename ${name}`, exact: true }).click();
    const rename = page.getByRole("form", { name: `Rename ${name}` });
    await expect(rename.getByLabel("New name").inputValue()).resolves.toBe(name);
    await rename.getByLabel("New name").fill(renamed);
    await rename.getByRole("button", { name: "Save name" }).click();
    await renamedRow.waitFor();
    await expect(row.count()).resolves.toBe(0);
    await expect(renamedRow.locator('[data-col="when"]').textContent()).resolves.toBe(
      "* * * * * * UTC",
    );
    expect(Number(await renamedRow.locator('[data-col="fires"]').textContent())).toBeGreaterThan(
      firesWhenPaused,
    );

    // Deleted after confirming: gone from the table, after a reload too.
    const asked: string[] = [];
    page.once("dialog", (d) => {
      asked.push(d.message());
      void d.accept();
    });
    await page.getByRole("button", { name: `Delete ${renamed}`, exact: true }).click();
    await page.getByText("No schedules yet").waitFor();
    expect(asked[0]).toContain(renamed);
    await page.reload();
    await page.getByText("No schedules yet").waitFor();
    await expect(renamedRow.count()).resolves.toBe(0);
  }, 120_000);

  it("console - schedules: Edit gives a one-time schedule a seconds cron and a new input (its runs ask it), shows what the engine refuses next to the field, and gives a time that passed while paused a new one from Resume's error", async () => {
    await asAlice();
    await nav(page, "Schedules");
    const form = page.getByRole("form", { name: "Create schedule" });
    const name = `once-${Date.now()}`;
    const row = page.locator(`tr[data-schedule="${name}"]`);
    const cell = (col: string) => row.locator(`[data-col="${col}"]`);
    // What a datetime-local input holds: the browser's (this machine's) time, to the minute.
    const localInput = (d: Date) =>
      new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
    const inAnHour = localInput(new Date(Date.now() + 3_600_000));
    await form.getByLabel("Name").fill(name);
    await form.getByLabel("Input").fill("Summarise the week");
    await form.getByRole("combobox", { name: /^Model/ }).selectOption("sim-fast");
    await form.getByRole("radio", { name: "once" }).check();
    await form.getByLabel("Date and time").fill(inAnHour);
    await form.getByRole("button", { name: "Create schedule" }).click();
    await row.waitFor();
    const once = (await cell("when").textContent())!;
    expect(once).toMatch(/^once, .*\d/);
    const before = `${name}model sim-fast · Summarise the week`;
    await expect(cell("name").textContent()).resolves.toBe(before);

    // The form starts from the schedule's input and time.
    const editButton = page.getByRole("button", { name: `Edit ${name}`, exact: true });
    const edit = page.getByRole("form", { name: `Edit ${name}` });
    await editButton.click();
    await expect(edit.getByLabel("Input").inputValue()).resolves.toBe("Summarise the week");
    await expect(edit.getByRole("radio", { name: "once" }).isChecked()).resolves.toBe(true);
    await expect(edit.getByLabel("Date and time").inputValue()).resolves.toBe(inAnHour);

    // What the engine refuses is shown next to the field it names, and nothing changes.
    await edit.getByLabel("Input").fill("What changed in the repo today?");
    await edit.getByRole("radio", { name: "repeatedly (cron)" }).check();
    await edit.getByLabel("Cron expression").fill("61 * * * *");
    await edit.getByRole("button", { name: "Save changes" }).click();
    const refusal = edit.getByRole("group", { name: "When" }).getByRole("alert");
    await expect(refusal.textContent()).resolves.toMatch(
      /^cron\.expression: "61 \* \* \* \*" is not a valid cron expression/,
    );
    await expect(edit.getByLabel("Cron expression").getAttribute("aria-invalid")).resolves.toBe(
      "true",
    );
    await expect(edit.getByRole("alert").count()).resolves.toBe(1);
    await shot(page, "13b-schedule-edit-refused");
    await page.reload();
    await row.waitFor();
    await expect(cell("when").textContent()).resolves.toBe(once);
    await expect(cell("name").textContent()).resolves.toBe(before);

    // Every two seconds, with the new input: the row says so, and its runs ask it.
    await editButton.click();
    await edit.getByLabel("Input").fill("What changed in the repo today?");
    await edit.getByRole("radio", { name: "repeatedly (cron)" }).check();
    await edit.getByLabel("Cron expression").fill("*/2 * * * * *");
    await edit.getByRole("button", { name: "Save changes" }).click();
    await edit.waitFor({ state: "detached" });
    await cell("when").filter({ hasText: "*/2 * * * * * UTC" }).waitFor();
    await expect(cell("name").textContent()).resolves.toBe(
      `${name}model sim-fast · What changed in the repo today?`,
    );
    const lastRun = row.getByRole("link", { name: "last run" });
    await lastRun.waitFor({ timeout: 30_000 });
    const runId = (await lastRun.getAttribute("href"))!.split("/").at(-1)!;
    await lastRun.click();
    await page.waitForURL(new RegExp(`/runs/${runId}$`));
    await page.getByTestId("run-status").filter({ hasText: "completed" }).waitFor({
      timeout: 30_000,
    });
    await expect(page.locator(".question").textContent()).resolves.toBe(
      "What changed in the repo today?",
    );

    // A one-time schedule whose time passed while it was paused (made as a script would, for
    // a time seconds away): Resume's refusal offers its edit form, time first.
    const { accessToken } = await storedSession(page);
    const call = async (method: string, body: unknown) => {
      const res = await fetch(`${gw.url}/${RunService.typeName}/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify(body),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as { schedule: { id: string } };
    };
    const late = `${name}-late`;
    const lateRow = page.locator(`tr[data-schedule="${late}"]`);
    const lateCell = (col: string) => lateRow.locator(`[data-col="${col}"]`);
    const at = Date.now() + 2_000;
    const { schedule } = await call("CreateSchedule", {
      name: late,
      spec: { input: "Remind me of the review", model: { model: "sim-fast" } },
      at: new Date(at).toISOString(),
    });
    await call("PauseSchedule", { scheduleId: schedule.id, reason: "not yet" });
    await new Promise((r) => setTimeout(r, at + 500 - Date.now()));
    await nav(page, "Schedules");
    await lateRow.waitFor();
    await expect(lateCell("fires").textContent()).resolves.toBe("0");
    await page.getByRole("button", { name: `Resume ${late}`, exact: true }).click();
    await expect(page.getByRole("alert").textContent()).resolves.toMatch(
      new RegExp(`^${late}: its time \\(.*\\) passed while it was paused; give it a new time$`),
    );
    await page.getByRole("button", { name: "Edit its time", exact: true }).click();
    const retime = page.getByRole("form", { name: `Edit ${late}` });
    await retime.waitFor();
    await expect(page.getByRole("alert").count()).resolves.toBe(0);
    await expect(page.evaluate<string>("document.activeElement.name")).resolves.toBe("at");
    await retime.getByLabel("Date and time").fill(inAnHour);
    await retime.getByRole("button", { name: "Save changes" }).click();
    await retime.waitFor({ state: "detached" });
    // It stays paused with its new time, and now resumes.
    // The same hour ahead as the first one's.
    await expect.poll(() => lateCell("when").textContent()).toBe(once);
    await expect(lateCell("next").textContent()).resolves.toBe("— (paused)");
    await page.getByRole("button", { name: `Resume ${late}`, exact: true }).click();
    await lateCell("state")
      .filter({ hasText: /^active$/ })
      .waitFor();
    await expect(lateCell("next").textContent()).resolves.toMatch(/\d/);
    await expect(page.getByRole("alert").count()).resolves.toBe(0);
    await shot(page, "13c-schedule-edited");

    const accept = (d: Dialog) => void d.accept();
    page.on("dialog", accept);
    for (const n of [name, late]) {
      await page.getByRole("button", { name: `Delete ${n}`, exact: true }).click();
      await page.locator(`tr[data-schedule="${n}"]`).waitFor({ state: "detached" });
    }
    page.off("dialog", accept);
  }, 120_000);

  it("console - a user of another tenant sees none of it", async () => {
    const bobContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const bob = await bobContext.newPage();
    try {
      await signup(bob, `bob-${Date.now()}@example.com`);
      await nav(bob, "Runs");
      await bob.getByText("No runs match").waitFor();
      await nav(bob, "Chat");
      await expect(bob.locator(".sessions li").count()).resolves.toBe(0);
      await nav(bob, "Admin");
      await bob.getByText("No API keys.").waitFor();
      await expect(bob.locator("table").first().textContent()).resolves.not.toContain("alice-");
      // Alice's tenant settings are hers: Bob's tenant has the defaults.
      const settings = bob.getByRole("region", { name: "Tenant settings" });
      await settings.getByTestId("settings-changed").getByText("Never changed").waitFor();
      await expect(
        settings.getByLabel("Keep every chat in the call log").isChecked(),
      ).resolves.toBe(false);
      await expect(settings.getByLabel("Semantic cache threshold").inputValue()).resolves.toBe("");
      // Nor her guardrails.
      const guardrails = bob.getByRole("form", { name: "Guardrails" });
      await expect(
        guardrails
          .getByRole("radiogroup", { name: "Email addresses" })
          .getByRole("radio", { name: "off" })
          .isChecked(),
      ).resolves.toBe(true);
      await expect(guardrails.getByLabel("Blocked prompt terms").inputValue()).resolves.toBe("");
      // Alice's logged chat: not listed for Bob, and not found by its id.
      await nav(bob, "Logs");
      await bob.getByText("No logged calls yet.").waitFor();
      await expect(bob.locator("table.logs").count()).resolves.toBe(0);
      // The empty list says where an admin keeps every chat (Bob is his tenant's admin).
      await bob
        .locator(".empty")
        .getByRole("link", { name: /Admin page/ })
        .click();
      await bob.waitForURL(/\/admin$/);
      await bob.getByRole("form", { name: "Tenant settings" }).waitFor();
      await bob.goto(`${gw.url}/logs/${aliceCall}`);
      await bob.getByRole("alert").waitFor();
      await expect(bob.getByRole("alert").textContent()).resolves.toMatch(/not found/i);
      // Alice's run by its id: not found for Bob.
      await bob.goto(`${gw.url}/runs/${aliceRuns[0]}`);
      await bob.getByRole("alert").waitFor();
      await expect(bob.getByRole("alert").textContent()).resolves.toMatch(/not found/i);
      await shot(bob, "10-other-tenant");
    } finally {
      await bobContext.close();
    }
  }, 60_000);
});
