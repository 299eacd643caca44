import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cosine } from "./embeddings.js";
import { startSimulator, type Simulator } from "./server.js";

let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ port: 0 });
});
afterAll(async () => {
  await sim.close();
});

function post(
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(`${sim.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

interface Completion {
  id: string;
  object: string;
  system_fingerprint: string;
  choices: Array<{ message: { role: string; content: string }; finish_reason: string }>;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

async function complete(body: Record<string, unknown>): Promise<Completion> {
  const res = await post("/v1/chat/completions", body);
  expect(res.status).toBe(200);
  return (await res.json()) as Completion;
}

const hello = {
  model: "sim-fast",
  messages: [{ role: "user", content: "Hello there, simulator" }],
};

/** Reads an SSE body to the end (or until the connection drops) and returns its data lines. */
async function readEvents(res: Response): Promise<{ events: string[]; error: unknown }> {
  // Node's web ReadableStream is async-iterable; the cast only tells the compiler so.
  const body = res.body as unknown as AsyncIterable<Uint8Array>;
  const decoder = new TextDecoder();
  let text = "";
  let error: unknown;
  try {
    for await (const chunk of body) text += decoder.decode(chunk, { stream: true });
  } catch (err) {
    error = err;
  }
  const events = text
    .split(/\r?\n\r?\n/)
    .filter((e) => e.startsWith("data: "))
    .map((e) => e.slice("data: ".length));
  return { events, error };
}

describe("llm-sim", () => {
  it("models - lists every simulated model in OpenAI's list shape", async () => {
    const res = await fetch(`${sim.url}/v1/models`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      object: string;
      data: Array<{ id: string; object: string }>;
    };
    expect(body.object).toBe("list");
    expect(body.data.map((m) => m.id).sort()).toEqual(
      [
        "sim-code",
        "sim-embed",
        "sim-fast",
        "sim-image",
        "sim-medium",
        "sim-thinking",
        "sim-video",
        "sim-vision",
      ].sort(),
    );
    expect(body.data.every((m) => m.object === "model")).toBe(true);
  });

  it("chat - the same request gives the same simulated answer, a different one a different answer", async () => {
    const a = await complete(hello);
    const b = await complete(hello);
    const c = await complete({
      ...hello,
      messages: [{ role: "user", content: "Something else entirely" }],
    });
    const d = await complete({ ...hello, temperature: 1.3 });
    const text = a.choices[0]!.message.content;
    expect(text.startsWith("[simulated sim-fast]")).toBe(true);
    expect(text).toContain("Hello there, simulator");
    expect(b.choices[0]!.message.content).toBe(text);
    expect(c.choices[0]!.message.content).not.toBe(text);
    expect(d.choices[0]!.message.content).not.toBe(text);
    expect(a.system_fingerprint).toBe("ensemble-llm-sim");
    expect(a.object).toBe("chat.completion");
    expect(a.choices[0]!.finish_reason).toBe("stop");
    expect(a.usage.total_tokens).toBe(a.usage.prompt_tokens + a.usage.completion_tokens);
    expect(a.usage.prompt_tokens).toBeGreaterThan(4);
  });

  it("chat - max_tokens truncates the answer with finish_reason length", async () => {
    const full = await complete(hello);
    const cut = await complete({ ...hello, max_tokens: 3 });
    expect(cut.choices[0]!.finish_reason).toBe("length");
    expect(cut.usage.completion_tokens).toBe(3);
    expect(full.choices[0]!.message.content.startsWith(cut.choices[0]!.message.content)).toBe(true);
    expect(cut.choices[0]!.message.content.length).toBeLessThan(
      full.choices[0]!.message.content.length,
    );
  });

  it("chat - streamed chunks reassemble to the unary answer and end with a usage chunk and [DONE]", async () => {
    const unary = await complete(hello);
    const res = await post("/v1/chat/completions", {
      ...hello,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const { events, error } = await readEvents(res);
    expect(error).toBeUndefined();
    expect(events[events.length - 1]).toBe("[DONE]");
    const chunks = events.slice(0, -1).map(
      (e) =>
        JSON.parse(e) as {
          object: string;
          choices: Array<{
            delta: { role?: string; content?: string };
            finish_reason: string | null;
          }>;
          usage?: Completion["usage"] | null;
        },
    );
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    expect(chunks.every((c) => c.object === "chat.completion.chunk")).toBe(true);
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe(unary.choices[0]!.message.content);
    expect(chunks.length).toBeGreaterThan(4);
    const last = chunks[chunks.length - 1]!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(unary.usage);
    expect(chunks[chunks.length - 2]!.choices[0]!.finish_reason).toBe("stop");
  });

  it("chat - reasoning_effort adds reasoning_content, unary and streamed before the text, counted in completion_tokens", async () => {
    const plain = await complete(hello);
    const res = await post("/v1/chat/completions", { ...hello, reasoning_effort: "high" });
    const reasoned = (await res.json()) as {
      choices: Array<{ message: { content: string; reasoning_content?: string } }>;
      usage: { completion_tokens: number };
    };
    const thought = reasoned.choices[0]!.message.reasoning_content ?? "";
    expect(thought).toMatch(/^\[simulated reasoning, high effort\] Thinking about: "/);
    expect(reasoned.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
    expect(reasoned.usage.completion_tokens).toBeGreaterThan(plain.usage.completion_tokens);
    const streamed = await post("/v1/chat/completions", {
      ...hello,
      reasoning_effort: "high",
      stream: true,
    });
    const { events } = await readEvents(streamed);
    const deltas = events
      .slice(0, -1)
      .map(
        (e) =>
          (JSON.parse(e) as { choices: Array<{ delta: Record<string, string> }> }).choices[0]!
            .delta,
      );
    const firstText = deltas.findIndex((d) => (d["content"] ?? "") !== "");
    const lastThought = deltas.findLastIndex((d) => d["reasoning_content"] !== undefined);
    expect(lastThought).toBeLessThan(firstText);
    expect(deltas.map((d) => d["reasoning_content"] ?? "").join("")).toBe(thought);
  });

  it("chat - logprobs: one entry per answer token with top_logprobs, deterministic, streamed per chunk; top_logprobs alone is 400", async () => {
    interface Top {
      token: string;
      logprob: number;
      bytes: number[];
    }
    interface Entry extends Top {
      top_logprobs: Top[];
    }
    interface WithLogprobs {
      choices: Array<{
        message: { content: string };
        logprobs: { content: Entry[]; refusal: null } | null;
      }>;
      usage: Completion["usage"];
    }
    const ask = async (body: Record<string, unknown>): Promise<WithLogprobs> => {
      const res = await post("/v1/chat/completions", body);
      expect(res.status).toBe(200);
      return (await res.json()) as WithLogprobs;
    };
    const plain = await ask(hello);
    expect(plain.choices[0]!.logprobs).toBeNull();
    const a = await ask({ ...hello, logprobs: true, top_logprobs: 2 });
    const b = await ask({ ...hello, logprobs: true, top_logprobs: 2 });
    // Asking for logprobs changes neither the answer nor its usage.
    const content = a.choices[0]!.message.content;
    expect(content).toBe(plain.choices[0]!.message.content);
    expect(a.usage).toEqual(plain.usage);
    const lp = a.choices[0]!.logprobs!;
    expect(lp.refusal).toBeNull();
    expect(lp.content).toHaveLength(a.usage.completion_tokens);
    expect(lp.content.map((e) => e.token).join("")).toBe(content);
    for (const e of lp.content) {
      expect(e.logprob).toBeLessThanOrEqual(0);
      expect(e.bytes).toEqual([...Buffer.from(e.token, "utf8")]);
      expect(e.top_logprobs).toHaveLength(2);
      expect(e.top_logprobs[0]).toEqual({ token: e.token, logprob: e.logprob, bytes: e.bytes });
      const alt = e.top_logprobs[1]!;
      expect(alt.token).not.toBe(e.token);
      expect(alt.logprob).toBeLessThan(e.logprob);
      expect(alt.bytes).toEqual([...Buffer.from(alt.token, "utf8")]);
    }
    expect(b.choices[0]!.logprobs).toEqual(lp);
    // logprobs alone: the same values, with empty top_logprobs.
    const bare = await ask({ ...hello, logprobs: true });
    expect(bare.choices[0]!.logprobs!.content).toEqual(
      lp.content.map((e) => ({ ...e, top_logprobs: [] })),
    );

    const streamed = await post("/v1/chat/completions", {
      ...hello,
      stream: true,
      logprobs: true,
      top_logprobs: 2,
    });
    const { events, error } = await readEvents(streamed);
    expect(error).toBeUndefined();
    const choices = events.slice(0, -1).map(
      (e) =>
        (
          JSON.parse(e) as {
            choices: Array<{
              delta: { content?: string };
              logprobs: { content: Entry[]; refusal: null } | null;
            }>;
          }
        ).choices[0]!,
    );
    // The role chunk and the finish chunk carry none; each content chunk its own tokens'.
    expect(choices[0]!.logprobs).toBeNull();
    expect(choices[choices.length - 1]!.logprobs).toBeNull();
    let text = "";
    let tokens = "";
    for (const c of choices) {
      text += c.delta.content ?? "";
      tokens += (c.logprobs?.content ?? []).map((e) => e.token).join("");
      if ((c.delta.content ?? "") !== "") {
        expect(c.logprobs!.content.map((e) => e.token).join("")).toBe(c.delta.content);
      }
    }
    expect(text).toBe(content);
    expect(tokens).toBe(content);
    expect(choices.flatMap((c) => c.logprobs?.content ?? [])).toEqual(lp.content);

    for (const bad of [
      { top_logprobs: 2 },
      { logprobs: false, top_logprobs: 2 },
      { logprobs: true, top_logprobs: 21 },
    ]) {
      const res = await post("/v1/chat/completions", { ...hello, ...bad });
      expect(res.status).toBe(400);
      const body = (await res.json()) as { error: { type: string; param: string } };
      expect(body.error.type).toBe("invalid_request_error");
      expect(body.error.param).toBe("top_logprobs");
    }
  });

  it("chat - image parts are accepted by sim-vision and refused by other models", async () => {
    const messages = [
      {
        role: "user",
        content: [
          { type: "text", text: "What is in this picture?" },
          { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } },
        ],
      },
    ];
    const ok = await complete({ model: "sim-vision", messages });
    expect(ok.choices[0]!.message.content).toContain("1 image");
    const refused = await post("/v1/chat/completions", { model: "sim-fast", messages });
    expect(refused.status).toBe(400);
    const body = (await refused.json()) as { error: { type: string; param: string } };
    expect(body.error.type).toBe("invalid_request_error");
    expect(body.error.param).toBe("messages.[0].content.[1].type");
  });

  it("errors - bad requests get 400 and unknown models 404 in OpenAI's error shape", async () => {
    const noModel = await post("/v1/chat/completions", { messages: hello.messages });
    expect(noModel.status).toBe(400);
    expect(await noModel.json()).toEqual({
      error: {
        message: "you must provide a model parameter",
        type: "invalid_request_error",
        param: "model",
        code: "missing_required_parameter",
      },
    });
    const noMessages = await post("/v1/chat/completions", { model: "sim-fast" });
    expect(noMessages.status).toBe(400);
    expect(((await noMessages.json()) as { error: { param: string } }).error.param).toBe(
      "messages",
    );
    const badJson = await post("/v1/chat/completions", "{not json");
    expect(badJson.status).toBe(400);
    expect(((await badJson.json()) as { error: { type: string } }).error.type).toBe(
      "invalid_request_error",
    );
    const unknown = await post("/v1/chat/completions", { ...hello, model: "gpt-nope" });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe(
      "model_not_found",
    );
    const badHeader = await post("/v1/chat/completions", hello, { "x-sim-fail": "explode" });
    expect(badHeader.status).toBe(400);
  });

  it("embeddings - deterministic, sized by dimensions, and texts sharing words are closer", async () => {
    const res = await post("/v1/embeddings", {
      model: "sim-embed",
      input: ["the cat sat on the mat", "a cat sat on a mat", "quarterly revenue grew strongly"],
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      data: Array<{ index: number; embedding: number[] }>;
      usage: { prompt_tokens: number; total_tokens: number };
    };
    const [a, b, c] = body.data.map((d) => d.embedding) as [number[], number[], number[]];
    expect(a).toHaveLength(256);
    expect(cosine(a, a)).toBeCloseTo(1, 6);
    expect(cosine(a, b)).toBeGreaterThan(cosine(a, c) + 0.3);
    expect(body.usage.prompt_tokens).toBe(6 + 6 + 4);
    const again = (await (
      await post("/v1/embeddings", { model: "sim-embed", input: "the cat sat on the mat" })
    ).json()) as {
      data: Array<{ embedding: number[] }>;
    };
    expect(again.data[0]!.embedding).toEqual(a);
    const small = (await (
      await post("/v1/embeddings", { model: "sim-embed", input: "x", dimensions: 32 })
    ).json()) as {
      data: Array<{ embedding: number[] }>;
    };
    expect(small.data[0]!.embedding).toHaveLength(32);
    const b64 = (await (
      await post("/v1/embeddings", {
        model: "sim-embed",
        input: "the cat sat on the mat",
        encoding_format: "base64",
      })
    ).json()) as { data: Array<{ embedding: string }> };
    const buf = Buffer.from(b64.data[0]!.embedding, "base64");
    expect(buf.length).toBe(256 * 4);
    expect(buf.readFloatLE(0)).toBeCloseTo(a[0]!, 6);
  });

  it("images - returns a valid, deterministic PNG as b64_json or a data URL", async () => {
    const res = await post("/v1/images/generations", {
      model: "sim-image",
      prompt: "a red fox",
      size: "16x16",
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      data: Array<{ b64_json: string }>;
      usage: { input_tokens: number; output_tokens: number };
    };
    // Billed like gpt-image-1: prompt tokens in, image tokens out (1,056 per 1024x1024).
    expect(body.usage).toMatchObject({ input_tokens: 3, output_tokens: 1 });
    const png = Buffer.from(body.data[0]!.b64_json, "base64");
    expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    expect(png.subarray(12, 16).toString("ascii")).toBe("IHDR");
    expect(png.readUInt32BE(16)).toBe(16);
    const again = (await (
      await post("/v1/images/generations", { prompt: "a red fox", size: "16x16" })
    ).json()) as {
      data: Array<{ b64_json: string }>;
    };
    expect(again.data[0]!.b64_json).toBe(body.data[0]!.b64_json);
    const url = (await (
      await post("/v1/images/generations", { prompt: "a red fox", response_format: "url" })
    ).json()) as { data: Array<{ url: string }> };
    expect(url.data[0]!.url.startsWith("data:image/png;base64,")).toBe(true);
  });

  it("conditions - x-sim-fail 429 carries Retry-After and an OpenAI rate-limit error", async () => {
    const res = await post("/v1/chat/completions", hello, {
      "x-sim-fail": "429",
      "x-sim-retry-after": "7",
    });
    expect(res.status).toBe(429);
    expect(res.headers.get("retry-after")).toBe("7");
    const body = (await res.json()) as { error: { code: string } };
    expect(body.error.code).toBe("rate_limit_exceeded");
    const five = await post("/v1/chat/completions", hello, { "x-sim-fail": "503" });
    expect(five.status).toBe(503);
  });

  it("conditions - a cut stream sends some chunks then drops without [DONE]", async () => {
    const res = await post(
      "/v1/chat/completions",
      { ...hello, stream: true },
      { "x-sim-fail": "cut" },
    );
    expect(res.status).toBe(200);
    const { events, error } = await readEvents(res);
    expect(error).toBeDefined();
    expect(events.length).toBeGreaterThan(1);
    expect(events).not.toContain("[DONE]");
  });

  it("conditions - a cut one-shot answer (embeddings, images) starts its JSON, then drops", async () => {
    for (const [path, body] of [
      ["/v1/embeddings", { model: "sim-embed", input: "rivers" }],
      ["/v1/images/generations", { prompt: "a red fox" }],
    ] as const) {
      const res = await post(path, body, { "x-sim-fail": "cut" });
      expect(res.status, path).toBe(200);
      const text = await res.text().then(
        () => "a whole body",
        (err: unknown) => err,
      );
      expect(text, path).toBeInstanceOf(Error);
    }
  });

  it("conditions - x-sim-latency-ms delays the response by at least that long", async () => {
    const start = performance.now();
    const res = await post("/v1/chat/completions", hello, { "x-sim-latency-ms": "250" });
    await res.json();
    expect(performance.now() - start).toBeGreaterThanOrEqual(245);
  });

  it("conditions - timeout never answers until the client gives up", async () => {
    const res = post("/v1/chat/completions", hello, { "x-sim-fail": "timeout" });
    const outcome = await Promise.race([
      res.then(() => "answered"),
      new Promise((r) => setTimeout(() => r("still waiting"), 300)),
    ]);
    expect(outcome).toBe("still waiting");
    const aborted = await fetch(`${sim.url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify(hello),
      headers: { "x-sim-fail": "timeout" },
      signal: AbortSignal.timeout(100),
    }).catch((err: unknown) => err);
    expect(aborted).toBeInstanceOf(Error);
    res.catch(() => undefined); // settled by close() in afterAll
  });

  it("conditions - x-sim-fail-rate is deterministic per x-request-id", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      const h = { "x-sim-fail-rate": "0.5", "x-request-id": `req-${i}` };
      const first = await post("/v1/chat/completions", hello, h);
      const second = await post("/v1/chat/completions", hello, h);
      expect(second.status).toBe(first.status);
      statuses.push(first.status);
    }
    expect(statuses).toContain(200);
    expect(statuses).toContain(500);
  });

  it("conditions - per-model server options apply and a header overrides them", async () => {
    const failing = await startSimulator({ models: { "sim-fast": { fail: "503" } } });
    try {
      expect(
        (
          await fetch(`${failing.url}/v1/chat/completions`, {
            method: "POST",
            body: JSON.stringify(hello),
          })
        ).status,
      ).toBe(503);
      const overridden = await fetch(`${failing.url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify(hello),
        headers: { "x-sim-fail-rate": "0" },
      });
      expect(overridden.status).toBe(200);
    } finally {
      await failing.close();
    }
  });

  it("control - failFirst fails the first N requests of a model, then it answers", async () => {
    const s2 = await startSimulator({ models: { "sim-fast": { failFirst: 2, fail: "429" } } });
    try {
      const call = (): Promise<Response> =>
        fetch(`${s2.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify(hello) });
      const first = await call();
      expect(first.status).toBe(429);
      expect(first.headers.get("retry-after")).toBe("1");
      expect((await call()).status).toBe(429);
      expect((await call()).status).toBe(200);
      expect((await call()).status).toBe(200);
      // Other models are not affected.
      const medium = await fetch(`${s2.url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify({ ...hello, model: "sim-medium" }),
      });
      expect(medium.status).toBe(200);
    } finally {
      await s2.close();
    }
  });

  it("control - configure changes a running model (fail, then heal, then failFirst again)", async () => {
    const s2 = await startSimulator();
    try {
      const call = (): Promise<Response> =>
        fetch(`${s2.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify(hello) });
      expect((await call()).status).toBe(200);
      s2.configure("sim-fast", { fail: "503" });
      expect((await call()).status).toBe(503);
      expect((await call()).status).toBe(503);
      s2.configure("sim-fast", { fail: undefined });
      expect((await call()).status).toBe(200);
      s2.configure("sim-fast", { failFirst: 1 });
      expect((await call()).status).toBe(500);
      expect((await call()).status).toBe(200);
      // An unknown id becomes a chat model.
      s2.configure("my-model", { latencyMs: 0 });
      const mine = await fetch(`${s2.url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify({ ...hello, model: "my-model" }),
      });
      expect(mine.status).toBe(200);
    } finally {
      await s2.close();
    }
  });

  it("control - requests() counts per model and in total, on every endpoint", async () => {
    const s2 = await startSimulator();
    try {
      const post2 = (path: string, body: unknown): Promise<Response> =>
        fetch(`${s2.url}${path}`, { method: "POST", body: JSON.stringify(body) });
      await post2("/v1/chat/completions", hello);
      await post2("/v1/chat/completions", { ...hello, model: "nope" });
      await post2("/v1/embeddings", { model: "sim-embed", input: "x" });
      await post2("/v1/messages", { ...hello, max_tokens: 5 });
      await post2("/v1beta/models/sim-fast:generateContent", {
        contents: [{ parts: [{ text: "x" }] }],
      });
      await post2("/v1beta/models/sim-embed:embedContent", { content: { parts: [{ text: "x" }] } });
      await fetch(`${s2.url}/v1/models`);
      await fetch(`${s2.url}/nowhere`);
      expect(s2.requests("sim-fast")).toBe(3);
      expect(s2.requests("sim-embed")).toBe(2);
      expect(s2.requests("nope")).toBe(1);
      expect(s2.requests("sim-medium")).toBe(0);
      expect(s2.requests()).toBe(8);
    } finally {
      await s2.close();
    }
  });

  it("dialects - each API gets its own error shape; latency applies to all", async () => {
    const anthropic = await post(
      "/v1/messages",
      { ...hello, max_tokens: 5 },
      {
        "x-sim-fail": "429",
        "x-sim-retry-after": "2",
      },
    );
    expect(anthropic.status).toBe(429);
    expect(anthropic.headers.get("retry-after")).toBe("2");
    expect(await anthropic.json()).toEqual({
      type: "error",
      error: { type: "rate_limit_error", message: "Rate limit reached for requests (simulated)." },
    });
    const google = await post(
      "/v1beta/models/sim-fast:generateContent",
      { contents: [{ parts: [{ text: "x" }] }] },
      { "x-sim-fail": "503" },
    );
    expect(google.status).toBe(503);
    expect(await google.json()).toEqual({
      error: {
        code: 503,
        message: "The engine is currently overloaded, please try again later (simulated).",
        status: "UNAVAILABLE",
      },
    });
    const noMethod = await post("/v1beta/models/sim-fast:countEverything", {});
    expect(noMethod.status).toBe(404);
    expect(((await noMethod.json()) as { error: { status: string } }).error.status).toBe(
      "NOT_FOUND",
    );
    const start = performance.now();
    const slow = await post(
      "/v1beta/models/sim-fast:streamGenerateContent?alt=sse",
      { contents: [{ parts: [{ text: "x" }] }] },
      { "x-sim-latency-ms": "200" },
    );
    const { events } = await readEvents(slow);
    expect(performance.now() - start).toBeGreaterThanOrEqual(195);
    const last = JSON.parse(events[events.length - 1]!) as {
      candidates: Array<{ finishReason: string }>;
      usageMetadata: { totalTokenCount: number };
    };
    expect(last.candidates[0]!.finishReason).toBe("STOP");
    expect(last.usageMetadata.totalTokenCount).toBeGreaterThan(0);
  });
});
