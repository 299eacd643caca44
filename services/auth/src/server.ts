// build(deps): wires auth's handlers into a kit server. Never listens and starts no timers:
// main.ts (or a test) decides where to listen and what runs in the background.
import {
  createServer,
  service,
  type KitServer,
  type Logger,
  type Metrics,
  type Notices,
  type TokenVerifier,
} from "@ensemble/kit";
import { AuthService } from "@ensemble/proto";
import { accountHandlers } from "./account-service.js";
import { adminHandlers } from "./admin-service.js";
import { apiKeyHandlers } from "./api-key-service.js";
import type { AuthModels } from "./auth.model.js";
import { budgetHandlers } from "./budget-service.js";
import type { AuthCore, AuthSettings } from "./core.js";
import { LoginThrottle, type ThrottleOptions } from "./login-throttle.js";
import type { PasswordHasher } from "./secrets.js";
import type { KeyStore } from "./signing-keys.js";
import { tokenHandlers } from "./token-service.js";

export const SERVICE_NAME = "auth";

export interface AuthDeps {
  version: string;
  logger: Logger;
  /** Verifies callers' tokens (normally against auth's own JWKS endpoint). */
  verifier: TokenVerifier;
  metrics?: Metrics;
  models: AuthModels;
  keys: KeyStore;
  hasher: PasswordHasher;
  settings: AuthSettings;
  throttle: ThrottleOptions;
  /** Change notices to the replicas that cache what auth owns (packages/kit notices). */
  notices: Notices;
}

export function build(deps: AuthDeps): KitServer {
  const core: AuthCore = {
    models: deps.models,
    keys: deps.keys,
    hasher: deps.hasher,
    throttle: new LoginThrottle(deps.models, deps.throttle),
    settings: deps.settings,
    logger: deps.logger,
    notices: deps.notices,
  };
  return createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    services: [
      service(AuthService, {
        ...accountHandlers(core),
        ...apiKeyHandlers(core),
        ...tokenHandlers(core),
        ...adminHandlers(core),
        ...budgetHandlers(core),
      }),
    ],
  });
}
