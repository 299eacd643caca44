// Cluster (admins): service instances registered in the registry with their heartbeats, and the
// age of the last one (an instance whose heartbeat stops disappears when its entry expires).
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { ServiceInstance } from "@ensemble/proto";
import { useEffect } from "react";
import { api } from "../api";
import { Guard, fmtTime, useLoad } from "../ui";

/** Heartbeats older than this are shown as late. */
const LATE_MS = 30_000;

export function ClusterPage() {
  const instances = useLoad(() => api.registry.listInstances({}).then((r) => r.instances), []);
  useEffect(() => {
    const timer = setInterval(instances.reload, 10_000);
    return () => clearInterval(timer);
  }, [instances.reload]);

  const byService = new Map<string, ServiceInstance[]>();
  for (const i of instances.data ?? [])
    byService.set(i.service, [...(byService.get(i.service) ?? []), i]);

  return (
    <div>
      <h1>Cluster</h1>
      <Guard
        loaded={instances}
        empty={(l) => l.length === 0}
        emptyText="No service instances have registered with the registry."
      >
        {() => (
          <div className="cards">
            {[...byService].map(([service, list]) => (
              <section key={service} className="card" aria-label={service}>
                <h2>{service}</h2>
                <ul>
                  {list.map((i) => {
                    const age =
                      i.lastHeartbeatTime !== undefined
                        ? Date.now() - timestampMs(i.lastHeartbeatTime)
                        : Infinity;
                    return (
                      <li key={i.instanceId}>
                        <span
                          className={age < LATE_MS ? "dot ok" : "dot late"}
                          aria-hidden="true"
                        />
                        {i.address}{" "}
                        <span className="muted">
                          v{i.version} · {age < LATE_MS ? "healthy" : "heartbeat late"} · up since{" "}
                          {fmtTime(i.startTime)}
                        </span>
                      </li>
                    );
                  })}
                </ul>
              </section>
            ))}
          </div>
        )}
      </Guard>
    </div>
  );
}
