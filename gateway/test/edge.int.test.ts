// The gateway's edge: rate limits across replicas, CORS, operational endpoints, a real
// registry behind it, and what a client sees when an upstream is down.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EchoService, RegistryService } from "@ensemble/proto";
import { createTestIssuer, uniqueName, type TestIssuer } from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  echoUpstream,
  startEcho,
  startGateway,
  startRegistryProcess,
  type EchoUpstream,
  type RegistryProcess,
  type TestGateway,
} from "./harness.js";

let issuer: TestIssuer;
let echo: EchoUpstream;
let registry: RegistryProcess;
const opened: TestGateway[] = [];

beforeAll(async () => {
  issuer = await createTestIssuer();
  [echo, registry] = await Promise.all([startEcho(issuer), startRegistryProcess(issuer)]);
});

afterAll(async () => {
  for (const gw of opened) await gw.close();
  await echo?.close();
  await registry?.stop();
  await issuer?.close();
});

async function gateway(
  opts: Partial<Parameters<typeof startGateway>[0]> = {},
): Promise<TestGateway> {
  const gw = await startGateway({
    jwksUrl: issuer.jwksUrl,
    upstreams: [
      echoUpstream(echo.address),
      { name: "registry", services: [RegistryService], address: registry.address },
    ],
    ...opts,
  });
  opened.push(gw);
  return gw;
}

async function echoUser(url: string, token: string): Promise<Response> {
  return fetch(`${url}/${EchoService.typeName}/EchoUser`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ name: "x" }),
  });
}

describe("gateway rate limit", () => {
  it("one replica - calls over the burst get 429 / RESOURCE_EXHAUSTED with retry-after; other users are unaffected", async () => {
    const gw = await gateway({ rate: 0.2, burst: 3, lease: 1 });
    const alice = await issuer.mint({ tenantId: "acme", sub: "alice" });
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await echoUser(gw.url, alice)).status);
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
    const refused = await echoUser(gw.url, alice);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const body = (await refused.json()) as Record<string, string>;
    expect(body["code"]).toBe("resource_exhausted");
    expect(body["message"]).toMatch(
      /^rate limit exceeded for this user on the gateway; retry in \d+ s$/,
    );

    const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    const err = await client
      .echoUser({ name: "x" }, { headers: { authorization: `Bearer ${alice}` } })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(err?.code).toBe(Code.ResourceExhausted);
    expect(Number(err?.metadata.get("retry-after-ms"))).toBeGreaterThan(0);

    const bob = await issuer.mint({ tenantId: "acme", sub: "bob" });
    expect((await echoUser(gw.url, bob)).status).toBe(200);
  });

  it("two replicas - the limit holds across both sharing one NATS KV bucket, with fewer KV round trips than calls", async () => {
    const bucket = uniqueName("gwshared");
    const a = await gateway({ rate: 0.1, burst: 8, lease: 2, bucket });
    const b = await gateway({ rate: 0.1, burst: 8, lease: 2, bucket });
    const carol = await issuer.mint({ tenantId: "acme", sub: "carol" });
    let ok = 0;
    const served = { a: 0, b: 0 };
    for (let i = 0; i < 24; i++) {
      const replica = i % 2 === 0 ? a : b;
      const res = await echoUser(replica.url, carol);
      if (res.status === 200) {
        ok += 1;
        served[i % 2 === 0 ? "a" : "b"] += 1;
      } else {
        expect(res.status).toBe(429);
      }
    }
    // burst 8 in total (plus at most one token refilled during the test), not 8 per replica;
    // a lease that expires unspent on a slow machine may cost a token or two, never add one.
    expect(ok).toBeGreaterThanOrEqual(4);
    expect(ok).toBeLessThanOrEqual(9);
    expect(served.a).toBeGreaterThan(0);
    expect(served.b).toBeGreaterThan(0);
    expect(a.limiter.kvOperations + b.limiter.kvOperations).toBeLessThan(24);
  });
});

