// vector-search as several replicas of one data set: built processes (main.ts) on one database
// and one change stream, called over gRPC with the test kit issuer's tokens, raw vectors (no
// model-proxy needed). Whatever replica a write or a STRONG read lands on, it sees every write
// answered before it began, through whichever replica, and a default read sees it moments later;
// a write MongoDB holds that no replica announced is picked up by
// the comparison with MongoDB; and while NATS is down, writes fail saying they are stored, reads
// still answer, and the stored write reaches the other replicas once NATS is back.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { closeMongo, connectMongo, createClient, type GrpcClient } from "@ensemble/kit";
import { DistanceMetric, ReadConsistency, VectorSearchService } from "@ensemble/proto";
import {
  captureLogs,
  createTestIssuer,
  mongoUrl,
  rejection,
  startNats,
  startVectorSearchProcess,
  uniqueName,
  type MeshProcess,
  type RunningServer,
  type TestIssuer,
} from "@ensemble/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Store } from "../src/store.js";

type Client = GrpcClient<typeof VectorSearchService>;

let issuer: TestIssuer;
let admin: string;
const procs: MeshProcess[] = [];
const as = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });

beforeAll(async () => {
  issuer = await createTestIssuer();
  admin = await issuer.mint({ tenantId: "t-replicas", roles: ["user", "admin"] });
}, 60_000);

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop().catch(() => undefined)));
  await issuer?.close();
});

/** A replica on `database`; a short comparison period so the safety net shows within a test. */
async function replica(database: string, env: NodeJS.ProcessEnv = {}): Promise<Client> {
  const p = await startVectorSearchProcess({
    jwksUrl: issuer.jwksUrl,
    database,
    env: { VECTOR_RECONCILE_MS: "500", ...env },
  });
  procs.push(p);
  return createClient(VectorSearchService, p.address);
}

/** A unit vector along axis `i` (distinct documents, exact top hit). */
function axis(i: number, d: number): number[] {
  return Array.from({ length: d }, (_, j) => (j === i % d ? 1 : 0.01 * ((i * 7 + j) % 5)));
}

const STRONG = ReadConsistency.STRONG;

async function topHit(
  vs: Client,
  collectionId: string,
  vector: number[],
  consistency = ReadConsistency.UNSPECIFIED,
): Promise<string> {
  const res = await vs.search({ collectionId, vector, k: 1, exact: true, consistency }, as(admin));
  return res.hits[0]?.documentId ?? "";
}

async function documents(vs: Client, collectionId: string): Promise<bigint> {
  return (await vs.stats({ collectionId, consistency: STRONG }, as(admin))).documents;
}

async function eventually<T>(probe: () => Promise<T>, ok: (v: T) => boolean, ms = 15_000) {
  const until = Date.now() + ms;
  let last: T = await probe();
  while (!ok(last) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 100));
    last = await probe();
  }
  return last;
}

