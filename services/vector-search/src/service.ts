// VectorSearchService handlers. Every lookup is keyed by the tenant of the verified token; a
// collection of another tenant is simply not found. Text goes through text.ts (strip markup,
// normalise, chunk) and is embedded by model-proxy with the caller's own token, so the tenant's
// catalog, budget and usage ledger apply to embeddings like to any other model call. Every write
// is announced to the other replicas before it is answered, and first catches up with theirs; a
// read does too when it asks for STRONG consistency (changes.ts).
import { create, type JsonObject } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  addUsage,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  principalOf,
  type GrpcClient,
} from "@ensemble/kit";
import {
  IndexState,
  ReadConsistency,
  SearchHitSchema,
  UsageSchema,
  VectorChangeKind,
  type Collection,
  type ModelProxyService,
  type Usage,
  type VectorSearchService,
} from "@ensemble/proto";
import type { ChangeFeed } from "./changes.js";
import type { Collections, LoadedCollection } from "./collections.js";
import { compileFilter } from "./filter.js";
import type { StoredChunk, Store } from "./store.js";
import { chunkText, prepare, textOptions } from "./text.js";
import type { VectorIndex } from "./vector-index.js";

export interface VectorSearchDeps {
  store: Store;
  collections: Collections;
  /** Other replicas' writes in, this replica's out. */
  changes: ChangeFeed;
  /** Reads that do not say: STRONG (catch up first) when true, else EVENTUAL. */
  strongReads?: boolean;
  /** Embeds text documents and text queries; without it only raw vectors are accepted. */
  modelProxy?: GrpcClient<typeof ModelProxyService>;
  /** Inputs per Embed call. */
  embedBatchSize?: number;
  /** Deadline of one Embed call. */
  embedTimeoutMs?: number;
  now?: () => Date;
}

type Impl = ServiceImpl<typeof VectorSearchService>;

const DEFAULT_PAGE = 50;
const MAX_PAGE = 500;
/** EmbedRequest takes inputs of at most this many characters. */
const MAX_EMBED_INPUT = 65_536;

function bearer(ctx: HandlerContext): string {
  return (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer\s+/i, "");
}

function toVector(
  values: readonly number[],
  dimensions: number,
  what: string,
  field: string,
): Float32Array {
  if (values.length !== dimensions) {
    throw new InvalidArgumentError(
      `${what} has ${values.length} dimensions; the collection takes ${dimensions}`,
      { field },
    );
  }
  const v = Float32Array.from(values);
  if (!v.every(Number.isFinite)) {
    throw new InvalidArgumentError(`${what} holds a value that is not a finite number`, { field });
  }
  return v;
}

function pageToken(lastId: string): string {
  return Buffer.from(lastId, "utf8").toString("base64url");
}

function afterId(token: string): string {
  if (token === "") return "";
  const id = Buffer.from(token, "base64url").toString("utf8");
  if (!/^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/.test(id)) {
    throw new InvalidArgumentError("page_token is not one this service issued", {
      field: "page.page_token",
    });
  }
  return id;
}

