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

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
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
    const fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    const transport = createGrpcWebTransport({
      baseUrl: options.baseUrl,
      fetch: dropsAsUnavailable(fetch),
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

/**
 * A fetch whose network failures are `Unavailable`, so streams resume and idempotent calls
 * retry after them: a browser reports a dropped connection only as a `TypeError` ("Failed to
 * fetch", "network error"), before the response or while reading its body, which connect
 * would call `Unknown`. Aborts (a `DOMException`) are left as they are.
 */
function dropsAsUnavailable(fetch: typeof globalThis.fetch): typeof globalThis.fetch {
  return async (input, init) => {
    let response: Response;
    try {
      response = await fetch(input, init);
    } catch (error) {
      throw asDrop(error);
    }
    const source = response.body;
    if (source === null) return response;
    const reader = source.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (error) {
          controller.error(asDrop(error));
        }
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

function asDrop(error: unknown): unknown {
  if (!(error instanceof TypeError)) return error;
  return new ConnectError(
    `the connection to the web edge failed: ${error.message}`,
    Code.Unavailable,
    undefined,
    undefined,
    error,
  );
}
