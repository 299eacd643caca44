// End-to-end tests of the RPC half of the kit: a real grpc-js server on a loopback port, the
// kit client, real ES256 tokens verified against a JWKS served over HTTP.
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  EchoService,
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "@ensemble/proto";
import * as grpc from "@grpc/grpc-js";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createJwksVerifier } from "./auth.js";
import { createClient, type GrpcClient } from "./client.js";
import { currentCall, principalOf, requestIdOf } from "./context.js";
import { FailedPreconditionError } from "./errors.js";
import { createRootLogger } from "./logger.js";
import { createMetrics } from "./metrics.js";
import { createServer, service, type KitServer } from "./server.js";

// ---- tokens: our own issuer (the test kit's is being written at the same time) ----

interface Issuer {
  jwksUrl: string;
  mint(claims: {
    sub: string;
    tid: string;
    roles?: string[];
    typ?: "user" | "service";
    svc?: string;
  }): Promise<string>;
  close(): Promise<void>;
}

async function startIssuer(): Promise<Issuer> {
  const { publicKey, privateKey } = await generateKeyPair("ES256");
  const jwk = { ...(await exportJWK(publicKey)), kid: "test-key", alg: "ES256", use: "sig" };
  const http: HttpServer = createHttpServer((_req, res) => {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const port = (http.address() as AddressInfo).port;
  const key: CryptoKey = privateKey;
  return {
    jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    mint: (claims) =>
      new SignJWT({
        tid: claims.tid,
        roles: claims.roles ?? ["user"],
        typ: claims.typ ?? "user",
        ...(claims.svc ? { svc: claims.svc } : {}),
      })
        .setProtectedHeader({ alg: "ES256", kid: "test-key" })
        .setSubject(claims.sub)
        .setIssuer("ensemble-auth")
        .setAudience("ensemble")
        .setIssuedAt()
        .setExpirationTime("5m")
        .setJti(crypto.randomUUID())
        .sign(key),
    close: () => new Promise<void>((resolve) => http.close(() => resolve())),
  };
}

// ---- the echo service, instrumented so tests can see what the handler saw ----

interface Observed {
  streamAbortReason?: unknown;
  slowAbortReason?: unknown;
  slowStarted?: () => void;
  downstream?: { requestId: string; timeoutMs: number | undefined; traceparent: string | null };
}

function echoImpl(
  observed: Observed,
  downstream: () => GrpcClient<typeof EchoService>,
): ServiceImpl<typeof EchoService> {
  return {
    echoPublic(req, ctx) {
      observed.downstream = {
        requestId: requestIdOf(ctx),
        timeoutMs: ctx.timeoutMs(),
        traceparent: ctx.requestHeader.get("traceparent"),
      };
      return { message: req.message, requestId: requestIdOf(ctx) };
    },
    async echoUser(req, ctx) {
      const principal = principalOf(ctx);
      if (req.name === "boom") throw new Error("db failed: password=hunter2 at 10.0.0.7");
      let message = req.name.repeat(Math.max(1, req.repeat));
      if (req.name === "hop") {
        // A second hop with no explicit headers: the kit must carry request id, trace and deadline.
        const reply = await downstream().echoPublic({ message: "from hop" });
        message = reply.requestId;
      }
      return {
        message,
        subject: principal.subject,
        tenantId: principal.tenantId,
        requestId: currentCall()?.requestId ?? "",
      };
    },
    echoAdmin(req) {
      return { message: req.message };
    },
    echoInternal(req, ctx) {
      return { message: req.message, service: principalOf(ctx).service ?? "" };
    },
    async *echoStream(req, ctx) {
      ctx.signal.addEventListener(
        "abort",
        () => {
          observed.streamAbortReason = ctx.signal.reason as unknown;
        },
        {
          once: true,
        },
      );
      for (let index = 0; index < req.count; index++) {
        if (req.failAfter > 0 && index === req.failAfter)
          throw new FailedPreconditionError("stream broke on purpose");
        if (req.intervalMs > 0) await sleep(req.intervalMs, undefined, { signal: ctx.signal });
        yield { index };
      }
    },
    async echoSlow(req, ctx) {
      ctx.signal.addEventListener(
        "abort",
        () => {
          observed.slowAbortReason = ctx.signal.reason as unknown;
        },
        {
          once: true,
        },
      );
      observed.slowStarted?.();
      const started = Date.now();
      await sleep(req.sleepMs, undefined, { signal: ctx.signal });
      return { sleptMs: Date.now() - started };
    },
  };
}

async function expectCode(promise: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    expect(ConnectError.from(err).code).toBe(code);
    return ConnectError.from(err);
  }
  throw new Error(`expected ${Code[code]}, the call succeeded`);
}

describe("kit rpc", () => {
  let issuer: Issuer;
  const logLines: Array<Record<string, unknown>> = [];
  const observed: Observed = {};
  const metrics = createMetrics({ service: "echo", defaultMetrics: false });
  let server: KitServer;
  let downstreamServer: KitServer;
  let address: string;
  let client: GrpcClient<typeof EchoService>;
  let downstreamClient: GrpcClient<typeof EchoService>;
  let userToken: string;
  let adminToken: string;
  let serviceToken: string;

  function newServer(name: string): KitServer {
    const logger = createRootLogger({
      service: name,
      version: "test",
      level: "debug",
      destination: {
        write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>),
      },
    });
    return createServer({
      name,
      version: "test",
      logger,
      verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
      metrics,
      services: [
        service(
          EchoService,
          echoImpl(observed, () => downstreamClient),
        ),
      ],
    });
  }

  beforeAll(async () => {
    issuer = await startIssuer();
    userToken = await issuer.mint({ sub: "user-1", tid: "tenant-a" });
    adminToken = await issuer.mint({ sub: "admin-1", tid: "tenant-a", roles: ["user", "admin"] });
    serviceToken = await issuer.mint({
      sub: "workflow-engine",
      tid: "",
      typ: "service",
      svc: "workflow-engine",
      roles: [],
    });
    server = newServer("echo");
    downstreamServer = newServer("echo-downstream");
    address = `127.0.0.1:${await server.listen("127.0.0.1:0")}`;
    downstreamClient = createClient(
      EchoService,
      `127.0.0.1:${await downstreamServer.listen("127.0.0.1:0")}`,
    );
    client = createClient(EchoService, address);
  });

  afterAll(async () => {
    await server?.shutdown({ timeoutMs: 1000 });
    await downstreamServer?.shutdown({ timeoutMs: 1000 });
    await issuer?.close();
  });

  const auth = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

  it("unary - public round trip echoes the message and returns x-request-id in response headers", async () => {
    let header: Headers | undefined;
    const reply = await client.echoPublic({ message: "hello" }, { onHeader: (h) => (header = h) });
    expect(reply.message).toBe("hello");
    expect(reply.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(header?.get("x-request-id")).toBe(reply.requestId);
  });

  it("unary - user method sees the verified caller", async () => {
    const reply = await client.echoUser({ name: "ab", repeat: 2 }, auth(userToken));
    expect(reply).toMatchObject({ message: "abab", subject: "user-1", tenantId: "tenant-a" });
  });

  it("streaming - server stream delivers every message in order", async () => {
    const indexes: number[] = [];
    for await (const m of client.echoStream({ count: 5, intervalMs: 2 }, auth(userToken)))
      indexes.push(m.index);
    expect(indexes).toEqual([0, 1, 2, 3, 4]);
  });

  it("streaming - a stream that fails midway throws from the iterator after the first messages", async () => {
    const indexes: number[] = [];
    const err = await expectCode(
      (async () => {
        for await (const m of client.echoStream({ count: 5, failAfter: 2 }, auth(userToken)))
          indexes.push(m.index);
      })(),
      Code.FailedPrecondition,
    );
    expect(indexes).toEqual([0, 1]);
    expect(err.rawMessage).toBe("stream broke on purpose");
  });

  it("validation - an empty name is INVALID_ARGUMENT naming the field, with violations attached", async () => {
    const err = await expectCode(
      client.echoUser({ name: "" }, auth(userToken)),
      Code.InvalidArgument,
    );
    // Wording is protovalidate's; what matters to a caller is the field path in front.
    expect(err.rawMessage).toBe("name: must be at least 1 characters");
    expect(err.details.map((d) => ("type" in d ? d.type : d.desc.typeName))).toEqual([
      "buf.validate.Violations",
    ]);
  });

  it("validation - nested and numeric rules name their paths", async () => {
    const nested = await expectCode(
      client.echoUser({ name: "x", owner: { id: "" } }, auth(userToken)),
      Code.InvalidArgument,
    );
    expect(nested.rawMessage).toBe("owner.id: must be at least 1 characters");
    const range = await expectCode(
      client.echoUser({ name: "x", repeat: 11 }, auth(userToken)),
      Code.InvalidArgument,
    );
    expect(range.rawMessage).toMatch(/^repeat: must be .*10/);
  });

  it("access - no token on a USER method is UNAUTHENTICATED", async () => {
    await expectCode(client.echoUser({ name: "x" }), Code.Unauthenticated);
  });

  it("access - a garbage token is UNAUTHENTICATED and never echoed back", async () => {
    const err = await expectCode(
      client.echoUser({ name: "x" }, auth("not-a-jwt-secretvalue")),
      Code.Unauthenticated,
    );
    expect(err.message).not.toContain("secretvalue");
  });

  it("access - a user token on an ADMIN method is PERMISSION_DENIED, an admin token passes", async () => {
    await expectCode(client.echoAdmin({ message: "x" }, auth(userToken)), Code.PermissionDenied);
    expect((await client.echoAdmin({ message: "ok" }, auth(adminToken))).message).toBe("ok");
  });

  it("access - a user token on an INTERNAL method is PERMISSION_DENIED, a service token passes", async () => {
    await expectCode(client.echoInternal({ message: "x" }, auth(userToken)), Code.PermissionDenied);
    await expectCode(
      client.echoInternal({ message: "x" }, auth(adminToken)),
      Code.PermissionDenied,
    );
    const viaOption = createClient(EchoService, address, { token: () => serviceToken });
    const reply = await viaOption.echoInternal({ message: "svc" });
    expect(reply).toMatchObject({ message: "svc", service: "workflow-engine" });
  });

  it("cancel - a client cancel mid-stream aborts the handler's signal with CANCELLED", async () => {
    observed.streamAbortReason = undefined;
    const controller = new AbortController();
    const received: number[] = [];
    const err = await expectCode(
      (async () => {
        for await (const m of client.echoStream(
          { count: 1000, intervalMs: 20 },
          { ...auth(userToken), signal: controller.signal },
        )) {
          received.push(m.index);
          if (m.index === 1) controller.abort();
        }
      })(),
      Code.Canceled,
    );
    expect(err.code).toBe(Code.Canceled);
    expect(received).toEqual([0, 1]);
    await expect
      .poll(() => observed.streamAbortReason, { timeout: 2000 })
      .toBeInstanceOf(ConnectError);
    expect((observed.streamAbortReason as ConnectError).code).toBe(Code.Canceled);
  });

  it("deadline - an expired deadline is DEADLINE_EXCEEDED (not CANCELLED) and fires the handler's signal", async () => {
    observed.slowAbortReason = undefined;
    let handlerStarted = false;
    observed.slowStarted = () => (handlerStarted = true);
    const started = Date.now();
    await expectCode(
      client.echoSlow({ sleepMs: 5000 }, { ...auth(userToken), timeoutMs: 400 }),
      Code.DeadlineExceeded,
    );
    delete observed.slowStarted;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(handlerStarted).toBe(true);
    await expect
      .poll(() => observed.slowAbortReason, { timeout: 2000 })
      .toBeInstanceOf(ConnectError);
    expect((observed.slowAbortReason as ConnectError).code).toBe(Code.DeadlineExceeded);
  });

  it("request id - an incoming x-request-id is echoed and carried to the next hop with trace and deadline", async () => {
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let header: Headers | undefined;
    const reply = await client.echoUser(
      { name: "hop" },
      {
        headers: { authorization: `Bearer ${userToken}`, "x-request-id": "req-hop-1", traceparent },
        timeoutMs: 3000,
        onHeader: (h) => (header = h),
      },
    );
    expect(header?.get("x-request-id")).toBe("req-hop-1");
    expect(reply.requestId).toBe("req-hop-1");
    expect(reply.message).toBe("req-hop-1"); // what the downstream server saw
    expect(observed.downstream?.requestId).toBe("req-hop-1");
    expect(observed.downstream?.traceparent).toContain("0af7651916cd43dd8448eb211c80319c");
    expect(observed.downstream?.timeoutMs).toBeGreaterThan(0);
    expect(observed.downstream?.timeoutMs).toBeLessThanOrEqual(3000);
  });

  it("errors - a thrown plain Error reaches the client as INTERNAL without its message, and is logged with its stack", async () => {
    const err = await expectCode(client.echoUser({ name: "boom" }, auth(userToken)), Code.Internal);
    expect(err.rawMessage).toBe("internal error");
    expect(err.message).not.toContain("hunter2");
    const line = logLines.find(
      (l) => l["level"] === "error" && l["method"] === "/ensemble.testing.v1.EchoService/EchoUser",
    );
    expect(line).toBeDefined();
    expect(String((line?.["err"] as { stack?: string } | undefined)?.stack)).toContain("db failed");
    expect(line).toMatchObject({ code: "INTERNAL", tenantId: "tenant-a", userId: "user-1" });
  });

  it("logging - one line per call with code and duration, and no token anywhere", async () => {
    await client.echoPublic({ message: "count-me" }, { headers: { "x-request-id": "req-log-1" } });
    const lines = logLines.filter((l) => l["requestId"] === "req-log-1");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      code: "OK",
      method: "/ensemble.testing.v1.EchoService/EchoPublic",
    });
    expect(typeof lines[0]?.["durationMs"]).toBe("number");
    const all = JSON.stringify(logLines);
    for (const token of [userToken, adminToken, serviceToken]) expect(all).not.toContain(token);
  });

  it("metrics - calls are counted by method and code", async () => {
    await expectCode(client.echoAdmin({ message: "x" }, auth(userToken)), Code.PermissionDenied);
    const text = await metrics.text();
    expect(text).toMatch(
      /ensemble_rpc_server_requests_total\{[^}]*method="\/ensemble.testing.v1.EchoService\/EchoAdmin"[^}]*code="PERMISSION_DENIED"[^}]*\} [1-9]/,
    );
  });

  it("health - Check says SERVING, then NOT_SERVING after setServing(false), and Watch sees the change", async () => {
    const health = createClient(Health, address);
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
    expect((await health.check({ service: "ensemble.testing.v1.EchoService" })).status).toBe(
      ServingStatus.SERVING,
    );
    await expectCode(health.check({ service: "no.such.Service" }), Code.NotFound);
    const listed = await health.list({});
    expect(Object.keys(listed.statuses).sort()).toEqual(["", "ensemble.testing.v1.EchoService"]);

    const controller = new AbortController();
    const seen: ServingStatus[] = [];
    const watching = (async () => {
      try {
        for await (const r of health.watch({ service: "" }, { signal: controller.signal })) {
          seen.push(r.status);
          if (seen.length === 2) controller.abort();
        }
      } catch (err) {
        if (ConnectError.from(err).code !== Code.Canceled) throw err;
      }
    })();
    await expect.poll(() => seen.length).toBe(1);
    server.setServing(false);
    await watching;
    expect(seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    expect((await health.check({ service: "ensemble.testing.v1.EchoService" })).status).toBe(
      ServingStatus.NOT_SERVING,
    );
    server.setServing(true);
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
  });

  it("reflection - lists the services and serves the file with its dependencies", async () => {
    const raw = new grpc.Client(address, grpc.credentials.createInsecure());
    const ask = (request: Uint8Array) =>
      new Promise<Uint8Array>((resolve, reject) => {
        const call = raw.makeBidiStreamRequest(
          "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
          (b: Uint8Array) => Buffer.from(b),
          (b: Buffer) => new Uint8Array(b),
        );
        call.on("data", (b: Uint8Array) => {
          resolve(b);
          call.end();
        });
        call.on("error", reject);
        call.write(request);
      });
    try {
      // ServerReflectionRequest.list_services = 7
      const listed = await ask(new BinaryWriter().tag(7, 2).string("").finish());
      const names: string[] = [];
      readFields(listed, 6, (r) =>
        readFields(r.bytes(), 1, (s) => readFields(s.bytes(), 1, (n) => names.push(n.string()))),
      );
      expect(names).toContain("ensemble.testing.v1.EchoService");
      expect(names).toContain("grpc.health.v1.Health");

      // ServerReflectionRequest.file_containing_symbol = 4; FileDescriptorResponse = 4
      const fileOf = async (request: Uint8Array) => {
        const found: FileDescriptorProto[] = [];
        readFields(await ask(request), 4, (r) =>
          readFields(r.bytes(), 1, (f) =>
            found.push(fromBinary(FileDescriptorProtoSchema, f.bytes())),
          ),
        );
        return found;
      };
      const [echoFile] = await fileOf(
        new BinaryWriter().tag(4, 2).string("ensemble.testing.v1.EchoService").finish(),
      );
      expect(echoFile?.name).toBe("ensemble/testing/v1/echo.proto");
      expect(echoFile?.service[0]?.method.map((m) => m.name)).toContain("EchoStream");
      expect(echoFile?.dependency).toEqual([
        "buf/validate/validate.proto",
        "ensemble/common/v1/access.proto",
      ]);
      // A reflection client then fetches every import by name (file_by_filename = 3), down to
      // descriptor.proto; all of them must be served.
      for (const name of [...(echoFile?.dependency ?? []), "google/protobuf/descriptor.proto"]) {
        const [dep] = await fileOf(new BinaryWriter().tag(3, 2).string(name).finish());
        expect(dep?.name).toBe(name);
      }
    } finally {
      raw.close();
    }
  });

  it("registration - a client-streaming method is refused with a clear error", () => {
    const [first] = EchoService.methods;
    const streamingIn = { ...EchoService, methods: [{ ...first, methodKind: "client_streaming" }] };
    expect(() =>
      createServer({
        name: "bad",
        version: "test",
        logger: createRootLogger({ service: "bad", version: "test", level: "silent" }),
        verifier: createJwksVerifier({ jwksUrl: issuer.jwksUrl }),
        services: [{ service: streamingIn as unknown as typeof EchoService, impl: {} }],
      }),
    ).toThrow(/EchoPublic: client_streaming methods are not supported/);
  });

  it("shutdown - health says NOT_SERVING at once while an in-flight slow call still finishes", async () => {
    const draining = newServer("echo-drain");
    const drainAddress = `127.0.0.1:${await draining.listen("127.0.0.1:0")}`;
    const drainClient = createClient(EchoService, drainAddress);
    const health = createClient(Health, drainAddress);
    const events: string[] = [];
    const watching = (async () => {
      for await (const r of health.watch({ service: "" }))
        events.push(`health:${ServingStatus[r.status]}`);
      events.push("health:ended");
    })();
    await expect.poll(() => events.length).toBe(1);

    let started!: () => void;
    const slowStarted = new Promise<void>((resolve) => (started = resolve));
    observed.slowStarted = started;
    const slow = drainClient.echoSlow({ sleepMs: 600 }, auth(userToken)).then((r) => {
      events.push("slow:done");
      return r;
    });
    await slowStarted;
    delete observed.slowStarted;

    const shutdown = draining.shutdown({ timeoutMs: 5000 });
    await watching;
    expect(events).toEqual(["health:SERVING", "health:NOT_SERVING", "health:ended"]);
    const late = createClient(EchoService, drainAddress);
    await expectCode(late.echoPublic({ message: "too late" }), Code.Unavailable);
    const reply = await slow;
    expect(reply.sleptMs).toBeGreaterThanOrEqual(550);
    await shutdown;
    expect(events.at(-1)).toBe("slow:done");
  });
});

/** Calls fn with a reader positioned at each length-delimited field `field` of a message. */
function readFields(bytes: Uint8Array, field: number, fn: (reader: BinaryReader) => void): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no === field) fn(reader);
    else reader.skip(wireType);
  }
}
