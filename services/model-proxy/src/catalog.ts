// The catalog as model-proxy sees it: model ids and aliases resolved through the registry (which
// applies the tenant's own entries over the global ones), asked with the caller's own token and
// reused per tenant for a short TTL, so a request pays no registry round trip when warm.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  TtlCache,
  UnavailableError,
  type GrpcClient,
} from "@ensemble/kit";
import { Capability, type Model, type RegistryService } from "@ensemble/proto";
import type { TokenCounts } from "./providers/types.js";

export interface CatalogOptions {
  ttlMs: number;
  now?: () => number;
}

export class Catalog {
  readonly #registry: GrpcClient<typeof RegistryService>;
  readonly #models: TtlCache<Model>;
  readonly #lists: TtlCache<Model[]>;

  constructor(registry: GrpcClient<typeof RegistryService>, opts: CatalogOptions) {
    this.#registry = registry;
    this.#models = new TtlCache(opts);
    this.#lists = new TtlCache(opts);
  }

  /**
   * Drops what is cached for the tenant (after the registry's change notice), or for every
   * tenant when the changed entry is a global one (`tenantId` empty).
   */
  forget(tenantId: string): void {
    if (tenantId === "") {
      this.#models.forgetIf(() => true);
      this.#lists.forgetIf(() => true);
      return;
    }
    this.#models.forgetIf((key) => key.startsWith(`${tenantId}\u0000`));
    this.#lists.forget(tenantId);
  }

  /** The tenant's enabled models (its own entries over the global ones), by id. */
  list(tenantId: string, token: string): Promise<Model[]> {
    return this.#lists.get(tenantId, async () => {
      const out: Model[] = [];
      let pageToken = "";
      try {
        // The catalog is small; 20 pages of 500 is far beyond any real one.
        for (let page = 0; page < 20; page++) {
          const res = await this.#registry.listModels(
            { enabled: true, page: { pageSize: 500, pageToken } },
            { headers: { authorization: `Bearer ${token}` }, timeoutMs: 5_000 },
          );
          out.push(...res.models);
          pageToken = res.page?.nextPageToken ?? "";
          if (pageToken === "") break;
        }
      } catch (err) {
        if (err instanceof ConnectError) {
          throw new UnavailableError(`the model catalog is unavailable (${Code[err.code]})`, {
            cause: err,
          });
        }
        throw err;
      }
      return out.sort((a, b) => a.id.localeCompare(b.id));
    });
  }

  /**
   * The tenant's model named `name` (id or alias). NOT_FOUND for an unknown name,
   * FAILED_PRECONDITION for a disabled model, INVALID_ARGUMENT for "auto".
   */
  async resolve(tenantId: string, name: string, token: string): Promise<Model> {
    if (name === "auto") {
      throw new InvalidArgumentError(
        'model "auto" is resolved by the categorizer before model-proxy; name a catalog model or alias',
        { field: "model" },
      );
    }
    const model = await this.#models.get(`${tenantId}\u0000${name}`, () =>
      this.#fetch(name, token),
    );
    if (!model.enabled)
      throw new FailedPreconditionError(`model ${model.id} is disabled in the catalog`);
    return model;
  }

  async #fetch(name: string, token: string): Promise<Model> {
    try {
      const res = await this.#registry.getModel(
        { id: name },
        { headers: { authorization: `Bearer ${token}` }, timeoutMs: 5_000 },
      );
      if (res.model === undefined) throw new NotFoundError(`model ${name} is not in the catalog`);
      return res.model;
    } catch (err) {
      if (err instanceof ConnectError) {
        if (err.code === Code.NotFound) {
          throw new NotFoundError(`model ${name} is not in the catalog`, { cause: err });
        }
        if (err.code === Code.InvalidArgument) {
          throw new InvalidArgumentError(`model ${name}: ${err.rawMessage}`, { field: "model" });
        }
        throw new UnavailableError(`the model catalog is unavailable (${Code[err.code]})`, {
          cause: err,
        });
      }
      throw err;
    }
  }
}

/** INVALID_ARGUMENT unless the model has `capability` (named for the message). */
export function requireCapability(model: Model, capability: Capability, what: string): void {
  if (!model.capabilities.includes(capability)) {
    throw new InvalidArgumentError(`model ${model.id} does not support ${what}`, {
      field: "model",
    });
  }
}

/**
 * USD for these tokens at the catalog's prices (per million tokens): input read from or written
 * to the provider's prompt cache at the model's cache prices (the input price when it has none;
 * a one-hour write at the write price when it has no one-hour price).
 */
export function costOf(model: Model, t: TokenCounts): number {
  const cached = Math.min(t.cachedInputTokens ?? 0, t.inputTokens);
  const written = Math.min(t.cacheWriteInputTokens ?? 0, t.inputTokens - cached);
  const longer = Math.min(t.cacheWrite1hInputTokens ?? 0, written);
  const input = model.inputPricePerMtok;
  const write = model.cacheWritePricePerMtok ?? input;
  return (
    ((t.inputTokens - cached - written) * input +
      cached * (model.cachedInputPricePerMtok ?? input) +
      (written - longer) * write +
      longer * (model.cacheWrite1hPricePerMtok ?? write) +
      t.outputTokens * model.outputPricePerMtok) /
    1e6
  );
}
