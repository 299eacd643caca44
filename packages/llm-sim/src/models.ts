export type ModelKind = "chat" | "embedding" | "image" | "video";

/** How a simulated model behaves. Every field can be overridden per server or per request. */
export interface ModelProfile {
  kind: ModelKind;
  /** Whether chat requests may contain image content parts. */
  vision: boolean;
  /** Delay before anything is sent (status line included). */
  latencyMs: number;
  /** Extra delay between the response start and the first content token. */
  ttftMs: number;
  /** Token output rate; 0 means as fast as possible. */
  tokensPerSecond: number;
  /**
   * Failure mode applied with probability failRate (see README). Optional fields accept an
   * explicit `undefined` so `Simulator.configure(id, { fail: undefined })` clears them.
   */
  fail?: FailMode | undefined;
  failRate?: number | undefined;
  /**
   * Fail the first N requests for this model (mode `fail`, default 500), then answer normally.
   * Counted from server start, or from the `configure()` call that sets it.
   */
  failFirst?: number | undefined;
  /** Seconds announced in Retry-After for simulated 429s. */
  retryAfterSec: number;
}

export type FailMode = "401" | "429" | "500" | "503" | "timeout" | "cut";
export const FAIL_MODES: readonly FailMode[] = ["401", "429", "500", "503", "timeout", "cut"];

const base = { vision: false, latencyMs: 0, ttftMs: 0, tokensPerSecond: 0, retryAfterSec: 1 };

// Small defaults so tests stay fast, but different enough that "fast" and "thinking" feel different.
export const DEFAULT_MODELS: Readonly<Record<string, ModelProfile>> = {
  "sim-fast": { ...base, kind: "chat", ttftMs: 5, tokensPerSecond: 2000 },
  "sim-medium": { ...base, kind: "chat", ttftMs: 20, tokensPerSecond: 600 },
  "sim-thinking": { ...base, kind: "chat", latencyMs: 20, ttftMs: 100, tokensPerSecond: 300 },
  "sim-code": { ...base, kind: "chat", ttftMs: 25, tokensPerSecond: 800 },
  "sim-vision": { ...base, kind: "chat", vision: true, ttftMs: 40, tokensPerSecond: 500 },
  "sim-image": { ...base, kind: "image", latencyMs: 50 },
  "sim-video": { ...base, kind: "video", latencyMs: 100 },
  "sim-embed": { ...base, kind: "embedding", latencyMs: 2 },
};

/** The profile a model id gets when it is not one of the defaults: a plain chat model. */
export function newModelProfile(defaults: Partial<ModelProfile> | undefined): ModelProfile {
  return { ...base, kind: "chat", ...defaults };
}

export function resolveModels(
  overrides: Readonly<Record<string, Partial<ModelProfile>>> | undefined,
  defaults: Partial<ModelProfile> | undefined,
): Map<string, ModelProfile> {
  const out = new Map<string, ModelProfile>();
  for (const [id, p] of Object.entries(DEFAULT_MODELS)) out.set(id, { ...p, ...defaults });
  for (const [id, p] of Object.entries(overrides ?? {})) {
    const known = out.get(id) ?? newModelProfile(defaults);
    out.set(id, { ...known, ...p });
  }
  return out;
}
