// The gateway in front of a real kit service (Echo: every access level, a stream, a slow
// method), reached over Connect JSON (fetch), Connect binary, gRPC and gRPC-web.
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { EchoService } from "@ensemble/proto";
import { createTestIssuer, type TestIssuer } from "@ensemble/testkit";
import { base64url, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  echoUpstream,
  startEcho,
  startGateway,
  type EchoUpstream,
  type TestGateway,
} from "./harness.js";

let issuer: TestIssuer;
let echo: EchoUpstream;
let gw: TestGateway;
let userToken: string;
let adminToken: string;

beforeAll(async () => {
  issuer = await createTestIssuer();
  echo = await startEcho(issuer);
  gw = await startGateway({ jwksUrl: issuer.jwksUrl, upstreams: [echoUpstream(echo.address)] });
  userToken = await issuer.mint({ tenantId: "acme", sub: "alice" });
  adminToken = await issuer.mint({ tenantId: "acme", sub: "root", roles: ["user", "admin"] });
});

afterAll(async () => {
  if (process.env["GW_DEBUG"]) console.log(gw?.logs.text());
  await gw?.close();
  await echo?.close();
  await issuer?.close();
});

const path = (method: string): string => `/${EchoService.typeName}/${method}`;

async function postJson(
  method: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(`${gw.url}${path(method)}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

const PROTOCOLS = ["connect-json", "connect-binary-h2", "grpc", "grpc-web"] as const;

function transportFor(name: (typeof PROTOCOLS)[number]): Transport {
  switch (name) {
    case "connect-json":
      return createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" });
    case "connect-binary-h2":
      return createConnectTransport({ baseUrl: gw.url, httpVersion: "2", useBinaryFormat: true });
    case "grpc":
      return createGrpcTransport({ baseUrl: gw.url });
    case "grpc-web":
      return createGrpcWebTransport({ baseUrl: gw.url, httpVersion: "1.1" });
  }
}

function transports(): Array<[string, Transport]> {
  return PROTOCOLS.map((name) => [name, transportFor(name)]);
}

async function codeOf(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

describe("gateway protocols", () => {
  it("connect json - a USER call through fetch returns the upstream answer and the caller it saw", async () => {
    const res = await postJson(
      "EchoUser",
      { name: "hi", repeat: 2, owner: { id: "o" } },
      { authorization: `Bearer ${userToken}` },
    );
    const body = (await res.json()) as Record<string, string>;
    expect({ status: res.status, body }).toMatchObject({ status: 200, body: { message: "hihi" } });
    expect(body["subject"]).toBe("alice");
    expect(body["tenantId"]).toBe("acme");
  });

  it.each(PROTOCOLS)("%s - unary and server streaming work through one port", async (name) => {
    const client = createClient(EchoService, transportFor(name));
    const headers = { authorization: `Bearer ${userToken}` };
    let returnedId: string | null = null;
    const res = await client.echoUser(
      { name: "x", owner: { id: "o" } },
      { headers, onHeader: (h) => (returnedId = h.get("x-request-id")) },
    );
    expect(res.subject).toBe("alice");
    // The id the gateway made is the one the service saw and the one the client got back.
    expect(res.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(returnedId).toBe(res.requestId);
    const seen: number[] = [];
    for await (const m of client.echoStream({ count: 3 }, { headers })) seen.push(m.index);
    expect(seen).toEqual([0, 1, 2]);
  });

  it("streaming - an upstream failure midway reaches the client as that error after the messages", async () => {
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    const seen: number[] = [];
    const failure = await codeOf(
      (async () => {
        for await (const m of client.echoStream(
          { count: 5, failAfter: 2 },
          { headers: { authorization: `Bearer ${userToken}` } },
        ))
          seen.push(m.index);
      })(),
    );
    expect(seen).toEqual([0, 1]);
    expect(failure).toBe(Code.FailedPrecondition);
  });

  it("request id - a given x-request-id reaches the upstream and comes back; one is made otherwise", async () => {
    const res = await postJson("EchoPublic", { message: "m" }, { "x-request-id": "req-abc-123" });
    expect(res.headers.get("x-request-id")).toBe("req-abc-123");
    expect(((await res.json()) as Record<string, string>)["requestId"]).toBe("req-abc-123");
    const fresh = await postJson("EchoPublic", { message: "m" });
    const made = fresh.headers.get("x-request-id");
    expect(made).toMatch(/^[0-9a-f-]{36}$/);
    expect(((await fresh.json()) as Record<string, string>)["requestId"]).toBe(made);
  });

  it("security headers - nosniff, frame-ancestors none and referrer policy on every answer", async () => {
    const res = await postJson("EchoPublic", { message: "m" });
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(res.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
    expect(res.headers.get("referrer-policy")).toBe("no-referrer");
    expect(res.headers.get("strict-transport-security")).toBeNull();
  });
});

describe("gateway access", () => {
  it("internal - INTERNAL methods do not exist on the gateway, not even for a service token", async () => {
    const svc = await issuer.mint({ tenantId: "", svc: "workflow-engine" });
    const res = await postJson(
      "EchoInternal",
      { message: "m" },
      { authorization: `Bearer ${svc}` },
    );
    expect(res.status).toBe(404);
    for (const [, transport] of transports()) {
      const client = createClient(EchoService, transport);
      expect(
        await codeOf(client.echoInternal({}, { headers: { authorization: `Bearer ${svc}` } })),
      ).toBe(Code.Unimplemented);
    }
  });

  it("no token - a USER method answers UNAUTHENTICATED (HTTP 401)", async () => {
    const res = await postJson("EchoUser", { name: "x" });
    expect(res.status).toBe(401);
    expect(((await res.json()) as Record<string, string>)["code"]).toBe("unauthenticated");
  });

  it("admin - a user token on an ADMIN method is PERMISSION_DENIED; an admin's passes", async () => {
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    expect(
      await codeOf(
        client.echoAdmin({ message: "m" }, { headers: { authorization: `Bearer ${userToken}` } }),
      ),
    ).toBe(Code.PermissionDenied);
    const ok = await client.echoAdmin(
      { message: "m" },
      { headers: { authorization: `Bearer ${adminToken}` } },
    );
    expect(ok.message).toBe("m");
  });

  it("tokens - forged, expired, early, foreign and tampered tokens are all refused", async () => {
    const jwks = (await (await fetch(issuer.jwksUrl)).json()) as {
      keys: Array<Record<string, string>>;
    };
    const header = (h: object): string => base64url.encode(JSON.stringify(h));
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: "ensemble-auth",
      aud: "ensemble",
      sub: "mallory",
      tid: "acme",
      typ: "user",
      roles: ["user", "admin"],
      iat: now,
      exp: now + 300,
    };
    const algNone = `${header({ alg: "none", typ: "JWT" })}.${base64url.encode(JSON.stringify(claims))}.`;
    const hs256 = await new SignJWT(claims)
      .setProtectedHeader({ alg: "HS256", kid: issuer.kid })
      .sign(new TextEncoder().encode(JSON.stringify(jwks.keys[0])));
    const valid = await issuer.mint({ tenantId: "acme", sub: "alice" });
    const [h, , s] = valid.split(".");
    const tampered = `${h}.${base64url.encode(JSON.stringify({ ...claims, sub: "alice" }))}.${s}`;
    const cases: Record<string, string> = {
      "alg none": algNone,
      "HS256 with the public key": hs256,
      expired: await issuer.mint({ tenantId: "acme", expiresIn: "-1m" }),
      "not yet valid": await issuer.mint({ tenantId: "acme", notBefore: "10m" }),
      "wrong issuer": await issuer.mint({ tenantId: "acme", issuer: "evil" }),
      "wrong audience": await issuer.mint({ tenantId: "acme", audience: "other" }),
      "unknown kid": await issuer.mint({ tenantId: "acme", kid: "unknown" }),
      "foreign signature": await issuer.mint({ tenantId: "acme", signWith: "foreign" }),
      "tampered payload": tampered,
    };
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    const outcomes: Record<string, Code | "ok"> = {};
    for (const [name, token] of Object.entries(cases)) {
      outcomes[name] = await codeOf(
        client.echoUser({ name: "x" }, { headers: { authorization: `Bearer ${token}` } }),
      );
    }
    expect(outcomes).toEqual(
      Object.fromEntries(Object.keys(cases).map((k) => [k, Code.Unauthenticated])),
    );
  });
});

describe("gateway deadlines and errors", () => {
  it("deadline - a client timeout ends the upstream call too and is DEADLINE_EXCEEDED, not CANCELLED", async () => {
    const before = echo.abortedSleeps;
    for (const [, transport] of transports()) {
      const client = createClient(EchoService, transport);
      const started = Date.now();
      const code = await codeOf(
        client.echoSlow(
          { sleepMs: 5_000 },
          { timeoutMs: 300, headers: { authorization: `Bearer ${userToken}` } },
        ),
      );
      expect(code).toBe(Code.DeadlineExceeded);
      expect(Date.now() - started).toBeLessThan(3_000);
    }
    await expect.poll(() => echo.abortedSleeps - before).toBeGreaterThanOrEqual(4);
  });

  it("cancel - aborting the client call cancels the upstream handler", async () => {
    const before = echo.abortedSleeps;
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    const controller = new AbortController();
    const call = codeOf(
      client.echoSlow(
        { sleepMs: 5_000 },
        { signal: controller.signal, headers: { authorization: `Bearer ${userToken}` } },
      ),
    );
    setTimeout(() => controller.abort(), 200);
    expect(await call).toBe(Code.Canceled);
    await expect.poll(() => echo.abortedSleeps - before).toBe(1);
  });

  it("validation - upstream INVALID_ARGUMENT keeps its message and violation details", async () => {
    const client = createClient(
      EchoService,
      createGrpcWebTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    const err = await client
      .echoUser({ name: "" }, { headers: { authorization: `Bearer ${userToken}` } })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(err?.code).toBe(Code.InvalidArgument);
    expect(err?.rawMessage).toContain("name");
    expect(err?.details.length).toBeGreaterThan(0);
  });

  it("malformed binary - a body that is not protobuf is INVALID_ARGUMENT (HTTP 400), not a 500", async () => {
    // 0x0a = field 1, length-delimited, then a length far past the end of the body.
    const res = await fetch(`${gw.url}${path("EchoUser")}`, {
      method: "POST",
      headers: { "content-type": "application/proto", authorization: `Bearer ${userToken}` },
      body: new Uint8Array([0x0a, 0x7f, 0x01]),
    });
    const body = (await res.json()) as Record<string, string>;
    expect(res.status).toBe(400);
    expect(body["code"]).toBe("invalid_argument");
    expect(body["message"]).toContain("ensemble.testing.v1.EchoUserRequest");
    // A well-formed binary body still goes through.
    const ok = await fetch(`${gw.url}${path("EchoUser")}`, {
      method: "POST",
      headers: { "content-type": "application/proto", authorization: `Bearer ${userToken}` },
      body: new Uint8Array([0x0a, 0x02, 0x68, 0x69]), // name: "hi"
    });
    expect(ok.status).toBe(200);
  });

  it("message size - a request over the maximum is refused before it reaches the service", async () => {
    const res = await postJson("EchoPublic", { message: "x".repeat(100 * 1024) });
    const body = (await res.json()) as Record<string, string>;
    expect(body["code"]).toBe("resource_exhausted");
    expect(body["message"]).toMatch(/message size|max/i);
  });
});

describe("gateway shutdown", () => {
  it("drain - an in-flight call finishes, then the port stops accepting", async () => {
    const own = await startGateway({
      jwksUrl: issuer.jwksUrl,
      upstreams: [echoUpstream(echo.address)],
    });
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: own.url }));
    const slow = client.echoSlow(
      { sleepMs: 600 },
      { headers: { authorization: `Bearer ${userToken}` } },
    );
    await new Promise((resolve) => setTimeout(resolve, 150));
    const closing = own.close();
    const res = await slow;
    expect(res.sleptMs).toBeGreaterThanOrEqual(550);
    await closing;
    await expect(fetch(`${own.url}/live`)).rejects.toThrow();
  });
});
