// The session's two graphs: who talked to whom (agents and tools) and the plan's task DAG.

import { tone } from "./common";
import { agentTypeLabel, duration, shortName, taskStatusLabel } from "./format";
import { Graph, type GraphEdge, type GraphNode } from "./graph";
import { TOOL_PREFIX, type SessionModel, type TaskView } from "./model";

const EDGE_WORDS: Record<string, string> = {
  plan: "assigns",
  result: "reports to",
  call: "calls",
  message: "writes to",
  then: "then",
};

/** Agents and tools; edges: spoke after, called, wrote to (send_message), planner → executors → synthesis. */
export function CommunicationGraph(props: {
  model: SessionModel;
  selected: string;
  onSelect: (agent: string) => void;
}) {
  const { model, selected, onSelect } = props;
  const nodes: GraphNode[] = [];
  for (const agent of model.agents.values()) {
    const detail = agent.role !== "agent" ? agent.role : agentTypeLabel(agent.type);
    nodes.push({
      id: agent.name,
      label: shortName(agent.name),
      detail: detail === "—" ? "agent" : detail,
      className: `agent role-${agent.role}`,
      testId: `graph-node-${agent.name}`,
      title: agent.name,
      selected: agent.name === selected,
      onClick: () => onSelect(agent.name),
    });
  }
  for (const tool of model.tools) {
    nodes.push({
      id: TOOL_PREFIX + tool,
      label: tool,
      detail: "tool",
      className: "tool",
      testId: `graph-node-${TOOL_PREFIX}${tool}`,
    });
  }
  const edges: GraphEdge[] = [...model.edges.values()].map((edge) => {
    const kinds = [...edge.kinds];
    // The most telling word: a plan's structure before mere order of speaking.
    const main = ["plan", "result", "message", "call", "then"].find((k) => edge.kinds.has(k)) ?? "then";
    const times = (edge.kinds.has("call") || edge.kinds.has("message")) && edge.count > 1 ? ` ×${edge.count}` : "";
    return {
      from: edge.from,
      to: edge.to,
      label: EDGE_WORDS[main] + times,
      className: kinds.map((k) => `kind-${k}`).join(" "),
      testId: `graph-edge-${edge.from}->${edge.to}`,
    };
  });
  return (
    <Graph
      nodes={nodes}
      edges={edges}
      testId="agent-graph"
      direction="LR"
      empty="No agent has spoken yet."
    />
  );
}

function taskTiming(task: TaskView, now: number): string {
  if (task.started === undefined) return "";
  const end = task.ended ?? now;
  return duration(end - task.started);
}

export function retries(task: TaskView): number {
  return Math.max(0, task.attempts - 1);
}

/** The plan's tasks laid out by their dependencies, coloured by status. */
export function TaskDag({ model, now }: { model: SessionModel; now: number }) {
  const tasks = [...model.tasks.values()];
  const nodes: GraphNode[] = tasks.map((task) => {
    const status = taskStatusLabel(task.status);
    const parts = [status];
    if (retries(task)) parts.push(`${retries(task)} retr${retries(task) > 1 ? "ies" : "y"}`);
    const timing = taskTiming(task, now);
    if (timing) parts.push(timing);
    return {
      id: task.id,
      label: task.id,
      detail: parts.join(" · "),
      className: `task tone-${tone(status)}`,
      testId: `task-node-${task.id}`,
      title: task.description,
    };
  });
  const edges: GraphEdge[] = tasks.flatMap((task) =>
    task.dependsOn.map((dependency) => ({
      from: dependency,
      to: task.id,
      testId: `task-edge-${dependency}->${task.id}`,
    })),
  );
  return (
    <Graph nodes={nodes} edges={edges} testId="task-dag" direction="LR" empty="No plan." />
  );
}