export function vectorSearchHandlers(deps: VectorSearchDeps): Impl {
  const { store, collections, changes } = deps;
  const now = deps.now ?? (() => new Date());
  const batchSize = deps.embedBatchSize ?? 256;
  const strong = (c: ReadConsistency) =>
    c === ReadConsistency.STRONG ||
    (c === ReadConsistency.UNSPECIFIED && deps.strongReads === true);

  /** The collection; `fresh`: after applying every write other replicas answered before now. */
  async function collectionOf(
    ctx: HandlerContext,
    id: string,
    fresh = false,
  ): Promise<LoadedCollection> {
    const tenantId = principalOf(ctx).tenantId;
    if (fresh) await changes.caughtUp({ tenantId, id }, ctx.signal);
    const c = await collections.get(tenantId, id);
    if (c === undefined || c.deleted) throw new NotFoundError(`collection ${id} not found`);
    return c;
  }

  async function embed(
    ctx: HandlerContext,
    collection: Collection,
    texts: string[],
    usage: Usage,
  ): Promise<Float32Array[]> {
    if (deps.modelProxy === undefined) {
      throw new FailedPreconditionError("text embedding is not available (no MODEL_PROXY_ADDR)");
    }
    const out: Float32Array[] = [];
    for (let i = 0; i < texts.length; i += batchSize) {
      const inputs = texts.slice(i, i + batchSize);
      const res = await deps.modelProxy.embed(
        {
          model: collection.embeddingModel,
          inputs,
          dimensions: collection.dimensions,
          // Labels in model-proxy's ledger: embedding cost per collection (GetUsage metadata).
          metadata: { feature: "vector-search", collection: collection.id },
        },
        {
          headers: { authorization: `Bearer ${bearer(ctx)}` },
          timeoutMs: deps.embedTimeoutMs ?? 60_000,
          signal: ctx.signal,
        },
      );
      // Summed into the caller's usage (the answer reports every embedding call's).
      Object.assign(usage, addUsage(usage, res.usage));
      const sorted = [...res.embeddings].sort((a, b) => a.index - b.index);
      if (sorted.length !== inputs.length) {
        throw new FailedPreconditionError(
          `embedding model ${collection.embeddingModel} returned ${sorted.length} vectors for ${inputs.length} inputs`,
        );
      }
      for (const e of sorted) {
        if (e.values.length !== collection.dimensions) {
          throw new FailedPreconditionError(
            `embedding model ${collection.embeddingModel} returns ${e.values.length} dimensions; collection ${collection.id} has ${collection.dimensions}`,
          );
        }
        out.push(Float32Array.from(e.values));
      }
    }
    return out;
  }

  function embeddable(collection: Collection, what: string, field: string): void {
    if (collection.embeddingModel === "") {
      throw new InvalidArgumentError(
        `collection ${collection.id} has no embedding model, so ${what} needs a vector`,
        { field },
      );
    }
  }

  function stats(c: LoadedCollection, index: VectorIndex | undefined) {
    return {
      collectionId: c.collection.id,
      documents: BigInt(index?.documents ?? 0),
      chunks: BigInt(index?.chunks ?? 0),
      dimensions: c.collection.dimensions,
      metric: c.collection.metric,
      indexState: index === undefined ? IndexState.BUILDING : IndexState.READY,
      indexBytes: BigInt(index?.bytes ?? 0),
      ...(c.collection.updateTime !== undefined ? { lastUpdateTime: c.collection.updateTime } : {}),
    };
  }

  return {
    async createCollection(req, ctx) {
      const tenantId = principalOf(ctx).tenantId;
      const input = req.collection!;
      if (input.embeddingModel !== "") {
        // One probe: the model exists for this tenant and gives vectors of the declared size.
        await embed(ctx, input, ["dimension probe"], create(UsageSchema));
      }
      const at = now();
      const c = await store.createCollection(tenantId, input, at);
      collections.created(c);
      await changes.publish({ tenantId, id: c.id }, VectorChangeKind.COLLECTION_CREATED, at);
      return { collection: c };
    },

    async getCollection(req, ctx) {
      return { collection: (await collectionOf(ctx, req.collectionId)).collection };
    },

    async listCollections(req, ctx) {
      const size = Math.min(req.page?.pageSize || DEFAULT_PAGE, MAX_PAGE);
      const list = await store.listCollections(
        principalOf(ctx).tenantId,
        afterId(req.page?.pageToken ?? ""),
        size + 1,
      );
      const more = list.length > size;
      const page = list.slice(0, size);
      return {
        collections: page,
        page: { nextPageToken: more ? pageToken(page.at(-1)!.id) : "" },
      };
    },

    async deleteCollection(req, ctx) {
      const c = await collectionOf(ctx, req.collectionId, true);
      return collections.write(c, async () => {
        if (c.deleted) throw new NotFoundError(`collection ${req.collectionId} not found`);
        const index = await c.index;
        const documents = index.documents;
        await store.deleteCollection(c.ref);
        c.deleted = true;
        collections.forget(c.ref.tenantId, c.ref.id);
        const created = c.collection.createTime;
        await changes.publish(
          c.ref,
          VectorChangeKind.COLLECTION_DELETED,
          created === undefined ? new Date(0) : timestampDate(created),
        );
        return { deletedDocuments: BigInt(documents) };
      });
    },

    async upsert(req, ctx) {
      const c = await collectionOf(ctx, req.collectionId, true);
      const col = c.collection;
      const opts = textOptions(col.chunking);
      const usage = create(UsageSchema);
      const seen = new Set<string>();
      const docs: Array<{ documentId: string; chunks: StoredChunk[] }> = [];
      // Texts to embed, with where each vector goes.
      const pending: Array<{ doc: number; chunk: number; text: string }> = [];
      req.documents.forEach((d, i) => {
        const field = `documents[${i}]`;
        if (seen.has(d.id)) {
          throw new InvalidArgumentError(`document ${d.id} appears twice in one request`, {
            field: `${field}.id`,
          });
        }
        seen.add(d.id);
        const metadata: JsonObject = d.metadata ?? {};
        if (d.vector.length > 0) {
          const vector = toVector(
            d.vector,
            col.dimensions,
            `document ${d.id}'s vector`,
            `${field}.vector`,
          );
          const text = d.text === "" ? "" : prepare(d.text, opts);
          docs.push({
            documentId: d.id,
            chunks: [{ documentId: d.id, chunkIndex: 0, text, vector, metadata }],
          });
          return;
        }
        embeddable(col, `document ${d.id}`, `${field}.vector`);
        const chunks = chunkText(d.text, opts);
        if (chunks.length === 0) {
          throw new InvalidArgumentError(`document ${d.id} has no text left after processing`, {
            field: `${field}.text`,
          });
        }
        const stored: StoredChunk[] = [];
        chunks.forEach((ch, j) => {
          if (ch.embedText.length > MAX_EMBED_INPUT) {
            throw new InvalidArgumentError(
              `document ${d.id} has a chunk of ${ch.embedText.length} characters; at most ${MAX_EMBED_INPUT} can be embedded (use a chunking strategy other than NONE)`,
              { field: `${field}.text` },
            );
          }
          stored.push({
            documentId: d.id,
            chunkIndex: j,
            text: ch.text,
            vector: new Float32Array(0),
            metadata,
          });
          pending.push({ doc: docs.length, chunk: j, text: ch.embedText });
        });
        docs.push({ documentId: d.id, chunks: stored });
      });
      if (pending.length > 0) {
        const vectors = await embed(
          ctx,
          col,
          pending.map((p) => p.text),
          usage,
        );
        pending.forEach((p, i) => {
          docs[p.doc]!.chunks[p.chunk]!.vector = vectors[i]!;
        });
      }
      await collections.write(c, async () => {
        if (c.deleted) throw new NotFoundError(`collection ${req.collectionId} not found`);
        const index = await c.index;
        const at = now();
        await store.putDocuments(
          c.ref,
          docs,
          docs.filter((d) => index.has(d.documentId)).map((d) => d.documentId),
          at,
        );
        // The stored vectors are copied into the index (which normalises cosine ones in place).
        index.put(
          docs.map((d) => ({
            documentId: d.documentId,
            chunks: d.chunks.map((ch) => ({ ...ch, vector: Float32Array.from(ch.vector) })),
          })),
        );
        await store.touchCollection(c.ref, at);
        c.collection.updateTime = timestampFromDate(at);
        await changes.publish(
          c.ref,
          VectorChangeKind.DOCUMENTS,
          at,
          docs.map((d) => d.documentId),
        );
      });
      return {
        upserted: docs.length,
        chunks: docs.reduce((n, d) => n + d.chunks.length, 0),
        usage,
      };
    },

    async search(req, ctx) {
      const c = await collectionOf(ctx, req.collectionId, strong(req.consistency));
      const col = c.collection;
      const usage = create(UsageSchema);
      let query: Float32Array;
      if (req.vector.length > 0) {
        query = toVector(req.vector, col.dimensions, "the query vector", "vector");
      } else {
        embeddable(col, "a search", "text");
        const opts = textOptions(col.chunking);
        let text = prepare(req.text, opts);
        if (opts.lowercase) text = text.toLowerCase();
        if (text.trim() === "")
          throw new InvalidArgumentError("the query text is empty after processing", {
            field: "text",
          });
        query = (await embed(ctx, col, [text], usage))[0]!;
      }
      const filter = compileFilter(req.filter);
      const index = await c.index;
      const started = performance.now();
      let hits = index.search(query, { k: req.k, filter, ef: req.efSearch, exact: req.exact });
      if (req.minScore !== undefined) hits = hits.filter((h) => h.score >= req.minScore!);
      const elapsed = performance.now() - started;
      return {
        hits: hits.map((h) =>
          create(SearchHitSchema, {
            documentId: h.entry.documentId,
            chunkIndex: h.entry.chunkIndex,
            text: h.entry.text,
            score: h.score,
            metadata: h.entry.metadata,
            vector: req.includeVectors ? Array.from(h.entry.vector) : [],
          }),
        ),
        usage,
        searchTime: create(DurationSchema, {
          seconds: BigInt(Math.floor(elapsed / 1000)),
          nanos: Math.round((elapsed % 1000) * 1e6),
        }),
      };
    },

    async delete(req, ctx) {
      const c = await collectionOf(ctx, req.collectionId, true);
      const filter = req.ids.length > 0 ? undefined : compileFilter(req.filter);
      return collections.write(c, async () => {
        if (c.deleted) throw new NotFoundError(`collection ${req.collectionId} not found`);
        const index = await c.index;
        const ids =
          req.ids.length > 0
            ? [...new Set(req.ids)]
            : filter === undefined
              ? index.documentsMatching(() => true)
              : index.documentsMatching(filter);
        const existing = ids.filter((id) => index.has(id));
        if (ids.length === 0) return { deletedDocuments: 0n, deletedChunks: 0n };
        // Ids the index does not know are still deleted in MongoDB (a stale trailing write).
        await store.deleteDocuments(c.ref, ids);
        const chunks = index.remove(ids);
        const at = now();
        await store.touchCollection(c.ref, at);
        c.collection.updateTime = timestampFromDate(at);
        await changes.publish(c.ref, VectorChangeKind.DOCUMENTS, at, ids);
        return { deletedDocuments: BigInt(existing.length), deletedChunks: BigInt(chunks) };
      });
    },

    async stats(req, ctx) {
      const c = await collectionOf(ctx, req.collectionId, strong(req.consistency));
      return stats(c, c.ready);
    },
  };
}
