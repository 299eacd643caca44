// Signing keys: ES256 key pairs in MongoDB (private half sealed with AES-256-GCM), the JWKS,
// rotation, and minting access tokens.
//
// Several replicas share the collection without transactions (and FerretDB's conditional
// updates are not atomic; see auth.model.ts), so key documents are insert-only and the rules
// converge whatever the interleaving:
// - the CURRENT key is simply the newest one (createTime, then kid): two replicas rotating at
//   once both insert a key and the newer one wins everywhere;
// - a key is retired when the next newer key was created (nothing to update);
// - a scheduled rotation is an insert into `claims` ("rotation:<kid>"), so one replica rotates;
// - a retired key stays in the JWKS until every token it signed has expired: retire time plus
//   the longest short-lived token, or the latest expiry of a long-lived token signed with it
//   (recorded as an insert-only hold), whichever is later.
import { randomUUID } from "node:crypto";
import type { Logger } from "@ensemble/kit";
import {
  exportJWK,
  generateKeyPair,
  importJWK,
  SignJWT,
  type CryptoKey,
  type JWK,
  type KeyObject,
} from "jose";
import { claim, type AuthModels, type SigningKeyDoc } from "./auth.model.js";
import { seal, unseal } from "./secrets.js";

export const SIGNING_ALG = "ES256";

/** A rotation claim whose key never appeared after this long is abandoned. */
const STALE_ROTATION_CLAIM_MS = 10 * 60_000;

export interface PublicJwk {
  kty: string;
  kid: string;
  use: string;
  alg: string;
  crv: string;
  x: string;
  y: string;
}

export interface KeyInfo {
  kid: string;
  alg: string;
  createTime: Date;
  retireTime?: Date;
  removeTime?: Date;
}

export interface TokenClaims {
  sub: string;
  tid: string;
  roles: string[];
  typ: "user" | "service";
  svc?: string;
  sid?: string;
  akid?: string;
  scp?: string[];
}

export interface KeyStoreOptions {
  models: AuthModels;
  secret: string;
  issuer: string;
  audience: string;
  logger: Logger;
  /** The longest lifetime of a token signed without recording it (access and service tokens). */
  maxShortTokenLifetimeMs: number;
  /** Published keys are re-read from MongoDB after this long (other replicas may rotate). */
  cacheMs?: number;
}

interface LoadedKey {
  doc: SigningKeyDoc;
  retireTime?: Date;
  removeTime?: Date;
}

interface Loaded {
  at: number;
  /** Newest first; only keys still published. */
  keys: LoadedKey[];
}

export class KeyStore {
  private loaded: Loaded | undefined;
  private loading: Promise<Loaded> | undefined;
  private readonly privateKeys = new Map<string, Promise<CryptoKey | KeyObject>>();
  private readonly cacheMs: number;

  constructor(private readonly opts: KeyStoreOptions) {
    this.cacheMs = opts.cacheMs ?? 5_000;
  }

  /** Makes sure a signing key exists (first start of the first replica creates one). */
  async ensureKey(): Promise<void> {
    const keys = (await this.load(true)).keys;
    if (keys.length === 0) {
      await this.createKey("first start");
      await this.load(true);
    }
  }

  /** A new key signs from now on; returns the new current key and the published ones. */
  async rotate(reason: string): Promise<{ current: KeyInfo; published: KeyInfo[] }> {
    await this.createKey(reason);
    const keys = (await this.load(true)).keys;
    const current = keys[0];
    if (current === undefined) throw new Error("no signing key after rotation");
    return { current: this.info(current), published: keys.map((k) => this.info(k)) };
  }

  /** Rotates when the current key is older than maxAgeMs, unless another replica claimed it. */
  async rotateIfDue(maxAgeMs: number): Promise<boolean> {
    const current = (await this.load(true)).keys[0]?.doc;
    if (current === undefined) {
      await this.ensureKey();
      return true;
    }
    if (Date.now() - current.createTime.getTime() < maxAgeMs) return false;
    const key = `rotation:${current.kid}`;
    if (!(await claim(this.opts.models, key))) {
      // A replica that claimed the rotation and died before creating the key would block it
      // for good; a claim older than this is given up, and the next check claims afresh.
      await this.opts.models.claims.deleteOne({
        key,
        createTime: { $lt: new Date(Date.now() - STALE_ROTATION_CLAIM_MS) },
      });
      return false;
    }
    await this.rotate("scheduled");
    return true;
  }

  /** The public keys still published, as JWKs. */
  async jwks(): Promise<PublicJwk[]> {
    return (await this.load(false)).keys.map(({ doc: k }) => ({
      kty: k.publicJwk["kty"] ?? "EC",
      crv: k.publicJwk["crv"] ?? "P-256",
      x: k.publicJwk["x"] ?? "",
      y: k.publicJwk["y"] ?? "",
      kid: k.kid,
      use: "sig",
      alg: k.alg,
    }));
  }

  async published(): Promise<KeyInfo[]> {
    return (await this.load(false)).keys.map((k) => this.info(k));
  }

  /** Signs an access token with the current key; ttlMs must not exceed the short-token bound. */
  async sign(
    claims: TokenClaims,
    ttlMs: number,
  ): Promise<{ token: string; expiresAt: Date; jti: string; kid: string }> {
    if (ttlMs > this.opts.maxShortTokenLifetimeMs) {
      throw new Error("token lifetime above the bound kept for retired keys");
    }
    return this.signWithCurrent(claims, ttlMs, false);
  }

