// Start-up pieces shared by main.ts and the minting CLI: the key store from configuration.
import type { Logger } from "@ensemble/kit";
import type { AuthModels } from "./auth.model.js";
import { keyEncryptionSecret } from "./config.js";
import type { AuthSettings } from "./core.js";
import { KeyStore } from "./signing-keys.js";

/** Short-lived service tokens: 15 minutes unless asked otherwise, never above an hour. */
export const SERVICE_TOKEN_TTL_MS = 15 * 60_000;
export const SERVICE_TOKEN_MAX_TTL_MS = 60 * 60_000;

export function settingsFrom(config: {
  AUTH_ACCESS_TOKEN_TTL_MINUTES: number;
  AUTH_REFRESH_TOKEN_TTL_DAYS: number;
}): AuthSettings {
  return {
    accessTokenTtlMs: config.AUTH_ACCESS_TOKEN_TTL_MINUTES * 60_000,
    refreshTokenTtlMs: config.AUTH_REFRESH_TOKEN_TTL_DAYS * 24 * 3600_000,
    serviceTokenTtlMs: SERVICE_TOKEN_TTL_MS,
    serviceTokenMaxTtlMs: SERVICE_TOKEN_MAX_TTL_MS,
  };
}

export function keyStoreFrom(
  config: {
    NODE_ENV: string;
    AUTH_KEY_ENCRYPTION_SECRET?: string | undefined;
    JWT_ISSUER: string;
    JWT_AUDIENCE: string;
  },
  models: AuthModels,
  settings: AuthSettings,
  logger: Logger,
): KeyStore {
  const { secret, isDevDefault } = keyEncryptionSecret(config);
  if (isDevDefault) {
    logger.warn(
      "AUTH_KEY_ENCRYPTION_SECRET is not set: signing keys are encrypted with the PUBLIC " +
        "DEVELOPMENT DEFAULT. Anyone with the database can sign tokens. Never run like this " +
        "outside development (NODE_ENV=production refuses to start).",
    );
  }
  return new KeyStore({
    models,
    secret,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    logger,
    // Retired keys stay published for the longest token signed without being recorded.
    maxShortTokenLifetimeMs: Math.max(settings.accessTokenTtlMs, settings.serviceTokenMaxTtlMs),
  });
}
