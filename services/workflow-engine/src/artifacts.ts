// Files that steps produce (an image step's images): the bytes live in the `run_artifacts`
// collection, one document per file keyed by its id, and run records and events carry only the
// Artifact description. One document rather than GridFS: GridFS reads a file's chunks with a
// query on `files_id`, which FerretDB's SQLite backend answers by scanning every chunk of every
// file (see the addressing note in store.ts), while a file is at most the gRPC message limit
// (4 MiB, what ModelProxyService.GenerateImage can return), well inside a document's 16 MiB.
import { createHash, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Schema, type Connection, type Model } from "mongoose";
import { storedBytes } from "@ensemble/kit";
import { ArtifactSchema, type Artifact } from "@ensemble/proto";
import { byId, retryBusy } from "./store.js";

interface ArtifactDoc {
  /** The artifact id. */
  _id: string;
  tenantId: string;
  runId: string;
  stepId: string;
  index: number;
  mimeType: string;
  sizeBytes: number;
  sha256: string;
  revisedPrompt: string;
  data: Buffer;
  createTime: Date;
}

const artifactSchema = new Schema<ArtifactDoc>(
  {
    _id: { type: String, required: true },
    tenantId: { type: String, required: true },
    runId: { type: String, required: true },
    stepId: { type: String, required: true },
    index: { type: Number, required: true },
    mimeType: { type: String, required: true },
    sizeBytes: { type: Number, required: true },
    sha256: { type: String, required: true },
    revisedPrompt: { type: String, default: "" },
    data: { type: Buffer, required: true },
    createTime: { type: Date, required: true },
  },
  { versionKey: false, strict: "throw" },
);

/** What a step hands over to be stored. */
export interface NewArtifact {
  tenantId: string;
  runId: string;
  stepId: string;
  index: number;
  mimeType: string;
  data: Uint8Array;
  revisedPrompt?: string | undefined;
}

function describe(doc: Omit<ArtifactDoc, "data" | "createTime" | "tenantId" | "runId">): Artifact {
  return create(ArtifactSchema, {
    id: doc._id,
    stepId: doc.stepId,
    index: doc.index,
    mimeType: doc.mimeType,
    sizeBytes: BigInt(doc.sizeBytes),
    sha256: doc.sha256,
    revisedPrompt: doc.revisedPrompt,
  });
}

export class ArtifactStore {
  readonly #model: Model<ArtifactDoc>;

  private constructor(model: Model<ArtifactDoc>) {
    this.#model = model;
  }

  static async open(conn: Connection): Promise<ArtifactStore> {
    const model =
      (conn.models["RunArtifact"] as Model<ArtifactDoc> | undefined) ??
      conn.model<ArtifactDoc>("RunArtifact", artifactSchema, "run_artifacts");
    await model.init();
    return new ArtifactStore(model);
  }

  /**
   * Stores a file under a new id. Each execution of a step stores its own files: when a step is
   * executed twice (a redelivery while the first replica still worked), the outcome that wins
   * names its own, and the loser's are never referenced.
   */
  async put(a: NewArtifact): Promise<Artifact> {
    const data = Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength);
    const doc: ArtifactDoc = {
      _id: `art_${randomUUID().replace(/-/g, "")}`,
      tenantId: a.tenantId,
      runId: a.runId,
      stepId: a.stepId,
      index: a.index,
      mimeType: a.mimeType,
      sizeBytes: data.byteLength,
      sha256: createHash("sha256").update(data).digest("hex"),
      revisedPrompt: a.revisedPrompt ?? "",
      data,
      createTime: new Date(),
    };
    await retryBusy(() => this.#model.collection.insertOne(doc as never));
    return describe(doc);
  }

  /**
   * Deletes these files: a deleted run's, named by its own records. By `_id` alone, the lookup
   * FerretDB answers from its index (any other field in the filter scans the collection).
   */
  async delete(ids: readonly string[]): Promise<void> {
    for (const id of ids) {
      await retryBusy(() => this.#model.collection.deleteOne({ _id: id as never }));
    }
  }

  /** The file and its description; undefined unless it belongs to this tenant's run. */
  async get(
    tenantId: string,
    runId: string,
    id: string,
  ): Promise<{ artifact: Artifact; data: Uint8Array } | undefined> {
    const doc = await byId(this.#model, id);
    if (doc === null || doc.tenantId !== tenantId || doc.runId !== runId) return undefined;
    return { artifact: describe(doc), data: storedBytes(doc.data) };
  }
}
