// What every command needs, built once from the global options (--url, --json, --api-key).
import type { Command } from "commander";
import { configDir, CredentialStore } from "./credentials.js";
import { Output, type Io } from "./output.js";
import { Gateway, UsageError } from "./session.js";

export const DEFAULT_URL = "http://127.0.0.1:8080";

export interface GlobalOptions {
  url?: string;
  json?: boolean;
  apiKey?: string;
}

export class Context {
  readonly io: Io;
  #program: Command | undefined;
  #built: { gw: Gateway; out: Output } | undefined;

  constructor(io: Io) {
    this.io = io;
  }

  bind(program: Command): void {
    this.#program = program;
  }

  /** The output settings alone (usable before the URL is validated, e.g. for errors). */
  output(): Output {
    const opts = this.#program?.opts<GlobalOptions>() ?? {};
    return new Output(this.io, opts.json === true);
  }

  get(): { gw: Gateway; out: Output } {
    if (this.#built !== undefined) return this.#built;
    const opts = this.#program?.opts<GlobalOptions>() ?? {};
    const raw = opts.url ?? this.io.env["ENSEMBLE_URL"] ?? DEFAULT_URL;
    let url: string;
    try {
      const parsed = new URL(raw);
      if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new Error("scheme");
      url = parsed.origin + parsed.pathname.replace(/\/+$/, "");
    } catch {
      throw new UsageError(`--url ${raw}: expected the gateway's http(s) URL, e.g. ${DEFAULT_URL}`);
    }
    const apiKey = opts.apiKey ?? this.io.env["ENSEMBLE_API_KEY"];
    this.#built = {
      gw: new Gateway({
        url,
        apiKey: apiKey !== undefined && apiKey !== "" ? apiKey : undefined,
        store: new CredentialStore(configDir(this.io.env)),
      }),
      out: this.output(),
    };
    return this.#built;
  }
}
