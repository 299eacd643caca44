// Who is logged in. The token pair lives in localStorage so the session survives a reload; the
// access token is refreshed (AuthService.Refresh, which rotates the refresh token) shortly
// before it expires, on a timer and before any call that would carry an expired one. A failed
// refresh ends the session: the user sees the login page again.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Role, type AuthTokens, type Tenant, type User } from "@ensemble/proto";
import { createContext, useCallback, useContext, useEffect, useMemo, useState } from "react";
import type { ReactNode } from "react";
import { api, publicAuth, setTokenSource } from "./api";

const KEY = "ensemble.session";
/** Refresh this long before the access token expires. */
const EARLY_MS = 30_000;

interface Stored {
  accessToken: string;
  accessExpiresAt: number;
  refreshToken: string;
}

export interface Me {
  user: User;
  tenant: Tenant | undefined;
  admin: boolean;
}

interface SessionApi {
  me: Me | undefined;
  /** True until a stored session has been checked at start-up. */
  restoring: boolean;
  login: (email: string, password: string) => Promise<void>;
  signup: (
    email: string,
    password: string,
    displayName: string,
    tenantName: string,
  ) => Promise<void>;
  logout: () => Promise<void>;
}

const SessionContext = createContext<SessionApi | undefined>(undefined);

function load(): Stored | undefined {
  try {
    const raw = localStorage.getItem(KEY);
    return raw === null ? undefined : (JSON.parse(raw) as Stored);
  } catch {
    return undefined;
  }
}

function save(tokens: AuthTokens | undefined): Stored | undefined {
  if (tokens === undefined || tokens.accessToken === "") {
    localStorage.removeItem(KEY);
    return undefined;
  }
  const stored: Stored = {
    accessToken: tokens.accessToken,
    accessExpiresAt:
      tokens.accessTokenExpireTime !== undefined
        ? timestampMs(tokens.accessTokenExpireTime)
        : Date.now() + 5 * 60_000,
    refreshToken: tokens.refreshToken,
  };
  localStorage.setItem(KEY, JSON.stringify(stored));
  return stored;
}

let current: Stored | undefined = load();
let refreshing: Promise<Stored | undefined> | undefined;
let onExpired: () => void = () => undefined;

/** One refresh at a time: the refresh token rotates, so a second concurrent use would revoke it. */
function refresh(): Promise<Stored | undefined> {
  refreshing ??= (async () => {
    const stored = current;
    if (stored === undefined) return undefined;
    try {
      const res = await publicAuth.refresh({ refreshToken: stored.refreshToken });
      current = save(res.tokens);
    } catch {
      current = save(undefined);
      onExpired();
    }
    return current;
  })().finally(() => {
    refreshing = undefined;
  });
  return refreshing;
}

async function validToken(): Promise<string | undefined> {
  if (current === undefined) return undefined;
  if (current.accessExpiresAt - EARLY_MS <= Date.now()) await refresh();
  return current?.accessToken;
}

/** Told when a refusal made the session refresh: the user's roles may have changed. */
let onRefreshedAfterRefusal: () => void = () => undefined;

setTokenSource({
  token: validToken,
  refused: async (refused) => {
    if (current === undefined) return undefined;
    if (current.accessToken !== refused) return current.accessToken; // refreshed meanwhile
    const next = await refresh();
    if (next !== undefined) onRefreshedAfterRefusal();
    return next?.accessToken;
  },
});

export function SessionProvider({ children }: { children: ReactNode }) {
  const [me, setMe] = useState<Me | undefined>();
  const [restoring, setRestoring] = useState(current !== undefined);
  const [generation, setGeneration] = useState(0);

  const loadMe = useCallback(async () => {
    const res = await api.auth.getMe({});
    if (res.user === undefined) throw new Error("no user");
    setMe({
      user: res.user,
      tenant: res.tenant,
      admin: res.roles.includes("admin") || res.user.roles.includes(Role.ADMIN),
    });
    setGeneration((g) => g + 1);
  }, []);

  useEffect(() => {
    onExpired = () => setMe(undefined);
    onRefreshedAfterRefusal = () => void loadMe().catch(() => undefined);
    if (current === undefined) return;
    loadMe()
      .catch(() => {
        current = save(undefined);
      })
      .finally(() => setRestoring(false));
  }, [loadMe]);

  // Silent refresh ahead of expiry while the page is open.
  useEffect(() => {
    if (me === undefined || current === undefined) return;
    const due = Math.max(1_000, current.accessExpiresAt - EARLY_MS - Date.now());
    const timer = setTimeout(() => {
      void refresh().then((s) => s !== undefined && setGeneration((g) => g + 1));
    }, due);
    return () => clearTimeout(timer);
  }, [me, generation]);

  const value = useMemo<SessionApi>(
    () => ({
      me,
      restoring,
      login: async (email, password) => {
        const res = await publicAuth.login({ email, password });
        current = save(res.tokens);
        await loadMe();
      },
      signup: async (email, password, displayName, tenantName) => {
        const res = await publicAuth.signup({
          email,
          password,
          displayName,
          ...(tenantName !== "" ? { tenant: { case: "tenantName", value: tenantName } } : {}),
        });
        current = save(res.tokens);
        await loadMe();
      },
      logout: async () => {
        const stored = current;
        current = save(undefined);
        setMe(undefined);
        if (stored !== undefined) {
          await publicAuth
            .logout({ refreshToken: stored.refreshToken })
            .catch(() => undefined /* the local session is gone either way */);
        }
      },
    }),
    [me, restoring, loadMe],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): SessionApi {
  const ctx = useContext(SessionContext);
  if (ctx === undefined) throw new Error("useSession outside SessionProvider");
  return ctx;
}
