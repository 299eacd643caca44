// The HTTP client under the provider SDKs: a `fetch` over one undici connection pool per
// deployment. Node 20's built-in fetch clones each request and pushes bodies through web
// streams; measured against the simulator, SDK + built-in fetch cost ~1.46 ms of CPU per call
// versus ~0.41 ms for undici's request (bench/gateway-overhead, notes). The SDKs still build the
// requests, parse the answers and map errors; only the transport changes. A bounded pool also
// stops bursts from opening a new connection per call.
import { Readable } from "node:stream";
import { Agent, request } from "undici";

export function pooledFetch(opts: { connections?: number } = {}): typeof fetch {
  const dispatcher = new Agent({ connections: opts.connections ?? 256, keepAliveTimeout: 30_000 });
  return async (input, init) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, key) => {
      headers[key] = value;
    });
    const body = init?.body;
    if (
      body !== undefined &&
      body !== null &&
      typeof body !== "string" &&
      !(body instanceof Uint8Array)
    ) {
      // Multipart and streamed bodies (not used by our calls) go through the built-in fetch.
      return fetch(input, init);
    }
    const res = await request(url, {
      method: (init?.method ?? "GET") as "GET",
      headers,
      ...(body !== undefined && body !== null ? { body } : {}),
      ...(init?.signal !== undefined && init.signal !== null ? { signal: init.signal } : {}),
      dispatcher,
    });
    const out = new Headers();
    for (const [key, value] of Object.entries(res.headers)) {
      if (Array.isArray(value)) for (const v of value) out.append(key, v);
      else if (value !== undefined) out.set(key, value);
    }
    const empty = res.statusCode === 204 || res.statusCode === 304 || init?.method === "HEAD";
    if (empty) res.body.resume();
    return new Response(empty ? null : (Readable.toWeb(res.body) as ReadableStream<Uint8Array>), {
      status: res.statusCode,
      headers: out,
    });
  };
}
