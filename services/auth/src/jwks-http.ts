// GET /.well-known/jwks.json over plain HTTP, so every service and the gateway can point
// JWKS_URL at auth (the kit's verifier reads http(s) and file URLs, not gRPC).
import { createServer, type Server } from "node:http";
import type { Logger } from "@ensemble/kit";
import type { KeyStore } from "./signing-keys.js";

export const JWKS_PATH = "/.well-known/jwks.json";

export async function startJwksServer(
  keys: KeyStore,
  opts: { port: number; host?: string; logger: Logger },
): Promise<{ port: number; url: string; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== JWKS_PATH) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    keys.jwks().then(
      (jwks) => {
        const body = JSON.stringify({ keys: jwks });
        res.writeHead(200, {
          "content-type": "application/jwk-set+json",
          // Verifiers refetch on an unknown kid anyway; a minute keeps rotation visible quickly.
          "cache-control": "public, max-age=60",
          "content-length": Buffer.byteLength(body),
        });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      (err: unknown) => {
        opts.logger.error({ err }, "JWKS unavailable");
        res.writeHead(503, { "content-type": "text/plain", "retry-after": "1" });
        res.end("signing keys unavailable\n");
      },
    );
  });
  const host = opts.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : opts.port;
  const urlHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;
  return {
    port,
    url: `http://${urlHost}:${port}${JWKS_PATH}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
