#!/usr/bin/env node
// The local launcher (`npm start`, which builds first): NATS with JetStream and a MongoDB-wire
// server (unless NATS_URL / MONGODB_URL point at running ones), then every service in SERVICES in
// order (auth first; services trust auth's JWKS; the gateway gets a service credential minted by
// auth's CLI), each waited for until grpc.health.v1 says SERVING (the gateway: GET /ready). Ctrl-C or
// SIGTERM stops the services first, then the infrastructure, and exits 0; a child that dies on
// its own stops everything with exit 1. `--infra-only` starts only NATS, MongoDB and the dev
// token issuer (for running a service from an editor without auth).
/* global fetch, AbortSignal */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join, relative } from "node:path";
import { parseArgs, parseEnv, promisify } from "node:util";
import { ensureDevIssuer } from "./lib/dev-issuer.mjs";
import { waitForServing } from "./lib/health.mjs";
import { ensureMongoServer } from "./lib/mongo-server.mjs";
import { ensureNatsServer } from "./lib/nats-server.mjs";
import { assertPortFree, canConnect } from "./lib/net.mjs";
import { Child, describeExit } from "./lib/proc.mjs";
import { ToolError, repoRoot } from "./lib/tools.mjs";

/**
 * One row per service, started in this order (a service's peers come before it). Each gets the
 * shared environment (NATS_URL, MONGODB_URL, JWKS_URL, JWT_*, LOG_LEVEL, every <NAME>_ADDR) plus
 * METRICS_PORT and its own port variable.
 * @typedef {object} ServiceSpec
 * @property {string} name        also the prefix of its log lines
 * @property {string} main        built entry point, relative to the repository root
 * @property {string} portVar     env var holding its gRPC port (also read here to override the default)
 * @property {number} port        default gRPC port
 * @property {string} metricsVar  env var overriding its metrics port here (passed to it as METRICS_PORT)
 * @property {number} metricsPort default metrics port (9100 + last two digits of the gRPC port)
 * @property {string} [example]   a method to show in the "call it" hint
 * @property {{ name: string; port: number; what: string }[]} [extraPorts]  more ports it binds (env var, default)
 * @property {string} [httpReady]   an HTTP service: ready when GET <this path> answers 200 (instead of grpc.health.v1)
 * @property {boolean} [serviceToken] gets SERVICE_TOKEN, a bootstrap credential minted with auth's CLI
 */
/** @type {ServiceSpec[]} */
const SERVICES = [
  // auth first: every other service verifies tokens against its JWKS, and the gateway needs a
  // service credential it mints.
  {
    name: "auth",
    main: "services/auth/dist/src/main.js",
    portVar: "AUTH_PORT",
    port: 50051,
    metricsVar: "AUTH_METRICS_PORT",
    metricsPort: 9151,
    extraPorts: [{ name: "AUTH_JWKS_PORT", port: 9051, what: "auth JWKS" }],
    example: "ensemble.auth.v1.AuthService/GetJwks",
  },
  {
    name: "registry",
    main: "services/registry/dist/src/main.js",
    portVar: "REGISTRY_PORT",
    port: 50052,
    metricsVar: "REGISTRY_METRICS_PORT",
    metricsPort: 9152,
    example: "ensemble.registry.v1.RegistryService/ListModels",
  },
  {
    name: "model-proxy",
    main: "services/model-proxy/dist/src/main.js",
    portVar: "MODEL_PROXY_PORT",
    port: 50055,
    metricsVar: "MODEL_PROXY_METRICS_PORT",
    metricsPort: 9155,
    example: "ensemble.modelproxy.v1.ModelProxyService/CountTokens",
  },
  {
    name: "vector-search",
    main: "services/vector-search/dist/src/main.js",
    portVar: "VECTOR_SEARCH_PORT",
    port: 50056,
    metricsVar: "VECTOR_SEARCH_METRICS_PORT",
    metricsPort: 9156,
    example: "ensemble.vectorsearch.v1.VectorSearchService/ListCollections",
  },
  // VECTOR_SEARCH_ADDR (in the shared environment) turns on its semantic routing.
  {
    name: "categorizer",
    main: "services/categorizer/dist/src/main.js",
    portVar: "CATEGORIZER_PORT",
    port: 50053,
    metricsVar: "CATEGORIZER_METRICS_PORT",
    metricsPort: 9153,
    example: "ensemble.categorizer.v1.CategorizerService/ListRoutes",
  },
  {
    name: "workflow",
    main: "services/workflow-engine/dist/src/main.js",
    portVar: "WORKFLOW_PORT",
    port: 50054,
    metricsVar: "WORKFLOW_METRICS_PORT",
    metricsPort: 9154,
    example: "ensemble.workflow.v1.RunService/ListRuns",
    serviceToken: true,
  },
  {
    name: "gateway",
    main: "gateway/dist/src/main.js",
    portVar: "GATEWAY_PORT",
    port: 8080,
    metricsVar: "GATEWAY_METRICS_PORT",
    metricsPort: 9180,
    httpReady: "/ready",
    serviceToken: true,
  },
];

