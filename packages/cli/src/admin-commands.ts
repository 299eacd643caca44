// keys create/list/revoke, models, usage.
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import {
  ApiKeyScope,
  AuthService,
  ModelProxyService,
  ModelRole,
  RegistryService,
  UsageDimension,
  UsageOperation,
  type ApiKey,
} from "@ensemble/proto";
import type { Context } from "./context.js";
import { enumValue, label, table, usd, when } from "./output.js";
import { UsageError } from "./session.js";

/** "30d", "12h", "90m" -> ms. */
function ttlMs(raw: string): number {
  const m = /^(\d+)([mhd])$/.exec(raw.trim());
  if (m === null) throw new UsageError(`--ttl ${raw}: expected a lifetime like 90m, 12h, 30d`);
  return Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "m"];
}

function keyJson(key: ApiKey): Record<string, unknown> {
  return {
    id: key.id,
    name: key.name,
    prefix: key.prefix,
    scopes: key.scopes.map((s) => label(ApiKeyScope, s)),
    userId: key.userId,
    created: when(key.createTime),
    expires: key.expireTime !== undefined ? when(key.expireTime) : null,
    lastUsed: key.lastUsedTime !== undefined ? when(key.lastUsedTime) : null,
    revoked: key.revokeTime !== undefined ? when(key.revokeTime) : null,
  };
}

