// Child processes for the launcher: each runs in its own process group (a Ctrl-C in the terminal
// reaches only the launcher, which then stops services before infrastructure), its output is
// printed line by line with its name in front, its last lines are kept for error messages, and
// it never outlives the launcher (exit hook, plus a watchdog for when the launcher is SIGKILLed).
import { spawn } from "node:child_process";

const WATCHDOG =
  'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -TERM "$2" 2>/dev/null; sleep 5; kill -0 "$2" 2>/dev/null && kill -KILL "$2"';

/** @type {Set<import("node:child_process").ChildProcess>} */
const live = new Set();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

const color = process.stdout.isTTY && !process.env.NO_COLOR;
/** @param {string} code @param {string} text */
const paint = (code, text) => (color ? `\x1b[${code}m${text}\x1b[0m` : text);
const PALETTE = ["36", "35", "34", "32", "33", "96", "95", "94"];
/** @type {Record<number, string>} */
const LEVELS = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };
const QUIET_FIELDS = new Set(["level", "time", "pid", "hostname", "msg", "service", "version"]);

/**
 * A pino JSON line as "12:00:01 INFO  message {extra fields}"; anything else unchanged.
 * @param {string} line
 */
export function prettyLine(line) {
  if (!line.startsWith("{")) return line;
  /** @type {unknown} */
  let parsed;
  try {
    parsed = JSON.parse(line);
  } catch {
    return line;
  }
  if (typeof parsed !== "object" || parsed === null || !("level" in parsed)) return line;
  const record = /** @type {Record<string, unknown>} */ (parsed);
  // pino writes numeric levels and epoch-ms times by default; services may log labels and ISO times.
  const level =
    typeof record.level === "number"
      ? (LEVELS[record.level] ?? String(record.level))
      : String(record.level).toUpperCase();
  const when =
    typeof record.time === "number" || typeof record.time === "string"
      ? new Date(record.time)
      : undefined;
  const time = when && !Number.isNaN(when.getTime()) ? when.toTimeString().slice(0, 8) : "";
  const extra = Object.fromEntries(
    Object.entries(record).filter(([key]) => !QUIET_FIELDS.has(key)),
  );
  const levelText = level.padEnd(5);
  const coloredLevel =
    level === "ERROR" || level === "FATAL"
      ? paint("31", levelText)
      : level === "WARN"
        ? paint("33", levelText)
        : levelText;
  const rest = Object.keys(extra).length > 0 ? " " + paint("90", JSON.stringify(extra)) : "";
  return `${time} ${coloredLevel} ${typeof record.msg === "string" ? record.msg : ""}${rest}`;
}

let colorIndex = 0;
const PREFIX_WIDTH = 16;

export class Child {
  /**
   * @param {string} name
   * @param {string} command
   * @param {string[]} args
   * @param {{ env?: NodeJS.ProcessEnv; cwd?: string }} [opts]
   */
  constructor(name, command, args, opts = {}) {
    this.name = name;
    /** @type {string[]} */
    this.recent = [];
    /** @type {((line: string) => void)[]} */
    this.listeners = [];
    /** @type {{ code: number | null; signal: NodeJS.Signals | null } | undefined} */
    this.exitStatus = undefined;
    const prefix = paint(
      PALETTE[colorIndex++ % PALETTE.length] ?? "36",
      name.padEnd(PREFIX_WIDTH) + "|",
    );
    this.process = spawn(command, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const pid = this.process.pid;
    if (pid !== undefined) {
      live.add(this.process);
      this.watchdog = spawn("sh", ["-c", WATCHDOG, "sh", String(process.pid), String(pid)], {
        detached: true,
        stdio: "ignore",
      });
      this.watchdog.unref();
    }
    /** @param {NodeJS.ReadableStream} stream */
    const pump = (stream) => {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (/** @type {string} */ chunk) => {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop() ?? "";
        for (const line of lines) this.line(line, prefix);
      });
      stream.on("end", () => {
        if (partial) this.line(partial, prefix);
      });
    };
    if (this.process.stdout) pump(this.process.stdout);
    if (this.process.stderr) pump(this.process.stderr);
    /** @type {Promise<{ code: number | null; signal: NodeJS.Signals | null }>} */
    this.exited = new Promise((resolve) => {
      /** @param {{ code: number | null; signal: NodeJS.Signals | null }} status */
      const done = (status) => {
        if (this.exitStatus) return;
        this.exitStatus = status;
        live.delete(this.process);
        this.watchdog?.kill("SIGKILL");
        resolve(status);
      };
      this.process.once("exit", (code, signal) => done({ code, signal }));
      this.process.once("error", (err) => {
        this.line(`cannot start ${command}: ${err.message}`, prefix);
        done({ code: null, signal: null });
      });
    });
  }

  /** @param {string} line @param {string} prefix */
  line(line, prefix) {
    if (line.trim() === "") return;
    this.recent.push(line);
    if (this.recent.length > 40) this.recent.shift();
    process.stdout.write(`${prefix} ${prettyLine(line)}\n`);
    for (const listener of this.listeners) listener(line);
  }

  get running() {
    return this.exitStatus === undefined;
  }

  /** The last lines it printed, for an error message. */
  lastLines(n = 15) {
    if (this.recent.length === 0) return "  (it printed nothing)";
    return this.recent
      .slice(-n)
      .map((line) => `  ${this.name}| ${line}`)
      .join("\n");
  }

  /**
   * Resolves when a line matches; rejects when it exits first or time runs out.
   * @param {RegExp} pattern
   * @param {number} timeoutMs
   * @returns {Promise<void>}
   */
  waitForLine(pattern, timeoutMs) {
    if (this.recent.some((line) => pattern.test(line))) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${this.name} did not get ready within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.listeners.push((line) => {
        if (pattern.test(line)) {
          clearTimeout(timer);
          resolve();
        }
      });
      void this.exited.then((status) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited before it was ready (${describeExit(status)})`));
      });
    });
  }

  /**
   * SIGTERM, wait; SIGKILL after `timeoutMs`.
   * @param {number} timeoutMs
   */
  async stop(timeoutMs) {
    if (!this.running) return this.exited;
    this.process.kill("SIGTERM");
    const timer = setTimeout(() => {
      process.stderr.write(`${this.name} did not stop within ${timeoutMs} ms: killing it\n`);
      this.process.kill("SIGKILL");
    }, timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** @param {{ code: number | null; signal: NodeJS.Signals | null }} status */
export function describeExit(status) {
  return status.signal ? `killed by ${status.signal}` : `exit code ${status.code}`;
}
