// @ensemble/cli as a library: the program (for embedding and tests) and the credential store.
export { buildProgram, run, EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./cli.js";
export { CredentialStore, configDir, type StoredSession } from "./credentials.js";
