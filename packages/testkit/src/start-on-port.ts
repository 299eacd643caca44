import { freePort } from "./process.js";

/**
 * Runs `start` on the requested port, or on a free one. A free port can be taken between the
 * probe and the server's bind; when the server says so, try another (three times at most).
 */
export async function startOnPort<T>(
  requested: number | undefined,
  start: (port: number) => Promise<T>,
): Promise<T> {
  if (requested !== undefined && requested !== 0) return start(requested);
  for (let attempt = 1; ; attempt++) {
    try {
      return await start(await freePort());
    } catch (err) {
      const clash = err instanceof Error && /address already in use/i.test(err.message);
      if (!clash || attempt >= 3) throw err;
    }
  }
}
