import { pino, type DestinationStream, type Logger } from "pino";

export type LogLine = Record<string, unknown> & { level: number; msg?: string };

export interface CapturedLogs {
  /** A pino logger writing JSON lines into memory. */
  readonly logger: Logger;
  /** The in-memory destination, to pass to another pino logger (e.g. the kit's createRootLogger). */
  readonly destination: DestinationStream;
  /** Every line written so far, parsed. */
  lines(): LogLine[];
  /** Lines whose `msg` contains `text` (or matches it). */
  find(text: string | RegExp): LogLine[];
  /** Everything written, raw: assert that a secret never appears in any form. */
  text(): string;
  clear(): void;
}

/** Captures log lines for assertions: `const logs = captureLogs(); doThing(logs.logger); logs.find("started")`. */
export function captureLogs(opts: { level?: string } = {}): CapturedLogs {
  let raw: string[] = [];
  const destination: DestinationStream = {
    write(chunk: string) {
      raw.push(chunk);
    },
  };
  const logger = pino({ level: opts.level ?? "trace" }, destination);
  const lines = (): LogLine[] =>
    raw
      .join("")
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map((line) => JSON.parse(line) as LogLine);
  return {
    logger,
    destination,
    lines,
    find(text) {
      return lines().filter((line) => {
        const msg = typeof line.msg === "string" ? line.msg : "";
        return typeof text === "string" ? msg.includes(text) : text.test(msg);
      });
    },
    text: () => raw.join(""),
    clear() {
      raw = [];
    },
  };
}
