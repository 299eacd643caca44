// signup, login, logout, whoami.
import { createInterface } from "node:readline";
import { Writable } from "node:stream";
import type { Command } from "commander";
import { AuthService, Role } from "@ensemble/proto";
import { label, type Output } from "./output.js";
import { sessionFromTokens, UsageError, type Gateway } from "./session.js";
import type { Context } from "./context.js";

/** Reads the password: --password-stdin, ENSEMBLE_PASSWORD, or a prompt that does not echo. */
async function readPassword(out: Output, fromStdin: boolean): Promise<string> {
  const { stdin, stderr, env } = out.io;
  if (fromStdin) {
    let text = "";
    for await (const chunk of stdin) text += String(chunk);
    const password = text.replace(/\r?\n$/, "");
    if (password === "") throw new UsageError("--password-stdin: nothing on stdin");
    return password;
  }
  const fromEnv = env["ENSEMBLE_PASSWORD"];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  if (stdin.isTTY !== true) {
    throw new UsageError(
      "no password: use --password-stdin or ENSEMBLE_PASSWORD when stdin is not a terminal",
    );
  }
  stderr.write("Password: ");
  const muted = new Writable({ write: (_chunk, _enc, done) => done() });
  const rl = createInterface({ input: stdin, output: muted, terminal: true });
  try {
    return await new Promise<string>((resolve) => rl.question("", resolve));
  } finally {
    rl.close();
    stderr.write("\n");
  }
}

async function saveLogin(
  gw: Gateway,
  out: Output,
  email: string,
  res: {
    user?: { id: string; tenantId: string; email: string } | undefined;
    tokens?: Parameters<typeof sessionFromTokens>[0] | undefined;
  },
  verb: string,
): Promise<void> {
  if (res.tokens === undefined || res.user === undefined)
    throw new Error("auth returned no tokens");
  const session = sessionFromTokens(res.tokens, {
    email: res.user.email || email,
    userId: res.user.id,
    tenantId: res.user.tenantId,
  });
  await gw.store.put(gw.url, session);
  out.result(
    { url: gw.url, email: session.email, userId: session.userId, tenantId: session.tenantId },
    () => `${verb} ${session.email} at ${gw.url} (credentials in ${gw.store.path})`,
  );
}

export function registerAuthCommands(program: Command, ctx: Context): void {
  program
    .command("signup")
    .description("create an account (and a tenant) on the gateway and log in")
    .requiredOption("-e, --email <email>", "your email address")
    .option("--password-stdin", "read the password from stdin (else ENSEMBLE_PASSWORD or a prompt)")
    .option("--name <name>", "display name")
    .option("--tenant <name>", "name of the new tenant (default: derived from the email)")
    .action(
      async (opts: { email: string; passwordStdin?: boolean; name?: string; tenant?: string }) => {
        const { gw, out } = ctx.get();
        const password = await readPassword(out, opts.passwordStdin === true);
        const res = await gw.anonymous(AuthService).signup({
          email: opts.email,
          password,
          displayName: opts.name ?? "",
          ...(opts.tenant !== undefined
            ? { tenant: { case: "tenantName", value: opts.tenant } }
            : {}),
        });
        await saveLogin(gw, out, opts.email, res, "signed up and logged in as");
      },
    );

  program
    .command("login")
    .description("log in to the gateway; stores a refreshable session (file mode 0600)")
    .requiredOption("-e, --email <email>", "your email address")
    .option("--password-stdin", "read the password from stdin (else ENSEMBLE_PASSWORD or a prompt)")
    .action(async (opts: { email: string; passwordStdin?: boolean }) => {
      const { gw, out } = ctx.get();
      const password = await readPassword(out, opts.passwordStdin === true);
      const res = await gw.anonymous(AuthService).login({ email: opts.email, password });
      await saveLogin(gw, out, opts.email, res, "logged in as");
    });

  program
    .command("logout")
    .description("end the session on the gateway and forget the stored credentials")
    .option("--all", "end every session of this account, on every machine")
    .action(async (opts: { all?: boolean }) => {
      const { gw, out } = ctx.get();
      const session = await gw.store.get(gw.url);
      if (session === undefined) {
        out.result({ loggedOut: false }, () => `not logged in to ${gw.url}`);
        return;
      }
      try {
        await gw.anonymous(AuthService).logout({
          refreshToken: session.refreshToken,
          allSessions: opts.all === true,
        });
      } catch (err) {
        // The local credentials go regardless; say that the server may still hold the session.
        out.notice(`warning: the gateway did not confirm the logout (${String(err)})`);
      }
      await gw.store.delete(gw.url);
      out.result({ loggedOut: true }, () => `logged out of ${gw.url}`);
    });

  program
    .command("whoami")
    .description("show the account, tenant and roles the credentials act as")
    .action(async () => {
      const { gw, out } = ctx.get();
      const me = await gw.client(AuthService).getMe({});
      out.result(
        {
          userId: me.user?.id,
          email: me.user?.email,
          tenantId: me.tenant?.id,
          tenant: me.tenant?.name,
          roles: me.roles,
          apiKeyId: me.apiKeyId || undefined,
        },
        () =>
          [
            `${me.user?.email ?? "?"} (${me.user?.id ?? "?"})`,
            `tenant ${me.tenant?.name ?? "?"} (${me.tenant?.id ?? "?"})`,
            `roles ${(me.user?.roles ?? []).map((r) => label(Role, r)).join(", ") || me.roles.join(", ")}`,
          ].join("\n"),
      );
    });
}
