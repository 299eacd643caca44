// gRPC metadata <-> fetch Headers, the request id, and the bearer token. Shared by the server
// pipeline and the client so both sides agree on names and encodings.
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

export const REQUEST_ID_HEADER = "x-request-id";

// A request id comes from outside and lands in every log line: accept only short, plain ids.
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** The caller's x-request-id when it is a sane id, else a new UUID. */
export function requestIdFrom(headers: Headers): string {
  const incoming = headers.get(REQUEST_ID_HEADER);
  return incoming !== null && REQUEST_ID_PATTERN.test(incoming) ? incoming : randomUUID();
}

/**
 * Incoming metadata as Headers (what Connect handlers expect). Binary (`-bin`) values are
 * base64, as on the wire in gRPC-web and Connect; several values of one key are joined by ", ".
 */
export function metadataToHeaders(metadata: grpc.Metadata): Headers {
  const headers = new Headers();
  for (const [key, values] of Object.entries(metadata.toJSON())) {
    for (const value of values) {
      headers.append(
        key,
        typeof value === "string" ? value : Buffer.from(value).toString("base64"),
      );
    }
  }
  return headers;
}

/** Headers as gRPC metadata; `-bin` values are decoded from base64. */
export function headersToMetadata(
  headers: Headers,
  into: grpc.Metadata = new grpc.Metadata(),
): grpc.Metadata {
  headers.forEach((value, key) => {
    if (key.endsWith("-bin")) {
      for (const part of value.split(",")) into.add(key, Buffer.from(part.trim(), "base64"));
    } else {
      into.add(key, value);
    }
  });
  return into;
}

export class MalformedAuthorizationError extends Error {
  override name = "MalformedAuthorizationError";
}

/** The bearer token of an `authorization` value; undefined when absent. */
export function bearerToken(headers: Headers): string | undefined {
  const value = headers.get("authorization");
  if (value === null || value.trim() === "") return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(value);
  if (match?.[1] === undefined) {
    // Never echo the value: it may be a credential in the wrong format.
    throw new MalformedAuthorizationError("authorization must be a Bearer token");
  }
  return match[1];
}
