// Where `ensemble login` keeps its session: $XDG_CONFIG_HOME/ensemble/credentials.json (default
// ~/.config), one entry per gateway URL. The directory is 0700 and the file 0600, written to a
// temporary file first and renamed, so a crash never leaves half a file and no other user can
// read the tokens at any moment. The password is never stored: only the refresh token, which
// auth rotates on every use (a stolen old one revokes the whole family).
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";

export interface StoredSession {
  email: string;
  userId: string;
  tenantId: string;
  accessToken: string;
  /** Milliseconds since the epoch. */
  accessTokenExpiresAt: number;
  refreshToken: string;
  refreshTokenExpiresAt: number;
}

interface CredentialsFile {
  version: 1;
  sessions: Record<string, StoredSession>;
}

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env["XDG_CONFIG_HOME"];
  return join(base !== undefined && base !== "" ? base : join(homedir(), ".config"), "ensemble");
}

export class CredentialStore {
  readonly path: string;
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
    this.path = join(dir, "credentials.json");
  }

  async #read(): Promise<CredentialsFile> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, sessions: {} };
      throw err;
    }
    // A file someone else could read is tightened before it is used.
    const mode = (await stat(this.path)).mode & 0o777;
    if ((mode & 0o077) !== 0) await chmod(this.path, 0o600);
    try {
      const parsed = JSON.parse(text) as Partial<CredentialsFile>;
      return { version: 1, sessions: parsed.sessions ?? {} };
    } catch {
      throw new Error(`${this.path} is not valid JSON; delete it and log in again`);
    }
  }

  async #write(file: CredentialsFile): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await chmod(this.#dir, 0o700);
    const tmp = `${this.path}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(file, null, 2) + "\n", { mode: 0o600 });
    await rename(tmp, this.path);
  }

  async get(url: string): Promise<StoredSession | undefined> {
    return (await this.#read()).sessions[url];
  }

  async put(url: string, session: StoredSession): Promise<void> {
    const file = await this.#read();
    file.sessions[url] = session;
    await this.#write(file);
  }

  /** Forgets the session of `url`; removes the file when it was the last one. */
  async delete(url: string): Promise<boolean> {
    const file = await this.#read();
    if (file.sessions[url] === undefined) return false;
    delete file.sessions[url];
    if (Object.keys(file.sessions).length === 0) await rm(this.path, { force: true });
    else await this.#write(file);
    return true;
  }
}
