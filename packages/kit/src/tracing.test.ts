import { context, trace } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  extractTraceContext,
  getTracer,
  initTracing,
  injectTraceContext,
  traceIdOf,
  type Tracing,
} from "./tracing.js";

let tracing: Tracing;
beforeAll(() => {
  // No endpoint: nothing is exported, but ids are still made and propagated.
  tracing = initTracing({ service: "unit", version: "0.0.0" });
});
afterAll(async () => {
  await tracing.shutdown();
});

describe("tracing", () => {
  it("tracing - a trace id injected from an active span is extracted on the other side", () => {
    const span = getTracer().startSpan("client call");
    const carrier: Record<string, string> = {};
    context.with(trace.setSpan(context.active(), span), () => injectTraceContext(carrier));
    span.end();
    expect(carrier["traceparent"]).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);

    // "The other side": a fresh root context, as a server or NATS consumer would start with.
    const remote = extractTraceContext({ ...carrier }, context.active());
    const extracted = trace.getSpanContext(remote);
    expect(extracted?.traceId).toBe(span.spanContext().traceId);
    expect(extracted?.isRemote).toBe(true);

    // A child span started under the extracted context continues the same trace.
    const child = getTracer().startSpan("server handler", {}, remote);
    expect(child.spanContext().traceId).toBe(span.spanContext().traceId);
    expect(child.spanContext().spanId).not.toBe(span.spanContext().spanId);
    child.end();
  });

  it("tracing - the active context follows async work (context manager registered)", async () => {
    const span = getTracer().startSpan("outer");
    const seen = await context.with(trace.setSpan(context.active(), span), async () => {
      await new Promise((r) => setTimeout(r, 5));
      return traceIdOf();
    });
    span.end();
    expect(seen).toBe(span.spanContext().traceId);
  });

  it("tracing - header names are matched case-insensitively and junk is ignored", () => {
    const id = "4bf92f3577b34da6a3ce929d0e0e4736";
    const ctx = extractTraceContext({ TraceParent: `00-${id}-00f067aa0ba902b7-01` });
    expect(trace.getSpanContext(ctx)?.traceId).toBe(id);
    const none = extractTraceContext({ traceparent: "not-a-traceparent" });
    expect(trace.getSpanContext(none)).toBeUndefined();
  });

  it("tracing - nothing is injected outside a span", () => {
    const carrier: Record<string, string> = {};
    injectTraceContext(carrier);
    expect(carrier["traceparent"]).toBeUndefined();
  });
});
