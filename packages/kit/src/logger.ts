// The one root logger of a process. Request-scoped child loggers are made from it by the server
// pipeline; nothing else creates loggers (STYLE.md).
import { pino } from "pino";

export type Logger = pino.Logger;

/**
 * Field names whose values never reach a log line. Matched at the top level and up to three
 * levels deep, and inside arrays at those levels (each object key or array index is a level);
 * deeper than that is not searched, so log ids, not whole objects that may carry credentials.
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

const CENSOR = "[Redacted]";
const REDACTED = new Set<string>(REDACTED_FIELDS);
/** Keys are checked in objects up to this many levels below a line's top level (keys or indexes). */
const MAX_REDACT_DEPTH = 3;

// Why not pino's `redact` option: pino redacts explicit paths, so "any of these names, up to
// three levels deep" needs ~130 wildcard paths, and pino runs every top-level value of every
// line and every child-logger binding (request ids, method names) through all of them, parsing
// the paths again each time. That was the largest share of the server's per-call cost. The
// walk below gives the same guarantee in one pass: it looks only at object keys, at most
// MAX_REDACT_DEPTH levels down, and copies an object only when something in it is censored
// (what the caller logged is never modified).

/** `value` with the redacted fields of objects `level`..MAX_REDACT_DEPTH censored. */
function redactBelow(value: unknown, level: number): unknown {
  if (level > MAX_REDACT_DEPTH || typeof value !== "object" || value === null) return value;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      const redacted = redactBelow(item, level + 1);
      if (redacted !== item) {
        copy ??= value.slice();
        copy[i] = redacted;
      }
    }
    return copy ?? value;
  }
  // What JSON.stringify writes for it comes from toJSON (Date, Buffer, documents): leave it.
  if (typeof (value as { toJSON?: unknown }).toJSON === "function") return value;
  return redactKeys(value as Record<string, unknown>, level);
}

/** The object's own enumerable fields (what JSON holds) with secrets censored; copy on write. */
function redactKeys(
  obj: Record<string, unknown>,
  level: number,
  skip?: ReadonlySet<string>,
): Record<string, unknown> {
  let copy: Record<string, unknown> | undefined;
  for (const key in obj) {
    if (!Object.prototype.hasOwnProperty.call(obj, key)) continue;
    const item = obj[key];
    let redacted: unknown;
    if (REDACTED.has(key)) redacted = item === undefined ? item : CENSOR;
    else if (skip?.has(key) === true) continue;
    else redacted = redactBelow(item, level + 1);
    if (redacted !== item) {
      copy ??= ownFields(obj);
      copy[key] = redacted;
    }
  }
  return copy ?? obj;
}

function ownFields(obj: Record<string, unknown>): Record<string, unknown> {
  const copy: Record<string, unknown> = {};
  for (const key in obj) {
    if (Object.prototype.hasOwnProperty.call(obj, key)) copy[key] = obj[key];
  }
  return copy;
}

// Fields that have a serializer are redacted after it ran (an error's own fields show up only
// in its serialized form), as pino's redaction did.
const SERIALIZED_FIELDS: ReadonlySet<string> = new Set(["err", "error"]);

function redactLine(obj: Record<string, unknown>): Record<string, unknown> {
  return redactKeys(obj, 0, SERIALIZED_FIELDS);
}

function serializeError(value: unknown): unknown {
  return redactBelow(pino.stdSerializers.err(value as Error), 1);
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
      log: redactLine,
      bindings: redactLine,
    },
    hooks: {
      // Objects interpolated into the message ("%o", "%j") are redacted too.
      logMethod(args, method) {
        const first = 0 + (typeof args[0] === "object" && args[0] !== null ? 1 : 0);
        for (let i = first + 1; i < args.length; i++) {
          const arg: unknown = args[i];
          if (typeof arg === "object" && arg !== null) args[i] = redactBelow(arg, 0);
        }
        method.apply(this, args);
      },
    },
    serializers: { err: serializeError, error: serializeError },
  };
  const logger = opts.destination === undefined ? pino(options) : pino(options, opts.destination);
  // pino applies formatters.bindings to the root's bindings only; child bindings are redacted
  // here. Children are made with Object.create(parent), so every descendant inherits this.
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with each logger as `this`
  const baseChild = logger.child;
  logger.child = function child(this: Logger, bindings, childOptions) {
    return baseChild.call(this, redactLine(bindings), childOptions);
  } as Logger["child"];
  return logger;
}
