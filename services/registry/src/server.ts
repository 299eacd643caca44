// build(deps): wires the registry's handlers into a kit server. Never listens, never starts
// timers: main.ts (or a test) decides where to listen and what runs in the background.
import {
  createServer,
  service,
  type KitServer,
  type Logger,
  type Metrics,
  type Notices,
  type TokenVerifier,
} from "@ensemble/kit";
import { RegistryService } from "@ensemble/proto";
import type { Connection } from "mongoose";
import { registryModels } from "./catalog.model.js";
import { catalogHandlers, createCatalog, type Catalog } from "./catalog-service.js";
import { instanceHandlers } from "./instance-service.js";
import type { InstanceStore } from "./instances.js";
import { pluginHandlers, PluginStore } from "./plugin-service.js";

export const SERVICE_NAME = "registry";

export interface RegistryDeps {
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
  metrics?: Metrics;
  /** The registry's MongoDB connection (indexes ensured by the caller, see ensureIndexes). */
  mongo: Connection;
  instances: InstanceStore;
  /** Change notices to the replicas that cache the catalog (model-proxy). */
  notices: Notices;
  /** Lease of a plugin registration that asks for none (ttl_ms 0). */
  pluginTtlMs?: number;
}

export interface RegistryServer extends KitServer {
  readonly catalog: Catalog;
  readonly plugins: PluginStore;
}

export function build(deps: RegistryDeps): RegistryServer {
  const models = registryModels(deps.mongo);
  const catalog = createCatalog(models);
  const plugins = new PluginStore(models.plugins, deps.pluginTtlMs);
  // Watch streams never end on their own; shutdown ends them (UNAVAILABLE, "watch again") so
  // the drain is not held open by them and their clients move to another replica.
  const closing = new AbortController();

  const server = createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    services: [
      service(RegistryService, {
        ...catalogHandlers(catalog, deps.notices),
        ...pluginHandlers(plugins),
        ...instanceHandlers(deps.instances, closing.signal),
      }),
    ],
  });

  return {
    grpc: server.grpc,
    catalog,
    plugins,
    listen: (address) => server.listen(address),
    setServing: (serving) => server.setServing(serving),
    async shutdown(opts) {
      // NOT_SERVING first, so probes and balancers see it before any stream is cut.
      server.setServing(false);
      closing.abort();
      await server.shutdown(opts);
    },
  };
}
