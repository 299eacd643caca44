// The one root logger of a process. Request-scoped child loggers are made from it by the server
// pipeline; nothing else creates loggers (STYLE.md).
import { pino } from "pino";

export type Logger = pino.Logger;

/**
 * Field names whose values never reach a log line. Matched at the top level and up to three
 * levels deep, and inside arrays at those levels (pino's redaction works on explicit paths, so
 * "any depth" means the depths listed here).
 */
export const REDACTED_FIELDS = [
  "authorization",
  "Authorization",
  "cookie",
  "Cookie",
  "set-cookie",
  "password",
  "newPassword",
  "oldPassword",
  "token",
  "accessToken",
  "refreshToken",
  "idToken",
  "access_token",
  "refresh_token",
  "apiKey",
  "api_key",
  "x-api-key",
  "secret",
  "clientSecret",
  "client_secret",
  "key",
  "privateKey",
] as const;

function redactPaths(): string[] {
  const paths: string[] = [];
  for (const field of REDACTED_FIELDS) {
    // Bracket notation copes with hyphens in names such as "set-cookie".
    const f = /^[A-Za-z_$][\w$]*$/.test(field) ? field : `["${field}"]`;
    const dot = f.startsWith("[") ? "" : ".";
    paths.push(
      f,
      `*${dot}${f}`,
      `*.*${dot}${f}`,
      `*.*.*${dot}${f}`,
      `*[*]${dot}${f}`,
      `*.*[*]${dot}${f}`,
    );
  }
  // Common transport shapes spelled out, so they hold even if the wildcard rules change.
  paths.push(
    "req.headers.authorization",
    "req.headers.cookie",
    'res.headers["set-cookie"]',
    "headers.authorization",
    "metadata.authorization",
  );
  return paths;
}

export interface RootLoggerOptions {
  service: string;
  version: string;
  /** pino level name; default "info". */
  level?: string;
  /** Where lines go; default stdout. Tests pass an in-memory stream. */
  destination?: pino.DestinationStream;
}

export function createRootLogger(opts: RootLoggerOptions): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level ?? "info",
    base: { service: opts.service, version: opts.version, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: {
      // "level":"info" reads better in log search than the numeric 30.
      level: (label) => ({ level: label }),
    },
    redact: { paths: redactPaths(), censor: "[Redacted]" },
    serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
  };
  return opts.destination === undefined ? pino(options) : pino(options, opts.destination);
}
