// A small read-through cache of lookups (a catalog entry, a template's existence) reused for a
// short TTL, so a warm request makes no round trip to the service that owns the data. Callers
// that ask for the same key at once share one load; a failed load is not kept.

export interface TtlCacheOptions {
  ttlMs: number;
  now?: () => number;
  /** Beyond this many keys the cache starts over (a bound, not an LRU); default 20,000. */
  maxEntries?: number;
}

export class TtlCache<V> {
  readonly #entries = new Map<string, { value: Promise<V>; expiresAt: number }>();
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #maxEntries: number;

  constructor(opts: TtlCacheOptions) {
    this.#ttlMs = opts.ttlMs;
    this.#now = opts.now ?? Date.now;
    this.#maxEntries = opts.maxEntries ?? 20_000;
  }

  /** The value of `key`: kept, or loaded now (and kept for the TTL if the load succeeds). */
  get(key: string, load: () => Promise<V>): Promise<V> {
    const now = this.#now();
    let entry = this.#entries.get(key);
    if (entry === undefined || entry.expiresAt <= now) {
      entry = { value: load(), expiresAt: now + this.#ttlMs };
      if (this.#entries.size >= this.#maxEntries) this.#entries.clear();
      this.#entries.set(key, entry);
      const current = entry;
      current.value.catch(() => {
        if (this.#entries.get(key) === current) this.#entries.delete(key);
      });
    }
    return entry.value;
  }

  /** Drops `key`, so the next get loads it again (after a change made here). */
  forget(key: string): void {
    this.#entries.delete(key);
  }

  /** Drops every key `test` accepts (a tenant's entries, after a change notice). */
  forgetIf(test: (key: string) => boolean): void {
    for (const key of this.#entries.keys()) if (test(key)) this.#entries.delete(key);
  }
}
