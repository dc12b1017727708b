// Hash routing (#/sessions/abc?x=1): the edge serves one page at `/` and needs no fallback
// route for deep links.

import { useEffect, useState } from "preact/hooks";

export interface Route {
  /** Path segments, e.g. ["sessions", "abc"]; [] for "#/". */
  segments: string[];
  query: URLSearchParams;
}

export function parseHash(hash: string): Route {
  const text = hash.replace(/^#\/?/, "");
  const [path = "", search = ""] = text.split("?", 2);
  return {
    segments: path.split("/").filter(Boolean).map(decodeURIComponent),
    query: new URLSearchParams(search),
  };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseHash(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

export function navigate(path: string): void {
  location.hash = path.startsWith("#") ? path : `#${path}`;
}

export function href(...segments: string[]): string {
  return "#/" + segments.map(encodeURIComponent).join("/");
}
