// MongoDB through mongoose: one Connection per service, never mongoose's global default
// connection (a test can then hold several, and models are bound explicitly with
// `conn.model(...)`). Must also work against FerretDB: no multi-document transactions here or
// in callers.
import mongoose from "mongoose";
import { retryWithBackoff } from "./lifecycle.js";
import type { Logger } from "./logger.js";

export interface ConnectMongoOptions {
  /** mongodb:// or mongodb+srv:// URL (MONGODB_URL); may carry credentials. */
  url: string;
  /** Database name; default: the one in the URL path, else "test" (the driver's default). */
  dbName?: string;
  logger: Logger;
  /** Attempts before giving up at start-up; default 10 (about 30 s with backoff). */
  attempts?: number;
  /** Per-attempt server selection timeout; default 5000 ms. */
  serverSelectionTimeoutMS?: number;
}

/**
 * The bytes of a stored binary field: lean and raw driver reads give a BSON Binary (bytes in
 * `.buffer`), hydrated documents a Buffer.
 */
export function storedBytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (value !== null && typeof value === "object" && "buffer" in value) {
    const inner = value.buffer;
    if (inner instanceof Uint8Array) return inner;
  }
  throw new Error("stored value is not binary");
}

/** The host list of a MongoDB URL, without credentials, for logs and errors. */
export function mongoHosts(url: string): string {
  const m = /^mongodb(?:\+srv)?:\/\/(?:[^@/]*@)?([^/?]*)/.exec(url);
  return m?.[1] ?? "(unparseable MongoDB URL)";
}

/** Removes anything that looks like URL credentials, and the URL's password if echoed. */
function scrub(message: string, url: string): string {
  let out = message.replace(/\/\/[^/@\s]*@/g, "//***@");
  const userinfo = /^mongodb(?:\+srv)?:\/\/([^@/]*)@/.exec(url)?.[1];
  const password = userinfo?.split(":")[1];
  if (password !== undefined && password !== "") {
    out = out.split(password).join("***");
    const decoded = safeDecode(password);
    if (decoded !== "") out = out.split(decoded).join("***");
  }
  return out;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return "";
  }
}

/**
 * Opens a connection, retrying with backoff while the server is not reachable yet. Throws an
 * error naming the hosts (never credentials) after the last attempt. Logs disconnects and
 * reconnects for the life of the connection.
 */
export async function connectMongo(opts: ConnectMongoOptions): Promise<mongoose.Connection> {
  const hosts = mongoHosts(opts.url);
  const log = opts.logger.child({ component: "mongo", hosts });
  const attempts = opts.attempts ?? 10;
  let conn: mongoose.Connection;
  try {
    conn = await retryWithBackoff(
      async () => {
        const c = mongoose.createConnection(opts.url, {
          ...(opts.dbName === undefined ? {} : { dbName: opts.dbName }),
          serverSelectionTimeoutMS: opts.serverSelectionTimeoutMS ?? 5_000,
        });
        try {
          return await c.asPromise();
        } catch (err) {
          await c.close(true).catch(() => undefined);
          throw err;
        }
      },
      {
        attempts,
        initialDelayMs: 500,
        onRetry: (err, attempt, delayMs) =>
          log.warn(
            { attempt, attempts, delayMs, reason: scrub(errorMessage(err), opts.url) },
            "MongoDB not reachable yet; retrying",
          ),
      },
    );
  } catch (err) {
    throw new Error(
      `could not connect to MongoDB at ${hosts} after ${attempts} attempts: ${scrub(errorMessage(err), opts.url)}`,
    );
  }
  log.info({ db: conn.name }, "MongoDB connected");
  conn.on("disconnected", () =>
    closing.has(conn) ? log.info("MongoDB connection closed") : log.warn("MongoDB disconnected"),
  );
  conn.on("reconnected", () => log.info("MongoDB reconnected"));
  conn.on("error", (err: unknown) =>
    log.error({ reason: scrub(errorMessage(err), opts.url) }, "MongoDB connection error"),
  );
  return conn;
}

/** Connections being closed on purpose: their disconnect is no warning. */
const closing = new WeakSet<mongoose.Connection>();

/** Closes the connection (waits for in-flight operations; the shutdown timeout bounds it). */
export async function closeMongo(conn: mongoose.Connection): Promise<void> {
  if (conn.readyState === mongoose.ConnectionStates.disconnected) return;
  closing.add(conn);
  await conn.close();
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
