// The signing-key store shared by several replicas through one database (no transactions).
import { closeMongo, connectMongo } from "@ensemble/kit";
import { captureLogs, mongoUrl, uniqueName } from "@ensemble/testkit";
import type { Connection } from "mongoose";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { authModels, ensureIndexes, type AuthModels } from "../src/auth.model.js";
import { KeyStore } from "../src/signing-keys.js";
import { jwtHeader } from "./harness.js";

const SECRET = "test-only-key-encryption-secret-0123456789";
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

let mongo: Connection;
let models: AuthModels;

function replica(secret = SECRET): KeyStore {
  return new KeyStore({
    models,
    secret,
    issuer: "ensemble-auth",
    audience: "ensemble",
    logger: captureLogs().logger,
    maxShortTokenLifetimeMs: HOUR,
    cacheMs: 0,
  });
}

const claims = { sub: "svc", tid: "", roles: [], typ: "service" as const, svc: "svc" };

beforeEach(async () => {
  mongo = await connectMongo({
    url: mongoUrl(),
    dbName: uniqueName("authkeys"),
    logger: captureLogs().logger,
  });
  models = authModels(mongo);
  await ensureIndexes(models);
});

afterEach(async () => {
  await mongo.dropDatabase().catch(() => undefined);
  await closeMongo(mongo);
});

describe("auth signing keys", () => {
  it("replicas - two replicas starting and rotating at once agree on one signing key", async () => {
    const [a, b] = [replica(), replica()];
    await Promise.all([a.ensureKey(), b.ensureKey()]);
    const kid = async (s: KeyStore) => jwtHeader((await s.sign(claims, 60_000)).token).kid;
    expect(await kid(a)).toBe(await kid(b));
    await Promise.all([a.rotate("a"), b.rotate("b")]);
    expect(await kid(a)).toBe(await kid(b));
    const published = await a.published();
    expect(published.filter((k) => k.retireTime === undefined)).toHaveLength(1);
    expect(published.map((k) => k.kid)).toEqual((await b.published()).map((k) => k.kid));
  });

  it("schedule - a due rotation happens once even when every replica checks at the same time", async () => {
    const [a, b, c] = [replica(), replica(), replica()];
    await a.ensureKey();
    await models.signingKeys.updateMany(
      {},
      { $set: { createTime: new Date(Date.now() - 10 * DAY) } },
    );
    const rotated = await Promise.all([a, b, c].map((s) => s.rotateIfDue(5 * DAY)));
    expect(rotated.filter(Boolean)).toHaveLength(1);
    expect(await models.signingKeys.countDocuments({})).toBe(2);
    expect(await a.rotateIfDue(5 * DAY)).toBe(false);
  });

  it("schedule - a rotation claimed by a replica that died before rotating is taken over later", async () => {
    const store = replica();
    await store.ensureKey();
    await models.signingKeys.updateMany(
      {},
      { $set: { createTime: new Date(Date.now() - 10 * DAY) } },
    );
    const kid = (await store.published())[0]?.kid ?? "";
    await models.claims.create({ key: `rotation:${kid}`, createTime: new Date(Date.now() - HOUR) });
    expect(await store.rotateIfDue(5 * DAY)).toBe(false);
    expect(await store.rotateIfDue(5 * DAY)).toBe(true);
    expect((await store.published())[0]?.kid).not.toBe(kid);
  });

  it("retention - a retired key leaves the JWKS after the longest token it signed, bootstrap credentials included", async () => {
    const store = replica();
    const ago = (ms: number) => new Date(Date.now() - ms);
    await store.ensureKey();
    const first = jwtHeader((await store.sign(claims, 60_000)).token).kid ?? "";
    await store.rotate("test");
    expect((await store.jwks()).map((k) => k.kid)).toContain(first);

    // Retired two hours ago (its successor is that old): every short-lived token has expired.
    await models.signingKeys.updateOne({ kid: first }, { $set: { createTime: ago(3 * HOUR) } });
    await models.signingKeys.updateMany(
      { kid: { $ne: first } },
      { $set: { createTime: ago(2 * HOUR) } },
    );
    expect((await store.jwks()).map((k) => k.kid)).not.toContain(first);

    // A bootstrap credential signed with the current key keeps that key published for its life.
    const second = jwtHeader((await store.signLongLived(claims, 2 * DAY)).token).kid ?? "";
    await store.rotate("again");
    await models.signingKeys.updateOne({ kid: second }, { $set: { createTime: ago(3 * HOUR) } });
    const newest = (await store.published())[0]?.kid ?? "";
    await models.signingKeys.updateOne({ kid: newest }, { $set: { createTime: ago(2 * HOUR) } });
    const published = await store.published();
    const kept = published.find((k) => k.kid === second);
    expect(kept?.retireTime?.getTime()).toBeLessThan(Date.now() - HOUR);
    expect(kept?.removeTime?.getTime()).toBeGreaterThan(Date.now() + 2 * DAY - 60_000);
  });

  it("encryption - a replica with another key-encryption secret cannot sign with the stored key", async () => {
    await replica().ensureKey();
    await expect(
      replica("another-secret-of-at-least-32-characters!").sign(claims, 60_000),
    ).rejects.toThrow();
  });
});
