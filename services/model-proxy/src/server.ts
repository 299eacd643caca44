// build(deps): wires model-proxy's handlers into a kit server. Never listens, never starts
// timers: main.ts (or a test) decides where to listen and what runs in the background.
import {
  createServer,
  service,
  type KitServer,
  type Logger,
  type TokenVerifier,
} from "@ensemble/kit";
import { ModelProxyService } from "@ensemble/proto";
import { modelProxyHandlers, type ModelProxyDeps } from "./service.js";

export const SERVICE_NAME = "model-proxy";

export interface ModelProxyServerDeps extends ModelProxyDeps {
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
}

export function build(deps: ModelProxyServerDeps): KitServer {
  return createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    // Image inputs and generated images are large (ImagePart.data allows 20 MiB).
    maxMessageBytes: 32 * 1024 * 1024,
    services: [service(ModelProxyService, modelProxyHandlers(deps))],
  });
}
