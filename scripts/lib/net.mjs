// Ports and readiness checks for the launcher.
import { once } from "node:events";
import { connect, createServer } from "node:net";
import { ToolError } from "./tools.mjs";

/**
 * Fails with a message saying who wanted the port and how to change it, when it is taken.
 * @param {string} host @param {number} port @param {string} what @param {string} hint
 */
export async function assertPortFree(host, port, what, hint) {
  const server = createServer();
  try {
    server.listen(port, host);
    await once(server, "listening");
  } catch (err) {
    const code = /** @type {NodeJS.ErrnoException} */ (err).code;
    throw new ToolError(
      code === "EADDRINUSE"
        ? `port ${port} (${what}) is already in use on ${host}: stop what holds it, or ${hint}`
        : `cannot listen on ${host}:${port} (${what}): ${String(err)}`,
    );
  } finally {
    if (server.listening) await new Promise((resolve) => server.close(resolve));
  }
}

/**
 * Whether a TCP connection to host:port succeeds within `timeoutMs`.
 * @param {string} host @param {number} port @param {number} [timeoutMs]
 * @returns {Promise<boolean>}
 */
export function canConnect(host, port, timeoutMs = 1_000) {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (/** @type {boolean} */ ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
