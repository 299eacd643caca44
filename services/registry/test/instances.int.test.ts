import { Code } from "@connectrpc/connect";
import { InstanceEventType, type WatchInstancesResponse } from "@ensemble/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rejection, startRegistry, type Harness } from "./harness.js";

const TTL_MS = 1_500;

let h: Harness;

beforeAll(async () => {
  h = await startRegistry({ instanceTtlMs: TTL_MS });
});

afterAll(async () => {
  await h?.close();
});

function instance(service: string, instanceId: string) {
  return {
    service,
    instanceId,
    address: `10.0.0.1:${50000 + instanceId.length}`,
    version: "1.2.3",
    metadata: { zone: "a" },
  };
}

/** Collects watch events in the background; `next(pred)` waits for the first matching one. */
function collect(stream: AsyncIterable<WatchInstancesResponse>) {
  const events: WatchInstancesResponse[] = [];
  const waiters: Array<() => void> = [];
  let failure: unknown;
  const done = (async () => {
    try {
      for await (const event of stream) {
        events.push(event);
        for (const w of waiters.splice(0)) w();
      }
    } catch (err) {
      failure = err;
      for (const w of waiters.splice(0)) w();
    }
  })();
  return {
    events,
    done,
    async next(
      pred: (e: WatchInstancesResponse) => boolean,
      timeoutMs: number,
    ): Promise<WatchInstancesResponse> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = events.find(pred);
        if (found) return found;
        if (failure !== undefined) throw failure as Error;
        const left = deadline - Date.now();
        if (left <= 0)
          throw new Error(
            `no matching watch event within ${timeoutMs} ms; got ${JSON.stringify(events.map((e) => [e.type, e.instance?.instanceId]))}`,
          );
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
    },
  };
}

describe("registry instances", () => {
  it("instances - register, heartbeat, list and deregister with a service token", async () => {
    const svc = h.client(await h.serviceToken("model-proxy"));
    const registered = await svc.registerInstance({ instance: instance("model-proxy", "mp-1") });
    expect(registered.ttlMs).toBe(TTL_MS);
    expect(registered.instance?.startTime).toBeDefined();

    const beat = await svc.heartbeat({ service: "model-proxy", instanceId: "mp-1" });
    expect(beat.instance?.address).toBe("10.0.0.1:50004");
    expect(beat.instance?.startTime).toEqual(registered.instance?.startTime);

    const admin = h.client(await h.adminToken("ops"));
    const listed = await admin.listInstances({ service: "model-proxy" });
    expect(listed.instances.map((i) => i.instanceId)).toEqual(["mp-1"]);
    expect(listed.instances[0]?.metadata).toEqual({ zone: "a" });

    await svc.deregisterInstance({ service: "model-proxy", instanceId: "mp-1" });
    expect((await admin.listInstances({ service: "model-proxy" })).instances).toEqual([]);
    expect(
      (await rejection(svc.heartbeat({ service: "model-proxy", instanceId: "mp-1" }))).code,
    ).toBe(Code.NotFound);
  });

  it("instances - user and admin tokens cannot register; a service cannot act for another", async () => {
    const user = h.client(await h.userToken("t1"));
    expect(
      (await rejection(user.registerInstance({ instance: instance("gateway", "g-1") }))).code,
    ).toBe(Code.PermissionDenied);
    const admin = h.client(await h.adminToken("t1"));
    expect(
      (await rejection(admin.registerInstance({ instance: instance("gateway", "g-1") }))).code,
    ).toBe(Code.PermissionDenied);
    const other = h.client(await h.serviceToken("categorizer"));
    expect(
      (await rejection(other.registerInstance({ instance: instance("gateway", "g-1") }))).code,
    ).toBe(Code.PermissionDenied);
    // Reading the cluster view needs admin.
    expect((await rejection(user.listInstances({}))).code).toBe(Code.PermissionDenied);
    expect((await rejection(h.client().listInstances({}))).code).toBe(Code.Unauthenticated);
  });

  it("instances - an instance that stops heart-beating disappears after its TTL and the watch reports it", async () => {
    const svc = h.client(await h.serviceToken("workflow-engine"));
    const admin = h.client(await h.adminToken("ops"));
    await svc.registerInstance({ instance: instance("workflow-engine", "wf-stays") });
    await svc.registerInstance({ instance: instance("workflow-engine", "wf-dies") });

    const abort = new AbortController();
    const watch = collect(
      admin.watchInstances({ service: "workflow-engine" }, { signal: abort.signal }),
    );
    try {
      // The current set first, then SYNCED.
      await watch.next((e) => e.type === InstanceEventType.SYNCED, 5_000);
      const initial = watch.events.slice(0, 2);
      expect(initial.map((e) => [e.type, e.instance?.instanceId])).toEqual([
        [InstanceEventType.ADDED, "wf-dies"],
        [InstanceEventType.ADDED, "wf-stays"],
      ]);

      // Keep one alive for longer than the TTL; let the other stop.
      const stopAt = Date.now();
      while (Date.now() - stopAt < TTL_MS * 2.5) {
        await svc.heartbeat({ service: "workflow-engine", instanceId: "wf-stays" });
        await new Promise((r) => setTimeout(r, TTL_MS / 4));
      }
      const removed = await watch.next(
        (e) => e.type === InstanceEventType.REMOVED && e.instance?.instanceId === "wf-dies",
        TTL_MS * 3,
      );
      expect(removed.instance?.service).toBe("workflow-engine");
      // Heartbeats of the live one are UPDATED events, and it was never removed.
      expect(
        watch.events.some(
          (e) => e.type === InstanceEventType.UPDATED && e.instance?.instanceId === "wf-stays",
        ),
      ).toBe(true);
      expect(
        watch.events.some(
          (e) => e.type === InstanceEventType.REMOVED && e.instance?.instanceId === "wf-stays",
        ),
      ).toBe(false);

      const listed = await admin.listInstances({ service: "workflow-engine" });
      expect(listed.instances.map((i) => i.instanceId)).toEqual(["wf-stays"]);
      // The expired instance must register again.
      const late = await rejection(
        svc.heartbeat({ service: "workflow-engine", instanceId: "wf-dies" }),
      );
      expect(late.code).toBe(Code.NotFound);

      // A new registration during the watch is reported live.
      await svc.registerInstance({ instance: instance("workflow-engine", "wf-new") });
      await watch.next(
        (e) => e.type === InstanceEventType.ADDED && e.instance?.instanceId === "wf-new",
        5_000,
      );
      await svc.deregisterInstance({ service: "workflow-engine", instanceId: "wf-new" });
      await watch.next(
        (e) => e.type === InstanceEventType.REMOVED && e.instance?.instanceId === "wf-new",
        5_000,
      );
    } finally {
      abort.abort();
      await watch.done;
    }
  });

  it("instances - the watch stream ends with UNAVAILABLE when the server shuts down", async () => {
    const own = await startRegistry({ instanceTtlMs: TTL_MS });
    try {
      const admin = own.client(await own.adminToken("ops"));
      const watch = collect(admin.watchInstances({}));
      await watch.next((e) => e.type === InstanceEventType.SYNCED, 5_000);
      const started = Date.now();
      await own.server.shutdown({ timeoutMs: 5_000 });
      // The stream did not hold the drain open until the timeout.
      expect(Date.now() - started).toBeLessThan(2_000);
      await watch.done;
      await expect(watch.next(() => false, 1)).rejects.toMatchObject({ code: Code.Unavailable });
    } finally {
      await own.close();
    }
  });
});
