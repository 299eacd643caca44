// The web console (gateway/console, a Vite build) served at the gateway's root. Hashed assets
// under /assets/ are immutable and cached for a year; index.html is revalidated on every load
// (ETag) so a new deployment is picked up at once. Any other page path gets index.html (the
// console routes in the browser), but API paths never reach this: /v1/*, Connect and gRPC
// paths (/ensemble.*, /grpc.*) and the operational endpoints are matched before it.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import type http from "node:http";
import type http2 from "node:http2";
import { extname, join, normalize, sep } from "node:path";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
  ".woff2": "font/woff2",
};

// The console talks only to its own origin; no inline script or style is needed.
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

interface File {
  body: Buffer;
  type: string;
  etag: string;
}

export type ConsoleResponse = http.ServerResponse | http2.Http2ServerResponse;

export interface ConsoleSite {
  /** Answers a GET for `path`; false when the path is not the console's (the caller 404s). */
  serve(path: string, ifNoneMatch: string | undefined, res: ConsoleResponse): Promise<boolean>;
}

/** The console built into `dir`, or undefined when it has not been built. */
export function openConsole(dir: string): ConsoleSite | undefined {
  if (!existsSync(join(dir, "index.html"))) return undefined;
  const root = normalize(dir + sep);
  const cache = new Map<string, File | null>();

  async function load(file: string): Promise<File | undefined> {
    const cached = cache.get(file);
    if (cached !== undefined) return cached ?? undefined;
    let entry: File | null = null;
    try {
      const body = await readFile(file);
      entry = {
        body,
        type: TYPES[extname(file)] ?? "application/octet-stream",
        etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`,
      };
    } catch {
      entry = null;
    }
    // The build does not change under a running gateway; a miss is cached too (bounded below).
    if (cache.size < 1_000) cache.set(file, entry);
    return entry ?? undefined;
  }

  return {
    async serve(path, ifNoneMatch, res) {
      let decoded: string;
      try {
        decoded = decodeURIComponent(path);
      } catch {
        return false;
      }
      const file = normalize(join(root, decoded));
      const inside = file.startsWith(root) && !decoded.includes("\0");
      const asset = inside && file !== root ? await load(file) : undefined;
      if (asset !== undefined) {
        const immutable = decoded.startsWith("/assets/");
        send(
          res,
          asset,
          ifNoneMatch,
          immutable ? "public, max-age=31536000, immutable" : "no-cache",
        );
        return true;
      }
      // A page of the single-page app: no file extension in the last segment.
      const last = decoded.split("/").at(-1) ?? "";
      if (decoded.startsWith("/assets/") || last.includes(".")) return false;
      const index = await load(join(root, "index.html"));
      if (index === undefined) return false;
      send(res, index, ifNoneMatch, "no-cache");
      return true;
    },
  };
}

function send(
  res: ConsoleResponse,
  file: File,
  ifNoneMatch: string | undefined,
  cacheControl: string,
) {
  const headers: Record<string, string> = {
    "cache-control": cacheControl,
    etag: file.etag,
  };
  if (file.type.startsWith("text/html")) headers["content-security-policy"] = CSP;
  if (ifNoneMatch === file.etag) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  res.writeHead(200, {
    ...headers,
    "content-type": file.type,
    "content-length": String(file.body.length),
  });
  res.end(file.body);
}
