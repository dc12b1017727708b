// The JSON shapes the UI reads: proto3 canonical JSON of agentmesh's public API (camelCase
// fields, enums by name, int64 as strings, timestamps as RFC 3339 strings). Only the fields
// the UI uses are declared.

export type Int64 = string | number;

export interface Usage {
  promptTokens?: Int64;
  completionTokens?: Int64;
  totalTokens?: Int64;
  cachedPromptTokens?: Int64;
  reasoningTokens?: Int64;
  costMicrosUsd?: Int64;
  estimated?: boolean;
}

export interface RpcStatus {
  code?: number;
  message?: string;
}

export interface Task {
  name?: string;
  taskId: string;
  description?: string;
  agentType?: string;
  agent?: string;
  dependsOn?: string[];
  status?: string;
  retryCount?: number;
  error?: RpcStatus;
  output?: string;
  startTime?: string;
  endTime?: string;
  usage?: Usage;
}

export interface Plan {
  revision?: number;
  rationale?: string;
  tasks?: Task[];
}

export interface Session {
  name: string;
  goal?: string;
  strategy?: string;
  status?: string;
  agents?: string[];
  usage?: Usage;
  createTime?: string;
  startTime?: string;
  endTime?: string;
  finalAnswer?: string;
  error?: RpcStatus;
  plan?: Plan;
  lastEventSeq?: Int64;
}

export interface AgentDefinition {
  name?: string;
  type?: string;
  description?: string;
  model?: { route?: string; provider?: string; model?: string };
  tools?: string[];
}

export interface GetSessionResponse {
  session: Session;
  agents?: AgentDefinition[];
  tasks?: Task[];
}

export interface ListSessionsResponse {
  sessions?: Session[];
  nextPageToken?: string;
}

export interface ToolCall {
  id?: string;
  name?: string;
  arguments?: unknown;
}

/** A tool call waiting for (or given) a human's approval. */
export interface Approval {
  name?: string;
  approvalId?: string;
  agent?: string;
  call?: ToolCall;
  permission?: string;
  state?: string;
  comment?: string;
}

/** One SessionEvent; exactly one payload field is set. */
export interface SessionEvent {
  session?: string;
  seq: Int64;
  time?: string;
  agent?: string;
  taskId?: string;
  traceId?: string;
  messageId?: string;
  sessionStarted?: { goal?: string; strategy?: string; agents?: string[]; resumed?: boolean };
  analysis?: { kind?: string; chosenStrategy?: string; reason?: string };
  planCreated?: { plan?: Plan };
  taskStarted?: { description?: string; attempt?: number };
  taskCompleted?: { output?: string; usage?: Usage };
  taskFailed?: { error?: RpcStatus; attempt?: number; willRetry?: boolean };
  agentSpawned?: { definition?: AgentDefinition };
  messageStarted?: { model?: string; round?: number };
  contentDelta?: { text?: string };
  thinking?: { text?: string };
  toolCall?: { call?: ToolCall };
  toolResult?: { toolCallId?: string; toolName?: string; result?: unknown; error?: RpcStatus };
  messageCompleted?: {
    message?: { content?: string };
    usage?: Usage;
    finishReason?: string;
    provider?: string;
  };
  agentMessage?: {
    message?: string;
    fromAgent?: string;
    toAgents?: string[];
    type?: string;
    content?: string;
  };
  userMessage?: { content?: string };
  approvalRequested?: { approval?: Approval };
  approvalResolved?: { approval?: Approval };
  sessionCompleted?: { finalAnswer?: string; usage?: Usage; terminationReason?: string };
  sessionFailed?: { error?: RpcStatus; usage?: Usage };
  sessionCancelled?: { reason?: string; usage?: Usage };
}

export interface MemoryEntry {
  name: string;
  type?: string;
  value?: unknown;
  expireTime?: string;
  createTime?: string;
  updateTime?: string;
  accessTime?: string;
  accessCount?: Int64;
}

export interface UsageRow {
  key: string;
  usage?: Usage;
  calls?: Int64;
}

export interface GetUsageResponse {
  rows?: UsageRow[];
  total?: Usage;
}

export interface ProviderStatus {
  route?: string;
  deployment?: string;
  provider?: string;
  model?: string;
  health?: string;
  circuitState?: string;
  rpmRemaining?: number;
  tpmRemaining?: Int64;
}

/** The body of every failed HTTP call of the edge. */
export interface ErrorBody {
  code?: number;
  status?: string;
  message?: string;
  details?: { "@type"?: string; reason?: string }[];
}
