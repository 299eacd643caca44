// Per-call values. The server pipeline puts them in two places: the Connect HandlerContext
// (`ctx.values`, for handlers) and an AsyncLocalStorage (for code deep below a handler that has
// no ctx, and for createClient, which propagates request id, trace context and deadline from it).
import { AsyncLocalStorage } from "node:async_hooks";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Context as TraceContext } from "@opentelemetry/api";
import { pino } from "pino";
import type { Principal } from "./auth.js";
import { UnauthenticatedError } from "./errors.js";
import type { Logger } from "./logger.js";

// A handler run outside the kit server (a unit test calling the impl directly) still gets a
// working logger; it just writes nothing.
const silentLogger: Logger = pino({ enabled: false });

export const principalKey = createContextKey<Principal | undefined>(undefined, {
  description: "verified caller",
});
export const requestIdKey = createContextKey<string>("", { description: "request id" });
export const loggerKey = createContextKey<Logger>(silentLogger, {
  description: "request-scoped logger",
});

/** The verified caller; throws UnauthenticatedError on a PUBLIC method called without a token. */
export function principalOf(ctx: HandlerContext): Principal {
  const principal = ctx.values.get(principalKey);
  if (principal === undefined) throw new UnauthenticatedError("no verified caller for this call");
  return principal;
}

export function loggerOf(ctx: HandlerContext): Logger {
  return ctx.values.get(loggerKey);
}

export function requestIdOf(ctx: HandlerContext): string {
  return ctx.values.get(requestIdKey);
}

/** What the AsyncLocalStorage holds for the call being served. */
export interface CallInfo {
  requestId: string;
  /** "/package.Service/Method" */
  method: string;
  principal?: Principal;
  /** When the caller stops waiting; outgoing calls never get a later deadline. */
  deadline?: Date;
  /** The incoming `authorization` value, for a service that must act with the caller's token. */
  authorization?: string;
  logger: Logger;
  /** The caller's trace context (W3C), so outgoing calls continue the same trace. */
  traceContext?: TraceContext;
}

const callStorage = new AsyncLocalStorage<CallInfo>();

export function currentCall(): CallInfo | undefined {
  return callStorage.getStore();
}

/** Runs fn with `call` as the current call (used by the server pipeline). */
export function runInCall<T>(call: CallInfo, fn: () => T): T {
  return callStorage.run(call, fn);
}

/**
 * Runs fn outside any call: background work started by a handler (a run that outlives the
 * request) must not inherit the request's deadline or request id.
 */
export function withoutCall<T>(fn: () => T): T {
  return callStorage.exit(fn);
}
