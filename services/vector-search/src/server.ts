// build(deps): wires vector-search's handlers into a kit server. Never listens, never starts
// timers: main.ts (or a test) decides where to listen and when to warm the indexes.
import {
  createServer,
  service,
  type KitServer,
  type Logger,
  type Metrics,
  type TokenVerifier,
} from "@ensemble/kit";
import { VectorSearchService } from "@ensemble/proto";
import { vectorSearchHandlers, type VectorSearchDeps } from "./service.js";

export const SERVICE_NAME = "vector-search";

export interface VectorSearchServerDeps extends VectorSearchDeps {
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
  metrics?: Metrics;
  /** Largest request or response (default 64 MiB: Upsert takes 1,000 documents). */
  maxMessageBytes?: number;
}

export function build(deps: VectorSearchServerDeps): KitServer {
  return createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    maxMessageBytes: deps.maxMessageBytes ?? 64 * 1024 * 1024,
    services: [service(VectorSearchService, vectorSearchHandlers(deps))],
  });
}
