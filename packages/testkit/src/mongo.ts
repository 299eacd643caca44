import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import { installedBinary, mongoKind } from "./binaries.js";
import type { RunningServer } from "./nats.js";
import { ServerProcess, sleep } from "./process.js";
import { startOnPort } from "./start-on-port.js";

export interface StartMongoOptions {
  /** Port to listen on (127.0.0.1); default: a free one. */
  port?: number;
  /** Data directory (mongod dbpath or FerretDB's SQLite directory); default: a temporary one, removed by stop(). */
  dataDir?: string;
  /** How long to wait until a `ping` succeeds (default 60 s). */
  readyTimeoutMs?: number;
}

export interface RunningMongo extends RunningServer {
  /** Which server runs: mongod from PATH, else FerretDB on SQLite. */
  readonly kind: "mongod" | "ferretdb";
}

/**
 * Starts a real MongoDB-wire server on 127.0.0.1: `mongod` when it is on PATH, else FerretDB
 * (SQLite) built by scripts/install-ferretdb.mjs. Resolves once a client's `ping` succeeds.
 */
export async function startMongo(opts: StartMongoOptions = {}): Promise<RunningMongo> {
  const binary = await installedBinary("install-ferretdb.mjs");
  const kind = mongoKind(binary);
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), `ensemble-${kind}-`)));
  const temporary = opts.dataDir === undefined;
  try {
    return await startOnPort(opts.port, async (port) => {
      const args =
        kind === "mongod"
          ? ["--bind_ip", "127.0.0.1", "--port", String(port), "--dbpath", dataDir, "--quiet"]
          : ["-listen-addr", `127.0.0.1:${port}`, "-sqlite-dir", dataDir, "-log-level", "error"];
      const server = new ServerProcess(`${kind} (port ${port})`, binary, args);
      const url = `mongodb://127.0.0.1:${port}`;
      try {
        await waitForPing(server, url, opts.readyTimeoutMs ?? 60_000);
      } catch (err) {
        await server.stop();
        throw err;
      }
      return {
        url,
        port,
        dataDir,
        kind,
        process: server,
        async stop() {
          await server.stop();
          if (temporary) await rm(dataDir, { recursive: true, force: true });
        },
      };
    });
  } catch (err) {
    if (temporary) await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
}

/** Polls with a real client until `ping` answers, the server exits, or time runs out. */
async function waitForPing(server: ServerProcess, url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (!server.running) {
      const status = await server.exited;
      throw server.failure(
        `exited before it was ready (exit code ${status.code}, signal ${status.signal})`,
      );
    }
    const client = new MongoClient(url, {
      serverSelectionTimeoutMS: 1_000,
      connectTimeoutMS: 1_000,
      directConnection: true,
    });
    try {
      await client.connect();
      await client.db("admin").command({ ping: 1 });
      return;
    } catch (err) {
      lastError = err;
    } finally {
      await client.close().catch(() => undefined);
    }
    await sleep(100);
  }
  const why = lastError instanceof Error ? lastError.message : String(lastError);
  throw server.failure(`did not answer ping within ${timeoutMs} ms (last error: ${why})`);
}
