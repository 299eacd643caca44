// Printing: tables and lines for people, JSON for scripts (--json). Progress and notices go to
// stderr so stdout holds only the result. Also the flag values several commands read alike
// (enumValue, keyValues).
import { durationMs, timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { UsageError } from "./session.js";

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

export class Output {
  readonly json: boolean;
  readonly io: Io;

  constructor(io: Io, json: boolean) {
    this.io = io;
    this.json = json;
  }

  /** The result: JSON (one document, pretty) with --json, else the human text. */
  result(value: unknown, human: () => string): void {
    if (this.json) this.io.stdout.write(JSON.stringify(value, null, 2) + "\n");
    else {
      const text = human();
      if (text !== "") this.io.stdout.write(text.endsWith("\n") ? text : text + "\n");
    }
  }

  /** One line of a stream (NDJSON with --json). */
  line(value: unknown): void {
    this.io.stdout.write(JSON.stringify(value) + "\n");
  }

  write(text: string): void {
    this.io.stdout.write(text);
  }

  notice(text: string): void {
    this.io.stderr.write(text.endsWith("\n") ? text : text + "\n");
  }

  get interactive(): boolean {
    return this.io.stderr.isTTY === true && !this.json;
  }
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  if (rows.length === 0) return "(none)";
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  return all
    .map((r) =>
      r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  "),
    )
    .join("\n");
}

export function when(ts: Timestamp | undefined): string {
  return ts === undefined
    ? "-"
    : timestampDate(ts)
        .toISOString()
        .replace(/\.\d+Z$/, "Z");
}

export function seconds(d: Duration | undefined): string {
  return d === undefined ? "-" : `${(durationMs(d) / 1000).toFixed(2)}s`;
}

export function usd(value: number): string {
  return `$${value.toFixed(value !== 0 && value < 0.01 ? 6 : 4)}`;
}

/** A size for people: 830 B, 12.4 KiB, 3.1 MiB. */
export function bytes(n: number | bigint): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A generated enum's value as a lower-case word (protobuf-es enums map numbers to short names). */
export function label(names: Record<number, string>, value: number): string {
  return (names[value] ?? String(value)).toLowerCase();
}

/** The enum value a flag names ("time-to-first-token" -> TIME_TO_FIRST_TOKEN); else a UsageError listing them. */
export function enumValue<E extends Record<string, string | number>>(
  e: E,
  flag: string,
  raw: string,
): number {
  const value = (e as Record<string, string | number>)[
    raw.trim().toUpperCase().replaceAll("-", "_")
  ];
  if (typeof value !== "number" || value === 0) {
    const names = Object.keys(e)
      .filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED")
      .map((k) => k.toLowerCase().replaceAll("_", "-"));
    throw new UsageError(`${flag} ${raw}: expected one of ${names.join(", ")}`);
  }
  return value;
}

/** Commander's way to let a flag repeat: each value is added to the list. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** What the API allows of a map of labels (its validation rules), checked before sending. */
export interface PairLimits {
  pairs: number;
  keyChars: number;
  valueChars: number;
}

/**
 * Repeated "key=value" flags (--var, --label) -> { key: value }; else a UsageError naming the
 * flag. With `limits` (labels): a key given twice, too many pairs or too long a key or value are
 * refused too, so that they are bad usage (exit 2) rather than an INVALID_ARGUMENT after sending.
 * Without (--var): a later pair replaces an earlier one of the same name.
 */
export function keyValues(
  flag: string,
  pairs: string[],
  limits?: PairLimits,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) {
      throw new UsageError(
        `${flag} ${pair}: expected ${limits === undefined ? "name=value" : "key=value, e.g. team=search"}`,
      );
    }
    const key = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    if (limits !== undefined) {
      if (Object.hasOwn(out, key)) {
        throw new UsageError(`${flag}: ${key} is given twice (a call holds one value per key)`);
      }
      if (key.length > limits.keyChars) {
        throw new UsageError(
          `${flag} ${key.slice(0, 40)}...: a key has at most ${limits.keyChars} characters`,
        );
      }
      if (value.length > limits.valueChars) {
        throw new UsageError(
          `${flag} ${key}=${value.slice(0, 20)}...: a value has at most ${limits.valueChars} characters`,
        );
      }
    }
    out[key] = value;
  }
  if (limits !== undefined && Object.keys(out).length > limits.pairs) {
    throw new UsageError(
      `${flag}: at most ${limits.pairs} labels (${Object.keys(out).length} given)`,
    );
  }
  return out;
}
