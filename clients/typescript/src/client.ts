/**
 * The agentmesh client for Node: every public RPC of
 * `agentmesh.orchestrator.v1.OrchestratorService` over real gRPC (HTTP/2), with the API key
 * sent as `authorization: Bearer <key>`.
 *
 *     const mesh = new AgentmeshClient("127.0.0.1:50051", { apiKey });
 *     const { session } = await mesh.createSession({ session: { goal: "Plan a picnic", ... } });
 *     for await (const event of mesh.run(session!.name)) console.log(event.seq, event.payload.case);
 *
 * In a browser, use `createBrowserClient` from `@agentmesh/client/browser` (gRPC-web through the
 * web edge) instead: the same methods, streams and errors.
 */

import type { Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { BaseClient, type BaseClientOptions } from "./base.js";

/** How the client connects and behaves. */
export interface ClientOptions extends BaseClientOptions {
  /** A transport of your own (tests, interceptors, TLS settings); `target` is then unused. */
  readonly transport?: Transport;
}

/** A client of the agentmesh public API over gRPC (HTTP/2). Call `close()` when done. */
export class AgentmeshClient extends BaseClient {
  readonly #sessions: Http2SessionManager | undefined;

  /** `target` is `host:port` (plain HTTP/2) or a URL (`https://…` for TLS). */
  constructor(target: string, options: ClientOptions = {}) {
    let sessions: Http2SessionManager | undefined;
    let transport = options.transport;
    if (transport === undefined) {
      const baseUrl = /^https?:\/\//.test(target) ? target : `http://${target}`;
      sessions = new Http2SessionManager(baseUrl);
      transport = createGrpcTransport({ baseUrl, sessionManager: sessions });
    }
    super(transport, options);
    this.#sessions = sessions;
  }

  /** Close the connection; calls after this fail. Safe to call twice. */
  override close(): void {
    this.#sessions?.abort();
  }
}
