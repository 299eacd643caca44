import { captureLogs, mongoUrl, uniqueName } from "@ensemble/testkit";
import mongoose from "mongoose";
import { describe, expect, it } from "vitest";
import { closeMongo, connectMongo, mongoHosts } from "./mongo.js";

describe("mongo", () => {
  it("mongo - connects to its own database and stores documents with a unique index", async () => {
    const logs = captureLogs();
    const dbName = uniqueName("kit_mongo");
    const conn = await connectMongo({ url: mongoUrl(), dbName, logger: logs.logger });
    try {
      expect(conn.name).toBe(dbName);
      expect(conn.readyState).toBe(mongoose.ConnectionStates.connected);
      // Bound to this connection, never to mongoose's global default.
      expect(mongoose.connection.readyState).toBe(mongoose.ConnectionStates.disconnected);
      const Thing = conn.model(
        "Thing",
        new mongoose.Schema({
          tenantId: { type: String, required: true },
          slug: { type: String, required: true },
        }).index({ tenantId: 1, slug: 1 }, { unique: true }),
      );
      await Thing.init();
      await Thing.create({ tenantId: "t1", slug: "a" });
      await expect(Thing.create({ tenantId: "t1", slug: "a" })).rejects.toMatchObject({
        code: 11000,
      });
      await Thing.create({ tenantId: "t2", slug: "a" });
      expect(await Thing.countDocuments({ slug: "a" })).toBe(2);
      expect(logs.find("MongoDB connected")).toHaveLength(1);
      await conn.dropDatabase();
    } finally {
      await closeMongo(conn);
    }
    expect(conn.readyState).toBe(mongoose.ConnectionStates.disconnected);
    await closeMongo(conn); // a second close is a no-op
    // Our own close is no warning.
    expect(logs.find("MongoDB connection closed")).toHaveLength(1);
    expect(logs.find("MongoDB disconnected")).toHaveLength(0);
  });

  it("mongo - an unreachable server fails after N attempts naming the host, never credentials", async () => {
    const logs = captureLogs();
    const url = "mongodb://bob:hunter2@127.0.0.1:1/app?authSource=admin";
    const err = await connectMongo({
      url,
      logger: logs.logger,
      attempts: 2,
      serverSelectionTimeoutMS: 300,
    }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/could not connect to MongoDB at 127\.0\.0\.1:1 after 2 attempts/);
    expect(err?.message).not.toContain("hunter2");
    expect(logs.find(/retrying/)).toHaveLength(1);
    expect(logs.text()).not.toContain("hunter2");
  });

  it("mongo - mongoHosts strips credentials and keeps every host", () => {
    expect(mongoHosts("mongodb://u:p@a:1,b:2/db?replicaSet=rs0")).toBe("a:1,b:2");
    expect(mongoHosts("mongodb+srv://cluster.example.com/db")).toBe("cluster.example.com");
  });
});
