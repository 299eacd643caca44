// A server binary run as a child process: its output is kept (the tail goes into error
// messages), readiness is awaited, stop() is SIGTERM then wait (SIGKILL after a timeout), and the
// child never outlives the process that started it.
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:net";

const OUTPUT_LIMIT = 64 * 1024;
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

// A watchdog per child covers the case no handler in this process can: being SIGKILLed (a
// crashed or killed vitest worker). It polls our pid and terminates the child once we are gone.
const WATCHDOG =
  'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -TERM "$2" 2>/dev/null; sleep 5; kill -0 "$2" 2>/dev/null && kill -KILL "$2"';

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // "exit" handlers must be synchronous: a kill is.
  process.on("exit", () => {
    for (const child of live) child.kill("SIGKILL");
  });
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class ServerProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<ExitStatus>;
  private text = "";
  private exitStatus: ExitStatus | undefined;
  private readonly watchdog: ChildProcess | undefined;
  private readonly lineListeners = new Set<(line: string) => void>();

  constructor(name: string, command: string, args: string[], env?: NodeJS.ProcessEnv) {
    installExitHook();
    this.name = name;
    this.child = spawn(command, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: env ?? process.env,
    });
    const pid = this.child.pid;
    // No pid: the spawn failed (ENOENT etc.), reported through "error" below.
    if (pid !== undefined) {
      live.add(this.child);
      this.watchdog = spawn("sh", ["-c", WATCHDOG, "sh", String(process.pid), String(pid)], {
        detached: true,
        stdio: "ignore",
      });
      this.watchdog.unref();
    }
    let partial = "";
    const onData = (chunk: string): void => {
      this.text = (this.text + chunk).slice(-OUTPUT_LIMIT);
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) for (const listener of this.lineListeners) listener(line);
    };
    this.child.stdout?.setEncoding("utf8").on("data", onData);
    this.child.stderr?.setEncoding("utf8").on("data", onData);
    this.exited = new Promise((resolve) => {
      const done = (status: ExitStatus): void => {
        if (this.exitStatus) return;
        this.exitStatus = status;
        live.delete(this.child);
        this.watchdog?.kill("SIGKILL");
        resolve(status);
      };
      this.child.once("exit", (code, signal) => done({ code, signal }));
      this.child.once("error", (err) => {
        this.text += `\n${err.message}`;
        done({ code: null, signal: null });
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitStatus === undefined;
  }

  /** The last lines of the server's output, for error messages. */
  output(lines = 20): string {
    return this.text.trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** Resolves when a line matches; rejects when the process exits first or time runs out. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<void> {
    if (pattern.test(this.text)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.lineListeners.delete(listener);
      };
      const listener = (line: string): void => {
        if (!pattern.test(line)) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(this.failure(`did not get ready within ${timeoutMs} ms`));
      }, timeoutMs);
      this.lineListeners.add(listener);
      void this.exited.then((status) => {
        cleanup();
        reject(this.failure(`exited before it was ready (${describe(status)})`));
      });
    });
  }

  /** An Error naming the server, what went wrong, and the tail of its output. */
  failure(what: string): Error {
    return new Error(`${this.name} ${what}; its last output:\n${this.output()}`);
  }

  /** SIGKILL (a crash: no drain, no cleanup), then wait for the exit. */
  async kill(): Promise<ExitStatus> {
    if (this.exitStatus) return this.exitStatus;
    this.child.kill("SIGKILL");
    return this.exited;
  }

  /** SIGTERM, then wait; SIGKILL if it has not exited after `timeoutMs`. */
  async stop(timeoutMs = 10_000): Promise<ExitStatus> {
    if (this.exitStatus) return this.exitStatus;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

function describe(status: ExitStatus): string {
  return status.signal ? `signal ${status.signal}` : `exit code ${status.code}`;
}

/**
 * Ports freePort hands out: below Linux's ephemeral range (32768-60999 by default), from which
 * the kernel picks the local port of every outgoing connection. A port from that range could be
 * taken by some client socket between being found free and the server binding it (seen in CI:
 * auth exiting with EADDRINUSE); one from here can only be taken by another test's server.
 */
const PORT_MIN = 20_000;
const PORT_MAX = 32_000;

async function bindable(port: number): Promise<boolean> {
  const server = createServer();
  server.listen(port, "127.0.0.1");
  try {
    await Promise.race([
      once(server, "listening"),
      once(server, "error").then(([err]) => Promise.reject(err as Error)),
    ]);
  } catch {
    return false;
  }
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return true;
}

/** A TCP port that was free a moment ago on 127.0.0.1, outside the ephemeral range. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = PORT_MIN + Math.floor(Math.random() * (PORT_MAX - PORT_MIN));
    if (await bindable(port)) return port;
  }
  throw new Error(`no free port found between ${PORT_MIN} and ${PORT_MAX}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
