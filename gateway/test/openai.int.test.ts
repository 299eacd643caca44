// The OpenAI-compatible API end to end with the official `openai` client (chat completions and
// the Responses API), and Anthropic's Messages API with the official `@anthropic-ai/sdk`,
// through a real mesh: auth, registry and model-proxy as built processes, the LLM simulator
// in-process as the only provider, and the gateway in front. Nothing here is mocked.
import { startSimulator, type Simulator } from "@ensemble/llm-sim";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  AuthService,
  CategorizerService,
  ChatRole,
  ModelProxyService,
  RegistryService,
} from "@ensemble/proto";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { zodResponseFormat, zodTextFormat } from "openai/helpers/zod";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { startServices, type Services } from "@ensemble/testkit";
import {
  startGateway,
  type AuthProcess,
  type RegistryProcess,
  type TestGateway,
} from "./harness.js";

const PASSWORD = "correct-Horse-battery-9";
/** sim-medium answers slowly here, so a stream visibly spreads over time. */
const SLOW_MODEL = "sim-medium";
/** sim-code cuts its streams in the middle here (half the chunks, then the socket dies). */
const CUT_MODEL = "sim-code";

let sim: Simulator;
let services: Services<"categorizer">;
let auth: AuthProcess;
let registry: RegistryProcess;
let proxy: { address: string; output(): string; stop(): Promise<void> };
let categorizer: { address: string; stop(): Promise<void> };
let gw: TestGateway;
let accessToken: string;
let writeKey: string;
let readKey: string;

