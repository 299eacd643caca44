// The WebSocket endpoint's wire protocol: JSON text frames, one object each. Parsing here never
// throws anything but a FrameError, which becomes an `error` frame; the socket stays open.
//
// Client -> server:
//   {"id":"1","type":"watch_run","run_id":"…","after_sequence":0,"include_deltas":false,"include_snapshot":false}
//   {"id":"2","type":"run","request":<RunRequest in protobuf JSON>}
//   {"id":"3","type":"chat","request":<OpenAI chat.completions body>}
//   {"id":"1","type":"cancel"}
//   {"type":"auth","token":"…"} (optional "id": a fresh access token or API key of the same user)
//   {"type":"ping"} (optional "id")
// Server -> client:
//   {"id":"1","type":"event","event":<RunEvent>}   {"id":"2","type":"run","run":<Run>}
//   {"id":"3","type":"chunk","chunk":<chat.completion.chunk>}   {"id":"3","type":"routing",…}
//   {"id":"1","type":"end"} (after a cancel: "cancelled":true)
//   {"id":"1","type":"error","code":"not_found","message":"…"}   {"type":"pong"}
//   {"type":"authenticated","expire_time":"…"} (after auth; no expire_time for an API key)
import { fromJson, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { codeLabel } from "@ensemble/kit";
import {
  RunRequestSchema,
  WatchRunRequestSchema,
  type RunRequest,
  type WatchRunRequest,
} from "@ensemble/proto";

/** What a subscription's id may be: short, printable, no surprises in logs. */
const ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;

export type ClientFrame =
  | { type: "watch_run"; id: string; request: WatchRunRequest }
  | { type: "run"; id: string; request: RunRequest }
  | { type: "chat"; id: string; body: Record<string, unknown> }
  | { type: "cancel"; id: string }
  | { type: "auth"; id?: string; token: string }
  | { type: "ping"; id?: string };

export type FrameType = ClientFrame["type"];

/** A frame the server refuses; `id` when the frame named one (so the client can match it). */
export class FrameError extends Error {
  override name = "FrameError";
  constructor(
    readonly code: Code,
    message: string,
    readonly id?: string,
  ) {
    super(message);
  }
}

const TYPES = "watch_run, run, chat, cancel, auth, ping";
/** A credential is a few hundred bytes (the gateway's own token limit is 16 KiB). */
const MAX_TOKEN_LENGTH = 16 * 1024;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Parses one text frame. */
export function parseFrame(text: string): ClientFrame {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new FrameError(Code.InvalidArgument, "frame is not valid JSON");
  }
  if (!isObject(parsed)) throw new FrameError(Code.InvalidArgument, "frame must be a JSON object");
  const { id: rawId, type, ...rest } = parsed;
  let id: string | undefined;
  if (rawId !== undefined && rawId !== null) {
    if (typeof rawId !== "string" || !ID_PATTERN.test(rawId)) {
      throw new FrameError(
        Code.InvalidArgument,
        "id must be a string of 1 to 64 letters, digits or . _ : -",
      );
    }
    id = rawId;
  }
  if (typeof type !== "string") {
    throw new FrameError(Code.InvalidArgument, `type is required: one of ${TYPES}`, id);
  }
  if (type === "ping") return id !== undefined ? { type, id } : { type };
  if (type === "auth") {
    onlyKeys(rest, ["token"], type, id);
    const token = rest["token"];
    if (typeof token !== "string" || token === "" || token.length > MAX_TOKEN_LENGTH) {
      throw new FrameError(
        Code.InvalidArgument,
        "auth needs token: an access token or API key (a non-empty string)",
        id,
      );
    }
    return id !== undefined ? { type, id, token } : { type, token };
  }
  if (type !== "watch_run" && type !== "run" && type !== "chat" && type !== "cancel") {
    throw new FrameError(
      Code.InvalidArgument,
      `unknown type ${JSON.stringify(type.slice(0, 32))}: one of ${TYPES}`,
      id,
    );
  }
  if (id === undefined) throw new FrameError(Code.InvalidArgument, `${type} needs an id`);
  switch (type) {
    case "cancel":
      onlyKeys(rest, [], type, id);
      return { type, id };
    case "watch_run":
      // The WatchRunRequest's own fields sit beside id and type (snake_case or camelCase).
      return { type, id, request: decode(WatchRunRequestSchema, rest, type, id) };
    case "run": {
      onlyKeys(rest, ["request"], type, id);
      const request = rest["request"];
      if (!isObject(request)) {
        throw new FrameError(Code.InvalidArgument, "run needs request: a RunRequest object", id);
      }
      return { type, id, request: decode(RunRequestSchema, request, type, id) };
    }
    case "chat": {
      onlyKeys(rest, ["request"], type, id);
      const body = rest["request"];
      if (!isObject(body)) {
        throw new FrameError(
          Code.InvalidArgument,
          "chat needs request: an OpenAI chat.completions body",
          id,
        );
      }
      return { type, id, body };
    }
  }
}

function onlyKeys(obj: Record<string, unknown>, allowed: string[], type: string, id?: string) {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      throw new FrameError(
        Code.InvalidArgument,
        `unknown field ${JSON.stringify(key.slice(0, 64))} in ${type}`,
        id,
      );
    }
  }
}

function decode<Desc extends DescMessage>(
  schema: Desc,
  json: Record<string, unknown>,
  type: string,
  id: string,
): MessageShape<Desc> {
  try {
    return fromJson(schema, json as JsonValue);
  } catch (err) {
    // protobuf-es names the field and the problem; no value of ours is in it.
    const detail = err instanceof Error ? err.message.replace(/^cannot decode [^:]*: /, "") : "";
    throw new FrameError(Code.InvalidArgument, `${type}: ${detail || "invalid request"}`, id);
  }
}

/** The wire name of a code: gRPC's name in lower case ("not_found", "invalid_argument"). */
export function codeName(code: Code): string {
  return codeLabel(code).toLowerCase();
}

export interface ErrorFrame {
  id?: string;
  type: "error";
  code: string;
  message: string;
  /** RESOURCE_EXHAUSTED with a known wait. */
  retry_after_ms?: number;
  /** The request field at fault (chat), as OpenAI names it. */
  param?: string;
}

export function errorFrame(
  id: string | undefined,
  code: Code,
  message: string,
  extra: { retryAfterMs?: number; param?: string } = {},
): string {
  const frame: ErrorFrame = {
    ...(id !== undefined ? { id } : {}),
    type: "error",
    code: codeName(code),
    message,
    ...(extra.retryAfterMs !== undefined ? { retry_after_ms: Math.ceil(extra.retryAfterMs) } : {}),
    ...(extra.param !== undefined ? { param: extra.param } : {}),
  };
  return JSON.stringify(frame);
}
