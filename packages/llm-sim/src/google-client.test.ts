import {
  ApiError,
  FinishReason,
  GoogleGenAI,
  Modality,
  Type,
  type GenerateContentResponse,
} from "@google/genai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cosine } from "./embeddings.js";
import { startSimulator, type Simulator } from "./server.js";
import { distinctWords } from "./test-words.js";

// The official client is the judge of "Gemini-compatible": if it parses our shapes, the adapter
// that uses it will too.
let sim: Simulator;
let ai: GoogleGenAI;

beforeAll(async () => {
  sim = await startSimulator({ port: 0 });
  ai = new GoogleGenAI({
    apiKey: "sim-google-key",
    httpOptions: { baseUrl: sim.url, retryOptions: { attempts: 1 } },
  });
});
afterAll(async () => {
  await sim.close();
});

describe("llm-sim with the @google/genai client", () => {
  it("genai client - generateContent gets the OpenAI endpoint's text and usageMetadata", async () => {
    const openai = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "k", maxRetries: 0 });
    const expected = await openai.chat.completions.create({
      model: "sim-medium",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Name three rivers" },
      ],
      temperature: 0.5,
    });
    const res = await ai.models.generateContent({
      model: "sim-medium",
      contents: "Name three rivers",
      config: { systemInstruction: "Be brief.", temperature: 0.5 },
    });
    expect(res.text).toBe(expected.choices[0]?.message.content);
    expect(res.candidates?.[0]?.finishReason).toBe(FinishReason.STOP);
    expect(res.usageMetadata?.promptTokenCount).toBe(expected.usage?.prompt_tokens);
    expect(res.usageMetadata?.candidatesTokenCount).toBe(expected.usage?.completion_tokens);

    const short = await ai.models.generateContent({
      model: "sim-medium",
      contents: "Name three rivers",
      config: { maxOutputTokens: 2 },
    });
    expect(short.candidates?.[0]?.finishReason).toBe(FinishReason.MAX_TOKENS);
    expect(short.usageMetadata?.candidatesTokenCount).toBe(2);
  });

  it("genai client - streamed chunks add up to the unary text, usage on the last", async () => {
    const contents = "Tell me about lakes";
    const unary = await ai.models.generateContent({ model: "sim-fast", contents });
    const chunks = [];
    for await (const c of await ai.models.generateContentStream({ model: "sim-fast", contents })) {
      chunks.push(c);
    }
    expect(chunks.length).toBeGreaterThan(3);
    expect(chunks.map((c) => c.text ?? "").join("")).toBe(unary.text);
    const last = chunks[chunks.length - 1];
    expect(last?.candidates?.[0]?.finishReason).toBe(FinishReason.STOP);
    expect(last?.usageMetadata).toEqual(unary.usageMetadata);
    expect(chunks.slice(0, -1).every((c) => c.usageMetadata === undefined)).toBe(true);
  });

  it("genai client - inline image data reaches sim-vision; mode ANY forces a function call", async () => {
    const res = await ai.models.generateContent({
      model: "sim-vision",
      contents: [
        {
          role: "user",
          parts: [
            { text: "What is this?" },
            { inlineData: { mimeType: "image/png", data: "iVBORw0KGgo=" } },
          ],
        },
      ],
    });
    expect(res.text).toContain("I received 1 image.");

    const call = await ai.models.generateContent({
      model: "sim-fast",
      contents: "Weather in Paris?",
      config: {
        tools: [
          {
            functionDeclarations: [
              {
                name: "get_weather",
                description: "weather",
                parameters: { type: Type.OBJECT, properties: { city: { type: Type.STRING } } },
              },
            ],
          },
        ],
        toolConfig: { functionCallingConfig: { mode: "ANY" as never } },
      },
    });
    expect(call.functionCalls).toEqual([
      { name: "get_weather", args: { city: "[simulated sim-fast] city" } },
    ]);
  });

  it("genai client - responseMimeType application/json answers JSON, an instance of responseSchema when given", async () => {
    const typed = await ai.models.generateContent({
      model: "sim-fast",
      contents: "A city",
      config: {
        responseMimeType: "application/json",
        responseSchema: {
          type: Type.OBJECT,
          properties: { name: { type: Type.STRING }, population: { type: Type.INTEGER } },
        },
      },
    });
    expect(JSON.parse(typed.text ?? "")).toEqual({
      name: "[simulated sim-fast] name",
      population: 0,
    });
    const untyped = await ai.models.generateContent({
      model: "sim-fast",
      contents: "A city",
      config: { responseMimeType: "application/json" },
    });
    expect((JSON.parse(untyped.text ?? "") as { answer: string }).answer).toContain(
      "[simulated sim-fast]",
    );
  });

  it("genai client - embedContent (batchEmbedContents underneath) is deterministic and sized", async () => {
    const res = await ai.models.embedContent({
      model: "sim-embed",
      contents: ["the cat sat on the mat", "a cat sat on a mat", "quarterly revenue grew"],
      config: { outputDimensionality: 64 },
    });
    const [a, b, c] = (res.embeddings ?? []).map((e) => e.values ?? []);
    expect(a).toHaveLength(64);
    expect(cosine(a!, b!)).toBeGreaterThan(cosine(a!, c!) + 0.3);
    const raw = await fetch(`${sim.url}/v1beta/models/sim-embed:embedContent`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-goog-api-key": "k" },
      body: JSON.stringify({
        content: { parts: [{ text: "the cat sat on the mat" }] },
        outputDimensionality: 64,
      }),
    });
    const one = (await raw.json()) as { embedding: { values: number[] } };
    expect(one.embedding.values).toEqual(a);
  });

  it("genai client - an image model answers generateContent with an inline PNG", async () => {
    const res = await ai.models.generateContent({
      model: "sim-image",
      contents: "a red fox",
      config: { responseModalities: [Modality.IMAGE], imageConfig: { aspectRatio: "16:9" } },
    });
    const png = Buffer.from(res.data ?? "", "base64");
    expect([...png.subarray(1, 4)]).toEqual([0x50, 0x4e, 0x47]);
    expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([256, 144]);
  });

  it("genai client - errors come in Google's shape: 429 with RetryInfo, 404, 400, cut stream", async () => {
    const limited = await ai.models
      .generateContent({
        model: "sim-fast",
        contents: "hi",
        config: { httpOptions: { headers: { "x-sim-fail": "429", "x-sim-retry-after": "6" } } },
      })
      .catch((err: unknown) => err);
    expect(limited).toBeInstanceOf(ApiError);
    expect((limited as ApiError).status).toBe(429);
    const body = JSON.parse((limited as ApiError).message) as {
      error: { code: number; status: string; details: Array<{ retryDelay: string }> };
    };
    expect(body.error.status).toBe("RESOURCE_EXHAUSTED");
    expect(body.error.details[0]?.retryDelay).toBe("6s");

    const unknown = await ai.models
      .generateContent({ model: "gemini-nope", contents: "hi" })
      .catch((err: unknown) => err);
    expect((unknown as ApiError).status).toBe(404);
    const refused = await ai.models
      .generateContent({
        model: "sim-fast",
        contents: [
          { role: "user", parts: [{ inlineData: { mimeType: "image/png", data: "AA==" } }] },
        ],
      })
      .catch((err: unknown) => err);
    expect((refused as ApiError).status).toBe(400);
    expect(JSON.parse((refused as ApiError).message)).toMatchObject({
      error: { code: 400, status: "INVALID_ARGUMENT" },
    });

    const stream = await ai.models.generateContentStream({
      model: "sim-fast",
      contents: "Tell me about lakes",
      config: { httpOptions: { headers: { "x-sim-fail": "cut" } } },
    });
    const seen: Array<string | undefined> = [];
    const consume = async (): Promise<void> => {
      for await (const c of stream) seen.push(c.candidates?.[0]?.finishReason);
    };
    await expect(consume()).rejects.toThrow();
    expect(seen.length).toBeGreaterThan(0);
    expect(seen).not.toContain(FinishReason.STOP);
  });

  it("genai client - implicit caching: a repeated 1100-token prompt reports cachedContentTokenCount 1024", async () => {
    // Keys of their own, so no other test shares this cache.
    const genai = (apiKey: string): GoogleGenAI =>
      new GoogleGenAI({ apiKey, httpOptions: { baseUrl: sim.url, retryOptions: { attempts: 1 } } });
    const keyA = genai("google-cache-key-a");
    const contents = distinctWords(1093);
    const first = await keyA.models.generateContent({ model: "sim-fast", contents });
    expect(first.usageMetadata?.promptTokenCount).toBe(1100);
    // Omitted when nothing was cached, as Google does.
    expect(first.usageMetadata).not.toHaveProperty("cachedContentTokenCount");
    const second = await keyA.models.generateContent({ model: "sim-fast", contents });
    expect(second.usageMetadata?.promptTokenCount).toBe(1100);
    expect(second.usageMetadata?.cachedContentTokenCount).toBe(1024);
    let last: GenerateContentResponse | undefined;
    for await (const c of await keyA.models.generateContentStream({
      model: "sim-fast",
      contents,
    })) {
      last = c;
    }
    expect(last?.usageMetadata).toEqual(second.usageMetadata);

    const keyB = genai("google-cache-key-b");
    const other = await keyB.models.generateContent({ model: "sim-fast", contents });
    expect(other.usageMetadata?.cachedContentTokenCount).toBeUndefined();
  });
});
