/**
 * `@agentmesh/client`: a typed client of the agentmesh public API.
 *
 * - {@link AgentmeshClient}: every public RPC of OrchestratorService, with resumable streams,
 *   over gRPC (HTTP/2) from Node. In browsers, `@agentmesh/client/browser` has the same client
 *   over gRPC-web through the web edge (`createBrowserClient`).
 * - Errors: {@link AgentmeshError} and one subclass per status code, with the ErrorInfo reason,
 *   BadRequest field violations and RetryInfo delay.
 * - The generated message types and enums of the public API (`Session`, `SessionEvent`,
 *   `Strategy`, `AgentType`, …); every generated file is also at `@agentmesh/client/gen/…`.
 */

export { AgentmeshClient, type ClientOptions } from "./client.js";
export * from "./common.js";
