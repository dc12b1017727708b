// The edge's HTTP API as the UI calls it: the API key (kept in sessionStorage, so it lives
// as long as the tab), one fetch wrapper that turns the edge's error body into an ApiError,
// and a signal when a key is refused so the app can go back to sign-in.

import type { ErrorBody } from "./types";

const KEY_STORAGE = "agentmesh.apiKey";

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key: string | null): void {
  if (key === null) sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
}

/** A failed call: the HTTP status and the edge's `{code, status, message, details}`. */
export class ApiError extends Error {
  readonly httpStatus: number;
  readonly body: ErrorBody;

  constructor(httpStatus: number, body: ErrorBody) {
    super(body.message || `HTTP ${httpStatus}`);
    this.httpStatus = httpStatus;
    this.body = body;
  }

  /** The ErrorInfo reason (e.g. API_KEY_INVALID), when the edge gave one. */
  get reason(): string | undefined {
    return this.body.details?.find((d) => d.reason)?.reason;
  }
}

type Listener = (error: ApiError) => void;
const refusedListeners = new Set<Listener>();

/** Call `listener` whenever the edge refuses the key (401); returns the unsubscribe. */
export function onKeyRefused(listener: Listener): () => void {
  refusedListeners.add(listener);
  return () => refusedListeners.delete(listener);
}

export type Query = Record<string, string | number | undefined>;

export function withQuery(path: string, query: Query = {}): string {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== "") params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** One call of the API with the stored key (or `key` when given, to try a key). */
export async function call<T>(
  method: string,
  path: string,
  options: { query?: Query; body?: unknown; key?: string } = {},
): Promise<T> {
  const key = options.key ?? apiKey();
  const headers: Record<string, string> = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const response = await fetch(withQuery(path, options.query), { method, headers, body });
  const text = await response.text();
  let document: unknown = {};
  if (text) {
    try {
      document = JSON.parse(text);
    } catch {
      document = { message: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, document as ErrorBody);
    if (response.status === 401 && options.key === undefined) {
      for (const listener of refusedListeners) listener(error);
    }
    throw error;
  }
  return document as T;
}

export const get = <T>(path: string, query?: Query) => call<T>("GET", path, { query });
export const post = <T>(path: string, body: unknown = {}) => call<T>("POST", path, { body });
export const del = <T>(path: string) => call<T>("DELETE", path);

/** A resource name as a URL path, each segment escaped ("sessions/a b" -> "sessions/a%20b"). */
export function resourcePath(name: string): string {
  return "/v1/" + name.split("/").map(encodeURIComponent).join("/");
}
