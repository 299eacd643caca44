import type { Principal } from "@ensemble/kit";
import type { KeyRules } from "./limits.js";
import type { GetUsageRequest, GetUsageResponse, UsageOperation } from "@ensemble/proto";

/** Who a budget check is for. */
export interface Caller {
  tenantId: string;
  userId: string;
  apiKeyId: string;
  /**
   * The caller's bearer token, forwarded to auth.GetBudget (a user may read the tenant's and
   * their own budget; a service acting for a user passes too). Never logged.
   */
  token: string;
}

/** One model call, as the ledger stores it. */
export interface LedgerEntry {
  /** Completion id ("chatcmpl-..."), unique. */
  id: string;
  tenantId: string;
  userId: string;
  apiKeyId: string;
  operation: UsageOperation;
  model: string;
  requestedModel: string;
  provider: string;
  deployment: string;
  inputTokens: number;
  outputTokens: number;
  /** Of inputTokens: read from / written to the provider's prompt cache. */
  cachedInputTokens: number;
  cacheWriteInputTokens: number;
  /** Of outputTokens: reasoning. */
  reasoningTokens: number;
  costUsd: number;
  latencyMs: number;
  ttftMs: number;
  time: Date;
  streaming: boolean;
  cacheHit: boolean;
  simulated: boolean;
  /** "OK" or the gRPC code name of a failed call. */
  status: string;
  runId: string;
  stepId: string;
  sessionId: string;
  attempt: number;
  idempotencyKey: string;
  metadata: Record<string, string>;
}

export interface Accounting {
  /**
   * Throws the kit's ResourceExhaustedError (the message says whose limit, tenant, user or API
   * key, the limit and the month's spend, never a token) when spend + estimatedCostUsd would
   * exceed the tenant's, the user's or the key's monthly limit (a limit of 0 blocks every call; estimatedCostUsd may
   * be 0). Warm path: no database and no network round trip.
   */
  checkBudget(caller: Caller, estimatedCostUsd: number): Promise<void>;
  /**
   * The limits of the API key the call was made with (undefined without one), from the same
   * cache as checkBudget. Throws PermissionDeniedError for a revoked or expired key.
   */
  apiKey(caller: Caller): Promise<KeyRules | undefined>;
  /**
   * Buffers a ledger entry and its usage event; returns at once. Entries with the same id, or
   * the same (tenant, run, step, attempt) when runId+stepId are set, or the same (tenant,
   * idempotencyKey) when set, are recorded once; a duplicate also does not add to spend.
   */
  record(entry: LedgerEntry): void;
  /**
   * GetUsage per the contract: a user sees their own usage; all_users or another user_id needs
   * the admin role (PermissionDeniedError). Tenant from the principal only.
   */
  getUsage(principal: Principal, req: GetUsageRequest): Promise<GetUsageResponse>;
  /**
   * Drops cached limits after auth's change notice: the tenant's and its users' budgets (no
   * `apiKeyId`), or one API key's rules. The next check asks auth.
   */
  forgetLimits(tenantId: string, apiKeyId?: string): void;
  /** Writes everything buffered (called on shutdown, and by tests); resolves when durable. */
  flush(): Promise<void>;
  /** Flushes, then stops the background work (the connections stay the caller's). */
  close(): Promise<void>;
}
