// @ensemble/testkit: real infrastructure for tests (NATS, a MongoDB-wire server), unique names,
// a token issuer with a served JWKS, and in-memory log capture.
export { natsUrl, mongoUrl } from "./context.js";
export { uniqueName } from "./names.js";
export { startNats, type StartNatsOptions, type RunningServer } from "./nats.js";
export { startMongo, type StartMongoOptions, type RunningMongo } from "./mongo.js";
export { ServerProcess, freePort, type ExitStatus } from "./process.js";
export {
  createTestIssuer,
  toSeconds,
  type TestIssuer,
  type MintClaims,
  type RelativeTime,
} from "./issuer.js";
export { captureLogs, type CapturedLogs, type LogLine } from "./logs.js";
export { collect, rejection, thrown } from "./rejection.js";
export { signUpTwoTenants, TEST_PASSWORD, type SignupClient, type TwoTenants } from "./tenants.js";
export {
  repoRoot,
  startAuthProcess,
  startRegistryProcess,
  startModelProxyProcess,
  startCategorizerProcess,
  startWorkflowProcess,
  startVectorSearchProcess,
  startServices,
  workflowSharedNames,
  type AuthProcess,
  type CategorizerProcessOptions,
  type MeshProcess,
  type ModelProxyProcessOptions,
  type Services,
  type ServicesOptions,
  type VectorSearchProcessOptions,
  type WorkflowProcessOptions,
} from "./mesh.js";
