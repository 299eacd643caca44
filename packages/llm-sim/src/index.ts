export { startSimulator, SYSTEM_FINGERPRINT } from "./server.js";
export type { Simulator, SimulatorOptions } from "./server.js";
export { DEFAULT_MODELS, FAIL_MODES } from "./models.js";
export type { FailMode, ModelKind, ModelProfile } from "./models.js";
export { countTokens } from "./tokenizer.js";
export { cosine, embed, DEFAULT_DIMENSIONS } from "./embeddings.js";
