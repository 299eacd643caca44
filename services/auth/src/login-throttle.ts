// Failed-login throttling per account and per client address. Every failure is one inserted
// document, so the count is exact across replicas (concurrent $inc loses increments on FerretDB;
// see auth.model.ts), and the window slides: a key may fail `max` times within `windowMs`, then
// every attempt is refused, the right password too (otherwise a guessing loop learns the
// password from the different answer), until its oldest counted failure leaves the window.
// A successful login clears the account's failures, not the address's (one known account must
// not reset an address that is guessing others).
//
// An attempt is recorded BEFORE the password is checked and counted after, so a burst of
// concurrent guesses cannot all pass a check that none of them has been counted in yet: the
// k-th recorded attempt sees at least k. A refused attempt is withdrawn (it was never checked,
// and counting it would let an attacker keep a victim's account locked past the retry time).
import { ResourceExhaustedError } from "@ensemble/kit";
import type { AuthModels } from "./auth.model.js";
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
    const keys = [{ key: accountKey(email), max: this.opts.maxFailuresPerAccount }];
    if (address !== undefined) {
      keys.push({ key: `address:${address}`, max: this.opts.maxFailuresPerAddress });
    }
    return keys;
  }

  /**
   * Records an attempt and returns its outcome handlers; throws ResourceExhaustedError (with
   * the retry time) when the account or the address already used up its failures.
   */
  async begin(email: string, address: string | undefined): Promise<LoginAttempt> {
    const keys = this.keys(email, address);
    const now = new Date();
    const since = new Date(now.getTime() - this.opts.windowMs);
    const inserted = await this.models.loginFailures.insertMany(
      keys.map(({ key }) => ({ key, time: now })),
    );
    const ids = inserted.map((d) => d._id);
    let over = false;
    for (const { key, max } of keys) {
      const count = await this.models.loginFailures.countDocuments({ key, time: { $gt: since } });
      if (count > max) over = true;
    }
    if (over) {
      await this.models.loginFailures.deleteMany({ _id: { $in: ids } });
      throw new ResourceExhaustedError("too many failed logins; try again later", {
        retryAfterMs: await this.retryAfterMs(keys, now.getTime()),
      });
    }
    return {
      succeeded: async () => {
        await this.models.loginFailures.deleteMany({
          $or: [{ _id: { $in: ids } }, { key: accountKey(email) }],
        });
      },
      failed: async () => {
        // Failures that left the window count for nothing; drop them.
        await this.models.loginFailures.deleteMany({
          key: { $in: keys.map((k) => k.key) },
          time: { $lte: since },
        });
      },
    };
  }

  /** When the oldest counted failure of the most limited key leaves the window. */
  private async retryAfterMs(keys: { key: string; max: number }[], now: number): Promise<number> {
    const since = new Date(now - this.opts.windowMs);
    let retryAfterMs = 0;
    for (const { key, max } of keys) {
      // The max-th newest failure inside the window: when it leaves, the key is below max.
      const recent = await this.models.loginFailures
        .find({ key, time: { $gt: since } })
        .sort({ time: -1 })
        .skip(max - 1)
        .limit(1)
        .lean();
      const counted = recent[0];
      if (counted !== undefined) {
        retryAfterMs = Math.max(retryAfterMs, counted.time.getTime() + this.opts.windowMs - now);
      }
    }
    // Concurrent successes may have cleared the failures meanwhile: then soon.
    return Math.max(retryAfterMs, 1_000);
  }
}

export interface LoginAttempt {
  /** The password was right: the account's failures are cleared, this attempt withdrawn. */
  succeeded(): Promise<void>;
  /** The attempt stays counted. */
  failed(): Promise<void>;
}

function accountKey(email: string): string {
  return `account:${sha256(email)}`;
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
