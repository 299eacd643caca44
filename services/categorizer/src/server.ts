// build(deps): wires the categorizer's handlers into a kit server and follows the change notices
// that drop its caches (another replica's route change, the registry's catalog change). Never
// listens, never starts timers: main.ts (or a test) decides where to listen.
import {
  createServer,
  followingNotices,
  service,
  type KitServer,
  type Logger,
  type Metrics,
  type TokenVerifier,
} from "@ensemble/kit";
import { CategorizerService } from "@ensemble/proto";
import { categorizerHandlers, type CategorizerDeps } from "./service.js";

export const SERVICE_NAME = "categorizer";

export interface CategorizerServerDeps extends CategorizerDeps {
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
  metrics?: Metrics;
}

export function build(deps: CategorizerServerDeps): KitServer {
  const server = createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    // ClassifyRequest.text allows 1 MiB (plus attachments' MIME types): above the 4 MiB default
    // only with multi-byte text, but a refusal there should be ours, with a clear message.
    maxMessageBytes: 8 * 1024 * 1024,
    services: [service(CategorizerService, categorizerHandlers(deps))],
  });
  return followingNotices(server, [
    deps.notices.subscribe("routes", (n) => {
      deps.routes.forget(n.tenantId);
      deps.semantic?.forget(n.tenantId);
    }),
    deps.notices.subscribe("catalog", (n) => deps.catalog.forget(n.tenantId)),
  ]);
}
