// What the session page shows, folded from the session's events in seq order: the timeline,
// each agent's messages as they stream, the plan's tasks, who talked to whom, and usage and
// timing per agent. `SessionModel.apply` is the only way in, so a page that replays the
// stream from seq 1 and one that watched it live see the same thing.

import { millis, num } from "./format";
import type { AgentDefinition, Approval, RpcStatus, SessionEvent, Task, Usage } from "./types";

export type MessageState = "streaming" | "done" | "failed" | "cancelled";

export interface ToolUse {
  id: string;
  name: string;
  arguments: unknown;
  result?: unknown;
  error?: RpcStatus;
}

export interface MessageView {
  id: string;
  agent: string;
  taskId: string;
  model: string;
  text: string;
  thinking: string;
  state: MessageState;
  started?: number;
  firstToken?: number;
  completed?: number;
  usage?: Usage;
  tools: ToolUse[];
}

/** One line of the timeline: a message (growing while it streams) or another event. */
export type TimelineItem =
  | { kind: "message"; seq: number; message: MessageView }
  | { kind: "event"; seq: number; eventKind: string; event: SessionEvent };

export interface TaskView {
  id: string;
  description: string;
  dependsOn: string[];
  agentType: string;
  agent: string;
  status: string;
  attempts: number;
  error?: string;
  started?: number;
  ended?: number;
  usage?: Usage;
}

export type Role = "planner" | "executor" | "synthesis" | "agent";

export interface AgentView {
  name: string;
  role: Role;
  type: string;
  tools: string[];
}

export interface EdgeView {
  from: string;
  to: string;
  /** "then" (spoke after), "call" (tool call), "plan" (planner -> executor),
   *  "result" (executor -> synthesis). */
  kinds: Set<string>;
  count: number;
}

export interface AgentUsage {
  agent: string;
  messages: number;
  prompt: number;
  completion: number;
  total: number;
  costMicros: number;
  latencies: number[];
  ttfts: number[];
}

export const TOOL_PREFIX = "tool:";

const ENVELOPE = new Set(["session", "seq", "time", "agent", "taskId", "traceId", "messageId"]);

const TERMINAL_STATUS: Record<string, string> = {
  sessionCompleted: "SESSION_STATUS_COMPLETED",
  sessionFailed: "SESSION_STATUS_FAILED",
  sessionCancelled: "SESSION_STATUS_CANCELLED",
};

function roleOfType(type: string | undefined, name: string): Role {
  if (type === "AGENT_TYPE_PLANNER" || /(^|\/)planner$/.test(name)) return "planner";
  if (type === "AGENT_TYPE_SYNTHESIS" || /(^|\/)synthesis$/.test(name)) return "synthesis";
  if (type === "AGENT_TYPE_EXECUTOR") return "executor";
  return "agent";
}

export class SessionModel {
  /** Every event as received (the export writes these lines). */
  readonly raw: string[] = [];
  readonly events: SessionEvent[] = [];
  readonly timeline: TimelineItem[] = [];
  readonly messages = new Map<string, MessageView>();
  readonly agents = new Map<string, AgentView>();
  readonly tasks = new Map<string, TaskView>();
  readonly edges = new Map<string, EdgeView>();
  readonly tools = new Set<string>();
  /** Tool calls asking for approval, by approval id, in the order asked; state as it stands. */
  readonly approvals = new Map<string, Approval>();
  status = "";
  traceId = "";
  finalAnswer = "";
  failure = "";
  totalUsage: Usage | undefined;
  /** Bumped on every change, so a view can tell it must render again. */
  version = 0;
  private lastSpeaker = "";
  private lastCompletedWithoutTask = "";