describe("gateway CORS", () => {
  it("allowlist - an allowed origin gets its preflight and headers, another gets neither", async () => {
    const gw = await gateway({ corsOrigins: ["https://console.example"] });
    const preflight = (origin: string) =>
      fetch(`${gw.url}/${EchoService.typeName}/EchoUser`, {
        method: "OPTIONS",
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type, authorization",
        },
      });
    const allowed = await preflight("https://console.example");
    expect(allowed.status).toBe(204);
    expect(allowed.headers.get("access-control-allow-origin")).toBe("https://console.example");
    expect(allowed.headers.get("access-control-allow-headers")).toContain("authorization");
    const denied = await preflight("https://evil.example");
    expect(denied.status).toBe(403);
    expect(denied.headers.get("access-control-allow-origin")).toBeNull();
    const simple = await fetch(`${gw.url}/live`, { headers: { origin: "https://evil.example" } });
    expect(simple.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("wildcard - '*' is ignored outside development and honoured in development", async () => {
    const prod = await gateway({ corsOrigins: ["*"], development: false });
    const dev = await gateway({ corsOrigins: ["*"], development: true });
    const origin = { origin: "https://any.example" };
    expect(
      (await fetch(`${prod.url}/live`, { headers: origin })).headers.get(
        "access-control-allow-origin",
      ),
    ).toBeNull();
    expect(
      (await fetch(`${dev.url}/live`, { headers: origin })).headers.get(
        "access-control-allow-origin",
      ),
    ).toBe("https://any.example");
  });
});

describe("gateway endpoints", () => {
  it("health - 200 with every service SERVING; 503 naming the one that is down", async () => {
    const gw = await gateway();
    const ok = await fetch(`${gw.url}/health`);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({
      status: "ok",
      services: { echo: "SERVING", registry: "SERVING" },
    });
    expect((await fetch(`${gw.url}/ready`)).status).toBe(200);
    expect((await fetch(`${gw.url}/live`)).status).toBe(200);

    const broken = await gateway({
      upstreams: [
        echoUpstream(echo.address),
        { name: "registry", services: [RegistryService], address: "127.0.0.1:1" },
      ],
    });
    const down = await fetch(`${broken.url}/health`);
    expect(down.status).toBe(503);
    const body = (await down.json()) as { services: Record<string, string> };
    expect(body.services["echo"]).toBe("SERVING");
    expect(body.services["registry"]).not.toBe("SERVING");
    expect((await fetch(`${broken.url}/ready`)).status).toBe(503);
  });

  it("unavailable upstream - the client gets UNAVAILABLE without the peer's address", async () => {
    const gw = await gateway({
      upstreams: [{ name: "registry", services: [RegistryService], address: "127.0.0.1:1" }],
    });
    const token = await issuer.mint({ tenantId: "acme", sub: "alice" });
    const res = await fetch(`${gw.url}/${RegistryService.typeName}/ListModels`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: "{}",
    });
    const text = await res.text();
    expect(res.status).toBe(503);
    expect(JSON.parse(text)).toEqual({ code: "unavailable", message: "service unavailable" });
    expect(text).not.toContain("127.0.0.1");
  });

  it("info, metrics and docs - describe what is routed, and never the INTERNAL methods", async () => {
    const gw = await gateway();
    const info = (await (await fetch(`${gw.url}/info`)).json()) as {
      version: string;
      services: Array<{ name: string }>;
    };
    expect(info.version).toBe("test");
    expect(info.services.map((s) => s.name)).toEqual(["echo", "registry"]);
    await echoUser(gw.url, await issuer.mint({ tenantId: "acme", sub: "dora" }));
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/ensemble_rpc_server_requests_total\{[^}]*EchoUser[^}]*code="OK"/);
    const docs = await fetch(`${gw.url}/docs`);
    expect(docs.headers.get("content-type")).toContain("text/html");
    const html = await docs.text();
    expect(html).toContain("EchoUser");
    expect(html).toContain("ListModels");
    expect(html).toContain("ensemble.registry.v1.Model");
    expect(html).not.toContain("EchoInternal");
    expect(html).not.toContain("RegisterInstance");
    // The provider-compatible HTTP routes are listed too, with the API key scope they need.
    for (const route of ["POST /v1/chat/completions", "POST /v1/responses", "POST /v1/messages"]) {
      expect(html).toMatch(new RegExp(`<td class="t">${route}</td><td>write</td>`));
    }
    expect(html).toMatch(/<td class="t">GET \/v1\/models<\/td><td>read<\/td>/);
  });
});

describe("gateway with the registry", () => {
  it("registry - a user lists the seeded catalog through the gateway; NOT_FOUND and INTERNAL methods behave", async () => {
    const gw = await gateway();
    const token = await issuer.mint({ tenantId: "acme", sub: "alice" });
    const client = createClient(RegistryService, createGrpcTransport({ baseUrl: gw.url }));
    const headers = { authorization: `Bearer ${token}` };
    const list = await client.listModels({}, { headers });
    expect(list.models.length).toBeGreaterThan(0);
    const missing = await client.getModel({ id: "no-such-model" }, { headers }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(missing?.code).toBe(Code.NotFound);
    const svc = await issuer.mint({ tenantId: "", svc: "workflow-engine" });
    const internal = await client
      .heartbeat({}, { headers: { authorization: `Bearer ${svc}` } })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(internal?.code).toBe(Code.Unimplemented);
  });

  it("strict json - a misspelt enum value or field name is INVALID_ARGUMENT naming it, not silently dropped", async () => {
    const gw = await gateway();
    const token = await issuer.mint({ tenantId: "acme", sub: "alice" });
    const post = (body: unknown): Promise<Response> =>
      fetch(`${gw.url}/${RegistryService.typeName}/ListModels`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
    const all = (await (await post({})).json()) as { models: unknown[] };
    // The enum's JSON name filters ...
    const vision = await post({ capability: "CAPABILITY_VISION" });
    const visionBody = (await vision.json()) as { models: unknown[] };
    expect(vision.status).toBe(200);
    expect(visionBody.models.length).toBeLessThan(all.models.length);
    // ... a short or misspelt one is refused, where it used to list every model.
    for (const [body, named] of [
      [{ capability: "VISION" }, /VISION/],
      [{ capabilty: "CAPABILITY_VISION" }, /capabilty/],
    ] as const) {
      const res = await post(body);
      const err = (await res.json()) as Record<string, string>;
      expect({ status: res.status, code: err["code"] }).toEqual({
        status: 400,
        code: "invalid_argument",
      });
      expect(err["message"]).toMatch(named);
    }
  });
});
