// The session's tables: usage and timing per agent, the tasks, and one agent's log.

import { Badge } from "./common";
import { clock, cost, duration, json, shortName } from "./format";
import { mean, type SessionModel } from "./model";
import { retries } from "./session_graphs";
import { describe } from "./timeline";
import type { SessionEvent } from "./types";

/** Tokens, cost, latency and time to first token of each agent, from its messages. */
export function UsageTable({ model }: { model: SessionModel }) {
  const rows = model.usageByAgent();
  return (
    <table class="data" data-testid="usage-table">
      <thead>
        <tr>
          <th>Agent</th>
          <th class="num">Messages</th>
          <th class="num">Prompt</th>
          <th class="num">Completion</th>
          <th class="num">Total tokens</th>
          <th class="num">Cost</th>
          <th class="num">Latency (mean)</th>
          <th class="num">First token (mean)</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((row) => (
          <tr key={row.agent} data-testid={`usage-row-${row.agent}`}>
            <td title={row.agent}>{shortName(row.agent)}</td>
            <td class="num">{row.messages}</td>
            <td class="num">{row.prompt.toLocaleString("en-US")}</td>
            <td class="num">{row.completion.toLocaleString("en-US")}</td>
            <td class="num" data-testid="usage-total-tokens">
              {row.total.toLocaleString("en-US")}
            </td>
            <td class="num" data-testid="usage-cost">
              {cost(row.costMicros)}
            </td>
            <td class="num" data-testid="usage-latency">
              {duration(mean(row.latencies))}
            </td>
            <td class="num" data-testid="usage-ttft">
              {duration(mean(row.ttfts))}
            </td>
          </tr>
        ))}
      </tbody>
      {model.totalUsage && (
        <tfoot>
          <tr data-testid="usage-session-total">
            <td>session total</td>
            <td />
            <td class="num">{Number(model.totalUsage.promptTokens ?? 0).toLocaleString("en-US")}</td>
            <td class="num">
              {Number(model.totalUsage.completionTokens ?? 0).toLocaleString("en-US")}
            </td>
            <td class="num">{Number(model.totalUsage.totalTokens ?? 0).toLocaleString("en-US")}</td>
            <td class="num">{cost(model.totalUsage.costMicrosUsd)}</td>
            <td />
            <td />
          </tr>
        </tfoot>
      )}
    </table>
  );
}

/** Every task with status, agent, attempts and timings. */
export function TaskTable({ model, now }: { model: SessionModel; now: number }) {
  const tasks = [...model.tasks.values()];
  if (!tasks.length) return null;
  return (
    <table class="data" data-testid="task-table">
      <thead>
        <tr>
          <th>Task</th>
          <th>Status</th>
          <th>Agent</th>
          <th class="num">Retries</th>
          <th>Started</th>
          <th class="num">Took</th>
          <th>Description</th>
        </tr>
      </thead>
      <tbody>
        {tasks.map((task) => (
          <tr key={task.id} data-testid={`task-row-${task.id}`}>
            <td class="mono">{task.id}</td>
            <td>
              <Badge value={task.status} prefix="TASK_STATUS_" testId="task-status" />
            </td>
            <td>{shortName(task.agent)}</td>
            <td class="num" data-testid="task-retries">
              {retries(task)}
            </td>
            <td>{task.started ? clock(new Date(task.started).toISOString()) : "—"}</td>
            <td class="num">
              {task.started !== undefined ? duration((task.ended ?? now) - task.started) : "—"}
            </td>
            <td title={task.error}>
              {task.description}
              {task.error && <div class="error small">{task.error}</div>}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function kindOf(event: SessionEvent): string {
  const envelope = new Set(["session", "seq", "time", "agent", "taskId", "traceId", "messageId"]);
  const key = Object.keys(event).find((k) => !envelope.has(k)) ?? "event";
  return key.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
}

function summary(kind: string, event: SessionEvent): string {
  switch (kind) {
    case "message_started": {
      const model = event.messageStarted?.model ?? "";
      const on = model && model !== "/" ? ` on ${model}` : "";
      return `message ${event.messageId?.slice(0, 8)}${on}`;
    }
    case "content_delta":
      return event.contentDelta?.text ?? "";
    case "thinking":
      return event.thinking?.text ?? "";
    case "tool_call":
      return `${event.toolCall?.call?.name}(${json(event.toolCall?.call?.arguments)})`;
    case "message_completed": {
      const done = event.messageCompleted ?? {};
      return `${done.usage?.totalTokens ?? 0} tokens, ${cost(done.usage?.costMicrosUsd)}, ${
        done.provider ?? ""
      }`;
    }
    default:
      return describe(kind, event);
  }
}

interface LogRow {
  seq: string;
  time?: string;
  kind: string;
  taskId: string;
  detail: string;
}

/** One row per event, except that a message's deltas in a row become one row. */
function logRows(events: SessionEvent[]): LogRow[] {
  const rows: LogRow[] = [];
  let open: { row: LogRow; messageId: string; count: number; last: string } | undefined;
  for (const event of events) {
    const kind = kindOf(event);
    if (kind === "content_delta" && open && open.messageId === event.messageId) {
      open.count++;
      open.last = String(event.seq);
      open.row.seq = `${open.row.seq.split("–")[0]}–${open.last}`;
      open.row.kind = `content_delta ×${open.count}`;
      open.row.detail += event.contentDelta?.text ?? "";
      continue;
    }
    const row: LogRow = {
      seq: String(event.seq),
      time: event.time,
      kind,
      taskId: event.taskId ?? "",
      detail: summary(kind, event),
    };
    rows.push(row);
    open =
      kind === "content_delta"
        ? { row, messageId: event.messageId ?? "", count: 1, last: row.seq }
        : undefined;
  }
  return rows;
}

/** The events of one agent, in order. */
export function AgentLog(props: {
  model: SessionModel;
  agent: string;
  onSelect: (agent: string) => void;
}) {
  const { model, agent, onSelect } = props;
  const rows = agent ? logRows(model.eventsOf(agent)) : [];
  return (
    <div>
      <label>
        Agent{" "}
        <select
          value={agent}
          onChange={(e) => onSelect((e.target as HTMLSelectElement).value)}
          data-testid="agent-log-select"
        >
          {[...model.agents.keys()].map((name) => (
            <option value={name} key={name}>
              {name}
            </option>
          ))}
        </select>
      </label>
      <div class="scroll-box">
        <table class="data log" data-testid="agent-log" data-agent={agent}>
          <thead>
            <tr>
              <th class="num">Seq</th>
              <th>Time</th>
              <th>Event</th>
              <th>Task</th>
              <th>Detail</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((row) => (
              <tr key={row.seq} data-testid="agent-log-row" data-kind={row.kind.split(" ")[0]}>
                <td class="num">{row.seq}</td>
                <td class="mono small">{clock(row.time)}</td>
                <td class="mono">{row.kind}</td>
                <td class="mono">{row.taskId}</td>
                <td class="detail">{row.detail}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
