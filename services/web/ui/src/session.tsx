// One session, live: the header (status, cancel, export, trace link), the communication
// graph, the task DAG, usage per agent, the timeline and a per-agent log. The page reads the
// session once (GetSession), then folds its event stream from seq 1 into a SessionModel.

import { useEffect, useMemo, useState } from "preact/hooks";

import { ApiError, get, post, resourcePath } from "./api";
import { PendingApprovals } from "./approvals";
import { StatusBadge, tone } from "./common";
import { cost, shortName, strategyLabel, tokens } from "./format";
import { SessionModel } from "./model";
import { CommunicationGraph, TaskDag } from "./session_graphs";
import { AgentLog, TaskTable, UsageTable } from "./session_tables";
import { SessionStream, type StreamState } from "./stream";
import { Timeline } from "./timeline";
import type { GetSessionResponse, Session } from "./types";

export interface UiConfig {
  traceUrlTemplate: string | null;
}

const ENDED = ["SESSION_STATUS_COMPLETED", "SESSION_STATUS_FAILED", "SESSION_STATUS_CANCELLED"];

function download(name: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Re-render once a second while something is running, so durations tick. */
function useClock(running: boolean): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!running) return undefined;
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [running]);
  return running ? now : Date.now();
}

export function SessionPage({ id, config }: { id: string; config: UiConfig }) {
  const name = `sessions/${id}`;
  const model = useMemo(() => new SessionModel(), [id]);
  const [, setVersion] = useState(0);
  const [session, setSession] = useState<Session | undefined>(undefined);
  const [loadError, setLoadError] = useState("");
  const [stream, setStream] = useState<{ state: StreamState; detail?: string }>({
    state: "connecting",
  });
  const [cancelState, setCancelState] = useState<"idle" | "asking" | "error">("idle");
  const [cancelError, setCancelError] = useState("");
  const [selected, setSelected] = useState("");

  async function refresh() {
    try {
      const reply = await get<GetSessionResponse>(resourcePath(name));
      setSession(reply.session);
      model.mergeTasks(reply.tasks ?? []);
      setVersion(model.version);
    } catch (error) {
      setLoadError(error instanceof ApiError ? error.message : String(error));
    }
  }

  useEffect(() => {
    void refresh();
    const events = new SessionStream(name, {
      events(batch) {
        let ended = false;
        for (const { event, raw, kind } of batch) {
          model.apply(event, raw);
          ended ||= kind.startsWith("session_") && kind !== "session_started";
        }
        setVersion(model.version);
        if (ended) void refresh(); // the settled task statuses and the session's usage
      },
      state(state, detail) {
        setStream({ state, detail });
      },
    });
    events.start();
    return () => events.close();
  }, [id]);

  const status = model.status || session?.status || "";
  const running = !ENDED.includes(status);
  const now = useClock(running);
  const agent = selected || [...model.agents.keys()][0] || "";

  async function cancel() {
    setCancelState("asking");
    setCancelError("");
    try {
      await post(resourcePath(name) + ":cancel", {});
      setCancelState("idle");
    } catch (error) {
      setCancelState("error");
      setCancelError(error instanceof ApiError ? error.message : String(error));
    }
  }

  if (loadError && !session) {
    return (
      <main>
        <p class="error" data-testid="session-error">
          {loadError}
        </p>
      </main>
    );
  }
  const traceUrl =
    config.traceUrlTemplate && model.traceId
      ? config.traceUrlTemplate.replace("{trace_id}", model.traceId)
      : "";
  const usage = model.totalUsage ?? session?.usage;
  return (
    <main class="session">
      <header class="session-head">
        <div>
          <h2 data-testid="session-goal">{session?.goal ?? id}</h2>
          <div class="muted small mono">{name}</div>
        </div>
        <div class="facts">
          <StatusBadge status={status} testId="session-status" />
          <span>{strategyLabel(session?.strategy)}</span>
          <span data-testid="session-tokens">{tokens(usage)} tokens</span>
          <span>{cost(usage?.costMicrosUsd)}</span>
          <span
            class={`badge tone-${tone(stream.state)}`}
            data-testid="stream-state"
            title={stream.detail}
          >
            {stream.state}
          </span>
        </div>
        <div class="actions">
          <button
            class="danger"
            disabled={!running || cancelState === "asking"}
            onClick={cancel}
            data-testid="cancel-button"
          >
            {cancelState === "asking" ? "Cancelling…" : "Cancel session"}
          </button>
          <button
            onClick={() => download(`session-${id}.jsonl`, model.raw.join("\n") + "\n")}
            disabled={!model.raw.length}
            data-testid="export-button"
          >
            Export events (JSON lines)
          </button>
          {traceUrl && (
            <a href={traceUrl} target="_blank" rel="noopener noreferrer" data-testid="trace-link">
              Trace {model.traceId.slice(0, 8)}…
            </a>
          )}
        </div>
      </header>
      {cancelError && (
        <p class="error" data-testid="cancel-error">
          {cancelError}
        </p>
      )}
      <PendingApprovals model={model} session={name} />
      {stream.state === "failed" && (
        <p class="error" data-testid="stream-error">
          The event stream failed: {stream.detail}
        </p>
      )}
      {(model.finalAnswer || model.failure) && (
        <section class={model.failure ? "answer failed" : "answer"} data-testid="final-answer">
          <h3>{model.failure ? "Ended" : "Answer"}</h3>
          <pre>{model.finalAnswer || model.failure}</pre>
        </section>
      )}
      <div class="grid-2">
        <section>
          <h3>Communication</h3>
          <p class="muted small">
            Agents and tools; click an agent for its log. Edges: who spoke after whom, tool
            calls, planner → executors → synthesis.
          </p>
          <CommunicationGraph model={model} selected={agent} onSelect={setSelected} />
        </section>
        <section>
          <h3>Tasks</h3>
          {session?.plan?.rationale && <p class="muted small">{session.plan.rationale}</p>}
          <TaskDag model={model} now={now} />
          <TaskTable model={model} now={now} />
        </section>
      </div>
      <section>
        <h3>Usage per agent</h3>
        <UsageTable model={model} />
      </section>
      <div class="grid-2">
        <section>
          <h3>
            Timeline <span class="muted small">{model.events.length} events</span>
          </h3>
          <Timeline model={model} />
        </section>
        <section>
          <h3>Log of {shortName(agent) || "an agent"}</h3>
          <AgentLog model={model} agent={agent} onSelect={setSelected} />
        </section>
      </div>
    </main>
  );
}
