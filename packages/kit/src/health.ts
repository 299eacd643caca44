// grpc.health.v1 (Check, Watch, List), served by every kit server through the same bridge as
// the business services. Kubernetes probes and the launcher ask "" (the whole server); a
// client may ask one service by its full name.
import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Health, HealthCheckResponse_ServingStatus as ServingStatus } from "@ensemble/proto";

export { ServingStatus };

export class HealthState {
  readonly #statuses = new Map<string, ServingStatus>();
  #waiters = new Set<() => void>();
  #closed = false;

  constructor(serviceNames: readonly string[]) {
    this.#statuses.set("", ServingStatus.SERVING);
    for (const name of serviceNames) this.#statuses.set(name, ServingStatus.SERVING);
  }

  get closed(): boolean {
    return this.#closed;
  }

  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  entries(): Array<[string, ServingStatus]> {
    return [...this.#statuses];
  }

  set(service: string, status: ServingStatus): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    this.#notify();
  }

  setAll(status: ServingStatus): void {
    for (const name of this.#statuses.keys()) this.#statuses.set(name, status);
    this.#notify();
  }

  /** Ends every Watch stream (after it has sent the latest status), so shutdown can drain. */
  close(): void {
    this.#closed = true;
    this.#notify();
  }

  /** Resolves on the next change, on close, or when the signal aborts. */
  changed(signal: AbortSignal): Promise<void> {
    if (this.#closed || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.#waiters.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      this.#waiters.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  #notify(): void {
    const waiters = this.#waiters;
    this.#waiters = new Set();
    for (const wake of waiters) wake();
  }
}

export function createHealthImpl(state: HealthState): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const status = state.get(req.service);
      if (status === undefined)
        throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
      return { status };
    },
    // Per the health protocol: send the current status at once, then every change; an unknown
    // service is SERVICE_UNKNOWN (not an error), since it may be registered later.
    async *watch(req, ctx) {
      let last: ServingStatus | undefined;
      for (;;) {
        const status = state.get(req.service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (status !== last) {
          last = status;
          yield { status };
        }
        if (state.closed || ctx.signal.aborted) return;
        await state.changed(ctx.signal);
      }
    },
    list() {
      return {
        statuses: Object.fromEntries(state.entries().map(([name, status]) => [name, { status }])),
      };
    },
  };
}