async function rpc<T>(method: string, body: unknown, token?: string): Promise<T> {
  const res = await fetch(`${gw.url}/${AuthService.typeName}/${method}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

const client = (apiKey: string, opts: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}) =>
  new OpenAI({ apiKey, baseURL: `${gw.url}/v1`, maxRetries: 0, ...opts });

beforeAll(async () => {
  sim = await startSimulator({
    models: {
      [SLOW_MODEL]: { ttftMs: 0, tokensPerSecond: 40 },
      [CUT_MODEL]: { fail: "cut", tokensPerSecond: 200 },
    },
  });
  services = await startServices({
    simulatorUrl: `${sim.url}/v1`,
    // The cut-stream case must not open the simulator deployment's breaker for the others.
    modelProxy: { env: { BREAKER_THRESHOLD: "100" } },
    categorizer: {},
  });
  ({ auth, registry, modelProxy: proxy, categorizer } = services);
  gw = await startGateway({
    jwksUrl: auth.jwksUrl,
    serviceToken: await auth.mintServiceToken("gateway"),
    corsOrigins: ["https://console.example"],
    upstreams: [
      { name: "auth", services: [AuthService], address: auth.address },
      { name: "registry", services: [RegistryService], address: registry.address },
      { name: "model-proxy", services: [ModelProxyService], address: proxy.address },
      { name: "categorizer", services: [CategorizerService], address: categorizer.address },
    ],
  });
  const signup = await rpc<{ tokens: { accessToken: string } }>("Signup", {
    email: `openai-${Date.now()}@example.com`,
    password: PASSWORD,
    tenantName: "openai tenant",
  });
  accessToken = signup.tokens.accessToken;
  writeKey = (await rpc<{ secret: string }>("CreateApiKey", { name: "sdk" }, accessToken)).secret;
  readKey = (
    await rpc<{ secret: string }>(
      "CreateApiKey",
      { name: "reader", scopes: ["API_KEY_SCOPE_READ"] },
      accessToken,
    )
  ).secret;
}, 240_000);

afterAll(async () => {
  await gw?.close();
  await services?.stop();
  await sim?.close();
});

interface EnsembleFields {
  ensemble: {
    served_by: { model: string; provider: string };
    simulated: boolean;
    cost_usd: number;
  };
}

describe("openai client against the gateway", () => {
  it("chat - a chat.completion from the simulator, with usage, the answering model and the request id echoed", async () => {
    const { data, response } = await client(accessToken)
      .chat.completions.create(
        {
          model: "sim-fast",
          messages: [
            { role: "system", content: "be brief" },
            { role: "user", content: "hello there, gateway" },
          ],
          temperature: 0.2,
          max_tokens: 200,
        },
        { headers: { "x-request-id": "openai-chat-1" } },
      )
      .withResponse();
    expect(response.headers.get("x-request-id")).toBe("openai-chat-1");
    expect(data.object).toBe("chat.completion");
    expect(data.model).toBe("sim-fast");
    expect(data.choices).toHaveLength(1);
    expect(data.choices[0]?.message.role).toBe("assistant");
    expect(data.choices[0]?.message.content).toContain('You said: "hello there, gateway"');
    expect(data.choices[0]?.finish_reason).toBe("stop");
    expect(data.usage?.prompt_tokens).toBeGreaterThan(0);
    expect(data.usage?.completion_tokens).toBeGreaterThan(0);
    expect(data.usage?.total_tokens).toBe(
      (data.usage?.prompt_tokens ?? 0) + (data.usage?.completion_tokens ?? 0),
    );
    const ext = (data as unknown as EnsembleFields).ensemble;
    expect(ext.simulated).toBe(true);
    expect(ext.served_by).toMatchObject({ model: "sim-fast", provider: "simulator" });
  });

  it("choices - n: 3 answers three choices (each a billed call: usage summed); streamed, every choice's deltas and finish arrive, then the summed usage once", async () => {
    const openai = client(accessToken);
    const messages = [{ role: "user" as const, content: "three ideas for a team lunch" }];
    const one = await openai.chat.completions.create({ model: "sim-fast", messages });
    const three = await openai.chat.completions.create({ model: "sim-fast", messages, n: 3 });
    expect(three.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (const c of three.choices) {
      expect(c.message.content).toBe(one.choices[0]?.message.content); // a deterministic model
      expect(c.finish_reason).toBe("stop");
    }
    expect(three.usage?.prompt_tokens).toBe(3 * (one.usage?.prompt_tokens ?? 0));
    expect(three.usage?.completion_tokens).toBe(3 * (one.usage?.completion_tokens ?? 0));
    const cost = (r: unknown) => (r as EnsembleFields).ensemble.cost_usd;
    expect(cost(one)).toBeGreaterThan(0);
    expect(cost(three)).toBeCloseTo(3 * cost(one), 12);

    // The SDK's stream helper gathers the choices by index.
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    const stream = openai.chat.completions.stream({
      model: "sim-fast",
      messages,
      n: 2,
      stream_options: { include_usage: true },
    });
    stream.on("chunk", (c) => chunks.push(c));
    const final = await stream.finalChatCompletion();
    expect(final.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual([
      [0, one.choices[0]?.message.content, "stop"],
      [1, one.choices[0]?.message.content, "stop"],
    ]);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    const withUsage = chunks.filter((c) => c.usage !== null && c.usage !== undefined);
    expect(withUsage).toHaveLength(1);
    expect(withUsage[0]).toBe(chunks.at(-1));
    expect(withUsage[0]?.usage?.completion_tokens).toBe(2 * (one.usage?.completion_tokens ?? 0));

    // Out of range: OpenAI's 400 naming the parameter.
    const refused = await openai.chat.completions
      .create({ model: "sim-fast", messages, n: 9 })
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("n");
  });

  it("logprobs - the answer's tokens with their log probabilities and top alternatives, unary and streamed", async () => {
    const openai = client(accessToken);
    const messages = [{ role: "user" as const, content: "pick a number" }];
    const res = await openai.chat.completions.create({
      model: "sim-fast",
      messages,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = res.choices[0]?.message.content ?? "";
    const entries = res.choices[0]?.logprobs?.content ?? [];
    expect(entries.map((t) => t.token).join("")).toBe(content);
    for (const t of entries) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(Buffer.from(t.bytes ?? []).toString("utf8")).toBe(t.token);
      expect(t.top_logprobs.map((a) => a.token)[0]).toBe(t.token);
      expect(t.top_logprobs).toHaveLength(3);
    }
    const plain = await openai.chat.completions.create({ model: "sim-fast", messages });
    expect(plain.choices[0]?.logprobs).toBeNull();

    const stream = await openai.chat.completions.create({
      model: "sim-fast",
      messages,
      logprobs: true,
      stream: true,
    });
    let text = "";
    let tokens = "";
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      tokens += (chunk.choices[0]?.logprobs?.content ?? []).map((t) => t.token).join("");
    }
    expect(text).toBe(content);
    expect(tokens).toBe(content);

    const refused = await openai.chat.completions
      .create({ model: "sim-fast", messages, top_logprobs: 2 })
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("top_logprobs");
  });

  it("streaming - deltas arrive before the end, add up to the unary answer, and usage comes last when asked", async () => {
    const openai = client(accessToken);
    const messages = [{ role: "user" as const, content: "tell me a slow story" }];
    const unary = await openai.chat.completions.create({ model: SLOW_MODEL, messages });
    const stream = await openai.chat.completions.create({
      model: SLOW_MODEL,
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    const arrivals: number[] = [];
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    let finish: string | null | undefined;
    let lastChoices = -1;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      expect(chunk.model).toBe(SLOW_MODEL);
      const content = chunk.choices[0]?.delta.content;
      if (content) {
        text += content;
        arrivals.push(performance.now());
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
      lastChoices = chunk.choices.length;
    }
    expect(arrivals.length).toBeGreaterThanOrEqual(2);
    // 40 tokens/s: the first delta is visibly earlier than the last one.
    expect((arrivals.at(-1) ?? 0) - (arrivals[0] ?? 0)).toBeGreaterThan(150);
    expect(text).toBe(unary.choices[0]?.message.content);
    expect(finish).toBe("stop");
    expect(lastChoices).toBe(0); // the usage chunk has no choices
    expect(usage?.completion_tokens).toBe(unary.usage?.completion_tokens);
  });

  it("legacy completions - text_completion unary and streamed (the same text, usage last), 16 tokens by default, what is not supported is a 400", async () => {
    const openai = client(accessToken);
    const prompt = "Write a haiku about tides";
    const unary = await openai.completions.create({ model: "sim-fast", prompt, max_tokens: 200 });
    expect(unary.object).toBe("text_completion");
    expect(unary.id).toMatch(/^cmpl-/);
    expect(unary.model).toBe("sim-fast");
    expect(unary.choices[0]?.text).toContain(prompt);
    expect(unary.choices[0]?.finish_reason).toBe("stop");
    expect(unary.usage?.completion_tokens).toBeGreaterThan(16);
    let text = "";
    let finish: string | null | undefined;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of await openai.completions.create({
      model: "sim-fast",
      prompt: [prompt],
      max_tokens: 200,
      stream: true,
      stream_options: { include_usage: true },
    })) {
      expect(chunk.object).toBe("text_completion");
      text += chunk.choices[0]?.text ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    expect(text).toBe(unary.choices[0]?.text);
    expect(finish).toBe("stop");
    expect(usage?.completion_tokens).toBe(unary.usage?.completion_tokens);
    // OpenAI's default length for this API.
    const short = await openai.completions.create({ model: "sim-fast", prompt });
    expect(short.usage?.completion_tokens).toBe(16);
    expect(short.choices[0]?.finish_reason).toBe("length");
    for (const [body, param] of [
      [{ prompt: ["one", "two"] }, "prompt"],
      [{ prompt: [1, 2, 3] }, "prompt"],
      [{ prompt, n: 2 }, "n"],
      [{ prompt, suffix: "end" }, "suffix"],
      [{ prompt, echo: true }, "echo"],
      [{ prompt, logprobs: 3 }, "logprobs"],
    ] as const) {
      const err = await openai.completions
        .create({ model: "sim-fast", ...(body as unknown as { prompt: string }) })
        .catch((e: unknown) => e);
      expect(err, JSON.stringify(body)).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(param);
    }
  });

  it("tools - an agent loop: the model calls the tool (unary and streamed), gets its result, then answers", async () => {
    const openai = client(accessToken);
    const tools: OpenAI.ChatCompletionTool[] = [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "The weather in a city",
          parameters: { type: "object", properties: { city: { type: "string" } } },
        },
      },
    ];
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: "user", content: "What is the weather in Paris?" },
    ];
    const first = await openai.chat.completions.create({
      model: "sim-fast",
      messages,
      tools,
      tool_choice: "required",
    });
    const asked = first.choices[0]!;
    expect(asked.finish_reason).toBe("tool_calls");
    const call = asked.message.tool_calls?.[0];
    expect(call).toMatchObject({ type: "function", function: { name: "get_weather" } });
    expect(JSON.parse(call?.type === "function" ? call.function.arguments : "")).toEqual({
      city: "[simulated sim-fast] city",
    });

    const streamed = await openai.chat.completions
      .stream({ model: "sim-fast", messages, tools, tool_choice: "required" })
      .finalChatCompletion();
    expect(streamed.choices[0]?.finish_reason).toBe("tool_calls");
    expect(streamed.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      id: call!.id,
      function: { name: "get_weather", arguments: '{"city":"[simulated sim-fast] city"}' },
    });

    const answer = await openai.chat.completions.create({
      model: "sim-fast",
      tools,
      tool_choice: "required",
      messages: [
        ...messages,
        asked.message,
        { role: "tool", tool_call_id: call!.id, content: "sunny, 21 C" },
      ],
    });
    expect(answer.choices[0]?.finish_reason).toBe("stop");
    expect(answer.choices[0]?.message.content).toContain('The tool answered: "sunny, 21 C"');
    expect(answer.usage?.prompt_tokens).toBeGreaterThan(first.usage?.prompt_tokens ?? 0);
  });

  it("structured output - the SDK's parse() with a zod schema gets the parsed object back", async () => {
    // parse() validates the answer with zod: formats and bounds must hold, not just the shape.
    const Film = z.object({
      title: z.string(),
      rating: z.number().min(1).max(5),
      year: z.number().int().max(1999),
      code: z.string().max(8),
      genres: z.array(z.enum(["drama", "comedy"])).max(2),
      director: z.object({ name: z.string(), email: z.email(), site: z.url() }),
      id: z.uuid(),
      released: z.iso.date(),
    });
    const res = await client(accessToken).chat.completions.parse({
      model: "sim-fast",
      messages: [{ role: "user", content: "Recommend a film" }],
      response_format: zodResponseFormat(Film, "film"),
    });
    const film = res.choices[0]?.message.parsed;
    expect(film).toMatchObject({
      title: "[simulated sim-fast] title",
      rating: 1,
      code: "[simulat",
      genres: ["drama"],
      director: { name: "[simulated sim-fast] name", email: "simulated@example.com" },
      released: "2000-01-01",
    });
    expect(film?.year).toBeLessThanOrEqual(1999);
  });

  it("embeddings - one vector per input; the SDK's default base64 decodes to the same floats", async () => {
    const openai = client(accessToken);
    const input = ["the cat sat on the mat", "a cat sat on a mat", "quantum chromodynamics"];
    const b64 = await openai.embeddings.create({ model: "sim-embed", input });
    const floats = await openai.embeddings.create({
      model: "sim-embed",
      input,
      encoding_format: "float",
    });
    expect(b64.object).toBe("list");
    expect(b64.data.map((d) => d.index)).toEqual([0, 1, 2]);
    const dims = b64.data[0]?.embedding.length ?? 0;
    expect(dims).toBeGreaterThan(0);
    for (const d of [...b64.data, ...floats.data]) expect(d.embedding).toHaveLength(dims);
    for (let i = 0; i < 3; i++) {
      const a = b64.data[i]?.embedding ?? [];
      const b = floats.data[i]?.embedding ?? [];
      for (let j = 0; j < dims; j++) expect(a[j]).toBeCloseTo(b[j] ?? NaN, 6);
    }
    const cos = (x: number[], y: number[]) => x.reduce((s, v, k) => s + v * (y[k] ?? 0), 0);
    const [cat1, cat2, qcd] = b64.data.map((d) => d.embedding) as [number[], number[], number[]];
    expect(cos(cat1, cat2)).toBeGreaterThan(cos(cat1, qcd));
    expect(b64.usage.prompt_tokens).toBeGreaterThan(0);

    // What the SDK asked for by default really was base64 (a string on the wire).
    const raw = (await (
      await fetch(`${gw.url}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
        body: JSON.stringify({ model: "sim-embed", input: "x", encoding_format: "base64" }),
      })
    ).json()) as { data: Array<{ embedding: unknown }> };
    expect(typeof raw.data[0]?.embedding).toBe("string");
  });

  it("models - what can be called here in OpenAI's list shape: auto, the aliases and the served models; the rest is 404", async () => {
    const openai = client(accessToken);
    const listed = new Map<string, OpenAI.Model>();
    for await (const model of openai.models.list()) {
      expect(model.object).toBe("model");
      listed.set(model.id, model);
    }
    expect([...listed.keys()]).toEqual(
      expect.arrayContaining(["auto", "fast", "embedding", "sim-fast", "sim-embed", SLOW_MODEL]),
    );
    expect(listed.get("sim-fast")?.owned_by).toBe("simulator");
    // Only the simulator is configured: the alias is answered by its stand-in, and the catalog's
    // OpenAI and Anthropic models, which no deployment here serves, are not offered.
    expect(listed.get("fast")?.owned_by).toBe("simulator");
    expect(listed.has("gpt-4o-mini")).toBe(false);
    expect([...listed.values()].filter((m) => m.owned_by === "anthropic")).toEqual([]);
    // Every listed name can be called.
    const answer = await openai.chat.completions.create({
      model: "fast",
      messages: [{ role: "user", content: "hi" }],
    });
    expect(answer.model).toBe("sim-fast");

    const one = await openai.models.retrieve("sim-embed");
    expect(one).toMatchObject({ id: "sim-embed", object: "model", owned_by: "simulator" });
    expect(await openai.models.retrieve("fast")).toMatchObject({
      id: "fast",
      owned_by: "simulator",
    });
    for (const id of ["no-such-model", "gpt-4o-mini"]) {
      const missing = await openai.models.retrieve(id).catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(OpenAI.NotFoundError);
    }
  });

  it("invalid request - the SDK throws BadRequestError (400) carrying OpenAI's error shape", async () => {
    const openai = client(accessToken);
    const empty = await openai.chat.completions
      .create({ model: "sim-fast", messages: [] })
      .catch((e: unknown) => e);
    expect(empty).toBeInstanceOf(OpenAI.BadRequestError);
    const e = empty as InstanceType<typeof OpenAI.BadRequestError>;
    expect(e.status).toBe(400);
    expect(e.type).toBe("invalid_request_error");
    expect(e.param).toBe("messages");
    expect(Object.keys(e.error as object).sort()).toEqual(["code", "message", "param", "type"]);

    // A value only the contract's rules catch (model-proxy's validation) reaches the SDK the same way.
    const hot = await openai.chat.completions
      .create({ model: "sim-fast", messages: [{ role: "user", content: "x" }], temperature: 5 })
      .catch((e: unknown) => e);
    expect(hot).toBeInstanceOf(OpenAI.BadRequestError);
    expect((hot as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("temperature");

    // Unknown fields are refused, not ignored.
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${accessToken}` },
      body: JSON.stringify({
        model: "sim-fast",
        messages: [{ role: "user", content: "x" }],
        tempreture: 1,
      }),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({
      error: {
        message: expect.stringContaining("tempreture") as unknown,
        type: "invalid_request_error",
        param: "tempreture",
        code: "unknown_parameter",
      },
    });
  });

  it("unknown model - NotFoundError with code model_not_found", async () => {
    const err = await client(accessToken)
      .chat.completions.create({
        model: "no-such-model",
        messages: [{ role: "user", content: "x" }],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect((err as InstanceType<typeof OpenAI.NotFoundError>).code).toBe("model_not_found");
  });

  it("bad key - AuthenticationError (401, invalid_api_key) for a wrong API key and for a garbage token", async () => {
    for (const key of ["ens_this-is-not-a-key", "not-a-token-at-all"]) {
      const err = await client(key)
        .chat.completions.create({ model: "sim-fast", messages: [{ role: "user", content: "x" }] })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
      const e = err as InstanceType<typeof OpenAI.AuthenticationError>;
      expect(e.status).toBe(401);
      expect(e.code).toBe("invalid_api_key");
      expect(e.message).not.toContain(key);
    }
    const anonymous = await fetch(`${gw.url}/v1/models`);
    expect(anonymous.status).toBe(401);
    expect(((await anonymous.json()) as { error: { type: string } }).error.type).toBe(
      "authentication_error",
    );
  });

  it("api key - an ens_ key works as the SDK's apiKey; a read-only key lists models but cannot chat", async () => {
    const answer = await client(writeKey).chat.completions.create({
      model: "sim-fast",
      messages: [{ role: "user", content: "via api key" }],
    });
    expect(answer.choices[0]?.message.content).toContain("via api key");
    const reader = client(readKey);
    const page = await reader.models.list();
    expect(page.data.length).toBeGreaterThan(0);
    const denied = await reader.chat.completions
      .create({ model: "sim-fast", messages: [{ role: "user", content: "x" }] })
      .catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(OpenAI.PermissionDeniedError);
  });

  it("api key limits - a key limited to some models lists and calls only those; one over its budget gets insufficient_quota", async () => {
    const limited = await rpc<{ apiKey: { id: string }; secret: string }>(
      "CreateApiKey",
      { name: "team-a", limits: { models: ["fast", "sim-embed"] } },
      accessToken,
    );
    const sdk = client(limited.secret);
    const ids = [];
    for await (const m of sdk.models.list()) ids.push(m.id);
    expect(ids).toContain("fast");
    expect(ids).toContain("sim-fast");
    expect(ids).toContain("sim-embed");
    expect(ids).not.toContain("sim-code");
    const ok = await sdk.chat.completions.create({
      model: "fast",
      messages: [{ role: "user", content: "allowed" }],
    });
    expect(ok.choices[0]?.message.content).toContain("allowed");
    const denied = await sdk.chat.completions
      .create({ model: "sim-code", messages: [{ role: "user", content: "x" }] })
      .catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect((denied as InstanceType<typeof OpenAI.PermissionDeniedError>).message).toContain(
      'API key "team-a" may not call sim-code; it may call fast, sim-embed',
    );
    // model auto picks among what the key may call: a proof would go to the thinking role.
    const proof = await sdk.chat.completions.create({
      model: "auto",
      messages: [{ role: "user", content: "Prove that the square root of 3 is irrational." }],
    });
    expect(proof.model).toBe("sim-fast");
    const reasons = (proof as unknown as { ensemble: { routing: { reasons: string[] } } }).ensemble
      .routing.reasons;
    expect(reasons.join(" ")).toContain("this API key may not call thinking: sim-fast instead");

    // The owner changes the key's limits over Connect: a budget of 0 stops it.
    const updated = await rpc<{
      apiKey: { limits: { models?: string[]; monthlyLimitUsd?: number } };
    }>("UpdateApiKey", { id: limited.apiKey.id, limits: { monthlyLimitUsd: 0 } }, accessToken);
    expect(updated.apiKey.limits).toEqual({ monthlyLimitUsd: 0 });
    const broke = await rpc<{ secret: string }>(
      "CreateApiKey",
      { name: "broke", limits: { monthlyLimitUsd: 0 } },
      accessToken,
    );
    const refused = await client(broke.secret)
      .chat.completions.create({ model: "sim-fast", messages: [{ role: "user", content: "x" }] })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(OpenAI.RateLimitError);
    expect((refused as InstanceType<typeof OpenAI.RateLimitError>).code).toBe("insufficient_quota");

    // A key's own requests per minute: the next call is a rate limit the SDK may retry later.
    const paced = await rpc<{ secret: string }>(
      "CreateApiKey",
      { name: "paced", limits: { requestsPerMinute: 1 } },
      accessToken,
    );
    const pacedSdk = client(paced.secret);
    const ask = () =>
      pacedSdk.chat.completions.create({
        model: "sim-fast",
        messages: [{ role: "user", content: "x" }],
      });
    await ask();
    const slowDown = await ask().catch((e: unknown) => e);
    expect(slowDown).toBeInstanceOf(OpenAI.RateLimitError);
    const rate = slowDown as InstanceType<typeof OpenAI.RateLimitError>;
    expect(rate.code).toBe("rate_limit_exceeded");
    expect(rate.message).toContain('API key "paced" allows 1 requests per minute');
    expect(Number(rate.headers?.get("retry-after"))).toBeGreaterThan(0);

    // Rolled through this gateway without a grace: the old secret, cached here since its last
    // use, stops at once; the new one works.
    const rolled = await rpc<{ secret: string }>(
      "RollApiKey",
      { id: limited.apiKey.id },
      accessToken,
    );
    const stale = await sdk.models.list().catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(OpenAI.AuthenticationError);
    const fresh = [];
    for await (const m of client(rolled.secret).models.list()) fresh.push(m.id);
    expect(fresh).toContain("fast");
  });

  it("guardrails - a tenant's redaction reaches the answer, a blocked prompt is content_policy_violation, a blocked answer ends with content_filter", async () => {
    const tenant = await rpc<{ tokens: { accessToken: string } }>("Signup", {
      email: `guarded-${Date.now()}@example.com`,
      password: PASSWORD,
      tenantName: "guarded tenant",
    });
    const token = tenant.tokens.accessToken;
    await rpc(
      "UpdateTenantSettings",
      {
        settings: {
          guardrails: {
            redactPii: ["PII_KIND_EMAIL"],
            blockedTerms: ["Project Falcon"],
            blockedOutputTerms: ["pineapple"],
          },
        },
        updateMask: "guardrails",
      },
      token,
    );
    const sdk = client(token);
    const answer = await sdk.chat.completions.create({
      model: "sim-fast",
      messages: [{ role: "user", content: "Reply to ann@example.com" }],
    });
    expect(answer.choices[0]?.message.content).toContain("Reply to [EMAIL]");
    const blocked = await sdk.chat.completions
      .create({
        model: "sim-fast",
        messages: [{ role: "user", content: "Project Falcon status?" }],
      })
      .catch((e: unknown) => e);
    expect(blocked).toBeInstanceOf(OpenAI.BadRequestError);
    const bad = blocked as InstanceType<typeof OpenAI.BadRequestError>;
    expect(bad.code).toBe("content_policy_violation");
    expect(bad.message).toContain('contains the blocked term "Project Falcon"');
    let text = "";
    let finish: string | null | undefined;
    for await (const chunk of await sdk.chat.completions.create({
      model: "sim-fast",
      stream: true,
      messages: [{ role: "user", content: "Say pineapple twice" }],
    })) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("content_filter");
    expect(text).not.toMatch(/pine/i);
  });

  it("auto - the categorizer picks the model: a proof goes to the thinking role, a quick fact to the fast one", async () => {
    const openai = client(accessToken);
    const { data: proof, response } = await openai.chat.completions
      .create({
        model: "auto",
        messages: [{ role: "user", content: "Prove that the square root of 3 is irrational." }],
      })
      .withResponse();
    // No real provider here: the role alias is answered by the simulator's model for that role.
    expect(proof.model).toBe("sim-thinking");
    expect(response.headers.get("x-ensemble-category")).toBe("CATEGORY_L");
    const routing = (proof as unknown as { ensemble: { routing: Record<string, unknown> } })
      .ensemble.routing;
    expect(routing).toMatchObject({ model: "thinking", category: "CATEGORY_L" });
    expect((routing["reasons"] as string[]).join(" ")).toMatch(/prove/i);

    const stream = await openai.chat.completions.create({
      model: "auto",
      messages: [{ role: "user", content: "What is the capital of France?" }],
      stream: true,
    });
    let model = "";
    for await (const chunk of stream) model = chunk.model;
    expect(model).toBe("sim-fast");

    // A chat asking for a picture is answered in words by a model that chats (it used to be
    // routed to the image model and refused with 400 "does not support chat").
    const picture = await openai.chat.completions.create({
      model: "auto",
      messages: [{ role: "user", content: "Generate an image of a red fox in the snow" }],
    });
    expect(picture.model).toBe("sim-fast");
    expect(picture.choices[0]?.message.content).toContain("red fox");
  });

  it("auto over Connect and gRPC - ModelProxyService Chat and StreamChat with model auto are routed by the categorizer too", async () => {
    const headers = { authorization: `Bearer ${accessToken}` };
    const proof = {
      model: "auto",
      messages: [
        {
          role: ChatRole.USER,
          content: [
            {
              part: {
                case: "text" as const,
                value: "Prove that the square root of 3 is irrational.",
              },
            },
          ],
        },
      ],
    };
    const connect = createClient(
      ModelProxyService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    let routed = "";
    const res = await connect.chat(proof, {
      headers,
      onHeader: (h) => (routed = h.get("x-ensemble-routed-model") ?? ""),
    });
    expect(res.servedBy?.model).toBe("sim-thinking");
    expect(routed).toBe("thinking");

    const grpc = createClient(ModelProxyService, createGrpcTransport({ baseUrl: gw.url }));
    let served = "";
    for await (const m of grpc.streamChat({ chat: proof }, { headers })) {
      if (m.event.case === "start") served = m.event.value.servedBy?.model ?? "";
    }
    expect(served).toBe("sim-thinking");
  });

  it("mid-stream failure - a provider stream cut in the middle reaches the SDK as a thrown error, not a clean end", async () => {
    const stream = await client(accessToken).chat.completions.create({
      model: CUT_MODEL,
      messages: [{ role: "user", content: "this answer will be cut off in the middle" }],
      stream: true,
    });
    let content = "";
    let finished = false;
    const error = await (async () => {
      try {
        for await (const chunk of stream) {
          content += chunk.choices[0]?.delta.content ?? "";
          if (chunk.choices[0]?.finish_reason) finished = true;
        }
        return undefined;
      } catch (err) {
        return err;
      }
    })();
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect(content.length).toBeGreaterThan(0); // it had started
    expect(finished).toBe(false);
  });

  it("images - b64_json PNG images from the simulator", async () => {
    const res = await client(accessToken).images.generate({
      model: "sim-image",
      prompt: "a red square",
      size: "256x256",
      n: 2,
    });
    expect(res.data).toHaveLength(2);
    const png = Buffer.from(res.data?.[0]?.b64_json ?? "", "base64");
    expect(png.subarray(1, 4).toString("latin1")).toBe("PNG");
  });
});

describe("responses API with the openai client", () => {
  const question = "What is the capital of France?";

  it("responses - text in, output_text out; the stream's events come in order and add up to the same answer", async () => {
    const openai = client(accessToken);
    const res = await openai.responses.create({
      model: "sim-fast",
      instructions: "Answer in one sentence.",
      input: question,
    });
    expect(res).toMatchObject({ object: "response", status: "completed", model: "sim-fast" });
    expect(res.output.map((o) => o.type)).toEqual(["message"]);
    expect(res.output_text).toContain("[simulated sim-fast]");
    expect(res.output_text).toContain("capital of France");
    expect(res.usage?.input_tokens).toBeGreaterThan(0);
    expect(res.usage?.output_tokens).toBeGreaterThan(0);

    const stream = openai.responses.stream({
      model: "sim-fast",
      instructions: "Answer in one sentence.",
      input: [{ role: "user", content: [{ type: "input_text", text: question }] }],
    });
    const types: string[] = [];
    const sequence: number[] = [];
    let text = "";
    for await (const event of stream) {
      types.push(event.type);
      sequence.push(event.sequence_number);
      if (event.type === "response.output_text.delta") text += event.delta;
    }
    const final = await stream.finalResponse();
    expect(types.slice(0, 2)).toEqual(["response.created", "response.in_progress"]);
    expect(types.at(-1)).toBe("response.completed");
    expect(types.filter((t) => t === "response.output_text.delta").length).toBeGreaterThan(1);
    expect(sequence).toEqual(sequence.map((_, i) => i));
    expect(text).toBe(res.output_text);
    expect(final.output_text).toBe(res.output_text);
    expect(final.usage?.total_tokens).toBe(res.usage?.total_tokens);
  });

  it("responses - include message.output_text.logprobs: the output text's tokens with their log probabilities, unary and streamed", async () => {
    const openai = client(accessToken);
    const ask = {
      model: "sim-fast",
      input: "pick a colour",
      include: ["message.output_text.logprobs" as const],
      top_logprobs: 2,
    };
    const res = await openai.responses.create(ask);
    const part = res.output.flatMap((o) => (o.type === "message" ? o.content : []))[0];
    expect(part?.type).toBe("output_text");
    const logprobs = part?.type === "output_text" ? (part.logprobs ?? []) : [];
    expect(logprobs.map((t) => t.token).join("")).toBe(res.output_text);
    expect(logprobs.every((t) => t.top_logprobs?.length === 2 && t.logprob <= 0)).toBe(true);
    const plain = await openai.responses.create({ model: "sim-fast", input: "pick a colour" });
    const plainPart = plain.output.flatMap((o) => (o.type === "message" ? o.content : []))[0];
    expect(plainPart?.type === "output_text" ? plainPart.logprobs : undefined).toEqual([]);

    const stream = await openai.responses.create({ ...ask, stream: true });
    let text = "";
    let tokens = "";
    let done: string[] = [];
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") {
        text += event.delta;
        tokens += (event.logprobs ?? []).map((t) => t.token).join("");
      } else if (event.type === "response.output_text.done") {
        done = (event.logprobs ?? []).map((t) => t.token);
      }
    }
    expect(text).toBe(res.output_text);
    expect(tokens).toBe(text);
    expect(done.join("")).toBe(text);
  });

  it("responses - a function tool: the call is a function_call item (unary and streamed), and its output sent back in input is answered", async () => {
    const openai = client(accessToken);
    const tools: OpenAI.Responses.FunctionTool[] = [
      {
        type: "function",
        name: "get_weather",
        description: "The weather in a city",
        parameters: {
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
          additionalProperties: false,
        },
        strict: true,
      },
    ];
    const ask = "What is the weather in Paris?";
    const first = await openai.responses.create({
      model: "sim-fast",
      input: ask,
      tools,
      tool_choice: "required",
    });
    const call = first.output.find((o) => o.type === "function_call");
    expect(call).toMatchObject({ type: "function_call", name: "get_weather", status: "completed" });
    expect(JSON.parse(call?.type === "function_call" ? call.arguments : "")).toEqual({
      city: "[simulated sim-fast] city",
    });

    const streamed = await openai.responses
      .stream({ model: "sim-fast", input: ask, tools, tool_choice: "required" })
      .finalResponse();
    expect(streamed.output.find((o) => o.type === "function_call")).toMatchObject({
      call_id: call?.type === "function_call" ? call.call_id : "",
      arguments: '{"city":"[simulated sim-fast] city"}',
    });

    const answer = await openai.responses.create({
      model: "sim-fast",
      tools,
      input: [
        { role: "user", content: ask },
        ...(first.output as OpenAI.Responses.ResponseInputItem[]),
        {
          type: "function_call_output",
          call_id: call?.type === "function_call" ? call.call_id : "",
          output: "sunny, 21 C",
        },
      ],
    });
    expect(answer.output_text).toContain('The tool answered: "sunny, 21 C"');
  });

  it("responses - structured output with the SDK's parse() and a zod text format; model auto is routed", async () => {
    const openai = client(accessToken);
    const City = z.object({ name: z.string(), country: z.string(), population: z.number() });
    const parsed = await openai.responses.parse({
      model: "sim-fast",
      input: question,
      text: { format: zodTextFormat(City, "city") },
    });
    expect(parsed.output_parsed).toMatchObject({ name: "[simulated sim-fast] name" });

    const proof = await openai.responses.create({
      model: "auto",
      input: "Prove that the square root of 3 is irrational.",
    });
    expect(proof.model).toBe("sim-thinking");
  });

  it("responses - previous_response_id continues a stored conversation; retrieve and delete; another user sees none of it", async () => {
    const openai = client(accessToken);
    const first = await openai.responses.create({
      model: "sim-fast",
      instructions: "Be brief.",
      input: "My name is Ada and I like sailing.",
    });
    expect((first as unknown as { store: boolean }).store).toBe(true);
    const again = await openai.responses.retrieve(first.id);
    expect(again.id).toBe(first.id);
    expect(again.output_text).toBe(first.output_text);

    // The same question with and without the stored turn before it: the model got more.
    const question = "What is my name?";
    const alone = await openai.responses.create({
      model: "sim-fast",
      input: question,
      store: false,
    });
    const continued = await openai.responses.create({
      model: "sim-fast",
      previous_response_id: first.id,
      input: question,
    });
    expect(continued.previous_response_id).toBe(first.id);
    expect(continued.usage!.input_tokens).toBeGreaterThan(alone.usage!.input_tokens + 10);
    // store: false keeps nothing.
    const unstored = await openai.responses.retrieve(alone.id).catch((e: unknown) => e);
    expect(unstored).toBeInstanceOf(OpenAI.NotFoundError);

    // A streamed answer is stored before the stream says it is complete: continuing at once works.
    const streamed = await openai.responses
      .stream({ model: "sim-fast", previous_response_id: continued.id, input: "And my hobby?" })
      .finalResponse();
    const third = await openai.responses.create({
      model: "sim-fast",
      previous_response_id: streamed.id,
      input: question,
    });
    expect(third.usage!.input_tokens).toBeGreaterThan(continued.usage!.input_tokens);

    // Another user (of another tenant) can neither read nor continue it.
    const other = (
      await rpc<{ tokens: { accessToken: string } }>("Signup", {
        email: `responses-other-${Date.now()}@example.com`,
        password: PASSWORD,
        tenantName: "other tenant",
      })
    ).tokens.accessToken;
    const foreign = await client(other)
      .responses.retrieve(first.id)
      .catch((e: unknown) => e);
    expect(foreign).toBeInstanceOf(OpenAI.NotFoundError);
    const hijack = await client(other)
      .responses.create({ model: "sim-fast", previous_response_id: first.id, input: question })
      .catch((e: unknown) => e);
    expect(hijack).toBeInstanceOf(OpenAI.BadRequestError);

    await openai.responses.delete(first.id);
    const gone = await openai.responses.retrieve(first.id).catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(OpenAI.NotFoundError);
    const deletedTwice = await openai.responses.delete(first.id).catch((e: unknown) => e);
    expect(deletedTwice).toBeInstanceOf(OpenAI.NotFoundError);
  });

  it("responses - what cannot work here is a clear 400, and a stream cut mid-way is a thrown error", async () => {
    const openai = client(accessToken);
    const refused = async (body: Record<string, unknown>) => {
      const err = await openai.responses
        .create({ model: "sim-fast", input: "hi", ...body } as never)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      return err as InstanceType<typeof OpenAI.BadRequestError>;
    };
    const previous = await refused({ previous_response_id: "resp_123" });
    expect(previous.param).toBe("previous_response_id");
    expect(previous.code).toBe("previous_response_not_found");
    expect((await refused({ tools: [{ type: "web_search" }] })).param).toBe("tools[0].type");
    expect((await refused({ background: true })).code).toBe("unknown_parameter");
    expect((await refused({ input: [{ type: "item_reference", id: "msg_1" }] })).param).toBe(
      "input[0].type",
    );

    const stream = openai.responses.stream({
      model: CUT_MODEL,
      input: "this answer will be cut off in the middle",
    });
    let text = "";
    const error = await (async () => {
      try {
        for await (const event of stream) {
          if (event.type === "response.output_text.delta") text += event.delta;
          if (event.type === "response.completed") return "completed";
        }
        return undefined;
      } catch (err) {
        return err;
      }
    })();
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect(text.length).toBeGreaterThan(0);
  });
});

describe("anthropic messages API with the anthropic client", () => {
  const anthropic = (opts: { authToken?: string; apiKey?: string } = {}) =>
    new Anthropic({
      baseURL: gw.url,
      maxRetries: 0,
      ...(opts.apiKey !== undefined
        ? { apiKey: opts.apiKey }
        : { apiKey: null, authToken: opts.authToken ?? accessToken }),
    });
  const textOf = (m: Anthropic.Message) =>
    m.content.flatMap((b) => (b.type === "text" ? [b.text] : [])).join("");
  const question = "What is the capital of France?";

  it("messages - a message with usage, and a stream whose text deltas add up to the same answer", async () => {
    const client = anthropic();
    const body = {
      model: "sim-fast",
      max_tokens: 300,
      system: "Answer in one sentence.",
      messages: [{ role: "user" as const, content: question }],
    };
    const msg = await client.messages.create(body);
    expect(msg).toMatchObject({
      type: "message",
      role: "assistant",
      model: "sim-fast",
      stop_reason: "end_turn",
    });
    expect(msg.id).toMatch(/^msg_/);
    expect(textOf(msg)).toContain("[simulated sim-fast]");
    expect(textOf(msg)).toContain("capital of France");
    expect(msg.usage.input_tokens).toBeGreaterThan(0);
    expect(msg.usage.output_tokens).toBeGreaterThan(0);

    const stream = client.messages.stream(body);
    let streamed = "";
    let deltas = 0;
    stream.on("text", (delta) => {
      streamed += delta;
      deltas++;
    });
    const final = await stream.finalMessage();
    expect(deltas).toBeGreaterThan(1);
    expect(streamed).toBe(textOf(msg));
    expect(textOf(final)).toBe(textOf(msg));
    expect(final.usage).toMatchObject({
      input_tokens: msg.usage.input_tokens,
      output_tokens: msg.usage.output_tokens,
    });

    // An API key as the SDK sends it (x-api-key) works too.
    const viaKey = await anthropic({ apiKey: writeKey }).messages.create(body);
    expect(textOf(viaKey)).toBe(textOf(msg));

    // /v1/models reads in Anthropic's shape too (the same objects, with its fields).
    const ids: string[] = [];
    for await (const m of client.models.list()) {
      expect(m.type).toBe("model");
      expect(m.display_name).not.toBe("");
      ids.push(m.id);
    }
    expect(ids).toEqual(expect.arrayContaining(["fast", "sim-fast"]));
    expect(await client.models.retrieve("sim-fast")).toMatchObject({
      id: "sim-fast",
      type: "model",
    });
  });

  it("messages - a client tool: counted, tool_use (unary and streamed), then its tool_result is answered", async () => {
    const client = anthropic();
    const tools: Anthropic.Tool[] = [
      {
        name: "get_weather",
        description: "The weather in a city",
        input_schema: {
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        },
      },
    ];
    const ask = { role: "user" as const, content: "What is the weather in Paris?" };
    // count_tokens: the conversation as it would be sent, the tool definitions included.
    const bare = await client.messages.countTokens({ model: "sim-fast", messages: [ask] });
    const withTools = await client.messages.countTokens({
      model: "sim-fast",
      messages: [ask],
      tools,
    });
    expect(bare.input_tokens).toBeGreaterThan(5);
    expect(withTools.input_tokens).toBeGreaterThan(bare.input_tokens + 10);
    const first = await client.messages.create({
      model: "sim-fast",
      max_tokens: 300,
      tools,
      tool_choice: { type: "any" },
      messages: [ask],
    });
    expect(first.stop_reason).toBe("tool_use");
    const use = first.content.find((b) => b.type === "tool_use");
    expect(use).toMatchObject({
      name: "get_weather",
      input: { city: "[simulated sim-fast] city" },
    });

    const streamed = await client.messages
      .stream({
        model: "sim-fast",
        max_tokens: 300,
        tools,
        tool_choice: { type: "tool", name: "get_weather" },
        messages: [ask],
      })
      .finalMessage();
    expect(streamed.stop_reason).toBe("tool_use");
    expect(streamed.content.find((b) => b.type === "tool_use")).toMatchObject({
      id: use?.type === "tool_use" ? use.id : "",
      input: { city: "[simulated sim-fast] city" },
    });

    const answer = await client.messages.create({
      model: "sim-fast",
      max_tokens: 300,
      tools,
      messages: [
        ask,
        { role: "assistant", content: first.content },
        {
          role: "user",
          content: [
            {
              type: "tool_result",
              tool_use_id: use?.type === "tool_use" ? use.id : "",
              content: "sunny, 21 C",
            },
          ],
        },
      ],
    });
    expect(answer.stop_reason).toBe("end_turn");
    expect(textOf(answer)).toContain('The tool answered: "sunny, 21 C"');
  });

  it("messages - errors in Anthropic's shape raise the SDK's own exceptions; a stream cut mid-way throws", async () => {
    const client = anthropic();
    const noMax = await client.messages
      .create({ model: "sim-fast", messages: [{ role: "user", content: "hi" }] } as never)
      .catch((e: unknown) => e);
    expect(noMax).toBeInstanceOf(Anthropic.BadRequestError);
    expect((noMax as InstanceType<typeof Anthropic.BadRequestError>).error).toMatchObject({
      type: "error",
      error: { type: "invalid_request_error" },
    });
    const serverTool = await client.messages
      .create({
        model: "sim-fast",
        max_tokens: 10,
        messages: [{ role: "user", content: "hi" }],
        tools: [{ type: "web_search_20250305", name: "web_search" }],
      })
      .catch((e: unknown) => e);
    expect(serverTool).toBeInstanceOf(Anthropic.BadRequestError);
    expect(String((serverTool as Error).message)).toContain("only client tools");
    const unknown = await client.messages
      .create({
        model: "no-such-model",
        max_tokens: 10,
        messages: [{ role: "user", content: "hi" }],
      })
      .catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(Anthropic.NotFoundError);
    const badKey = await anthropic({ apiKey: "ens_not-a-key" })
      .messages.create({
        model: "sim-fast",
        max_tokens: 10,
        messages: [{ role: "user", content: "hi" }],
      })
      .catch((e: unknown) => e);
    expect(badKey).toBeInstanceOf(Anthropic.AuthenticationError);

    const cut = client.messages.stream({
      model: CUT_MODEL,
      max_tokens: 500,
      messages: [{ role: "user", content: "this answer will be cut off in the middle" }],
    });
    let text = "";
    cut.on("text", (d) => (text += d));
    const error = await cut.finalMessage().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(Anthropic.APIError);
    expect(text.length).toBeGreaterThan(0);
  });
});

describe("openai routes over plain HTTP", () => {
  const post = (path: string, body: string, headers: Record<string, string> = {}) =>
    fetch(`${gw.url}${path}`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${accessToken}`,
        "content-type": "application/json",
        ...headers,
      },
      body,
    });

  it("edges - bad JSON 400, wrong content type 415, oversized body 413, unknown URL 404, wrong method 405", async () => {
    const cases: Array<[Promise<Response>, number]> = [
      [post("/v1/chat/completions", "{not json"), 400],
      [post("/v1/chat/completions", "[]"), 400],
      [post("/v1/chat/completions", "{}", { "content-type": "text/plain" }), 415],
      [post("/v1/chat/completions", JSON.stringify({ model: "x".repeat(70_000) })), 413],
      [post("/v1/audio/speech", "{}"), 404],
      [
        fetch(`${gw.url}/v1/chat/completions`, {
          headers: { authorization: `Bearer ${accessToken}` },
        }),
        405,
      ],
    ];
    for (const [pending, status] of cases) {
      const res = await pending;
      expect(res.status).toBe(status);
      const body = (await res.json()) as { error: Record<string, unknown> };
      expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
    }
  });

  it("cors - a browser preflight from an allowed origin may send the openai and anthropic SDKs' headers", async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: "OPTIONS",
      headers: {
        origin: "https://console.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-stainless-os",
      },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe("https://console.example");
    expect(res.headers.get("access-control-allow-headers")).toContain("x-stainless-os");
    const anthropic = await fetch(`${gw.url}/v1/messages`, {
      method: "OPTIONS",
      headers: {
        origin: "https://console.example",
        "access-control-request-method": "POST",
        "access-control-request-headers":
          "x-api-key, anthropic-version, anthropic-dangerous-direct-browser-access",
      },
    });
    expect(anthropic.status).toBe(204);
    for (const header of ["anthropic-version", "anthropic-dangerous-direct-browser-access"]) {
      expect(anthropic.headers.get("access-control-allow-headers")).toContain(header);
    }
  });

  it("disconnect - a client that goes away mid-stream ends the gateway's stream", async () => {
    const controller = new AbortController();
    const stream = await client(accessToken).chat.completions.create(
      {
        model: SLOW_MODEL,
        messages: [{ role: "user", content: "a long one that nobody will read to the end" }],
        stream: true,
      },
      { signal: controller.signal },
    );
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.content) break; // leaving the loop aborts the request
    }
    const active = async () => {
      const text = await (await fetch(`${gw.url}/metrics`)).text();
      const line = text
        .split("\n")
        .find((l) => l.includes("active_streams") && l.includes("/v1/chat/completions"));
      return Number(line?.split(" ").at(-1) ?? "0");
    };
    const deadline = Date.now() + 3_000;
    while ((await active()) !== 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await active()).toBe(0);
    const log = gw.logs
      .lines()
      .find((l) => l["method"] === "POST /v1/chat/completions" && l["status"] === 499);
    expect(log).toBeDefined();
  });
});
