// A minimal router over the History API: the gateway answers every console path with
// index.html, so deep links and reloads land on the right page.
import { createContext, useContext, useEffect, useState } from "react";
import type { MouseEvent, ReactNode } from "react";

const RouterContext = createContext<{ path: string; go: (path: string) => void }>({
  path: "/",
  go: () => undefined,
});

export function Router({ children }: { children: ReactNode }) {
  const [path, setPath] = useState(window.location.pathname);
  useEffect(() => {
    const onPop = () => setPath(window.location.pathname);
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  const go = (to: string) => {
    if (to !== window.location.pathname) window.history.pushState(null, "", to);
    setPath(to);
    window.scrollTo(0, 0);
  };
  return <RouterContext.Provider value={{ path, go }}>{children}</RouterContext.Provider>;
}

export function useRouter() {
  return useContext(RouterContext);
}

export function Link(props: { to: string; children: ReactNode; className?: string }) {
  const { path, go } = useRouter();
  const onClick = (e: MouseEvent) => {
    if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    go(props.to);
  };
  const active = path === props.to || (props.to !== "/" && path.startsWith(`${props.to}/`));
  return (
    <a
      href={props.to}
      onClick={onClick}
      className={props.className}
      aria-current={active ? "page" : undefined}
    >
      {props.children}
    </a>
  );
}
