import { Code } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { createMetrics, startMetricsServer, type MetricsServer } from "./metrics.js";

let server: MetricsServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe("metrics", () => {
  it("metrics - GET /metrics serves rpc and default metrics in Prometheus text format", async () => {
    const metrics = createMetrics({ service: "registry" });
    metrics.rpcServer.observe("/ensemble.registry.v1.ModelService/GetModel", Code.NotFound, 0.02);
    metrics.rpcServer.observe("/ensemble.registry.v1.ModelService/GetModel", 0, 0.01);
    const end = metrics.rpcServer.streamStarted("/ensemble.workflow.v1.RunService/Run");
    metrics.rpcClient.observe("127.0.0.1:50055", "/m.P/Chat", Code.Unavailable, 1.5);
    server = await startMetricsServer(metrics, 0);
    expect(server.port).toBeGreaterThan(0);

    const res = await fetch(`http://127.0.0.1:${server.port}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const body = await res.text();
    expect(body).toContain(
      'ensemble_rpc_server_requests_total{service="registry",method="/ensemble.registry.v1.ModelService/GetModel",code="NOT_FOUND"} 1',
    );
    expect(body).toContain(
      'ensemble_rpc_server_requests_total{service="registry",method="/ensemble.registry.v1.ModelService/GetModel",code="OK"} 1',
    );
    expect(body).toContain(
      'ensemble_rpc_server_duration_seconds_count{service="registry",method="/ensemble.registry.v1.ModelService/GetModel"} 2',
    );
    expect(body).toContain(
      'ensemble_rpc_server_active_streams{service="registry",method="/ensemble.workflow.v1.RunService/Run"} 1',
    );
    expect(body).toContain(
      'ensemble_rpc_client_duration_seconds_count{target="127.0.0.1:50055",method="/m.P/Chat",code="UNAVAILABLE"} 1',
    );
    expect(body).toContain("process_cpu_seconds_total");
    expect(body).toContain("nodejs_eventloop_lag_seconds");

    end();
    end(); // a second call must not push the gauge below zero
    const after = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
    expect(after).toContain(
      'ensemble_rpc_server_active_streams{service="registry",method="/ensemble.workflow.v1.RunService/Run"} 0',
    );
  });

  it("metrics - other paths get 404", async () => {
    server = await startMetricsServer(createMetrics({ service: "x", defaultMetrics: false }), 0);
    const res = await fetch(`http://127.0.0.1:${server.port}/`);
    expect(res.status).toBe(404);
    const post = await fetch(`http://127.0.0.1:${server.port}/metrics`, { method: "POST" });
    expect(post.status).toBe(404);
  });

  it("metrics - two registries in one process do not collide", async () => {
    const a = createMetrics({ service: "a" });
    const b = createMetrics({ service: "b" });
    a.rpcServer.observe("/x.Y/Z", Code.Internal, 0.1);
    expect(await b.text()).not.toContain('service="a"');
    expect(await a.text()).toContain('code="INTERNAL"');
  });

  it("metrics - close frees the port", async () => {
    const s = await startMetricsServer(createMetrics({ service: "x", defaultMetrics: false }), 0);
    await s.close();
    await expect(fetch(`http://127.0.0.1:${s.port}/metrics`)).rejects.toThrow();
  });
});