export function registerAdminCommands(program: Command, ctx: Context): void {
  const keys = program.command("keys").description("API keys: create (shown once), list, revoke");

  keys
    .command("create")
    .description("create an API key; its secret is printed once and never again")
    .argument("<name>", "what the key is for")
    .option("--scope <scopes>", "comma-separated: read, write, admin (default read,write)")
    .option("--ttl <lifetime>", "expires after e.g. 90d (default: never)")
    .action(async (name: string, opts: { scope?: string; ttl?: string }) => {
      const { gw, out } = ctx.get();
      const scopes = (opts.scope ?? "")
        .split(",")
        .filter((s) => s.trim() !== "")
        .map((s) => enumValue(ApiKeyScope, "--scope", s));
      const res = await gw.client(AuthService).createApiKey({
        name,
        scopes,
        ...(opts.ttl !== undefined ? { ttl: durationFromMs(ttlMs(opts.ttl)) } : {}),
      });
      if (res.apiKey === undefined) throw new Error("auth returned no key");
      const key = res.apiKey;
      out.result({ ...keyJson(key), secret: res.secret }, () => {
        out.notice("The secret is shown only now; store it safely (e.g. as ENSEMBLE_API_KEY).");
        return `${res.secret}\n(id ${key.id}, name ${key.name})`;
      });
    });

  keys
    .command("list")
    .description("your API keys (never their secrets)")
    .option("--all", "every user's keys in the tenant (admin)")
    .option("--revoked", "include revoked keys")
    .action(async (opts: { all?: boolean; revoked?: boolean }) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(AuthService).listApiKeys({
        allUsers: opts.all === true,
        includeRevoked: opts.revoked === true,
        page: { pageSize: 100 },
      });
      out.result({ apiKeys: res.apiKeys.map(keyJson) }, () =>
        table(
          ["id", "name", "prefix", "scopes", "created", "last used", "state"],
          res.apiKeys.map((k) => [
            k.id,
            k.name,
            k.prefix,
            k.scopes.map((s) => label(ApiKeyScope, s)).join(","),
            when(k.createTime),
            when(k.lastUsedTime),
            k.revokeTime !== undefined ? "revoked" : "active",
          ]),
        ),
      );
    });

  keys
    .command("revoke")
    .description("revoke an API key (refused everywhere within the gateway's key cache time)")
    .argument("<key-id>")
    .action(async (id: string) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(AuthService).revokeApiKey({ id });
      out.result(res.apiKey !== undefined ? keyJson(res.apiKey) : { id }, () => `revoked ${id}`);
    });

  program
    .command("models")
    .description("the model catalog: ids, providers, roles, context windows and prices")
    .option("--provider <name>", "only this provider's models")
    .option("--role <role>", "only models with this role (fast, medium, thinking, ...)")
    .action(async (opts: { provider?: string; role?: string }) => {
      const { gw, out } = ctx.get();
      const res = await gw.client(RegistryService).listModels({
        provider: opts.provider ?? "",
        ...(opts.role !== undefined ? { role: enumValue(ModelRole, "--role", opts.role) } : {}),
        page: { pageSize: 500 },
      });
      out.result(
        {
          models: res.models.map((m) => ({
            id: m.id,
            provider: m.provider,
            displayName: m.displayName,
            aliases: m.aliases,
            roles: m.roles.map((r) => label(ModelRole, r)),
            contextWindow: m.contextWindow,
            inputPricePerMtok: m.inputPricePerMtok,
            outputPricePerMtok: m.outputPricePerMtok,
            enabled: m.enabled,
          })),
        },
        () =>
          table(
            ["id", "provider", "roles", "context", "$/Mtok in", "$/Mtok out"],
            res.models.map((m) => [
              m.id,
              m.provider,
              m.roles.map((r) => label(ModelRole, r)).join(",") || "-",
              String(m.contextWindow),
              m.inputPricePerMtok.toFixed(2),
              m.outputPricePerMtok.toFixed(2),
            ]),
          ),
      );
    });

  program
    .command("usage")
    .description("tokens, requests and cost over a period, grouped (default: by day and model)")
    .option("--days <n>", "the last n days", "30")
    .option(
      "--by <dimensions>",
      "comma-separated: day, hour, model, user, api-key, provider, operation",
      "day,model",
    )
    .option("--all-users", "the whole tenant (admin)")
    .action(async (opts: { days: string; by: string; allUsers?: boolean }) => {
      const { gw, out } = ctx.get();
      const days = Number(opts.days);
      if (!Number.isInteger(days) || days < 1 || days > 400) {
        throw new UsageError(`--days ${opts.days}: expected a whole number from 1 to 400`);
      }
      const groupBy = opts.by
        .split(",")
        .filter((s) => s.trim() !== "")
        .map((s) => enumValue(UsageDimension, "--by", s) as UsageDimension);
      const now = Date.now();
      const res = await gw.client(ModelProxyService).getUsage({
        startTime: timestampFromMs(now - days * 86_400_000),
        endTime: timestampFromMs(now + 60_000),
        groupBy,
        allUsers: opts.allUsers === true,
      });
      const buckets = res.buckets.map((b) => ({
        period: b.periodStart !== undefined ? when(b.periodStart) : null,
        model: b.model || null,
        userId: b.userId || null,
        apiKeyId: b.apiKeyId || null,
        provider: b.provider || null,
        operation:
          b.operation !== UsageOperation.UNSPECIFIED ? label(UsageOperation, b.operation) : null,
        requests: Number(b.requests),
        errors: Number(b.errors),
        inputTokens: Number(b.usage?.inputTokens ?? 0n),
        outputTokens: Number(b.usage?.outputTokens ?? 0n),
        costUsd: b.usage?.costUsd ?? 0,
      }));
      const total = {
        requests: Number(res.totalRequests),
        inputTokens: Number(res.total?.inputTokens ?? 0n),
        outputTokens: Number(res.total?.outputTokens ?? 0n),
        costUsd: res.total?.costUsd ?? 0,
      };
      // One column per grouping, in the order asked for, then the figures.
      type Bucket = (typeof buckets)[number];
      const columns: Array<[string, (b: Bucket) => string | null]> = groupBy.map((d) => {
        switch (d) {
          case UsageDimension.DAY:
            return ["day", (b) => b.period?.slice(0, 10) ?? null];
          case UsageDimension.HOUR:
            return ["hour", (b) => b.period?.slice(0, 16).replace("T", " ") ?? null];
          case UsageDimension.MODEL:
            return ["model", (b) => b.model];
          case UsageDimension.USER:
            return ["user", (b) => b.userId];
          case UsageDimension.API_KEY:
            return ["api key", (b) => b.apiKeyId];
          case UsageDimension.PROVIDER:
            return ["provider", (b) => b.provider];
          default:
            return ["operation", (b) => b.operation];
        }
      });
      out.result({ buckets, total }, () =>
        [
          table(
            [...columns.map(([name]) => name), "requests", "tokens in", "tokens out", "cost"],
            buckets.map((b) => [
              ...columns.map(([, value]) => value(b) ?? "-"),
              String(b.requests),
              String(b.inputTokens),
              String(b.outputTokens),
              usd(b.costUsd),
            ]),
          ),
          "",
          `total: ${total.requests} requests, ${total.inputTokens + total.outputTokens} tokens, ${usd(total.costUsd)}`,
        ].join("\n"),
      );
    });
}
