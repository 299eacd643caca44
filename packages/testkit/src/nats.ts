import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { installedBinary } from "./binaries.js";
import { ServerProcess } from "./process.js";
import { startOnPort } from "./start-on-port.js";

export interface StartNatsOptions {
  /** Port to listen on (127.0.0.1); default: a free one. */
  port?: number;
  /** JetStream store directory; default: a new temporary directory, removed by stop(). */
  dataDir?: string;
  /** Extra nats-server arguments. */
  args?: string[];
  /** How long to wait for "Server is ready" (default 30 s). */
  readyTimeoutMs?: number;
}

export interface RunningServer {
  /** nats://127.0.0.1:<port> or mongodb://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly process: ServerProcess;
  /** SIGTERM, wait for exit, remove the data directory if it was a temporary one. */
  stop(): Promise<void>;
}

/**
 * Starts a real nats-server with JetStream on 127.0.0.1 (the binary found or built by
 * scripts/install-nats.mjs) and resolves once it logs "Server is ready".
 */
export async function startNats(opts: StartNatsOptions = {}): Promise<RunningServer> {
  const binary = await installedBinary("install-nats.mjs");
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), "ensemble-nats-")));
  const temporary = opts.dataDir === undefined;
  try {
    return await startOnPort(opts.port, async (port) => {
      const args = [
        "-a",
        "127.0.0.1",
        "-p",
        String(port),
        "-js",
        "-sd",
        dataDir,
        ...(opts.args ?? []),
      ];
      const server = new ServerProcess(`nats-server (port ${port})`, binary, args);
      try {
        await server.waitForLine(/Server is ready/, opts.readyTimeoutMs ?? 30_000);
      } catch (err) {
        await server.stop();
        throw err;
      }
      return {
        url: `nats://127.0.0.1:${port}`,
        port,
        dataDir,
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
