// What tests and benchmarks use to run a gateway in-process.
export { build, type Gateway, type GatewayDeps } from "./server.js";
export { configuredUpstreams, UPSTREAMS, type Upstream, type UpstreamRow } from "./services.js";
export {
  openKvRateLimiter,
  LocalBuckets,
  type RateLimiter,
  type RateDecision,
} from "@ensemble/kit";
export { loadGatewayConfig, gatewayEnv, type GatewayConfig } from "./config.js";
export { VERSION } from "./version.js";
