// OpenTelemetry tracing. The W3C TraceContext propagator is always installed, so trace ids
// cross gRPC and NATS hops even when nothing is exported; spans are exported over OTLP/http
// only when an endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT).
import {
  context,
  propagation,
  trace,
  type Context,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
} from "@opentelemetry/api";
import {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";

let propagatorInstalled = false;

/**
 * Installs the W3C propagator globally once. Called by initTracing and lazily by inject/extract,
 * so a library user (or a test) that never calls initTracing still gets working propagation.
 * If the application registered its own propagator first, that one stays.
 */
function ensurePropagator(): void {
  if (propagatorInstalled) return;
  propagatorInstalled = true;
  propagation.setGlobalPropagator(
    new CompositePropagator({
      propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
    }),
  );
}

export interface TracingOptions {
  service: string;
  version: string;
  /** OTLP/http base URL, e.g. http://collector:4318 ("/v1/traces" is appended); unset = no export. */
  otlpEndpoint?: string;
}

export interface Tracing {
  /** Flushes pending spans and unregisters the provider and context manager. */
  shutdown(): Promise<void>;
}

/** Call once at start-up, before anything creates spans. */
export function initTracing(opts: TracingOptions): Tracing {
  ensurePropagator();
  const spanProcessors: SpanProcessor[] = [];
  if (opts.otlpEndpoint !== undefined && opts.otlpEndpoint !== "") {
    const base = opts.otlpEndpoint.replace(/\/+$/, "");
    const url = base.endsWith("/v1/traces") ? base : `${base}/v1/traces`;
    spanProcessors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url })));
  }
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      "service.name": opts.service,
      "service.version": opts.version,
    }),
    spanProcessors,
  });
  // Registers the tracer provider and the AsyncLocalStorage context manager; the propagator
  // was installed above (null = leave it alone).
  provider.register({ propagator: null });
  return {
    async shutdown() {
      await provider.shutdown();
      trace.disable();
      context.disable();
    },
  };
}

/** The kit's tracer (a no-op tracer until initTracing has run). */
export function getTracer(name = "@ensemble/kit"): Tracer {
  return trace.getTracer(name);
}

const setter: TextMapSetter<Record<string, string>> = {
  set(carrier, key, value) {
    carrier[key] = value;
  },
};

const getter: TextMapGetter<Record<string, string | undefined>> = {
  keys(carrier) {
    return Object.keys(carrier);
  },
  get(carrier, key) {
    // Header and metadata names are case-insensitive; carriers may hold either spelling.
    const direct = carrier[key];
    if (direct !== undefined) return direct;
    const lower = key.toLowerCase();
    for (const [k, v] of Object.entries(carrier)) {
      if (k.toLowerCase() === lower) return v;
    }
    return undefined;
  },
};

/**
 * Writes `traceparent` (and `tracestate` / `baggage` when present) of `ctx` (default: the active
 * context) into carrier, for gRPC metadata and NATS headers.
 */
export function injectTraceContext(
  carrier: Record<string, string>,
  ctx: Context = context.active(),
): void {
  ensurePropagator();
  propagation.inject(ctx, carrier, setter);
}

/** Reads the W3C trace context from carrier into a Context based on `base` (default: active). */
export function extractTraceContext(
  carrier: Record<string, string | undefined>,
  base: Context = context.active(),
): Context {
  ensurePropagator();
  return propagation.extract(base, carrier, getter);
}

/** The trace id of the span in ctx (default: active), if any; handy for log lines. */
export function traceIdOf(ctx: Context = context.active()): string | undefined {
  const spanContext = trace.getSpanContext(ctx);
  return spanContext === undefined ? undefined : spanContext.traceId;
}
