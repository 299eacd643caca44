// One client per deployment, by the wire API it speaks. The Anthropic and Google SDKs are loaded
// only when a deployment speaks their API: together they add ~25 MB of RSS to a process
// (measured: openai alone 55 MB, with both 80 MB), which a mesh on the simulator or on
// OpenAI-compatible endpoints only would carry for nothing.
import { createOpenAiClient } from "./openai.js";
import type { Deployment, ProviderClient } from "./types.js";

export type ClientFactory = (d: Deployment) => ProviderClient;

/** A factory for clients of these deployments (and of others speaking the same APIs). */
export async function providerClients(deployments: readonly Deployment[]): Promise<ClientFactory> {
  const apis = new Set(deployments.map((d) => d.api));
  const anthropic = apis.has("anthropic")
    ? (await import("./anthropic.js")).createAnthropicClient
    : undefined;
  const google = apis.has("google") ? (await import("./google.js")).createGoogleClient : undefined;
  return (d) => {
    switch (d.api) {
      case "anthropic":
        if (anthropic === undefined) throw new Error(`${d.name}: the Anthropic SDK is not loaded`);
        return anthropic(d);
      case "google":
        if (google === undefined) throw new Error(`${d.name}: the Google SDK is not loaded`);
        return google(d);
      default:
        return createOpenAiClient(d);
    }
  };
}
