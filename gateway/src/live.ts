// Calls that outlive a revocation: WebSockets and forwarded server streams (WatchRun, Run, ...)
// are tracked with the credential they were opened with. When auth's notices say a user, a
// session or an API key changed (after the authenticator took the change in), the ones opened
// with that credential are authenticated again, and those now refused are ended with the
// refusal's message (UNAUTHENTICATED "this access token was revoked ..."). Auth unreachable (an
// API key's exchange) is not a revocation: such a stream runs on.
import { Code } from "@connectrpc/connect";
import { toConnectError } from "@ensemble/kit";
import type { Authenticator, Caller } from "./authn.js";

/** Who a change notice is about. */
export interface CredentialChange {
  kind: "user" | "session" | "api-key";
  tenantId: string;
  id: string;
}

interface Live {
  caller: Caller;
  credential: Headers;
  end: (message: string) => void;
}

export class LiveCalls {
  readonly #authenticator: Pick<Authenticator, "authenticate">;
  readonly #live = new Set<Live>();

  constructor(authenticator: Pick<Authenticator, "authenticate">) {
    this.#authenticator = authenticator;
  }

  /** Tracks a call until the returned function is called; `end` stops it when revoked. */
  track(caller: Caller, credential: Headers, end: (message: string) => void): () => void {
    const entry: Live = { caller, credential: credentialOnly(credential), end };
    this.#live.add(entry);
    return () => this.#live.delete(entry);
  }

  /** Re-checks the calls the change is about; resolves once they were checked (and ended). */
  async changed(change: CredentialChange): Promise<void> {
    const affected = [...this.#live].filter((l) => concerns(l.caller, change));
    await Promise.all(
      affected.map(async (live) => {
        try {
          await this.#authenticator.authenticate(live.credential);
        } catch (err) {
          const error = toConnectError(err);
          if (error.code !== Code.Unauthenticated && error.code !== Code.PermissionDenied) return;
          if (this.#live.delete(live)) live.end(error.rawMessage);
        }
      }),
    );
  }

  /** Tracked calls (for tests). */
  get size(): number {
    return this.#live.size;
  }
}

function concerns(caller: Caller, change: CredentialChange): boolean {
  const { principal, apiKey } = caller;
  if (principal.tenantId !== change.tenantId) return false;
  switch (change.kind) {
    case "user":
      return principal.subject === change.id;
    case "session":
      return principal.sessionId === change.id;
    case "api-key":
      return apiKey?.id === change.id;
  }
}

/** Only what the authenticator reads: nothing else of the request is kept. */
function credentialOnly(headers: Headers): Headers {
  const kept = new Headers();
  for (const name of ["authorization", "x-api-key"]) {
    const value = headers.get(name);
    if (value !== null) kept.set(name, value);
  }
  return kept;
}
