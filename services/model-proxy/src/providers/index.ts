// One client per deployment, by the wire API it speaks.
import { createAnthropicClient } from "./anthropic.js";
import { createGoogleClient } from "./google.js";
import { createOpenAiClient } from "./openai.js";
import type { Deployment, ProviderClient } from "./types.js";

export function createProviderClient(d: Deployment): ProviderClient {
  switch (d.api) {
    case "anthropic":
      return createAnthropicClient(d);
    case "google":
      return createGoogleClient(d);
    default:
      return createOpenAiClient(d);
  }
}
