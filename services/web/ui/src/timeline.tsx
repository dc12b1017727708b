// The live timeline of a session: each agent's message growing as its deltas arrive, its tool
// calls and their results, and one line for every other event.

import { useEffect, useRef } from "preact/hooks";

import { tone } from "./common";
import { agentTypeLabel, clock, duration, enumLabel, json, shortName, strategyLabel } from "./format";
import type { MessageView, SessionModel, TimelineItem } from "./model";
import type { SessionEvent } from "./types";

/** One line saying what an event (other than a message's own) means. */
export function describe(kind: string, event: SessionEvent): string {
  const agent = shortName(event.agent);
  const task = event.taskId ? `task ${event.taskId}` : "";
  switch (kind) {
    case "session_started": {
      const started = event.sessionStarted ?? {};
      const resumed = started.resumed ? " (resumed on another replica)" : "";
      return `Session started: ${strategyLabel(started.strategy)}${resumed}`;
    }
    case "analysis": {
      const analysis = event.analysis ?? {};
      const kindLabel = enumLabel(analysis.kind, "GOAL_KIND_");
      return `Router: ${kindLabel} goal → ${strategyLabel(analysis.chosenStrategy)}. ${
        analysis.reason ?? ""
      }`;
    }
    case "plan_created": {
      const plan = event.planCreated?.plan ?? {};
      const tasks = plan.tasks ?? [];
      return `Plan r${plan.revision ?? 1}: ${tasks.length} tasks (${tasks
        .map((t) => t.taskId)
        .join(", ")}). ${plan.rationale ?? ""}`;
    }
    case "task_started":
      return `${task} started by ${agent} (attempt ${event.taskStarted?.attempt ?? 1}): ${
        event.taskStarted?.description ?? ""
      }`;
    case "task_completed":
      return `${task} completed by ${agent}`;
    case "task_failed": {
      const failed = event.taskFailed ?? {};
      const next = failed.willRetry ? "will retry" : "gave up";
      return `${task} failed (attempt ${failed.attempt ?? 1}, ${next}): ${
        failed.error?.message ?? ""
      }`;
    }
    case "agent_spawned": {
      const definition = event.agentSpawned?.definition ?? {};
      return `${agent} joined (${agentTypeLabel(definition.type)})`;
    }
    case "tool_result":
      return `${event.toolResult?.toolName ?? "tool"} answered: ${json(event.toolResult?.result)}`;
    case "agent_message": {
      const sent = event.agentMessage ?? {};
      const to = (sent.toAgents ?? []).map(shortName).join(", ") || "everyone";
      const type = enumLabel(sent.type, "MESSAGE_TYPE_");
      return `${shortName(sent.fromAgent) || agent} → ${to} (${type}): ${sent.content ?? ""}`;
    }
    case "user_message":
      return `User: ${event.userMessage?.content ?? ""}`;
    case "session_completed":
      return `Session completed (${event.sessionCompleted?.terminationReason ?? "done"})`;
    case "session_failed":
      return `Session failed: ${event.sessionFailed?.error?.message ?? ""}`;
    case "session_cancelled":
      return `Session cancelled (${event.sessionCancelled?.reason ?? ""})`;
    default:
      return kind.replace(/_/g, " ");
  }
}

function Message({ message }: { message: MessageView }) {
  const latency =
    message.completed !== undefined && message.started !== undefined
      ? message.completed - message.started
      : undefined;
  const ttft =
    message.firstToken !== undefined && message.started !== undefined
      ? message.firstToken - message.started
      : undefined;
  return (
    <div
      class={`message state-${message.state}`}
      data-testid="timeline-message"
      data-agent={message.agent}
      data-task={message.taskId}
      data-message-id={message.id}
      data-state={message.state}
    >
      <div class="message-head">
        <strong>{shortName(message.agent)}</strong>
        {message.taskId && <span class="muted"> · task {message.taskId}</span>}
        <span class={`badge tone-${tone(message.state)}`}>{message.state}</span>
        <span class="muted small">
          {ttft !== undefined && ` first token ${duration(ttft)}`}
          {latency !== undefined && ` · ${duration(latency)}`}
        </span>
      </div>
      {message.thinking && <pre class="thinking">{message.thinking}</pre>}
      {(message.text || message.state === "streaming") && (
        <pre class="message-text" data-testid="message-text">
          {message.text}
          {message.state === "streaming" && <span class="cursor">▍</span>}
        </pre>
      )}
      {message.tools.map((use) => (
        <div class="tool-use" data-testid="tool-use" data-tool={use.name} key={use.id}>
          <span class="mono">
            → {use.name}({json(use.arguments)})
          </span>
          {use.result !== undefined && <span class="mono"> = {json(use.result)}</span>}
          {use.error && <span class="error"> ✗ {use.error.message}</span>}
        </div>
      ))}
    </div>
  );
}

function Item({ item }: { item: TimelineItem }) {
  if (item.kind === "message") {
    return (
      <li data-testid="timeline-item" data-kind="message" data-seq={item.seq}>
        <span class="seq">{item.seq}</span>
        <Message message={item.message} />
      </li>
    );
  }
  const failed = item.eventKind.endsWith("_failed");
  return (
    <li
      data-testid="timeline-item"
      data-kind={item.eventKind}
      data-seq={item.seq}
      class={failed ? "failed" : ""}
    >
      <span class="seq">{item.seq}</span>
      <span class="event-line">
        <span class="muted small">{clock(item.event.time)} </span>
        {describe(item.eventKind, item.event)}
      </span>
    </li>
  );
}

export function Timeline({ model }: { model: SessionModel }) {
  const box = useRef<HTMLOListElement>(null);
  const pinned = useRef(true);
  // Follow the end while the reader is there; leave the scroll alone once they scroll up.
  useEffect(() => {
    const element = box.current;
    if (element && pinned.current) element.scrollTop = element.scrollHeight;
  });
  return (
    <ol
      class="timeline"
      ref={box}
      data-testid="timeline"
      data-count={model.timeline.length}
      data-events={model.events.length}
      onScroll={(e) => {
        const element = e.currentTarget as HTMLElement;
        pinned.current = element.scrollHeight - element.scrollTop - element.clientHeight < 40;
      }}
    >
      {model.timeline.map((item) => (
        <Item item={item} key={item.seq} />
      ))}
      {!model.timeline.length && <li class="muted">Waiting for the first event…</li>}
    </ol>
  );
}