/** The LLM simulator's CLI (packages/llm-sim), started when no real provider is configured. */
const LLM_SIM = "packages/llm-sim/dist/cli.js";
/** Any of these configures a real provider in model-proxy (see services/model-proxy). */
const PROVIDER_VARS = [
  "LLM_SIM_URL",
  "OPENAI_API_KEY",
  "OPENROUTER_API_KEY",
  "ANTHROPIC_API_KEY",
  "GEMINI_API_KEY",
  "GOOGLE_API_KEY",
  "MODEL_PROXY_DEPLOYMENTS",
];

/** auth's CLI that signs bootstrap service credentials (see services/auth). */
const MINT_SERVICE_TOKEN = "services/auth/dist/src/mint-service-token.js";

const HOST = "127.0.0.1";

/** Values from .env (when present) fill in what the environment does not set. */
function loadDotEnv() {
  const path = join(repoRoot, ".env");
  if (!existsSync(path)) return;
  for (const [key, value] of Object.entries(parseEnv(readFileSync(path, "utf8")))) {
    if (process.env[key] === undefined) process.env[key] = value;
  }
}

/**
 * @param {string} name @param {number} fallback
 * @returns {number}
 */
function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0)
    throw new ToolError(`${name}=${raw} is not a valid number`);
  return value;
}

/** @type {{ name: string; child: Child; kind: "infra" | "service" }[]} */
const running = [];
let stopping = false;
/** Services that reached SERVING. */
const started = new Set();

/**
 * Stops services (reverse order) then infrastructure, and exits with `code`.
 * @param {number} code
 */
async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  const timeoutMs = intEnv("SHUTDOWN_TIMEOUT_MS", 10_000) + 5_000;
  for (const kind of /** @type {const} */ (["service", "infra"])) {
    const group = running.filter((entry) => entry.kind === kind && entry.child.running).reverse();
    for (const entry of group) {
      process.stderr.write(`stopping ${entry.name}…\n`);
      await entry.child.stop(timeoutMs);
    }
  }
  process.exit(code);
}

/**
 * Adds a child to the set the launcher watches: if it exits while we are not stopping, say
 * which one and stop everything else with a non-zero exit.
 * @param {string} name @param {Child} child @param {"infra" | "service"} kind
 */
function watch(name, child, kind) {
  running.push({ name, child, kind });
  void child.exited.then((status) => {
    if (stopping) return;
    process.stderr.write(
      `\n${name} exited ${kind === "service" && !started.has(name) ? "before it was healthy" : "unexpectedly"} (${describeExit(status)}); its last lines:\n${child.lastLines()}\nstopping everything.\n`,
    );
    void shutdown(1);
  });
}

/** Thrown when a child's exit was already reported by watch(), which is stopping everything. */
class AlreadyReported extends Error {}

/**
 * Fails with the reason and the child's last lines; main's catch stops what runs and exits 1.
 * @param {string} message @param {Child} [child]
 * @returns {never}
 */
function fail(message, child) {
  if (child && !child.running) throw new AlreadyReported();
  throw new ToolError(child ? `${message}; its last lines:\n${child.lastLines()}` : message);
}