  /**
   * Signs a long-lived bootstrap credential; the key records the token's expiry so its public
   * half stays published until then, even after rotation.
   */
  async signLongLived(
    claims: TokenClaims,
    ttlMs: number,
  ): Promise<{ token: string; expiresAt: Date; jti: string; kid: string }> {
    return this.signWithCurrent(claims, ttlMs, true);
  }

  private async signWithCurrent(
    claims: TokenClaims,
    ttlMs: number,
    record: boolean,
  ): Promise<{ token: string; expiresAt: Date; jti: string; kid: string }> {
    let key = (await this.load(false)).keys[0]?.doc;
    if (key === undefined) {
      await this.ensureKey();
      key = (await this.load(false)).keys[0]?.doc;
      if (key === undefined) throw new Error("no signing key");
    }
    const now = Date.now();
    const expiresAt = new Date(Math.floor((now + ttlMs) / 1000) * 1000);
    // Recorded before the token exists, so the key can never leave the JWKS before it expires.
    if (record) await this.opts.models.keyHolds.create({ kid: key.kid, expireTime: expiresAt });
    const jti = randomUUID();
    const { sub, ...rest } = claims;
    const token = await new SignJWT({ ...rest })
      .setProtectedHeader({ alg: SIGNING_ALG, kid: key.kid, typ: "JWT" })
      .setIssuer(this.opts.issuer)
      .setAudience(this.opts.audience)
      .setSubject(sub)
      .setIssuedAt(Math.floor(now / 1000))
      .setNotBefore(Math.floor(now / 1000))
      .setExpirationTime(Math.floor(expiresAt.getTime() / 1000))
      .setJti(jti)
      .sign(await this.privateKey(key));
    return { token, expiresAt, jti, kid: key.kid };
  }

  private privateKey(doc: SigningKeyDoc): Promise<CryptoKey | KeyObject> {
    let key = this.privateKeys.get(doc.kid);
    if (key === undefined) {
      const jwk = JSON.parse(unseal(doc.privateKey, this.opts.secret, doc.kid)) as JWK;
      const imported = importJWK(jwk, SIGNING_ALG).then((k) => {
        if (k instanceof Uint8Array) throw new Error("signing key is not an EC key");
        return k;
      });
      this.privateKeys.set(doc.kid, imported);
      // A key that cannot be imported must not stay cached as a rejected promise.
      imported.catch(() => this.privateKeys.delete(doc.kid));
      key = imported;
    }
    return key;
  }

  private async createKey(reason: string): Promise<void> {
    const { publicKey, privateKey } = await generateKeyPair(SIGNING_ALG, { extractable: true });
    const kid = `${new Date().toISOString().slice(0, 10).replace(/-/g, "")}-${randomUUID().slice(0, 8)}`;
    const publicJwk = await exportJWK(publicKey);
    const privateJwk = await exportJWK(privateKey);
    await this.opts.models.signingKeys.create({
      kid,
      alg: SIGNING_ALG,
      publicJwk: {
        kty: publicJwk.kty ?? "EC",
        crv: publicJwk.crv ?? "",
        x: publicJwk.x ?? "",
        y: publicJwk.y ?? "",
      },
      privateKey: seal(JSON.stringify(privateJwk), this.opts.secret, kid),
      createTime: new Date(),
    });
    this.opts.logger.info({ kid, reason }, "new signing key");
  }

  private info(k: LoadedKey): KeyInfo {
    return {
      kid: k.doc.kid,
      alg: k.doc.alg,
      createTime: k.doc.createTime,
      ...(k.retireTime !== undefined ? { retireTime: k.retireTime } : {}),
      ...(k.removeTime !== undefined ? { removeTime: k.removeTime } : {}),
    };
  }

  private async load(fresh: boolean): Promise<Loaded> {
    const cached = this.loaded;
    if (!fresh && cached !== undefined && Date.now() - cached.at < this.cacheMs) return cached;
    // A fresh read (after a write) must not join a read that started before the write.
    if (fresh) return this.query();
    this.loading ??= this.query();
    return this.loading;
  }

  private async query(): Promise<Loaded> {
    {
      try {
        const [docs, holds] = await Promise.all([
          this.opts.models.signingKeys
            .find({})
            .sort({ createTime: -1, kid: -1 })
            .lean<SigningKeyDoc[]>(),
          this.opts.models.keyHolds.find({ expireTime: { $gt: new Date() } }).lean(),
        ]);
        const held = new Map<string, number>();
        for (const h of holds) {
          held.set(h.kid, Math.max(held.get(h.kid) ?? 0, h.expireTime.getTime()));
        }
        const now = Date.now();
        const keys: LoadedKey[] = [];
        docs.forEach((doc, i) => {
          // The next newer key's creation retired this one; the newest key signs.
          const newer = i === 0 ? undefined : docs[i - 1];
          if (newer === undefined) {
            keys.push({ doc });
            return;
          }
          const retireTime = newer.createTime;
          const removeTime = new Date(
            Math.max(
              retireTime.getTime() + this.opts.maxShortTokenLifetimeMs,
              held.get(doc.kid) ?? 0,
            ),
          );
          if (removeTime.getTime() > now) keys.push({ doc, retireTime, removeTime });
        });
        this.loaded = { at: now, keys };
        return this.loaded;
      } finally {
        this.loading = undefined;
      }
    }
  }
}
