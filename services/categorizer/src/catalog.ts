// The catalog as the categorizer needs it: a model's context window, roles and capabilities,
// the models of a role (for a larger-context upgrade) and whether a template exists. Asked of the
// registry with the caller's own token (so tenant models and visibility apply) and reused per
// tenant for a short TTL, so a warm Classify makes no registry round trip.
import { Code, ConnectError } from "@connectrpc/connect";
import { TtlCache, UnavailableError, type GrpcClient } from "@ensemble/kit";
import { ModelRole, type Model, type RegistryService } from "@ensemble/proto";

export interface CatalogOptions {
  ttlMs: number;
  now?: () => number;
}

/** The role a role alias stands for (README of deploy/config: aliases name a role's default). */
export const ALIAS_ROLE: Record<string, ModelRole> = {
  categorizer: ModelRole.CATEGORIZER,
  fast: ModelRole.FAST,
  medium: ModelRole.MEDIUM,
  thinking: ModelRole.THINKING,
  code: ModelRole.CODE,
  vision: ModelRole.IMAGE_ANALYSIS,
  image: ModelRole.IMAGE_GENERATION,
  video: ModelRole.VIDEO_GENERATION,
  embedding: ModelRole.EMBEDDING,
};

function auth(token: string) {
  return { headers: { authorization: `Bearer ${token}` }, timeoutMs: 5_000 };
}

function unavailable(err: unknown): never {
  if (err instanceof ConnectError) {
    throw new UnavailableError(`the model catalog is unavailable (${Code[err.code]})`, {
      cause: err,
    });
  }
  throw err;
}

export class ModelCatalog {
  readonly #registry: GrpcClient<typeof RegistryService>;
  readonly #models: TtlCache<Model | undefined>;
  readonly #roles: TtlCache<Model[]>;
  readonly #templates: TtlCache<boolean>;

  constructor(registry: GrpcClient<typeof RegistryService>, opts: CatalogOptions) {
    const now = opts.now ?? Date.now;
    this.#registry = registry;
    this.#models = new TtlCache({ ttlMs: opts.ttlMs, now });
    this.#roles = new TtlCache({ ttlMs: opts.ttlMs, now });
    this.#templates = new TtlCache({ ttlMs: opts.ttlMs, now });
  }

  /**
   * Drops what is cached for the tenant (the registry's change notice), or for every tenant when
   * a global entry changed (`tenantId` empty).
   */
  forget(tenantId: string): void {
    const mine = (key: string) => tenantId === "" || key.startsWith(`${tenantId}\u0000`);
    this.#models.forgetIf(mine);
    this.#roles.forgetIf(mine);
    this.#templates.forgetIf(mine);
  }

  /** The tenant's model by id or alias; undefined when the catalog has none. */
  model(tenantId: string, name: string, token: string): Promise<Model | undefined> {
    return this.#models.get(`${tenantId}\u0000${name}`, async () => {
      try {
        return (await this.#registry.getModel({ id: name }, auth(token))).model;
      } catch (err) {
        if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
        return unavailable(err);
      }
    });
  }

  /** The tenant's enabled models with this role. */
  byRole(tenantId: string, role: ModelRole, token: string): Promise<Model[]> {
    return this.#roles.get(`${tenantId}\u0000${role}`, async () => {
      const out: Model[] = [];
      let pageToken = "";
      try {
        for (let page = 0; page < 20; page++) {
          const res = await this.#registry.listModels(
            { role, enabled: true, page: { pageSize: 200, pageToken } },
            auth(token),
          );
          out.push(...res.models);
          pageToken = res.page?.nextPageToken ?? "";
          if (pageToken === "") break;
        }
      } catch (err) {
        return unavailable(err);
      }
      return out;
    });
  }

  templateExists(tenantId: string, id: string, token: string): Promise<boolean> {
    return this.#templates.get(`${tenantId}\u0000${id}`, async () => {
      try {
        return (await this.#registry.getTemplate({ id }, auth(token))).template !== undefined;
      } catch (err) {
        if (err instanceof ConnectError && err.code === Code.NotFound) return false;
        return unavailable(err);
      }
    });
  }
}
