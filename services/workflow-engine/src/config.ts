// The workflow engine's environment, parsed once at start-up (fails with every bad variable named).
import { baseEnv, flagSchema, loadConfig, portSchema } from "@ensemble/kit";
import { z } from "zod";

/** host:port; port 0 picks a free one. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, { message: "expected host:port" });
const positiveInt = z.coerce.number().int().positive();
const name = z.string().regex(/^[A-Za-z0-9_-]+$/);

export const workflowEnv = z.object({
  ...baseEnv,
  /** Where the gRPC server listens (the launcher derives WORKFLOW_ADDR from the name "workflow"). */
  WORKFLOW_ADDR: hostPort.default("127.0.0.1:50054"),
  METRICS_PORT: portSchema.default(9154),
  MONGODB_DB: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,63}$/)
    .default("ensemble_workflow"),
  AUTH_ADDR: hostPort.default("127.0.0.1:50051"),
  REGISTRY_ADDR: hostPort.default("127.0.0.1:50052"),
  MODEL_PROXY_ADDR: hostPort.default("127.0.0.1:50055"),
  /** The categorizer; unset = AUTO runs fail with FAILED_PRECONDITION. */
  CATEGORIZER_ADDR: hostPort.optional(),
  /** vector-search, for retrieve steps; unset = they fail with FAILED_PRECONDITION. */
  VECTOR_SEARCH_ADDR: hostPort.optional(),
  /**
   * The engine's bootstrap service credential (minted with auth's CLI). Steps call model-proxy
   * with short-lived service tokens acting for the run's user, issued with it, so a run outlives
   * the user's access token. Unset: steps use the token of the call that started the run (runs
   * then fail once it expires; fine for development only).
   */
  SERVICE_TOKEN: z.string().min(1).optional(),

  // ---- NATS
  /** JetStream stream of run events (subjects ensemble.runs.<tenant>.<run>.<event>). */
  RUN_EVENTS_STREAM: name.default("RUN_EVENTS"),
  /** Subject root of run events: <root>.<tenant>.<run>.<event>. */
  RUN_EVENTS_SUBJECT_ROOT: z
    .string()
    .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/)
    .default("ensemble.runs"),
  /** How long run events are kept (WatchRun replays them). */
  RUN_EVENTS_MAX_AGE_MS: positiveInt.default(7 * 24 * 3_600_000),
  /** JetStream work-queue stream of ready steps, and its durable consumer shared by replicas. */
  STEP_STREAM: name.default("WORKFLOW_STEPS"),
  STEP_CONSUMER: name.default("workflow-steps"),
  /** Subject prefix of step messages and of cancellation notices. */
  WORKFLOW_SUBJECT_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/)
    .default("ensemble.workflow"),
  /** A step not acked (nor kept alive by heartbeats) within this is redelivered. */
  STEP_ACK_WAIT_MS: positiveInt.default(30_000),
  /** Deliveries of a step message before the step is failed for good. */
  STEP_MAX_DELIVER: positiveInt.max(100).default(5),

  // ---- execution
  /** Steps one replica executes at the same time. */
  WORKER_CONCURRENCY: positiveInt.default(64),
  /** Steps of one tenant one replica executes at the same time (the per-tenant cap). */
  TENANT_MAX_PARALLEL: positiveInt.default(16),
  /** Steps of one run running at the same time when its workflow does not say (maxParallel 0). */
  RUN_MAX_PARALLEL: positiveInt.max(64).default(8),
  /** Per-attempt timeout of a step whose definition says 0. */
  STEP_TIMEOUT_MS: positiveInt.default(120_000),
  /**
   * Model (id or role alias) that writes a short user-facing explanation of a failed run; unset =
   * failed runs keep only their technical cause.
   */
  EXPLAINER_MODEL: z.string().min(1).max(128).optional(),
  /** How long the explainer may take before the run fails without an explanation. */
  EXPLAINER_TIMEOUT_MS: positiveInt.default(15_000),
  /** Deadline of a run whose spec sets none. */
  RUN_TIMEOUT_MS: positiveInt.default(3_600_000),
  /** How often every replica looks for runs in flight whose steps are neither queued nor done. */
  RECOVERY_INTERVAL_MS: positiveInt.default(30_000),
  /**
   * Ended runs older than this are deleted (with their artifacts and events, as DeleteRun does),
   * checked every RECOVERY_INTERVAL_MS; 0 = kept until deleted.
   */
  RUN_RETENTION_MS: z.coerce.number().int().min(0).default(0),

  // ---- schedules
  /** How often every replica looks for due schedules (it also wakes for the next one it knows). */
  SCHEDULE_TICK_MS: positiveInt.default(1_000),
  /**
   * How long a claimed occurrence may stay without its run (its replica died) before another
   * replica starts it.
   */
  SCHEDULE_CLAIM_GRACE_MS: positiveInt.default(30_000),
  /** A schedule's fires older than this are folded into a total and deleted (7 days). */
  SCHEDULE_FIRE_RETENTION_MS: positiveInt.default(7 * 24 * 3_600_000),
  /**
   * A schedule whose latest this many occurrences (kept ones, since it was last resumed) all
   * started no run pauses itself, and says why; 0 = never.
   */
  SCHEDULE_PAUSE_AFTER_FAILURES: z.coerce.number().int().min(0).default(5),

  // ---- webhooks
  /** The durable JetStream consumer (on RUN_EVENTS) every replica takes run endings from. */
  WEBHOOK_CONSUMER: name.default("webhooks"),
  /** model-proxy's JetStream stream of usage events, whose budget alerts webhooks deliver. */
  USAGE_STREAM: name.default("USAGE"),
  /** The durable consumer (on USAGE) every replica takes budget alerts from. */
  WEBHOOK_BUDGET_CONSUMER: name.default("webhooks-budget"),
  /**
   * Allow endpoints on http:// and on loopback, private and link-local addresses (development
   * and tests only: deliveries leave from inside the mesh's network).
   */
  WEBHOOK_ALLOW_PRIVATE: flagSchema,
  /** Delay before the first retry; later ones grow to 10 h (5 s, 1 min, 5 min, 30 min, 2 h, 5 h, 10 h). */
  WEBHOOK_RETRY_BASE_MS: positiveInt.default(5_000),
  /** Attempts of a delivery before it is given up (8: about 18 h with the default base). */
  WEBHOOK_MAX_ATTEMPTS: positiveInt.default(8),
  /** How often every replica looks for deliveries due again. */
  WEBHOOK_POLL_MS: positiveInt.default(5_000),
  /** Deliveries are kept this long (ListWebhookDeliveries). */
  WEBHOOK_DELIVERY_RETENTION_MS: positiveInt.default(7 * 24 * 3_600_000),
});

export type WorkflowConfig = z.output<typeof workflowEnv>;

export function loadWorkflowConfig(env: NodeJS.ProcessEnv = process.env): WorkflowConfig {
  return loadConfig(workflowEnv, env);
}
