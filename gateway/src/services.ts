// The services the gateway exposes: one row each. A service is routed when its address is
// configured; adding a service to the gateway is adding a row here (and its <NAME>_ADDR).
import type { DescService } from "@bufbuild/protobuf";
import {
  AuthService,
  CategorizerService,
  ModelProxyService,
  RegistryService,
  RunService,
  SessionService,
  VectorSearchService,
} from "@ensemble/proto";

export interface Upstream {
  /** Short name: metrics target, /health and /info keys. */
  name: string;
  /** The contracts it serves (every non-INTERNAL method is routed). */
  services: DescService[];
  /** host:port of the owning service. */
  address: string;
}

export interface UpstreamRow {
  name: string;
  services: DescService[];
  /** Environment variable holding the address. */
  addrVar: string;
}

export const UPSTREAMS: readonly UpstreamRow[] = [
  { name: "auth", services: [AuthService], addrVar: "AUTH_ADDR" },
  { name: "registry", services: [RegistryService], addrVar: "REGISTRY_ADDR" },
  { name: "model-proxy", services: [ModelProxyService], addrVar: "MODEL_PROXY_ADDR" },
  { name: "categorizer", services: [CategorizerService], addrVar: "CATEGORIZER_ADDR" },
  { name: "workflow", services: [RunService, SessionService], addrVar: "WORKFLOW_ADDR" },
  { name: "vector-search", services: [VectorSearchService], addrVar: "VECTOR_SEARCH_ADDR" },
];

/** The rows whose address is set in `env`. */
export function configuredUpstreams(env: Record<string, unknown>): Upstream[] {
  const out: Upstream[] = [];
  for (const row of UPSTREAMS) {
    const address = env[row.addrVar];
    if (typeof address === "string" && address !== "") {
      out.push({ name: row.name, services: row.services, address });
    }
  }
  return out;
}
