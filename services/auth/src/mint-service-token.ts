#!/usr/bin/env node
// Mints a long-lived bootstrap service credential:
//   node services/auth/dist/src/mint-service-token.js --service <name> [--ttl 30d]
// Signs with auth's current key read from MongoDB (same MONGODB_URL, MONGODB_DB and
// AUTH_KEY_ENCRYPTION_SECRET as auth) and records the expiry on the key, so the key's public
// half stays in the JWKS until the credential expires. Prints the token only (stdout); logs go
// to stderr at warn level and never contain it.
import { parseArgs } from "node:util";
import { closeMongo, ConfigError, connectMongo, createRootLogger, loadConfig } from "@ensemble/kit";
import { z } from "zod";
import { authModels } from "./auth.model.js";
import { keyEnv } from "./config.js";
import { keyStoreFrom } from "./setup.js";
import { VERSION } from "./version.js";

const USAGE = "usage: mint-service-token --service <name> [--ttl 30d]  (ttl units: s, m, h, d)";

export function parseTtl(text: string): number {
  const m = /^(\d+)([smhd])$/.exec(text.trim());
  if (m === null) throw new Error(`bad --ttl ${JSON.stringify(text)}; ${USAGE}`);
  const unit = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit;
}

async function run(): Promise<void> {
  const { values } = parseArgs({
    options: { service: { type: "string" }, ttl: { type: "string", default: "30d" } },
    strict: true,
  });
  const name = values.service ?? "";
  if (!/^[a-z][a-z0-9-]{0,62}$/.test(name)) {
    throw new Error(`--service must be a service name like "gateway"; ${USAGE}`);
  }
  const config = loadConfig(z.object({ ...keyEnv, LOG_LEVEL: z.string().default("warn") }));
  const ttlMs = parseTtl(values.ttl);
  const maxMs = config.AUTH_SERVICE_CREDENTIAL_MAX_DAYS * 86_400_000;
  if (ttlMs > maxMs) {
    throw new Error(
      `--ttl is above AUTH_SERVICE_CREDENTIAL_MAX_DAYS (${config.AUTH_SERVICE_CREDENTIAL_MAX_DAYS}d)`,
    );
  }
  const logger = createRootLogger({
    service: "auth-mint-service-token",
    version: VERSION,
    level: "warn",
    destination: process.stderr,
  });
  const mongo = await connectMongo({ url: config.MONGODB_URL, dbName: config.MONGODB_DB, logger });
  try {
    const keys = keyStoreFrom(
      config,
      authModels(mongo),
      // Only the short-token bound matters here; it matches auth's defaults.
      {
        accessTokenTtlMs: 15 * 60_000,
        refreshTokenTtlMs: 0,
        serviceTokenTtlMs: 15 * 60_000,
        serviceTokenMaxTtlMs: 60 * 60_000,
      },
      logger,
    );
    const { token } = await keys.signLongLived(
      { sub: name, tid: "", roles: [], typ: "service", svc: name },
      ttlMs,
    );
    process.stdout.write(`${token}\n`);
  } finally {
    await closeMongo(mongo);
  }
}

run().catch((err: unknown) => {
  const message = err instanceof ConfigError || err instanceof Error ? err.message : String(err);
  process.stderr.write(`mint-service-token: ${message}\n`);
  process.exit(1);
});
