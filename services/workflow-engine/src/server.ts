// build(deps): wires the workflow engine's handlers into a kit server. Never listens, never
// starts the engine's workers: main.ts (or a test) decides that.
import {
  createServer,
  service,
  type KitServer,
  type Logger,
  type Metrics,
  type TokenVerifier,
} from "@ensemble/kit";
import { RunService, SessionService } from "@ensemble/proto";
import { runHandlers, type RunServiceDeps } from "./service.js";
import { sessionHandlers, type SessionServiceDeps } from "./sessions.js";

export const SERVICE_NAME = "workflow";

export interface WorkflowServerDeps extends RunServiceDeps {
  version: string;
  logger: Logger;
  verifier: TokenVerifier;
  metrics?: Metrics;
  /** SessionService (served when its store is given). */
  sessions?: SessionServiceDeps["sessions"];
  autoAvailable?: boolean;
  fallbackModel?: string;
}

export function build(deps: WorkflowServerDeps): KitServer {
  return createServer({
    name: SERVICE_NAME,
    version: deps.version,
    logger: deps.logger,
    verifier: deps.verifier,
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
    // Inline workflows and image attachments can be large.
    maxMessageBytes: 32 * 1024 * 1024,
    services: [
      service(RunService, runHandlers(deps)),
      ...(deps.sessions !== undefined
        ? [
            service(
              SessionService,
              sessionHandlers({
                ...deps,
                sessions: deps.sessions,
                autoAvailable: deps.autoAvailable ?? false,
              }),
            ),
          ]
        : []),
    ],
  });
}