async function main() {
  const { values } = parseArgs({
    options: {
      "infra-only": { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(
      "usage: node scripts/start.mjs [--infra-only]   (npm start builds first)\nVariables: see .env.example\n",
    );
    return;
  }
  loadDotEnv();
  const dataDir = process.env.ENSEMBLE_DATA_DIR || join(repoRoot, ".data");
  const startupTimeoutMs = intEnv("STARTUP_TIMEOUT_MS", 60_000);
  const services = values["infra-only"] ? [] : SERVICES;
  const show = (/** @type {string} */ path) => {
    const rel = relative(process.cwd(), path);
    return rel.startsWith("..") ? path : rel || ".";
  };

  process.on("SIGINT", () => void onSignal("SIGINT"));
  process.on("SIGTERM", () => void onSignal("SIGTERM"));

  // Everything that can be checked before starting anything: builds and ports.
  for (const svc of services) {
    if (!existsSync(join(repoRoot, svc.main))) {
      fail(
        `${svc.name}: ${svc.main} does not exist: build it first (npm run build; npm start builds for you)`,
      );
    }
  }
  const natsPort = intEnv("NATS_PORT", 4222);
  const mongoPort = intEnv("MONGODB_PORT", 27017);
  const wanted = services.map((svc) => ({
    ...svc,
    port: intEnv(svc.portVar, svc.port),
    metricsPort: intEnv(svc.metricsVar, svc.metricsPort),
    extraPorts: (svc.extraPorts ?? []).map((extra) => ({
      ...extra,
      port: intEnv(extra.name, extra.port),
    })),
  }));
  if (!process.env.NATS_URL)
    await assertPortFree(
      HOST,
      natsPort,
      "NATS",
      "set NATS_PORT, or NATS_URL to use a running server",
    );
  if (!process.env.MONGODB_URL) {
    await assertPortFree(
      HOST,
      mongoPort,
      "MongoDB",
      "set MONGODB_PORT, or MONGODB_URL to use a running server",
    );
  }
  for (const svc of wanted) {
    await assertPortFree(HOST, svc.port, `${svc.name} gRPC`, `set ${svc.portVar}`);
    await assertPortFree(HOST, svc.metricsPort, `${svc.name} metrics`, `set ${svc.metricsVar}`);
    for (const extra of svc.extraPorts)
      await assertPortFree(HOST, extra.port, extra.what, `set ${extra.name}`);
  }

  // Infrastructure.
  let natsUrl = process.env.NATS_URL;
  let natsNote = "from NATS_URL";
  if (!natsUrl) {
    const binary = await ensureNatsServer();
    const store = join(dataDir, "nats");
    await mkdir(store, { recursive: true });
    const nats = new Child("nats", binary, [
      "-js",
      "-sd",
      store,
      "-p",
      String(natsPort),
      "-a",
      HOST,
    ]);
    watch("nats", nats, "infra");
    await nats
      .waitForLine(/Server is ready/, startupTimeoutMs)
      .catch((/** @type {Error} */ err) => fail(err.message, nats));
    natsUrl = `nats://${HOST}:${natsPort}`;
    natsNote = `nats-server with JetStream, data in ${show(store)}`;
  }

  let mongoUrl = process.env.MONGODB_URL;
  let mongoNote = "from MONGODB_URL";
  if (!mongoUrl) {
    const server = await ensureMongoServer();
    const store = join(dataDir, server.kind === "mongod" ? "mongod" : "mongo");
    await mkdir(store, { recursive: true });
    // FerretDB logs every command that answers ok: 0 at warn (a lost insert claim, an index
    // that exists) and every client disconnect: dozens of lines at start that say nothing wrong.
    const args =
      server.kind === "mongod"
        ? ["--bind_ip", HOST, "--port", String(mongoPort), "--dbpath", store, "--quiet"]
        : ["-listen-addr", `${HOST}:${mongoPort}`, "-sqlite-dir", store, "-log-level", "error"];
    const mongo = new Child(server.kind, server.path, args);
    watch(server.kind, mongo, "infra");
    const deadline = Date.now() + startupTimeoutMs;
    while (!(await canConnect(HOST, mongoPort))) {
      if (!mongo.running) fail(`${server.kind} exited before it was ready`, mongo);
      if (Date.now() > deadline)
        fail(`${server.kind} did not accept connections within ${startupTimeoutMs} ms`, mongo);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    mongoUrl = `mongodb://${HOST}:${mongoPort}`;
    mongoNote = `${server.kind === "mongod" ? "mongod" : "FerretDB on SQLite"}, data in ${show(store)}`;
  }

  let jwksUrl = process.env.JWKS_URL;
  let jwksNote = "from JWKS_URL";
  const auth = wanted.find((svc) => svc.name === "auth");
  const authJwksPort = auth?.extraPorts.find((p) => p.name === "AUTH_JWKS_PORT")?.port;
  if (!jwksUrl && authJwksPort !== undefined) {
    // With auth in the mesh every service trusts auth's keys; the dev issuer is then unused.
    jwksUrl = `http://${HOST}:${authJwksPort}/.well-known/jwks.json`;
    jwksNote = "auth's signing keys";
  } else if (!jwksUrl) {
    const issuer = await ensureDevIssuer({ dir: join(dataDir, "dev-issuer") });
    jwksUrl = issuer.jwksUrl;
    jwksNote = `dev issuer, key in ${show(issuer.dir)}`;
  }

  // The LLM simulator stands in for providers when none is configured.
  let simNote = "";
  const providers = PROVIDER_VARS.filter((name) => (process.env[name] ?? "") !== "");
  const simPort = intEnv("LLM_SIM_PORT", 8090);
  if (services.some((svc) => svc.name === "model-proxy") && providers.length === 0) {
    await assertPortFree(HOST, simPort, "LLM simulator", "set LLM_SIM_PORT");
    const sim = new Child("llm-sim", process.execPath, [
      join(repoRoot, LLM_SIM),
      "--port",
      String(simPort),
      "--host",
      HOST,
    ]);
    watch("llm-sim", sim, "infra");
    await sim
      .waitForLine(/listening/, startupTimeoutMs)
      .catch((/** @type {Error} */ err) => fail(err.message, sim));
    process.env.LLM_SIM_URL = `http://${HOST}:${simPort}/v1`;
    simNote = "no provider key set: simulated models (sim-*) answer, and role aliases use them";
  }

  // Services.
  /** @type {NodeJS.ProcessEnv} */
  const shared = {
    ...process.env,
    NATS_URL: natsUrl,
    MONGODB_URL: mongoUrl,
    JWKS_URL: jwksUrl,
    LOG_LEVEL: process.env.LOG_LEVEL || "info",
  };
  for (const svc of SERVICES)
    if (!svc.httpReady)
      shared[`${svc.name.toUpperCase().replaceAll("-", "_")}_ADDR`] =
        `${HOST}:${intEnv(svc.portVar, svc.port)}`;
  for (const svc of wanted) {
    /** @type {NodeJS.ProcessEnv} */
    const env = {
      ...shared,
      [svc.portVar]: String(svc.port),
      METRICS_PORT: String(svc.metricsPort),
    };
    for (const extra of svc.extraPorts) env[extra.name] = String(extra.port);
    if (svc.serviceToken) {
      if (started.has("auth")) {
        env.SERVICE_TOKEN = await mintServiceToken(svc.name, shared).catch(
          (/** @type {Error} */ err) =>
            fail(`minting ${svc.name}'s service credential failed: ${err.message}`),
        );
      } else {
        process.stderr.write(
          `${svc.name}: auth is not running, so no SERVICE_TOKEN (API keys are refused)\n`,
        );
      }
    }
    const child = new Child(
      svc.name,
      process.execPath,
      ["--enable-source-maps", join(repoRoot, svc.main)],
      { env, cwd: repoRoot },
    );
    watch(svc.name, child, "service");
    try {
      if (svc.httpReady)
        await waitForHttp(
          `http://${HOST}:${svc.port}${svc.httpReady}`,
          startupTimeoutMs,
          () => child.running,
        );
      else await waitForServing(`${HOST}:${svc.port}`, startupTimeoutMs, () => child.running);
      started.add(svc.name);
    } catch (err) {
      fail(`${svc.name} on ${HOST}:${svc.port} is ${/** @type {Error} */ (err).message}`, child);
    }
  }

  const rows = [
    ...wanted.map((svc) => [
      svc.name,
      svc.httpReady ? `http://${HOST}:${svc.port}` : `grpc ${HOST}:${svc.port}`,
      svc.httpReady
        ? "Connect, gRPC, gRPC-web; /docs /health /metrics"
        : `metrics http://${HOST}:${svc.metricsPort}/metrics`,
    ]),
    ["NATS", natsUrl, natsNote],
    ["MongoDB", mongoUrl, mongoNote],
    ["JWKS", jwksUrl, jwksNote],
    ...(simNote !== "" ? [["llm-sim", process.env.LLM_SIM_URL ?? "", simNote]] : []),
  ];
  const width = Math.max(...rows.map((row) => (row[1] ?? "").length));
  const nameWidth = Math.max(...rows.map((row) => (row[0] ?? "").length));
  const lines = [
    "",
    wanted.length > 0 ? "Ensemble is running:" : "Infrastructure is running (--infra-only):",
  ];
  for (const [name = "", where = "", note = ""] of rows)
    lines.push(`  ${name.padEnd(nameWidth)}  ${where.padEnd(width)}  ${note}`);
  const gateway = wanted.find((svc) => svc.name === "gateway");
  const first = wanted.find((svc) => !svc.httpReady);
  if (gateway && auth) {
    const target = `http://${HOST}:${gateway.port}`;
    lines.push(
      "",
      `Web console: ${target}/  (sign up there)`,
      "",
      "Call it through the gateway (API reference: " + `${target}/docs):`,
      `  curl -s ${target}/ensemble.auth.v1.AuthService/Signup -H 'content-type: application/json' \\`,
      `    -d '{"email":"alice@example.com","password":"correct-Horse-battery-9"}'`,
      `  TOKEN=$(curl -s ${target}/ensemble.auth.v1.AuthService/Login -H 'content-type: application/json' \\`,
      `    -d '{"email":"alice@example.com","password":"correct-Horse-battery-9"}' | node -pe 'JSON.parse(require("fs").readFileSync(0)).tokens.accessToken')`,
      `  npx buf curl --schema . --protocol grpc --http2-prior-knowledge -H "authorization: Bearer $TOKEN" -d '{}' ${target}/ensemble.registry.v1.RegistryService/ListModels`,
    );
  } else if (first) {
    const target = `http://${HOST}:${first.port}`;
    lines.push(
      "",
      "Call it:",
      "  TOKEN=$(node scripts/mint-token.mjs --tenant acme --user alice --role admin)",
      `  npx buf curl --protocol grpc --http2-prior-knowledge --list-methods ${target}`,
      `  npx buf curl --protocol grpc --http2-prior-knowledge -H "authorization: Bearer $TOKEN" -d '{}' ${target}/${first.example ?? "grpc.health.v1.Health/Check"}`,
    );
  }
  lines.push("", "Ctrl-C stops everything.", "");
  process.stdout.write(lines.join("\n") + "\n");
}

/**
 * A bootstrap service credential for `service`, signed by auth's CLI with auth's current key
 * (same MongoDB and key secret as auth); printed on stdout, never logged here.
 * @param {string} service @param {NodeJS.ProcessEnv} env
 * @returns {Promise<string>}
 */
async function mintServiceToken(service, env) {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [join(repoRoot, MINT_SERVICE_TOKEN), "--service", service, "--ttl", "1d"],
    { env, cwd: repoRoot, timeout: 60_000 },
  );
  const token = stdout.trim();
  if (token === "") throw new Error("the CLI printed no token");
  return token;
}

/**
 * Polls an HTTP readiness URL until it answers 200.
 * @param {string} url @param {number} timeoutMs @param {() => boolean} alive
 */
async function waitForHttp(url, timeoutMs, alive) {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline && alive()) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200) return;
      last = `HTTP ${res.status} ${await res.text()}`;
    } catch (err) {
      last = /** @type {Error} */ (err).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  if (!alive()) throw new Error("exited");
  throw new Error(`not ready after ${timeoutMs} ms (last answer: ${last})`);
}

let signals = 0;
/** @param {NodeJS.Signals} signal */
async function onSignal(signal) {
  signals += 1;
  if (signals > 1) {
    process.stderr.write(`${signal} again: killing everything now\n`);
    for (const entry of running) entry.child.process.kill("SIGKILL");
    process.exit(130);
  }
  process.stderr.write(`\n${signal}: stopping services, then infrastructure…\n`);
  await shutdown(0);
}

main().catch(async (/** @type {unknown} */ err) => {
  if (err instanceof AlreadyReported) return;
  const message =
    err instanceof ToolError
      ? err.message
      : err instanceof Error
        ? (err.stack ?? err.message)
        : String(err);
  process.stderr.write(`\nnpm start failed: ${message}\n`);
  await shutdown(1);
});
