// The console's only way to the platform: connect-web clients built from the same generated
// descriptors the services use (@ensemble/proto), over the gateway's Connect protocol on the
// origin that served the page. Every call carries the current access token; the session module
// refreshes it before it expires.
import type { DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import {
  AuthService,
  ModelProxyService,
  RegistryService,
  RunService,
  SessionService,
} from "@ensemble/proto";

/** Set by the session module: the access token to send, and a new one after a refusal. */
export interface TokenSource {
  /** A valid access token (refreshed when due), or none when signed out. */
  token(): Promise<string | undefined>;
  /** A token to try instead of `refused`, which the gateway refused before it expired. */
  refused(refused: string): Promise<string | undefined>;
}

let tokenSource: TokenSource | undefined;

export function setTokenSource(source: TokenSource | undefined): void {
  tokenSource = source;
}

const bearer: Interceptor = (next) => async (req) => {
  // Public methods (login, signup, refresh) are called with no source attached for them.
  if (req.header.has("authorization") || tokenSource === undefined) return next(req);
  const source = tokenSource;
  const token = await source.token();
  if (token === undefined) return next(req);
  req.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(req);
  } catch (err) {
    // The gateway refuses a token before it expires once the user's role or state changed (or
    // the session ended elsewhere): refresh once and repeat a unary call with the new token.
    if (ConnectError.from(err).code !== Code.Unauthenticated) throw err;
    const fresh = await source.refused(token);
    if (fresh === undefined || fresh === token || req.stream) throw err;
    req.header.set("authorization", `Bearer ${fresh}`);
    return next(req);
  }
};

const transport = createConnectTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
  interceptors: [bearer],
});

const publicTransport = createConnectTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
});

const make = <T extends DescService>(service: T): Client<T> => createClient(service, transport);

export const api = {
  auth: make(AuthService),
  registry: make(RegistryService),
  runs: make(RunService),
  sessions: make(SessionService),
  proxy: make(ModelProxyService),
};

/** AuthService without the bearer interceptor (login, signup and refresh must not recurse). */
export const publicAuth = createClient(AuthService, publicTransport);

/** A message a person can act on; never a stack trace. */
export function errorText(err: unknown): string {
  const e = ConnectError.from(err);
  switch (e.code) {
    case Code.Unauthenticated:
      return "Your session has expired. Please log in again.";
    case Code.PermissionDenied:
      return `Not allowed: ${e.rawMessage}`;
    case Code.Unavailable:
      return "The service is unavailable right now. Try again in a moment.";
    case Code.DeadlineExceeded:
      return "The request took too long.";
    case Code.Unimplemented:
      return "This feature is not available on this deployment.";
    default:
      return e.rawMessage !== "" ? e.rawMessage : "Something went wrong.";
  }
}

export function isCode(err: unknown, code: Code): boolean {
  return ConnectError.from(err).code === code;
}

/**
 * The request field an INVALID_ARGUMENT names ("cron.expression"): the services' x-invalid-field
 * trailer, else the path their messages (and contract validation) start with.
 */
export function invalidField(err: unknown): string | undefined {
  const e = ConnectError.from(err);
  if (e.code !== Code.InvalidArgument) return undefined;
  return e.metadata.get("x-invalid-field") ?? /^([\w.[\]]+): /.exec(e.rawMessage)?.[1];
}
