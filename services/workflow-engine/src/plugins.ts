// Plugins: out-of-process gRPC servers implementing ensemble.plugin.v1.PluginService, found in
// the registry (ListPlugins, the run's tenant's live registrations plus global ones) and called
// with the kit's client. Registrations are cached per tenant for a moment (a step of a busy run
// must not cost a registry round trip); a name not in the cache, or a call the plugin did not
// answer, reads the registry again so a plugin that just registered or moved is found.
import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient, type GrpcClient, type Metrics } from "@ensemble/kit";
import {
  PluginService,
  type DescribeResponse,
  type InvocationContext,
  type InvokeResponse,
  type PluginRegistration,
  type RegistryService,
} from "@ensemble/proto";

type PluginClient = Pick<GrpcClient<typeof PluginService>, "describe" | "invoke">;

export interface PluginCall {
  /** Registered plugin id (the step's `plugin`). */
  plugin: string;
  method: string;
  inputs: JsonObject;
  context: Omit<InvocationContext, "$typeName" | "$unknown">;
  /** A token acting for the run's user: read the registry with it, and pass it to the plugin. */
  token: string;
  timeoutMs: number;
  signal: AbortSignal;
}

export interface PluginResult {
  response: InvokeResponse;
  registration: PluginRegistration;
}

/** Failures of methods the plugin declares idempotent (Describe): only those are retried. */
const idempotentFailures = new WeakSet<ConnectError>();

/** Whether `err` is a plugin failure that is safe to retry, if its code is transient. */
export function isIdempotentFailure(err: unknown): boolean {
  return err instanceof ConnectError && idempotentFailures.has(err);
}

/** What the executor needs: one invocation; errors are ConnectErrors with clear messages. */
export interface PluginInvoker {
  invoke(call: PluginCall): Promise<PluginResult>;
}

export interface RegistryPluginsOptions {
  registry: Pick<GrpcClient<typeof RegistryService>, "listPlugins">;
  /** How long a tenant's list of plugins is reused; default 2 s. */
  cacheMs?: number;
  /** How long a plugin's Describe answer is reused; default 60 s. */
  describeCacheMs?: number;
  metrics?: Metrics;
  /** Tests swap the transport; default: the kit's gRPC client. */
  clientFor?: (address: string) => PluginClient;
}

const MAX_MESSAGE = 500;

export class RegistryPlugins implements PluginInvoker {
  readonly #registry: RegistryPluginsOptions["registry"];
  readonly #cacheMs: number;
  readonly #describeCacheMs: number;
  readonly #clientFor: (address: string) => PluginClient;
  readonly #lists = new Map<string, { at: number; plugins: Map<string, PluginRegistration> }>();
  readonly #clients = new Map<string, PluginClient>();
  readonly #describes = new Map<string, { at: number; idempotent: Set<string> }>();

  constructor(opts: RegistryPluginsOptions) {
    this.#registry = opts.registry;
    this.#cacheMs = opts.cacheMs ?? 2_000;
    this.#describeCacheMs = opts.describeCacheMs ?? 60_000;
    this.#clientFor =
      opts.clientFor ??
      ((address) =>
        createClient(PluginService, address, opts.metrics ? { metrics: opts.metrics } : {}));
  }

  async invoke(call: PluginCall): Promise<PluginResult> {
    const tenantId = call.context.tenantId;
    const { registration, cached } = await this.#resolve(tenantId, call.plugin, call.token, false);
    try {
      return await this.#invokeAt(registration, call);
    } catch (err) {
      if (!cached || ConnectError.from(err).code !== Code.Unavailable) throw err;
      // The cached registration may be stale: the plugin stopped or moved. The registry decides
      // (NOT_FOUND when it is gone); a new address gets the call, which never reached the old one.
      const fresh = (await this.#resolve(tenantId, call.plugin, call.token, true)).registration;
      if (fresh.address === registration.address) throw err;
      return this.#invokeAt(fresh, call);
    }
  }

  async #invokeAt(registration: PluginRegistration, call: PluginCall): Promise<PluginResult> {
    if (registration.methods.length > 0 && !registration.methods.includes(call.method)) {
      throw new ConnectError(
        `plugin "${call.plugin}" has no method "${call.method}" (it offers ${registration.methods
          .map((m) => `"${m}"`)
          .join(", ")})`,
        Code.NotFound,
      );
    }
    const client = this.#client(registration.address);
    const options = {
      headers: { authorization: `Bearer ${call.token}` },
      signal: call.signal,
      timeoutMs: call.timeoutMs,
    };
    const idempotent = await this.#idempotent(registration, client, call.method, options);
    try {
      const response = await client.invoke(
        { method: call.method, inputs: call.inputs, context: call.context },
        options,
      );
      return { response, registration };
    } catch (err) {
      throw this.#failure(err, call.context.tenantId, call, registration, idempotent);
    }
  }