  apply(event: SessionEvent, raw: string = JSON.stringify(event)): void {
    this.raw.push(raw);
    this.events.push(event);
    this.version++;
    const seq = num(event.seq);
    const time = millis(event.time);
    if (event.traceId && !this.traceId) this.traceId = event.traceId;
    if (event.agent) this.agent(event.agent);

    if (event.sessionStarted) {
      this.status = "SESSION_STATUS_RUNNING";
      this.note(seq, "session_started", event);
    } else if (event.agentSpawned) {
      const definition = event.agentSpawned.definition;
      this.agent(event.agent || definition?.name || "", definition);
      this.note(seq, "agent_spawned", event);
    } else if (event.messageStarted) {
      this.startMessage(seq, event, time);
    } else if (event.contentDelta || event.thinking) {
      const message = this.message(event);
      if (message) {
        if (event.contentDelta) message.text += event.contentDelta.text ?? "";
        else message.thinking += event.thinking?.text ?? "";
        if (message.firstToken === undefined) message.firstToken = time;
      }
    } else if (event.toolCall) {
      const call = event.toolCall.call ?? {};
      const name = call.name ?? "?";
      this.tools.add(name);
      this.message(event)?.tools.push({ id: call.id ?? "", name, arguments: call.arguments });
      if (event.agent) this.edge(event.agent, TOOL_PREFIX + name, "call");
    } else if (event.toolResult) {
      const result = event.toolResult;
      const use = this.message(event)?.tools.find((t) => t.id === result.toolCallId);
      if (use) {
        use.result = result.result;
        use.error = result.error;
      } else {
        this.note(seq, "tool_result", event);
      }
    } else if (event.messageCompleted) {
      const message = this.message(event);
      if (message) {
        message.state = "done";
        message.completed = time;
        message.usage = event.messageCompleted.usage;
        const content = event.messageCompleted.message?.content;
        if (content && !message.text) message.text = content;
      }
      if (!event.taskId && event.agent) this.lastCompletedWithoutTask = event.agent;
    } else if (event.agentMessage) {
      const sent = event.agentMessage;
      const from = sent.fromAgent ?? event.agent ?? "";
      const to = sent.toAgents?.length ? sent.toAgents : [...this.agents.keys()];
      for (const recipient of to) this.edge(from, recipient, "message");
      this.note(seq, "agent_message", event);
    } else if (event.planCreated) {
      this.plan(event);
      this.note(seq, "plan_created", event);
    } else if (event.taskStarted || event.taskCompleted || event.taskFailed) {
      this.task(event, time);
      const kind = event.taskStarted ? "started" : event.taskCompleted ? "completed" : "failed";
      this.note(seq, `task_${kind}`, event);
    } else if (event.approvalRequested || event.approvalResolved) {
      const approval = (event.approvalRequested ?? event.approvalResolved)?.approval ?? {};
      if (approval.approvalId) {
        const known = this.approvals.get(approval.approvalId) ?? {};
        this.approvals.set(approval.approvalId, { ...known, ...approval });
      }
      const kind = event.approvalRequested ? "approval_requested" : "approval_resolved";
      this.note(seq, kind, event);
    } else if (event.sessionCompleted || event.sessionFailed || event.sessionCancelled) {
      this.end(event, time);
      const ending = event.sessionCompleted ? "completed" : event.sessionFailed ? "failed" : "";
      const kind = ending || "cancelled";
      this.note(seq, `session_${kind}`, event);
    } else {
      const kind = Object.keys(event).find((k) => !ENVELOPE.has(k)) ?? "event";
      this.note(seq, kind.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase()), event);
    }
  }

  private note(seq: number, eventKind: string, event: SessionEvent): void {
    this.timeline.push({ kind: "event", seq, eventKind, event });
  }

  private agent(name: string, definition?: AgentDefinition): AgentView {
    let view = this.agents.get(name);
    if (!view) {
      const type = definition?.type ?? "";
      view = { name, role: roleOfType(type, name), type, tools: [] };
      this.agents.set(name, view);
    }
    if (definition) {
      view.type = definition.type ?? view.type;
      view.role = roleOfType(definition.type, name);
      view.tools = definition.tools ?? [];
    }
    return view;
  }

  private edge(from: string, to: string, kind: string): void {
    if (!from || !to || from === to) return;
    const key = `${from}->${to}`;
    let edge = this.edges.get(key);
    if (!edge) {
      edge = { from, to, kinds: new Set(), count: 0 };
      this.edges.set(key, edge);
    }
    edge.kinds.add(kind);
    edge.count++;
  }

  private message(event: SessionEvent): MessageView | undefined {
    return event.messageId ? this.messages.get(event.messageId) : undefined;
  }

  private startMessage(seq: number, event: SessionEvent, time: number | undefined): void {
    const agent = event.agent ?? "";
    // A new turn of the same agent on the same task closes its previous one (a tool round).
    for (const open of this.messages.values()) {
      const sameTurn = open.agent === agent && open.taskId === (event.taskId ?? "");
      if (open.state === "streaming" && sameTurn) open.state = "done";
    }
    const message: MessageView = {
      id: event.messageId ?? `seq-${seq}`,
      agent,
      taskId: event.taskId ?? "",
      model: event.messageStarted?.model ?? "",
      text: "",
      thinking: "",
      state: "streaming",
      started: time,
      tools: [],
    };
    this.messages.set(message.id, message);
    this.timeline.push({ kind: "message", seq, message });
    if (this.lastSpeaker && this.lastSpeaker !== agent) this.edge(this.lastSpeaker, agent, "then");
    this.lastSpeaker = agent;
    const role = this.agents.get(agent)?.role;
    if (!event.taskId && role !== "planner" && this.tasks.size) {
      // A turn outside the plan after it ran: the synthesis of the executors' results.
      const view = this.agent(agent);
      if (view.role === "agent") view.role = "synthesis";
      for (const task of this.tasks.values()) {
        if (task.agent) this.edge(task.agent, agent, "result");
      }
    }
  }

  private plan(event: SessionEvent): void {
    const plan = event.planCreated?.plan;
    const planner = event.agent || this.lastCompletedWithoutTask;
    if (planner) this.agent(planner).role = "planner";
    for (const task of plan?.tasks ?? []) {
      this.tasks.set(task.taskId, {
        id: task.taskId,
        description: task.description ?? "",
        dependsOn: task.dependsOn ?? [],
        agentType: task.agentType ?? "",
        agent: task.agent ?? "",
        status: task.status ?? "TASK_STATUS_PENDING",
        attempts: 0,
      });
    }
  }

  private task(event: SessionEvent, time: number | undefined): void {
    const id = event.taskId ?? "";
    let task = this.tasks.get(id);
    if (!task) {
      task = {
        id,
        description: "",
        dependsOn: [],
        agentType: "",
        agent: "",
        status: "",
        attempts: 0,
      };
      this.tasks.set(id, task);
    }
    if (event.agent) task.agent = event.agent;
    if (event.taskStarted) {
      task.status = "TASK_STATUS_RUNNING";
      task.attempts = Math.max(task.attempts, event.taskStarted.attempt ?? 1);
      task.description ||= event.taskStarted.description ?? "";
      task.started ??= time;
      if (event.agent) {
        this.agent(event.agent);
        const planner = [...this.agents.values()].find((a) => a.role === "planner");
        if (planner) this.edge(planner.name, event.agent, "plan");
      }
      return;
    }
    this.closeMessages((m) => m.taskId === id, event.taskFailed ? "failed" : "done");
    if (event.taskCompleted) {
      task.status = "TASK_STATUS_COMPLETED";
      task.ended = time;
      task.usage = event.taskCompleted.usage;
    } else if (event.taskFailed) {
      task.error = event.taskFailed.error?.message;
      if (event.taskFailed.willRetry) {
        task.status = "TASK_STATUS_RETRYING";
      } else {
        task.status = "TASK_STATUS_FAILED";
        task.ended = time;
      }
    }
  }

  private closeMessages(which: (m: MessageView) => boolean, state: MessageState): void {
    for (const message of this.messages.values()) {
      if (message.state === "streaming" && which(message)) message.state = state;
    }
  }

  private end(event: SessionEvent, time: number | undefined): void {
    const key = Object.keys(TERMINAL_STATUS).find((k) => k in event) ?? "";
    this.status = TERMINAL_STATUS[key] ?? this.status;
    const cancelled = !!event.sessionCancelled;
    const state = cancelled ? "cancelled" : event.sessionFailed ? "failed" : "done";
    this.closeMessages(() => true, state);
    for (const task of this.tasks.values()) {
      if (task.status === "TASK_STATUS_RUNNING" || task.status === "TASK_STATUS_RETRYING") {
        task.status = cancelled ? "TASK_STATUS_CANCELLED" : "TASK_STATUS_FAILED";
        task.ended = time;
      }
    }
    this.finalAnswer = event.sessionCompleted?.finalAnswer ?? "";
    const error = event.sessionFailed?.error;
    if (error) this.failure = error.message ?? "failed";
    else if (event.sessionCancelled) this.failure = `cancelled: ${event.sessionCancelled.reason}`;
    const ending = event.sessionCompleted ?? event.sessionFailed ?? event.sessionCancelled;
    this.totalUsage = ending?.usage;
  }

  /** Statuses the server settled after the events (e.g. SKIPPED) win over what events say. */
  mergeTasks(tasks: Task[]): void {
    for (const task of tasks) {
      const view = this.tasks.get(task.taskId);
      if (!view) continue;
      if (task.status && task.status !== "TASK_STATUS_RUNNING") view.status = task.status;
      if (task.agent) view.agent = task.agent;
      if (task.startTime) view.attempts = Math.max(view.attempts, (task.retryCount ?? 0) + 1);
      if (task.dependsOn?.length) view.dependsOn = task.dependsOn;
      view.started ??= millis(task.startTime);
      view.ended ??= millis(task.endTime);
    }
    this.version++;
  }

  /** Tokens, cost, latency and time to first token of each agent's messages. */
  usageByAgent(): AgentUsage[] {
    const rows = new Map<string, AgentUsage>();
    for (const message of this.messages.values()) {
      let row = rows.get(message.agent);
      if (!row) {
        row = {
          agent: message.agent,
          messages: 0,
          prompt: 0,
          completion: 0,
          total: 0,
          costMicros: 0,
          latencies: [],
          ttfts: [],
        };
        rows.set(message.agent, row);
      }
      row.messages++;
      row.prompt += num(message.usage?.promptTokens);
      row.completion += num(message.usage?.completionTokens);
      row.total += num(message.usage?.totalTokens);
      row.costMicros += num(message.usage?.costMicrosUsd);
      if (message.started !== undefined && message.completed !== undefined) {
        row.latencies.push(message.completed - message.started);
      }
      if (message.started !== undefined && message.firstToken !== undefined) {
        row.ttfts.push(message.firstToken - message.started);
      }
    }
    return [...rows.values()].sort((a, b) => a.agent.localeCompare(b.agent));
  }

  /** The events that concern one agent, in order. */
  eventsOf(agent: string): SessionEvent[] {
    return this.events.filter((e) => e.agent === agent);
  }
}

export function mean(values: number[]): number | undefined {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : undefined;
}
