// One port for HTTP/1.1 and cleartext HTTP/2 (h2c, what gRPC clients speak without TLS).
// Node's `allowHTTP1` only works with TLS (ALPN), so the first bytes of each connection decide:
// the HTTP/2 connection preface starts with "PRI * HTTP/2.0"; anything else is HTTP/1.x.
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

const PREFACE = Buffer.from("PRI * HTTP/2.0");

export interface Listener {
  port: number;
  /** Stops accepting, lets open requests finish, then closes every connection (forced after timeoutMs). */
  close(timeoutMs?: number): Promise<void>;
}

export async function listenDual(
  handler: Handler,
  host: string,
  port: number,
  opts: {
    maxHeaderBytes?: number;
    /** HTTP/1.1 `Upgrade` requests (WebSocket); without it Node closes such connections. */
    onUpgrade?: (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;
  } = {},
): Promise<Listener> {
  const h1 = http.createServer({ maxHeaderSize: opts.maxHeaderBytes ?? 16 * 1024 }, handler);
  if (opts.onUpgrade !== undefined) h1.on("upgrade", opts.onUpgrade);
  const h2 = http2.createServer({ maxSessionMemory: 32 }, handler);
  // Idle keep-alive connections must not pin the process at shutdown.
  h1.keepAliveTimeout = 5_000;
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.setNoDelay(true);
    // A connection that never says which protocol it speaks is closed, not kept forever.
    socket.setTimeout(10_000, () => socket.destroy());
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, PREFACE.length);
      const isH2Prefix = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2Prefix && seen.length < PREFACE.length) return; // need more bytes to decide
      socket.off("data", onData);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(seen);
      if (isH2Prefix) {
        // The HTTP/2 session reads what is already buffered on the next tick (socket.read());
        // resuming here would flow those bytes away before it looks.
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", () => socket.destroy());
  });

  const bound = await new Promise<number>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const address = server.address();
      resolve(typeof address === "object" && address !== null ? address.port : port);
    });
  });

  return {
    port: bound,
    async close(timeoutMs = 10_000) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      h1.closeIdleConnections();
      for (const session of sessions) session.close();
      // HTTP/1.1 connections with a request in flight close after their response.
      h1.on("request", (_req, res) => res.setHeader("connection", "close"));
      const timer = setTimeout(() => {
        for (const session of sessions) session.destroy();
        for (const socket of sockets) socket.destroy();
      }, timeoutMs);
      const poll = setInterval(() => h1.closeIdleConnections(), 200);
      await closed;
      clearTimeout(timer);
      clearInterval(poll);
    },
  };
}
