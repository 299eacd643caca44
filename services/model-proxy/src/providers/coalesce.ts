// Natural batching of a streamed answer: deltas that have already arrived when one is about to be
// sent go out as one. A provider's SSE often carries several tokens per network read (and a busy
// process reads several at once); each would otherwise cost its own gRPC message here, its own
// message and NATS publish in the workflow engine, and its own SSE event at the gateway. Nothing
// waits for more: a delta leaves after one event-loop turn at most, so a stream paced by the
// provider is passed on token by token as before.
//
// How "already arrived" is told: the next chunk is asked for at once, and raced against
// setImmediate. Chunks parsed from data already read resolve within the current turn (promise
// jobs), so they win; a chunk still on the network does not.
import type { ChatChunk } from "./types.js";

type Pulled = { ok: true; r: IteratorResult<ChatChunk> } | { ok: false; err: unknown };
type Delta = Extract<ChatChunk, { type: "delta" }>;

const turn = () => new Promise<undefined>((resolve) => setImmediate(() => resolve(undefined)));

/** `it` with every run of deltas that arrived together merged into one delta. */
export async function* coalesceDeltas(
  it: AsyncIterator<ChatChunk>,
): AsyncGenerator<ChatChunk, void, undefined> {
  const pull = (): Promise<Pulled> =>
    it.next().then(
      (r) => ({ ok: true, r }),
      (err: unknown) => ({ ok: false, err }),
    );
  let next = pull();
  try {
    for (;;) {
      const got = await next;
      if (!got.ok) throw got.err;
      if (got.r.done === true) return;
      let chunk = got.r.value;
      next = pull();
      while (chunk.type === "delta") {
        const more = await Promise.race([next, turn()]);
        // Nothing more yet, or something that is not a delta (the end, an error): send what we
        // have; the loop above takes `next` up again.
        if (more === undefined || !more.ok || more.r.done === true) break;
        if (more.r.value.type !== "delta") break;
        chunk = merge(chunk, more.r.value);
        next = pull();
      }
      yield chunk;
    }
  } finally {
    await it.return?.();
  }
}

function merge(a: Delta, b: Delta): Delta {
  const logprobs = [...(a.logprobs ?? []), ...(b.logprobs ?? [])];
  return {
    type: "delta",
    content: a.content + b.content,
    reasoning: a.reasoning + b.reasoning,
    // Tool-call fragments are keyed by their index; consumers append them in order.
    toolCalls: a.toolCalls.length === 0 ? b.toolCalls : [...a.toolCalls, ...b.toolCalls],
    ...(logprobs.length > 0 ? { logprobs } : {}),
  };
}
