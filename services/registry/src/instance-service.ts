// Handlers for service instances. Register/Heartbeat/Deregister are INTERNAL (service tokens);
// ListInstances and WatchInstances are ADMIN (the console's cluster view).
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  InvalidArgumentError,
  loggerOf,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
  UnavailableError,
} from "@ensemble/kit";
import type { RegistryService } from "@ensemble/proto";
import type { InstanceStore } from "./instances.js";

type InstanceMethods =
  "registerInstance" | "heartbeat" | "deregisterInstance" | "listInstances" | "watchInstances";

/**
 * A service token names its service (`svc`); it may only act on instances of that service,
 * so one compromised service cannot pose as (or remove) another.
 */
function assertOwnService(ctx: HandlerContext, service: string): void {
  const principal = principalOf(ctx);
  if (principal.service !== undefined && principal.service !== service) {
    throw new PermissionDeniedError(
      `a token of service "${principal.service}" cannot act on instances of "${service}"`,
    );
  }
}

export function instanceHandlers(
  store: InstanceStore,
  /** Aborted when the server shuts down: open watch streams end with UNAVAILABLE. */
  closing: AbortSignal,
): Pick<ServiceImpl<typeof RegistryService>, InstanceMethods> {
  return {
    async registerInstance(req, ctx) {
      const instance = req.instance;
      if (instance === undefined) {
        throw new InvalidArgumentError("instance: value is required", { field: "instance" });
      }
      assertOwnService(ctx, instance.service);
      const stored = await store.register(instance);
      loggerOf(ctx).info(
        { service: stored.service, instanceId: stored.instanceId, address: stored.address },
        "instance registered",
      );
      return { instance: stored, ttlMs: store.ttlMs };
    },

    async heartbeat(req, ctx) {
      assertOwnService(ctx, req.service);
      const instance = await store.heartbeat(req.service, req.instanceId);
      return { instance, ttlMs: store.ttlMs };
    },

    async deregisterInstance(req, ctx) {
      assertOwnService(ctx, req.service);
      if (!(await store.deregister(req.service, req.instanceId))) {
        throw new NotFoundError(`instance ${req.service}/${req.instanceId} is not registered`);
      }
      loggerOf(ctx).info(
        { service: req.service, instanceId: req.instanceId },
        "instance deregistered",
      );
      return {};
    },

    async listInstances(req) {
      return { instances: await store.list(req.service) };
    },

    async *watchInstances(req, ctx) {
      const signal = AbortSignal.any([ctx.signal, closing]);
      for await (const event of store.watch(req.service, signal)) {
        yield event.instance === undefined
          ? { type: event.type }
          : { type: event.type, instance: event.instance };
      }
      if (closing.aborted) {
        throw new UnavailableError("registry shutting down; watch again");
      }
    },
  };
}
