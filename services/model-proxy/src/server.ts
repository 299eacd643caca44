// build(deps): wires model-proxy's handlers into a kit server and follows the change notices that
// drop its caches (auth's key, budget and settings changes, the registry's catalog changes), so
// a revoked key, a new budget, guardrails or a disabled model apply to the next call. Never
// listens, never starts timers: main.ts (or a test) decides where to listen and what runs in the
// background.
import {
  createServer,
  followingNotices,
  service,
  type KitServer,
  type Logger,
  type Notices,
  type TokenVerifier,
} from "@ensemble/kit";
import { ModelProxyService } from "@ensemble/proto";
import { modelProxyHandlers, type ModelProxyDeps } from "./service.js";

export const SERVICE_NAME = "model-proxy";

export interface ModelProxyServerDeps extends ModelProxyDeps {
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
  notices: Notices;
}

export function build(deps: ModelProxyServerDeps): KitServer {
  const server = createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    // Image inputs and generated images are large (ImagePart.data allows 20 MiB).
    maxMessageBytes: 32 * 1024 * 1024,
    services: [service(ModelProxyService, modelProxyHandlers(deps))],
  });
  return followingNotices(server, [
    deps.notices.subscribe("api-key", (n) => deps.accounting.forgetLimits(n.tenantId, n.id)),
    deps.notices.subscribe("tenant", (n) => {
      deps.accounting.forgetLimits(n.tenantId);
      deps.tenantSettings.forget(n.tenantId);
    }),
    deps.notices.subscribe("catalog", (n) => deps.catalog.forget(n.tenantId)),
  ]);
}