describe("vector-search replicas", () => {
  const database = uniqueName("vectorsearch");
  let a: Client;
  let b: Client;
  const D = 32;

  beforeAll(async () => {
    [a, b] = await Promise.all([replica(database), replica(database)]);
  }, 120_000);

  it("replicas - a STRONG read sees every write answered through another replica before it began; a default read sees it moments later", async () => {
    await a.createCollection(
      { collection: { id: "shared", dimensions: D, metric: DistanceMetric.COSINE } },
      as(admin),
    );
    // Both replicas hold the collection loaded before the writes start.
    expect(await topHit(b, "shared", axis(0, D))).toBe("");
    expect(await documents(a, "shared")).toBe(0n);

    for (let i = 0; i < 24; i++) {
      const [writer, reader] = i % 2 === 0 ? [a, b] : [b, a];
      await writer.upsert(
        {
          collectionId: "shared",
          documents: [
            { id: `d${i}`, vector: axis(i, D), metadata: { parity: i % 2 ? "odd" : "even" } },
          ],
        },
        as(admin),
      );
      // The very next call, on the other replica.
      expect(await topHit(reader, "shared", axis(i, D), STRONG)).toBe(`d${i}`);
      expect(await documents(reader, "shared")).toBe(BigInt(i + 1));
    }

    // A document rewritten through one replica is the new version on the other, at once for a
    // STRONG read and within moments for a default (EVENTUAL) one.
    await b.upsert(
      {
        collectionId: "shared",
        documents: [{ id: "d3", vector: axis(30, D), metadata: { parity: "odd" } }],
      },
      as(admin),
    );
    expect(await topHit(a, "shared", axis(30, D), STRONG)).toBe("d3");
    await b.upsert(
      {
        collectionId: "shared",
        documents: [{ id: "d5", vector: axis(31, D), metadata: { parity: "odd" } }],
      },
      as(admin),
    );
    expect(
      await eventually(
        () => topHit(a, "shared", axis(31, D)),
        (id) => id === "d5",
        2_000,
      ),
    ).toBe("d5");
    const res = await a.search(
      { collectionId: "shared", vector: axis(3, D), k: 24, exact: true },
      as(admin),
    );
    expect(res.hits.filter((h) => h.documentId === "d3")).toHaveLength(1);
  });

  it("replicas - a change queued behind a replica's own long write: an EVENTUAL read answers at once without it, a STRONG read waits for it", async () => {
    const W = 1024;
    await a.createCollection(
      { collection: { id: "busy", dimensions: W, metric: DistanceMetric.COSINE } },
      as(admin),
    );
    expect(await topHit(b, "busy", axis(0, W))).toBe("");
    // A long write through b (a thousand 1,024-d documents: two MongoDB batches, then the graph)
    // keeps b's write chain for the collection busy; a's change queues behind it there. Its first
    // batch in MongoDB says b is in the middle of it.
    const big = b.upsert(
      {
        collectionId: "busy",
        documents: Array.from({ length: 1_000 }, (_, i) => ({
          id: `bulk${i}`,
          vector: axis(100 + (i % 100), W).map((x, j) => x + ((i * 31 + j) % 7) * 0.001),
        })),
      },
      as(admin),
    );
    const logs = captureLogs({ level: "warn" });
    const mongo = await connectMongo({ url: mongoUrl(), dbName: database, logger: logs.logger });
    try {
      const rows = () => mongo.collection("chunks").countDocuments({ collectionId: "busy" });
      expect(await eventually(rows, (n) => n > 0, 10_000)).toBeGreaterThan(0);
    } finally {
      await closeMongo(mongo);
    }
    await a.upsert(
      { collectionId: "busy", documents: [{ id: "quick", vector: axis(7, W) }] },
      as(admin),
    );
    expect(await topHit(b, "busy", axis(7, W))).not.toBe("quick");
    expect(await topHit(b, "busy", axis(7, W), STRONG)).toBe("quick");
    await big;
    expect(await documents(b, "busy")).toBe(1_001n);
  });

  it("replicas - writes catch up first: deletes, deletes by filter and a re-created collection reach every replica", async () => {
    const del = await b.delete({ collectionId: "shared", ids: ["d0", "d2"] }, as(admin));
    expect(del.deletedDocuments).toBe(2n);
    expect(await topHit(a, "shared", axis(0, D), STRONG)).not.toBe("d0");
    expect(await documents(a, "shared")).toBe(22n);

    // Written through one replica, then at once deleted by a filter (which runs on the index)
    // through the other: the delete sees it.
    await b.upsert(
      {
        collectionId: "shared",
        documents: [{ id: "late", vector: axis(40, D), metadata: { parity: "odd" } }],
      },
      as(admin),
    );
    const byFilter = await a.delete(
      {
        collectionId: "shared",
        filter: {
          must: [
            {
              field: "parity",
              test: { case: "eq", value: { kind: { case: "stringValue", value: "odd" } } },
            },
          ],
        },
      },
      as(admin),
    );
    expect(byFilter.deletedDocuments).toBe(13n);
    const left = await b.search(
      { collectionId: "shared", vector: axis(1, D), k: 50, exact: true, consistency: STRONG },
      as(admin),
    );
    expect(left.hits.map((h) => h.documentId).sort()).toEqual(
      Array.from({ length: 12 }, (_, j) => `d${j * 2}`)
        .filter((id) => id !== "d0" && id !== "d2")
        .sort(),
    );

    await b.deleteCollection({ collectionId: "shared" }, as(admin));
    const gone = await rejection(
      a.search(
        { collectionId: "shared", vector: axis(1, D), k: 1, consistency: STRONG },
        as(admin),
      ),
    );
    expect(gone.code).toBe(Code.NotFound);

    // Re-created through the other replica with another shape: the first one serves the new one.
    await a.createCollection(
      { collection: { id: "shared", dimensions: 8, metric: DistanceMetric.L2 } },
      as(admin),
    );
    const fresh = await b.getCollection({ collectionId: "shared" }, as(admin));
    expect(fresh.collection).toMatchObject({ dimensions: 8, metric: DistanceMetric.L2 });
    expect(await documents(b, "shared")).toBe(0n);
    await b.upsert(
      { collectionId: "shared", documents: [{ id: "n1", vector: axis(1, 8) }] },
      as(admin),
    );
    expect(await topHit(a, "shared", axis(1, 8), STRONG)).toBe("n1");
  });

  it("replicas - a replica started later has every write, and one MongoDB holds but nobody announced is found by the comparison", async () => {
    const c = await replica(database);
    expect(await topHit(c, "shared", axis(1, 8))).toBe("n1");

    // A replica that died between its MongoDB write and its announcement: the write is stored,
    // no change was published. Written here with the service's own store code.
    const logs = captureLogs({ level: "warn" });
    const mongo = await connectMongo({ url: mongoUrl(), dbName: database, logger: logs.logger });
    try {
      const store = await Store.open(mongo);
      const ref = { tenantId: "t-replicas", id: "shared" };
      const at = new Date();
      await store.putDocuments(
        ref,
        [
          {
            documentId: "silent",
            chunks: [
              {
                documentId: "silent",
                chunkIndex: 0,
                text: "",
                vector: Float32Array.from(axis(5, 8)),
                metadata: {},
              },
            ],
          },
        ],
        [],
        at,
      );
      await store.touchCollection(ref, at);
    } finally {
      await closeMongo(mongo);
    }
    for (const vs of [a, b, c]) {
      expect(
        await eventually(
          () => topHit(vs, "shared", axis(5, 8)),
          (id) => id === "silent",
        ),
      ).toBe("silent");
    }
  });
});

