// @ensemble/vector-search as a library: the index and the text processing (for the bench). The
// service itself starts from main.ts.
export {
  VectorIndex,
  normalizeVector,
  DEFAULT_EF_CONSTRUCTION,
  DEFAULT_EF_SEARCH,
  DEFAULT_M,
  type Hit,
  type IndexParams,
} from "./vector-index.js";
export { chunkText, normalize, stripMarkup, textOptions, tokenize } from "./text.js";
export { compileFilter } from "./filter.js";
// The service in-process (bench/src/vector-grpc.ts measures Search through gRPC).
export { build, SERVICE_NAME } from "./server.js";
export { Store } from "./store.js";
export { Collections } from "./collections.js";
export { ChangeFeed } from "./changes.js";