  /**
   * The live registration of `id` for the tenant (`cached`: from the cache, not the registry
   * just now); NOT_FOUND when there is none. A miss always asks the registry.
   */
  async #resolve(
    tenantId: string,
    id: string,
    token: string,
    fresh: boolean,
  ): Promise<{ registration: PluginRegistration; cached: boolean }> {
    const list = this.#lists.get(tenantId);
    if (!fresh && list !== undefined && Date.now() - list.at < this.#cacheMs) {
      const hit = list.plugins.get(id);
      if (hit !== undefined && !expired(hit)) return { registration: hit, cached: true };
    }
    const plugins = new Map<string, PluginRegistration>();
    let pageToken = "";
    do {
      const res = await this.#registry.listPlugins(
        { page: { pageSize: 200, pageToken } },
        { headers: { authorization: `Bearer ${token}` }, timeoutMs: 10_000 },
      );
      for (const p of res.plugins) plugins.set(p.id, p);
      pageToken = res.page?.nextPageToken ?? "";
    } while (pageToken !== "");
    this.#lists.set(tenantId, { at: Date.now(), plugins });
    const found = plugins.get(id);
    if (found === undefined) {
      throw new ConnectError(
        `plugin "${id}" is not registered for this tenant (or it stopped heart-beating)`,
        Code.NotFound,
      );
    }
    return { registration: found, cached: false };
  }

  #client(address: string): PluginClient {
    let client = this.#clients.get(address);
    if (client === undefined) {
      client = this.#clientFor(address);
      this.#clients.set(address, client);
    }
    return client;
  }

  /**
   * Whether Describe marks the method idempotent (cached per address and version). A plugin that
   * does not answer Describe is treated as non-idempotent: its failures are not retried.
   */
  async #idempotent(
    registration: PluginRegistration,
    client: PluginClient,
    method: string,
    options: { headers: Record<string, string>; signal: AbortSignal; timeoutMs: number },
  ): Promise<boolean> {
    const key = `${registration.address}|${registration.id}|${registration.version}`;
    const cached = this.#describes.get(key);
    if (cached !== undefined && Date.now() - cached.at < this.#describeCacheMs) {
      return cached.idempotent.has(method);
    }
    let described: DescribeResponse;
    try {
      described = await client.describe(
        {},
        { ...options, timeoutMs: Math.min(options.timeoutMs, 5_000) },
      );
    } catch {
      return false;
    }
    const idempotent = new Set(described.methods.filter((m) => m.idempotent).map((m) => m.name));
    this.#describes.set(key, { at: Date.now(), idempotent });
    return idempotent.has(method);
  }

  /**
   * The plugin's own status code, with a message that names the plugin. Transport failures say
   * only that the plugin is unreachable (no addresses or socket errors in a run's error).
   */
  #failure(
    err: unknown,
    tenantId: string,
    call: PluginCall,
    registration: PluginRegistration,
    idempotent: boolean,
  ): ConnectError {
    const ce = ConnectError.from(err);
    const name = `plugin "${registration.id}"`;
    if (ce.code === Code.Canceled) return ce;
    if (ce.code === Code.Unavailable) {
      // It may have moved (re-registered elsewhere) or died: read the registry next time.
      this.#lists.delete(tenantId);
      return mark(
        new ConnectError(`${name} is unavailable (no answer at its registered address)`, ce.code),
        idempotent,
      );
    }
    if (ce.code === Code.DeadlineExceeded) {
      return mark(
        new ConnectError(`${name} did not answer within ${call.timeoutMs} ms`, ce.code),
        idempotent,
      );
    }
    const message =
      ce.rawMessage.length > MAX_MESSAGE
        ? `${ce.rawMessage.slice(0, MAX_MESSAGE)}…`
        : ce.rawMessage;
    return mark(new ConnectError(`${name} failed ${call.method}: ${message}`, ce.code), idempotent);
  }
}

function mark(err: ConnectError, idempotent: boolean): ConnectError {
  if (idempotent) idempotentFailures.add(err);
  return err;
}

function expired(p: PluginRegistration): boolean {
  const t = p.expireTime;
  return t !== undefined && Number(t.seconds) * 1000 + t.nanos / 1e6 <= Date.now();
}

/**
 * The inputs object of a plugin step. A prompt that is a JSON object is a template of the inputs:
 * each string in it is rendered (so values with quotes or newlines stay valid JSON). Any other
 * prompt is rendered and sent as `{"text": ...}`; an empty prompt sends the run's input.
 */
export function pluginInputs(prompt: string, render: (text: string) => string): JsonObject {
  const trimmed = prompt.trim();
  if (trimmed.startsWith("{")) {
    let doc: unknown;
    try {
      doc = JSON.parse(trimmed);
    } catch {
      doc = undefined;
    }
    if (doc !== null && typeof doc === "object" && !Array.isArray(doc)) {
      return renderJson(doc, render) as JsonObject;
    }
  }
  return { text: render(prompt === "" ? "{{input}}" : prompt) };
}

function renderJson(value: unknown, render: (text: string) => string): unknown {
  if (typeof value === "string") return render(value);
  if (Array.isArray(value)) return value.map((v) => renderJson(v, render));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, renderJson(v, render)]));
  }
  return value;
}
