// Failed-login throttling per account and per client address. The counters live in MongoDB so
// every auth replica sees the same ones; each change is a single-document update.
//
// A key (account or address) may fail `max` times inside a window that starts at its first
// failure; then every attempt is refused until the window ends, with the right password too
// (otherwise a guessing loop learns the password by the different answer). A successful login
// clears the account's counter, not the address's (one known account must not reset the
// address that is guessing others).
import { ResourceExhaustedError } from "@ensemble/kit";
import type { AuthModels } from "./auth.model.js";
import { isDuplicateKey } from "./auth.model.js";
import { sha256 } from "./secrets.js";

export interface ThrottleOptions {
  maxFailuresPerAccount: number;
  maxFailuresPerAddress: number;
  windowMs: number;
}

export class LoginThrottle {
  constructor(
    private readonly models: AuthModels,
    private readonly opts: ThrottleOptions,
  ) {}

  private keys(email: string, address: string | undefined): { key: string; max: number }[] {
    // The email is hashed: the collection need not be another list of who has an account.
    const keys = [{ key: `account:${sha256(email)}`, max: this.opts.maxFailuresPerAccount }];
    if (address !== undefined) {
      keys.push({ key: `address:${address}`, max: this.opts.maxFailuresPerAddress });
    }
    return keys;
  }

  /** Throws ResourceExhaustedError (with retry time) when the account or address is locked. */
  async check(email: string, address: string | undefined): Promise<void> {
    const now = Date.now();
    let retryAfterMs = 0;
    for (const { key, max } of this.keys(email, address)) {
      const doc = await this.models.throttles.findOne({ key }).lean();
      if (doc === null) continue;
      const windowEnd = doc.windowStart.getTime() + this.opts.windowMs;
      if (doc.failures >= max && windowEnd > now) {
        retryAfterMs = Math.max(retryAfterMs, windowEnd - now);
      }
    }
    if (retryAfterMs > 0) {
      throw new ResourceExhaustedError("too many failed logins; try again later", {
        retryAfterMs,
      });
    }
  }

  async recordFailure(email: string, address: string | undefined): Promise<void> {
    const now = new Date();
    const windowFloor = new Date(now.getTime() - this.opts.windowMs);
    for (const { key } of this.keys(email, address)) {
      // A window that has ended starts over at this failure.
      await this.models.throttles.updateOne(
        { key, windowStart: { $lte: windowFloor } },
        { $set: { failures: 0, windowStart: now } },
      );
      try {
        await this.models.throttles.updateOne(
          { key },
          { $inc: { failures: 1 }, $setOnInsert: { windowStart: now } },
          { upsert: true },
        );
      } catch (err) {
        // Two first failures raced on the upsert; the loser increments the winner's document.
        if (!isDuplicateKey(err)) throw err;
        await this.models.throttles.updateOne({ key }, { $inc: { failures: 1 } });
      }
    }
  }

  async recordSuccess(email: string): Promise<void> {
    await this.models.throttles.deleteOne({ key: `account:${sha256(email)}` });
  }
}

/**
 * The client's address: the last entry of `x-forwarded-for` (the one our gateway appended or
 * set; entries before it are whatever the client claimed). Undefined when the call did not come
 * through the gateway: the kit does not hand handlers the gRPC peer, so such direct callers
 * (other services, operators) are throttled per account only.
 */
export function clientAddress(headers: Headers): string | undefined {
  const forwarded = headers.get("x-forwarded-for");
  if (forwarded === null) return undefined;
  const last = forwarded.split(",").at(-1)?.trim() ?? "";
  return last === "" || last.length > 100 ? undefined : last;
}
