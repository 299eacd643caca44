import { Code } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rejection, startRegistry, type Harness } from "./harness.js";

let h: Harness;

beforeAll(async () => {
  h = await startRegistry();
});

afterAll(async () => {
  await h?.close();
});

function plugin(id: string, ttlMs = 0) {
  return {
    id,
    name: `Plugin ${id}`,
    address: "127.0.0.1:7001",
    version: "1.0.0",
    methods: ["search", "fetch"],
    metadata: { "team.owner": "search" },
    ttlMs,
  };
}

describe("registry plugins", () => {
  it("plugins - admin registers, users list, heartbeat extends the lease, deregister removes", async () => {
    const admin = h.client(await h.adminToken("plugins"));
    const registered = (await admin.registerPlugin({ plugin: plugin("web-search") })).plugin;
    expect(registered?.tenantId).toBe("plugins");
    expect(registered?.ttlMs).toBe(30_000);
    expect(registered?.metadata).toEqual({ "team.owner": "search" });

    const user = h.client(await h.userToken("plugins"));
    expect((await user.listPlugins({})).plugins.map((p) => p.id)).toEqual(["web-search"]);
    // Another tenant does not see it.
    const other = h.client(await h.userToken("elsewhere"));
    expect((await other.listPlugins({})).plugins).toEqual([]);

    await new Promise((r) => setTimeout(r, 20));
    const beat = (await admin.heartbeatPlugin({ id: "web-search" })).plugin;
    expect(timestampDate(beat!.expireTime!).getTime()).toBeGreaterThan(
      timestampDate(registered!.expireTime!).getTime(),
    );

    // Users cannot register or remove plugins.
    expect((await rejection(user.registerPlugin({ plugin: plugin("evil") }))).code).toBe(
      Code.PermissionDenied,
    );
    expect((await rejection(user.deregisterPlugin({ id: "web-search" }))).code).toBe(
      Code.PermissionDenied,
    );

    await admin.deregisterPlugin({ id: "web-search" });
    expect((await user.listPlugins({})).plugins).toEqual([]);
    expect((await rejection(admin.heartbeatPlugin({ id: "web-search" }))).code).toBe(Code.NotFound);
  });

  it("plugins - a plugin that stops heart-beating is removed after its TTL", async () => {
    const admin = h.client(await h.adminToken("leases"));
    await admin.registerPlugin({ plugin: plugin("short-lived", 1_000) });
    await admin.registerPlugin({ plugin: plugin("kept-alive", 1_000) });
    const until = Date.now() + 1_800;
    while (Date.now() < until) {
      await admin.heartbeatPlugin({ id: "kept-alive" });
      await new Promise((r) => setTimeout(r, 250));
    }
    expect((await admin.listPlugins({})).plugins.map((p) => p.id)).toEqual(["kept-alive"]);
    expect((await rejection(admin.heartbeatPlugin({ id: "short-lived" }))).code).toBe(
      Code.NotFound,
    );
    // The sweeper deletes what reads already hide.
    expect(await h.server.plugins.sweep()).toBeGreaterThanOrEqual(1);
    // Registering again brings it back.
    await admin.registerPlugin({ plugin: plugin("short-lived", 1_000) });
    expect((await admin.listPlugins({})).plugins.map((p) => p.id)).toEqual([
      "kept-alive",
      "short-lived",
    ]);
  });

  it("plugins - a registration is validated against the contract", async () => {
    const admin = h.client(await h.adminToken("plugins-validation"));
    const err = await rejection(
      admin.registerPlugin({ plugin: { ...plugin("no-address"), address: "" } }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/^plugin\.address: /);
  });
});
