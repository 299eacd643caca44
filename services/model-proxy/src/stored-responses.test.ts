// Stored Responses API answers against the MongoDB-wire server: owner-only reads, writes and
// deletes, and the TTL holds on reads before the sweep removes them.
import { create } from "@bufbuild/protobuf";
import { closeMongo, connectMongo } from "@ensemble/kit";
import { ChatRole, StoredResponseSchema } from "@ensemble/proto";
import { captureLogs, mongoUrl, uniqueName } from "@ensemble/testkit";
import type { Connection } from "mongoose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StoredResponses } from "./stored-responses.js";

const DAY = 24 * 3_600_000;
let mongo: Connection;
let clock = Date.parse("2026-11-01T00:00:00Z");
let store: StoredResponses;

const ada = { tenantId: "t1", userId: "ada" };
const bob = { tenantId: "t1", userId: "bob" };

function answer(id: string, text: string) {
  return create(StoredResponseSchema, {
    id,
    messages: [{ role: ChatRole.USER, content: [{ part: { case: "text", value: "hi" } }] }],
    output: { role: ChatRole.ASSISTANT, content: [{ part: { case: "text", value: text } }] },
    response: { id, object: "response" },
  });
}

beforeAll(async () => {
  mongo = await connectMongo({
    url: mongoUrl(),
    dbName: uniqueName("responses"),
    logger: captureLogs().logger,
  });
  store = await StoredResponses.open(mongo, { ttlMs: 30 * DAY, now: () => clock });
});

afterAll(async () => {
  await mongo?.dropDatabase().catch(() => undefined);
  if (mongo !== undefined) await closeMongo(mongo);
});

describe("stored responses", () => {
  it("stored responses - only their user reads, replaces or deletes them; another user's same id is their own", async () => {
    await store.put(ada, answer("resp_1", "first"));
    expect((await store.get(ada, "resp_1"))?.output?.content[0]?.part.value).toBe("first");
    expect(await store.get(bob, "resp_1")).toBeUndefined();
    expect(await store.get({ tenantId: "t2", userId: "ada" }, "resp_1")).toBeUndefined();
    // Bob storing the same id neither sees nor touches Ada's.
    await store.put(bob, answer("resp_1", "bob's"));
    await store.put(ada, answer("resp_1", "again"));
    expect((await store.get(ada, "resp_1"))?.output?.content[0]?.part.value).toBe("again");
    expect((await store.get(bob, "resp_1"))?.output?.content[0]?.part.value).toBe("bob's");
    expect(await store.delete(bob, "resp_1")).toBe(true);
    expect(await store.delete(bob, "resp_1")).toBe(false);
    expect(await store.delete(ada, "resp_1")).toBe(true);
    expect(await store.get(ada, "resp_1")).toBeUndefined();
  });

  it("stored responses - past the TTL a response is gone to reads at once, and the sweep deletes it", async () => {
    await store.put(ada, answer("resp_old", "old"));
    clock += 10 * DAY;
    await store.put(ada, answer("resp_new", "new"));
    clock += 25 * DAY; // resp_old is 35 days old, resp_new 25
    expect(await store.get(ada, "resp_old")).toBeUndefined();
    expect((await store.get(ada, "resp_new"))?.id).toBe("resp_new");
    expect(await store.sweep()).toBe(1);
    expect(await store.delete(ada, "resp_old")).toBe(false);
    expect(await store.delete(ada, "resp_new")).toBe(true);
  });
});
