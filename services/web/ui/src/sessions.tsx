// The sessions list: status, strategy, age, tokens and cost, polled every two seconds
// (ListSessions), filtered by status on the server and by strategy and goal here.

import { useState } from "preact/hooks";

import { get } from "./api";
import { StatusBadge, usePoll } from "./common";
import { age, cost, shortName, strategyLabel, tokens } from "./format";
import { href, navigate, type Route } from "./router";
import type { ListSessionsResponse, Session } from "./types";

const POLL_MS = 2000;

export const STATUSES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];
const STRATEGIES = ["ROUTER", "PLANNER_EXECUTOR", "ROUND_ROBIN", "PIPELINE"];

export function SessionsPage({ route }: { route: Route }) {
  const status = route.query.get("status") ?? "";
  const [strategy, setStrategy] = useState("");
  const [search, setSearch] = useState("");
  const { value, error, updated } = usePoll(
    () =>
      get<ListSessionsResponse>("/v1/sessions", {
        page_size: 200,
        status: status ? `SESSION_STATUS_${status}` : undefined,
      }),
    POLL_MS,
    [status],
  );
  const now = updated ?? Date.now();
  const needle = search.trim().toLowerCase();
  const sessions = (value?.sessions ?? []).filter(
    (s: Session) =>
      (!strategy || s.strategy === `STRATEGY_${strategy}`) &&
      (!needle || (s.goal ?? "").toLowerCase().includes(needle) || s.name.includes(needle)),
  );

  function setStatus(next: string) {
    navigate(next ? `/sessions?status=${next}` : "/sessions");
  }

  return (
    <main>
      <div class="toolbar">
        <h2>Sessions</h2>
        <label>
          Status{" "}
          <select
            value={status}
            onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}
            data-testid="status-filter"
          >
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option value={s} key={s}>
                {s.toLowerCase()}
              </option>
            ))}
          </select>
        </label>
        <label>
          Strategy{" "}
          <select
            value={strategy}
            onChange={(e) => setStrategy((e.target as HTMLSelectElement).value)}
            data-testid="strategy-filter"
          >
            <option value="">any</option>
            {STRATEGIES.map((s) => (
              <option value={s} key={s}>
                {strategyLabel(`STRATEGY_${s}`)}
              </option>
            ))}
          </select>
        </label>
        <input
          type="search"
          placeholder="goal contains…"
          value={search}
          onInput={(e) => setSearch((e.target as HTMLInputElement).value)}
          data-testid="goal-filter"
        />
        <span class="muted small" data-testid="sessions-updated">
          {updated ? `live · updated ${new Date(updated).toLocaleTimeString()}` : "loading…"}
        </span>
      </div>
      {error && (
        <p class="error" data-testid="sessions-error">
          {error}
        </p>
      )}
      <table class="data" data-testid="sessions-table">
        <thead>
          <tr>
            <th>Status</th>
            <th>Goal</th>
            <th>Strategy</th>
            <th>Age</th>
            <th class="num">Tokens</th>
            <th class="num">Cost</th>
          </tr>
        </thead>
        <tbody>
          {sessions.map((s) => {
            const id = shortName(s.name);
            return (
              <tr key={s.name} data-testid={`session-row-${id}`} class="clickable">
                <td>
                  <StatusBadge status={s.status} testId="session-status" />
                </td>
                <td>
                  <a href={href("sessions", id)} data-testid="session-link">
                    {s.goal || id}
                  </a>
                  <div class="muted small mono">{id}</div>
                </td>
                <td data-testid="session-strategy">{strategyLabel(s.strategy)}</td>
                <td title={s.createTime}>{age(s.createTime, now)}</td>
                <td class="num" data-testid="session-tokens">
                  {tokens(s.usage)}
                </td>
                <td class="num" data-testid="session-cost">
                  {cost(s.usage?.costMicrosUsd)}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {value && !sessions.length && (
        <p class="muted" data-testid="sessions-empty">
          No sessions{status ? ` with status ${status.toLowerCase()}` : ""} yet.
        </p>
      )}
    </main>
  );
}
