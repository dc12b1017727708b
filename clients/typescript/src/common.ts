/**
 * What both entries (`@agentmesh/client` for Node, `@agentmesh/client/browser`) export besides
 * their client: the typed errors, event helpers, protobuf helpers and the generated types.
 */

export {
  BaseClient,
  type BaseClientOptions,
  type CallOptions,
  type EventsOptions,
  type WorkflowEventsOptions,
} from "./base.js";
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
export * from "./gen/agentmesh/workflow/v1/workflow_pb.js";
export * from "./gen/agentmesh/workflow/v1/workflow_service_pb.js";
export * from "./gen/agentmesh/workflow/v1/schedule_pb.js";
