#!/usr/bin/env node
// Prints an access token signed by the local dev issuer (.data/dev-issuer/), for calling services
// started by `npm start` until the auth service exists.
//   node scripts/mint-token.mjs --tenant acme --user alice [--role admin] [--ttl 1h]
//   node scripts/mint-token.mjs --tenant acme --user alice --service workflow-engine   # a service acting for alice
//   node scripts/mint-token.mjs --service categorizer                                  # a pure service token
import { parseArgs } from "node:util";
import { ensureDevIssuer, mintDevToken } from "./lib/dev-issuer.mjs";
import { ToolError, runCli } from "./lib/tools.mjs";

const usage = `usage: node scripts/mint-token.mjs --tenant <id> --user <id> [--role admin]... [--service <name>]
                                   [--session <id>] [--ttl 1h] [--issuer <iss>] [--audience <aud>]
Prints an ES256 JWT signed with the dev issuer key in .data/dev-issuer/ (created on first use).
A user's roles always include "user"; --role adds more (repeatable). --service makes a service token
(typ "service", svc <name>); with --user it acts for that user, without one its subject is the
service itself and --tenant may be omitted.`;

runCli(async () => {
  const { values } = parseArgs({
    options: {
      tenant: { type: "string" },
      user: { type: "string" },
      role: { type: "string", multiple: true },
      service: { type: "string" },
      session: { type: "string" },
      ttl: { type: "string", default: "1h" },
      issuer: { type: "string" },
      audience: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(usage + "\n");
    return;
  }
  if (!values.user && !values.service)
    throw new ToolError(`--user or --service is required\n${usage}`);
  if (values.user && values.tenant === undefined)
    throw new ToolError(`--tenant is required with --user\n${usage}`);

  // A user always has the "user" role; a pure service token carries only the roles asked for.
  const extra = (values.role ?? []).filter((role) => role !== "user");
  const roles = values.user ? ["user", ...extra] : extra;
  const issuer = await ensureDevIssuer();
  /** @type {import("./lib/dev-issuer.mjs").DevTokenClaims} */
  const claims = { tenant: values.tenant ?? "", roles, ttl: values.ttl ?? "1h" };
  if (values.user) claims.user = values.user;
  if (values.service) claims.service = values.service;
  if (values.session) claims.session = values.session;
  if (values.issuer) claims.issuer = values.issuer;
  if (values.audience) claims.audience = values.audience;
  process.stdout.write((await mintDevToken(issuer, claims)) + "\n");
});