describe("vector-search replicas without NATS", () => {
  let nats: RunningServer;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "vs-nats-"));
    nats = await startNats({ dataDir });
  }, 60_000);

  afterAll(async () => {
    await nats?.stop().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  });

  it("replicas - while NATS is down a write fails saying it is stored, reads still answer, and the write reaches the other replica once NATS is back", async () => {
    const database = uniqueName("vectorsearch");
    // No comparison with MongoDB: only the change stream can bring the write to the other replica.
    const env = { NATS_URL: nats.url, VECTOR_RECONCILE_MS: "0" };
    const [d, e] = await Promise.all([replica(database, env), replica(database, env)]);
    await d.createCollection(
      { collection: { id: "outage", dimensions: 8, metric: DistanceMetric.COSINE } },
      as(admin),
    );
    await d.upsert(
      { collectionId: "outage", documents: [{ id: "before", vector: axis(1, 8) }] },
      as(admin),
    );
    expect(await topHit(e, "outage", axis(1, 8), STRONG)).toBe("before");

    await nats.stop();
    const failed = await rejection(
      d.upsert(
        { collectionId: "outage", documents: [{ id: "during", vector: axis(2, 8) }] },
        as(admin),
      ),
    );
    expect(failed.code).toBe(Code.Unavailable);
    expect(failed.rawMessage).toMatch(/is stored/);
    // Reads answer from what each replica holds (a STRONG one too: it cannot ask NATS).
    expect(await topHit(d, "outage", axis(2, 8))).toBe("during");
    expect(await topHit(e, "outage", axis(1, 8), STRONG)).toBe("before");

    nats = await startNats({ dataDir, port: nats.port });
    expect(
      await eventually(
        () => topHit(e, "outage", axis(2, 8)),
        (id) => id === "during",
        30_000,
      ),
    ).toBe("during");
  }, 90_000);
});
