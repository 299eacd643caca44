// The shell: login gate, navigation, and one module per page.
import { useState } from "react";
import { LoginPage } from "./pages/login";
import { ChatPage } from "./pages/chat";
import { ComparePage } from "./pages/compare";
import { RunsPage } from "./pages/runs";
import { RunPage } from "./pages/run";
import { SchedulesPage } from "./pages/schedules";
import { CatalogPage } from "./pages/catalog";
import { UsagePage } from "./pages/usage";
import { LogPage, LogsPage } from "./pages/logs";
import { AdminPage } from "./pages/admin";
import { ClusterPage } from "./pages/cluster";
import { Link, Router, useRouter } from "./router";
import { SessionProvider, useSession } from "./session";
import { Loading } from "./ui";

const NAV: Array<{ to: string; label: string; admin?: boolean }> = [
  { to: "/chat", label: "Chat" },
  { to: "/compare", label: "Compare" },
  { to: "/runs", label: "Runs" },
  { to: "/schedules", label: "Schedules" },
  { to: "/catalog", label: "Catalog" },
  { to: "/usage", label: "Usage" },
  { to: "/logs", label: "Logs" },
  { to: "/admin", label: "Admin", admin: true },
  { to: "/cluster", label: "Cluster", admin: true },
];

export function App() {
  return (
    <SessionProvider>
      <Router>
        <Shell />
      </Router>
    </SessionProvider>
  );
}

function Shell() {
  const { me, restoring, logout } = useSession();
  const { path } = useRouter();
  const [menuOpen, setMenuOpen] = useState(false);
  if (restoring) return <Loading what="Restoring your session" />;
  if (me === undefined) return <LoginPage />;
  return (
    <div className="shell">
      <header className="top">
        <strong className="brand">Ensemble</strong>
        <button
          type="button"
          className="menu-toggle"
          aria-expanded={menuOpen}
          aria-controls="nav"
          onClick={() => setMenuOpen((o) => !o)}
        >
          Menu
        </button>
        <nav id="nav" className={menuOpen ? "open" : ""} onClick={() => setMenuOpen(false)}>
          {NAV.filter((n) => n.admin !== true || me.admin).map((n) => (
            <Link key={n.to} to={n.to}>
              {n.label}
            </Link>
          ))}
        </nav>
        <span className="who" title={me.tenant?.name ?? ""}>
          {me.user.email}
          {me.admin ? " (admin)" : ""}
        </span>
        <button type="button" onClick={() => void logout()}>
          Log out
        </button>
      </header>
      <main>
        <Page path={path} admin={me.admin} />
      </main>
    </div>
  );
}

function Page({ path, admin }: { path: string; admin: boolean }) {
  const run = /^\/runs\/([^/]+)$/.exec(path);
  if (run?.[1] !== undefined) return <RunPage runId={decodeURIComponent(run[1])} />;
  const log = /^\/logs\/([^/]+)$/.exec(path);
  if (log?.[1] !== undefined) return <LogPage callId={decodeURIComponent(log[1])} />;
  switch (path) {
    case "/compare":
      return <ComparePage />;
    case "/runs":
      return <RunsPage />;
    case "/schedules":
      return <SchedulesPage />;
    case "/catalog":
      return <CatalogPage />;
    case "/usage":
      return <UsagePage />;
    case "/logs":
      return <LogsPage />;
    case "/admin":
      return admin ? <AdminPage /> : <p>Admins only.</p>;
    case "/cluster":
      return admin ? <ClusterPage /> : <p>Admins only.</p>;
    default:
      return <ChatPage />;
  }
}
