// The limiter lives in the service kit (@ensemble/kit, rate-limit.ts). This re-export only keeps
// `import type { RateLimiter } from "./rate-limit.js"` in server.ts compiling; once that import
// names @ensemble/kit, delete this file.
export type { RateDecision, RateLimiter } from "@ensemble/kit";
