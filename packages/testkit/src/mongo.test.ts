import { MongoClient } from "mongodb";
import { afterAll, describe, expect, it } from "vitest";
import { mongoUrl } from "./context.js";
import { startMongo, type RunningMongo } from "./mongo.js";
import { uniqueName } from "./names.js";

describe("startMongo", () => {
  let server: RunningMongo | undefined;
  afterAll(async () => {
    await server?.stop();
  });

  it("startMongo - stores and finds documents, and enforces a unique index", async () => {
    server = await startMongo();
    expect(server.url).toMatch(/^mongodb:\/\/127\.0\.0\.1:\d+$/);
    const client = await new MongoClient(server.url).connect();
    try {
      const things = client
        .db(uniqueName("startmongo"))
        .collection<{ name: string; n: number }>("things");
      await things.createIndex({ name: 1 }, { unique: true });
      await things.insertMany([
        { name: "a", n: 1 },
        { name: "b", n: 2 },
      ]);
      const found = await things.find({ n: { $gt: 1 } }, { projection: { _id: 0 } }).toArray();
      expect(found).toEqual([{ name: "b", n: 2 }]);
      await expect(things.insertOne({ name: "a", n: 3 })).rejects.toThrow(/duplicate key/i);
    } finally {
      await client.close();
    }
  });

  it("startMongo - updates of one document by several clients at once are each applied (no lost update), as in MongoDB", async () => {
    const url = server?.url ?? mongoUrl();
    const [one, two] = await Promise.all([
      new MongoClient(url).connect(),
      new MongoClient(url).connect(),
    ]);
    try {
      const name = uniqueName("lostupdate");
      const docs = (c: MongoClient) =>
        c.db(name).collection<{ _id: string; a?: number; b?: number; n: number }>("docs");
      const ids = Array.from({ length: 40 }, (_, i) => `d${i}`);
      await docs(one).insertMany(ids.map((_id) => ({ _id, n: 0 })));
      // Each document: one client sets `a`, the other `b`, and both count up `n`, all at once.
      await Promise.all(
        ids.flatMap((_id) => [
          docs(one).updateOne({ _id }, { $set: { a: 1 } }),
          docs(two).updateOne({ _id }, { $set: { b: 1 } }),
          ...Array.from({ length: 5 }, (_, k) =>
            docs(k % 2 === 0 ? one : two).updateOne({ _id }, { $inc: { n: 1 } }),
          ),
        ]),
      );
      const all = await docs(one).find().sort({ _id: 1 }).toArray();
      const wrong = all.filter((d) => d.a !== 1 || d.b !== 1 || d.n !== 5);
      expect(wrong).toEqual([]);
    } finally {
      await Promise.all([one.close(), two.close()]);
    }
  });

  it("startMongo - stop() ends the server", async () => {
    const other = await startMongo();
    await other.stop();
    expect(other.process.running).toBe(false);
    const client = new MongoClient(other.url, { serverSelectionTimeoutMS: 500 });
    await expect(client.connect()).rejects.toThrow();
    await client.close();
  });

  it("startMongo - a lookup by _id is an index search, not a scan of the collection", async () => {
    // FerretDB 1.24 (SQLite) filtered by a path its _id index does not match, so every find,
    // update and delete by _id scanned the collection; the installer patches that
    // (scripts/ferretdb/patches.json). FerretDB's explain carries SQLite's plan; mongod's its own.
    const client = await new MongoClient(mongoUrl(), { serverSelectionTimeoutMS: 5_000 }).connect();
    try {
      const db = client.db(uniqueName("byid"));
      await db
        .collection<{ _id: string; n: number }>("docs")
        .insertMany(Array.from({ length: 50 }, (_, n) => ({ _id: `d${n}`, n })));
      const explained = (await db.command({
        explain: { find: "docs", filter: { _id: "d7" } },
      })) as { queryPlanner?: { Plan?: string[]; winningPlan?: unknown } };
      const sqlitePlan = explained.queryPlanner?.Plan;
      if (sqlitePlan !== undefined) {
        expect(sqlitePlan.join("\n")).toMatch(/SEARCH \S+ USING INDEX \S+__id_/);
        expect(sqlitePlan.join("\n")).not.toMatch(/\bSCAN\b/);
      } else {
        expect(JSON.stringify(explained.queryPlanner?.winningPlan)).toMatch(
          /IDHACK|EXPRESS|IXSCAN/,
        );
      }
    } finally {
      await client.close();
    }
  });

  it("mongoUrl - the global setup's server answers ping", async () => {
    const client = await new MongoClient(mongoUrl(), { serverSelectionTimeoutMS: 5_000 }).connect();
    try {
      expect(await client.db("admin").command({ ping: 1 })).toMatchObject({ ok: 1 });
    } finally {
      await client.close();
    }
  });
});
