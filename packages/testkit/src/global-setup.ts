// vitest global setup (root vitest.config.ts → packages/testkit/dist/global-setup.js): one NATS
// and one MongoDB-wire server for the whole run, shared by every test file; tests isolate
// themselves with uniqueName() databases, streams and buckets.
//
// Where the servers come from, first match wins, for each of the two:
//   1. NATS_URL / MONGODB_URL: servers someone already runs.
//   2. Docker, through testcontainers: when a Docker engine answers `docker info` AND the
//      `testcontainers` package is installed. It is not a dependency (a large tree with native
//      optional modules, and our CI machines have no Docker engine), so install it yourself
//      (`npm i -D testcontainers`) to use containers; ENSEMBLE_TESTKIT_DOCKER=0 skips this step.
//   3. Local binaries: nats-server and mongod/FerretDB, found or built by scripts/install-*.mjs.
import { spawn } from "node:child_process";
import type { TestProject } from "vitest/node";
import { installedBinary } from "./binaries.js";
import { startMongo } from "./mongo.js";
import { startNats } from "./nats.js";

interface Started {
  url: string;
  stop(): Promise<void>;
}

function say(message: string): void {
  process.stderr.write(`[testkit] ${message}\n`);
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started: Started[] = [];
  const teardown = async (): Promise<void> => {
    for (const server of started.reverse()) await server.stop();
  };
  try {
    let nats = process.env.NATS_URL;
    let mongo = process.env.MONGODB_URL;
    if (nats) say(`NATS from NATS_URL: ${nats}`);
    if (mongo) say("MongoDB from MONGODB_URL");

    if (!nats || !mongo) {
      const containers = await containerRuntime();
      if (containers.ok) {
        if (!nats) {
          const server = await containers.start(
            "nats:2.12",
            ["-js"],
            4222,
            /Server is ready/,
            "nats",
          );
          started.push(server);
          nats = server.url;
          say(`NATS in a container: ${nats}`);
        }
        if (!mongo) {
          const server = await containers.start(
            "mongo:8",
            [],
            27017,
            /Waiting for connections/,
            "mongodb",
          );
          started.push(server);
          mongo = server.url;
          say(`MongoDB in a container: ${mongo}`);
        }
      } else {
        say(`not using containers: ${containers.why}; using local binaries`);
      }
    }

    // Install one after the other (each build uses every core), then start both at once.
    if (!nats) await installedBinary("install-nats.mjs");
    if (!mongo) await installedBinary("install-ferretdb.mjs");
    const local = await Promise.all([
      nats ? undefined : startNats(),
      mongo ? undefined : startMongo(),
    ]);
    const [localNats, localMongo] = local;
    if (localNats) {
      started.push(localNats);
      nats = localNats.url;
      say(`nats-server: ${nats} (JetStream data in ${localNats.dataDir})`);
    }
    if (localMongo) {
      started.push(localMongo);
      mongo = localMongo.url;
      say(`${localMongo.kind}: ${mongo} (data in ${localMongo.dataDir})`);
    }

    project.provide("natsUrl", nats as string);
    project.provide("mongoUrl", mongo as string);
    return teardown;
  } catch (err) {
    await teardown();
    throw err;
  }
}

type ContainerRuntime =
  | {
      ok: true;
      start(
        image: string,
        command: string[],
        port: number,
        ready: RegExp,
        scheme: string,
      ): Promise<Started>;
    }
  | { ok: false; why: string };

// The slice of the testcontainers API used here (the package is optional, so no static types).
interface StartedContainer {
  getHost(): string;
  getMappedPort(port: number): number;
  stop(): Promise<unknown>;
}
interface GenericContainerBuilder {
  withCommand(command: string[]): GenericContainerBuilder;
  withExposedPorts(...ports: number[]): GenericContainerBuilder;
  withWaitStrategy(strategy: unknown): GenericContainerBuilder;
  start(): Promise<StartedContainer>;
}
interface TestcontainersModule {
  GenericContainer: new (image: string) => GenericContainerBuilder;
  Wait: { forLogMessage(message: RegExp): unknown };
}

async function containerRuntime(): Promise<ContainerRuntime> {
  if (process.env.ENSEMBLE_TESTKIT_DOCKER === "0")
    return { ok: false, why: "ENSEMBLE_TESTKIT_DOCKER=0" };
  const engine = await dockerInfo();
  if (!engine.ok) return { ok: false, why: engine.why };
  let tc: TestcontainersModule;
  try {
    const name = "testcontainers"; // a variable, so the compiler does not require the optional package
    tc = (await import(name)) as TestcontainersModule;
  } catch {
    return {
      ok: false,
      why: "a Docker engine answers but the optional testcontainers package is not installed",
    };
  }
  return {
    ok: true,
    async start(image, command, port, ready, scheme) {
      say(`starting ${image} with testcontainers…`);
      let builder = new tc.GenericContainer(image)
        .withExposedPorts(port)
        .withWaitStrategy(tc.Wait.forLogMessage(ready));
      if (command.length > 0) builder = builder.withCommand(command);
      const container = await builder.start();
      return {
        url: `${scheme}://${container.getHost()}:${container.getMappedPort(port)}`,
        async stop() {
          await container.stop();
        },
      };
    },
  };
}

/** Whether a Docker engine answers, within 5 s. */
function dockerInfo(): Promise<{ ok: true } | { ok: false; why: string }> {
  return new Promise((resolve) => {
    const child = spawn("docker", ["info", "--format", "{{.ServerVersion}}"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.on("error", () => {
      clearTimeout(timer);
      resolve({ ok: false, why: "no docker command" });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ ok: true });
      else if (signal) resolve({ ok: false, why: "docker info did not answer within 5 s" });
      else
        resolve({
          ok: false,
          why: `no Docker engine (${stderr.trim().split("\n").pop() ?? `docker info exit ${code}`})`,
        });
    });
  });
}
