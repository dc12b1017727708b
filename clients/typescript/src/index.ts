/**
 * `@agentmesh/client`: a typed client of the agentmesh public API.
 *
 * - {@link AgentmeshClient}: every public RPC of OrchestratorService, with resumable streams.
 * - Errors: {@link AgentmeshError} and one subclass per status code, with the ErrorInfo reason,
 *   BadRequest field violations and RetryInfo delay.
 * - The generated message types and enums of the public API (`Session`, `SessionEvent`,
 *   `Strategy`, `AgentType`, …); every generated file is also at `@agentmesh/client/gen/…`.
 */

export { AgentmeshClient, type CallOptions, type ClientOptions, type EventsOptions } from "./client.js";
export * from "./errors.js";
export { TERMINAL_EVENTS, isTerminal } from "./events.js";
export { create, fromJson, toJson, toJsonString } from "@bufbuild/protobuf";
export * from "./gen/agentmesh/orchestrator/v1/orchestrator_pb.js";
export * from "./gen/agentmesh/common/v1/agents_pb.js";
export * from "./gen/agentmesh/common/v1/approvals_pb.js";
export * from "./gen/agentmesh/common/v1/events_pb.js";
export * from "./gen/agentmesh/common/v1/generation_pb.js";
export * from "./gen/agentmesh/common/v1/memory_entries_pb.js";
export * from "./gen/agentmesh/common/v1/operations_pb.js";
export * from "./gen/agentmesh/common/v1/sessions_pb.js";
export * from "./gen/agentmesh/common/v1/tools_pb.js";
export * from "./gen/agentmesh/common/v1/user_settings_pb.js";
export * from "./gen/agentmesh/orchestrator/v1/knowledge_pb.js";
export * from "./gen/agentmesh/common/v1/messages_pb.js";
export * from "./gen/agentmesh/common/v1/stats_pb.js";
export * from "./gen/agentmesh/common/v1/knowledge_pb.js";
