/**
 * `@agentmesh/client/browser`: the agentmesh client for web pages, speaking gRPC-web to the
 * agentmesh web edge (`services/web`), which passes each call to the orchestrator.
 *
 *     import { createBrowserClient, NotFound } from "@agentmesh/client/browser";
 *     const mesh = createBrowserClient({ baseUrl: "https://mesh.example.com", apiKey });
 *     for await (const event of mesh.run(session.name)) render(event);
 *
 * The same methods, resumable streams (`run`, `events`, `execute` pick up after the last seq
 * seen), deadlines, AbortSignal cancellation and typed errors as the Node client; only
 * client-streaming RPCs (UploadDocument), which gRPC-web cannot carry, answer UNIMPLEMENTED.
 * A page on another origin than the edge needs that origin in the edge's
 * `AGENTMESH_WEB_CORS_ALLOWED_ORIGINS`. The package also ships this entry bundled with its
 * dependencies as one ES module, `dist/agentmesh-client.browser.js`, for pages without a bundler.
 */

import type { Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BaseClient, type BaseClientOptions } from "./base.js";

export * from "./common.js";

/** Where the web edge is and how the client behaves. */
export interface BrowserClientOptions extends BaseClientOptions {
  /** The web edge's URL, e.g. `https://mesh.example.com` (no path; gRPC-web is served at /). */
  readonly baseUrl: string;
  /** The fetch to use (default: the global one), e.g. to add credentials or for tests. */
  readonly fetch?: typeof globalThis.fetch;
  /** Connect interceptors (logging, extra headers, tracing). */
  readonly interceptors?: Interceptor[];
}

/** A client of the agentmesh public API over gRPC-web. */
export class AgentmeshBrowserClient extends BaseClient {
  /** The web edge it calls. */
  readonly baseUrl: string;

  constructor(options: BrowserClientOptions) {
    const transport = createGrpcWebTransport({
      baseUrl: options.baseUrl,
      ...(options.fetch ? { fetch: options.fetch } : {}),
      ...(options.interceptors ? { interceptors: options.interceptors } : {}),
    });
    super(transport, options);
    this.baseUrl = options.baseUrl;
  }
}

/** A client that calls the web edge at `options.baseUrl` over gRPC-web. */
export function createBrowserClient(options: BrowserClientOptions): AgentmeshBrowserClient {
  return new AgentmeshBrowserClient(options);
}
