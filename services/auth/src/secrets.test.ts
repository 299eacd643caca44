import { describe, expect, it } from "vitest";
import {
  apiKeyPublicId,
  checkPasswordPolicy,
  newApiKey,
  normaliseEmail,
  seal,
  unseal,
} from "./secrets.js";

describe("auth secrets", () => {
  it("password policy - refuses short, single-class and email-derived passwords without echoing them", () => {
    const email = "carol.smith@example.com";
    for (const bad of [
      "Short1!",
      "alllowercaseletters",
      "123456789012345",
      "carol.smith@example.com",
      "my carol.smith pass 1",
    ]) {
      let message = "";
      try {
        checkPasswordPolicy(bad, email);
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).toMatch(/^password /);
      expect(message).not.toContain(bad);
    }
    expect(() => checkPasswordPolicy("Tulips and 42 kites", email)).not.toThrow();
  });

  it("emails - trimmed and lower-cased", () => {
    expect(normaliseEmail("  Bob@Example.COM ")).toBe("bob@example.com");
  });

  it("api keys - ens_<8-char public id>_<40-char secret>, the id recoverable, forgeries rejected", () => {
    const { publicId, key } = newApiKey();
    expect(key).toMatch(/^ens_[0-9A-Za-z]{8}_[0-9A-Za-z]{40}$/);
    expect(apiKeyPublicId(key)).toBe(publicId);
    expect(apiKeyPublicId("ens_short_x")).toBeUndefined();
    expect(apiKeyPublicId(`${key}!`)).toBeUndefined();
    expect(newApiKey().key).not.toBe(key);
  });

  it("sealing - round-trips, and fails with another secret, another kid or a flipped byte", () => {
    const secret = "a-secret-of-at-least-32-characters!!";
    const sealed = seal('{"d":"private"}', secret, "kid-1");
    expect(sealed.ciphertext.toString("utf8")).not.toContain("private");
    expect(unseal(sealed, secret, "kid-1")).toBe('{"d":"private"}');
    expect(() => unseal(sealed, `${secret}x`, "kid-1")).toThrow();
    expect(() => unseal(sealed, secret, "kid-2")).toThrow();
    const tampered = { ...sealed, ciphertext: Buffer.from(sealed.ciphertext) };
    tampered.ciphertext[0] = (tampered.ciphertext[0] ?? 0) ^ 1;
    expect(() => unseal(tampered, secret, "kid-1")).toThrow();
  });
});
