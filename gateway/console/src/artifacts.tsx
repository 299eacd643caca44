// Files a run produced (an image step's images), shown wherever the run's result is: the run
// view and the chat. Bytes come from RunService.GetArtifact, once per artifact and page.
import type { Artifact } from "@ensemble/proto";
import { useEffect, useState } from "react";
import { api, errorText } from "./api";
import { ErrorBox, fmtBytes } from "./ui";

const fetched = new Map<string, Promise<Blob>>();

function blobOf(runId: string, a: Artifact): Promise<Blob> {
  let blob = fetched.get(a.id);
  if (blob === undefined) {
    blob = api.runs
      .getArtifact({ runId, artifactId: a.id })
      // Decoded bytes are never on a SharedArrayBuffer; the DOM types ask to be told so.
      .then((res) => new Blob([res.data as Uint8Array<ArrayBuffer>], { type: a.mimeType }));
    // A failed fetch is not kept: the next view of it asks again.
    blob.catch(() => fetched.delete(a.id));
    fetched.set(a.id, blob);
  }
  return blob;
}

/** One artifact: an image inline (other types only as a download), its type, size and a link. */
export function ArtifactView({ runId, artifact }: { runId: string; artifact: Artifact }) {
  const [url, setUrl] = useState<string>();
  const [error, setError] = useState<string>();
  useEffect(() => {
    let live = true;
    let objectUrl: string | undefined;
    blobOf(runId, artifact).then(
      (blob) => {
        if (!live) return;
        objectUrl = URL.createObjectURL(blob);
        setUrl(objectUrl);
      },
      (err: unknown) => live && setError(errorText(err)),
    );
    return () => {
      live = false;
      if (objectUrl !== undefined) URL.revokeObjectURL(objectUrl);
    };
  }, [runId, artifact]);
  const ext = /\/([\w.-]+)/.exec(artifact.mimeType)?.[1] ?? "bin";
  return (
    <figure className="artifact" data-artifact={artifact.id}>
      {url !== undefined && artifact.mimeType.startsWith("image/") && (
        <img src={url} alt={artifact.revisedPrompt || `generated image ${artifact.index + 1}`} />
      )}
      <figcaption className="muted">
        {artifact.mimeType} · {fmtBytes(artifact.sizeBytes)}{" "}
        {url !== undefined ? (
          <a href={url} download={`${artifact.id}.${ext === "jpeg" ? "jpg" : ext}`}>
            Download
          </a>
        ) : (
          error === undefined && "· loading…"
        )}
      </figcaption>
      <ErrorBox error={error} />
    </figure>
  );
}
