import { inject } from "vitest";

declare module "vitest" {
  export interface ProvidedContext {
    natsUrl: string;
    mongoUrl: string;
  }
}

function provided(key: "natsUrl" | "mongoUrl"): string | undefined {
  try {
    return inject(key);
  } catch {
    // Not inside a vitest worker (e.g. a script importing the test kit): fall back to env.
    return undefined;
  }
}

/** URL of the NATS server the global setup started (or NATS_URL). */
export function natsUrl(): string {
  const url = provided("natsUrl") || process.env.NATS_URL;
  if (!url)
    throw new Error(
      "no NATS server: run the tests with vitest (the test kit's global setup starts one) or set NATS_URL",
    );
  return url;
}

/** URL of the MongoDB-wire server the global setup started (or MONGODB_URL). */
export function mongoUrl(): string {
  const url = provided("mongoUrl") || process.env.MONGODB_URL;
  if (!url) {
    throw new Error(
      "no MongoDB server: run the tests with vitest (the test kit's global setup starts one) or set MONGODB_URL",
    );
  }
  return url;
}
