// Secrets auth hands out or keeps: random opaque tokens, their hashes, password hashing and
// policy, and the encryption of signing private keys at rest.
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  hkdfSync,
  randomBytes,
  randomInt,
  timingSafeEqual,
} from "node:crypto";
import { hash, verify, type Algorithm } from "@node-rs/argon2";
import { InvalidArgumentError } from "@ensemble/kit";

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** `length` characters of base62 from the CSPRNG (unbiased: randomInt rejects, no modulo bias). */
export function randomBase62(length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) out += BASE62[randomInt(62)];
  return out;
}

/** An opaque bearer secret (refresh and invite tokens): 256 random bits, URL-safe. */
export function opaqueToken(): string {
  return randomBytes(32).toString("base64url");
}

/** SHA-256 hex: enough for high-entropy secrets (tokens, API keys), which need no slow hash. */
export function sha256(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}

/** Constant-time comparison of two hex digests. */
export function sameDigest(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && timingSafeEqual(x, y);
}

// --- API keys: ens_<8-char public id>_<40-char secret> ------------------------------------

const API_KEY_PATTERN = /^ens_([0-9A-Za-z]{8})_([0-9A-Za-z]{32,64})$/;

export function newApiKey(publicId = randomBase62(8)): { publicId: string; key: string } {
  // 40 base62 characters ≈ 238 bits.
  return { publicId, key: `ens_${publicId}_${randomBase62(40)}` };
}

/** The public id of a well-formed key, or undefined. */
export function apiKeyPublicId(key: string): string | undefined {
  return API_KEY_PATTERN.exec(key)?.[1];
}

// --- Passwords -----------------------------------------------------------------------------

export interface PasswordHasherOptions {
  /** KiB */
  memoryCost: number;
  timeCost: number;
}

export interface PasswordHasher {
  hash(password: string): Promise<string>;
  /** False also for a malformed stored hash. */
  verify(stored: string, password: string): Promise<boolean>;
  /** Spends the time of one verification, for a login whose account does not exist. */
  verifyDummy(password: string): Promise<void>;
}

export async function createPasswordHasher(opts: PasswordHasherOptions): Promise<PasswordHasher> {
  const options = {
    // Argon2id (2): the hybrid the RFC 9106 recommends. The enum is a const enum in the
    // package's typings, which isolated modules cannot inline.
    algorithm: 2 as Algorithm,
    memoryCost: opts.memoryCost,
    timeCost: opts.timeCost,
    parallelism: 1,
  };
  // Same parameters as real hashes, so a missing account costs the same time as a wrong password.
  const dummy = await hash(randomBytes(16).toString("hex"), options);
  const check = async (stored: string, password: string): Promise<boolean> => {
    try {
      return await verify(stored, password);
    } catch {
      return false;
    }
  };
  return {
    hash: (password) => hash(password, options),
    verify: check,
    async verifyDummy(password) {
      await check(dummy, password);
    },
  };
}

export const MIN_PASSWORD_LENGTH = 12;

/**
 * The password policy (the length bounds are in the contract too): at least 12 characters, at
 * least two character classes, not the email and not containing the email's local part. Errors
 * never repeat the password.
 */
export function checkPasswordPolicy(password: string, email: string): void {
  const fail = (why: string) => new InvalidArgumentError(`password ${why}`, { field: "password" });
  if ([...password].length < MIN_PASSWORD_LENGTH) {
    throw fail(`must be at least ${MIN_PASSWORD_LENGTH} characters`);
  }
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^a-zA-Z0-9]/].filter((re) =>
    re.test(password),
  ).length;
  if (classes < 2) {
    throw fail(
      "must mix at least two kinds of characters (lower case, upper case, digits, symbols)",
    );
  }
  const lower = password.toLowerCase();
  const local = email.split("@")[0] ?? "";
  if (lower === email || (local.length >= 4 && lower.includes(local))) {
    throw fail("must not contain the email address");
  }
}

export function normaliseEmail(email: string): string {
  return email.trim().toLowerCase();
}

// --- Signing private keys at rest ------------------------------------------------------------

export interface SealedKey {
  salt: Buffer;
  iv: Buffer;
  tag: Buffer;
  ciphertext: Buffer;
}

/** AES-256-GCM under a key derived (HKDF-SHA256, per-record salt) from the secret; kid is AAD. */
export function seal(plaintext: string, secret: string, kid: string): SealedKey {
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", deriveKey(secret, salt), iv);
  cipher.setAAD(Buffer.from(kid));
  const ciphertext = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  return { salt, iv, tag: cipher.getAuthTag(), ciphertext };
}

/** Throws when the secret is wrong or the record was tampered with. */
export function unseal(sealed: SealedKey, secret: string, kid: string): string {
  const decipher = createDecipheriv(
    "aes-256-gcm",
    deriveKey(secret, bytes(sealed.salt)),
    bytes(sealed.iv),
  );
  decipher.setAAD(Buffer.from(kid));
  decipher.setAuthTag(bytes(sealed.tag));
  return Buffer.concat([decipher.update(bytes(sealed.ciphertext)), decipher.final()]).toString(
    "utf8",
  );
}

/** A Buffer from a Buffer or a BSON Binary (what lean() queries return for Buffer paths). */
export function bytes(value: Buffer | { buffer: Uint8Array }): Buffer {
  if (Buffer.isBuffer(value)) return value;
  return Buffer.from(value.buffer);
}

function deriveKey(secret: string, salt: Buffer): Buffer {
  return Buffer.from(hkdfSync("sha256", secret, salt, "ensemble-auth signing key", 32));
}
