// Usage (tokens and cost) arithmetic shared by the services and the gateway.
import { create } from "@bufbuild/protobuf";
import { UsageSchema, type Usage } from "@ensemble/proto";

/** The sum of two usages (either may be absent). */
export function addUsage(a: Usage | undefined, b: Usage | undefined): Usage {
  return create(UsageSchema, {
    inputTokens: (a?.inputTokens ?? 0n) + (b?.inputTokens ?? 0n),
    outputTokens: (a?.outputTokens ?? 0n) + (b?.outputTokens ?? 0n),
    totalTokens: (a?.totalTokens ?? 0n) + (b?.totalTokens ?? 0n),
    costUsd: (a?.costUsd ?? 0) + (b?.costUsd ?? 0),
    cachedInputTokens: (a?.cachedInputTokens ?? 0n) + (b?.cachedInputTokens ?? 0n),
    cacheWriteInputTokens: (a?.cacheWriteInputTokens ?? 0n) + (b?.cacheWriteInputTokens ?? 0n),
    reasoningTokens: (a?.reasoningTokens ?? 0n) + (b?.reasoningTokens ?? 0n),
  });
}
