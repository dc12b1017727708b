// Agent memory: what each agent remembers, across all its users (the parent
// `agents/{agent}/users/-`), by type; deleting an entry; and usage per agent (GetUsage grouped
// by agent).

import { useEffect, useState } from "preact/hooks";

import { ApiError, del, get, resourcePath } from "./api";
import { Badge } from "./common";
import { age, cost, json, memoryTypeLabel, num } from "./format";
import type { GetUsageResponse, MemoryEntry } from "./types";

const TYPES = ["LONG_TERM", "SHORT_TERM", "EPISODIC"];
const AGENT_ID = /^[a-z][a-z0-9-]{0,62}$/;
const PAGES = 10;

interface Loaded {
  agents: string[];
  entries: Map<string, MemoryEntry[]>;
  usage: GetUsageResponse;
}

async function entriesOf(agent: string, type: string): Promise<MemoryEntry[]> {
  const entries: MemoryEntry[] = [];
  let token = "";
  for (let page = 0; page < PAGES; page++) {
    const reply = await get<{ entries?: MemoryEntry[]; nextPageToken?: string }>(
      resourcePath(`agents/${agent}/users/-`) + "/memories",
      { page_size: 1000, page_token: token, type: type ? `MEMORY_TYPE_${type}` : undefined },
    );
    entries.push(...(reply.entries ?? []));
    token = reply.nextPageToken ?? "";
    if (!token) break;
  }
  return entries;
}

/** The agents worth looking at: defined ones, ones that used tokens, and ones typed in. */
async function load(extra: string[], only: string, type: string): Promise<Loaded> {
  const [defined, usage] = await Promise.all([
    get<{ agents?: { name: string }[] }>("/v1/agents", { page_size: 1000 }),
    get<GetUsageResponse>("/v1/usage", { group_by: "USAGE_GROUPING_AGENT" }),
  ]);
  const ids = new Set<string>(extra);
  for (const agent of defined.agents ?? []) ids.add(agent.name.replace(/^agents\//, ""));
  for (const row of usage.rows ?? []) {
    if (row.key.startsWith("agents/")) ids.add(row.key.slice("agents/".length));
  }
  const agents = [...ids].filter((id) => AGENT_ID.test(id)).sort();
  const shown = only ? [only] : agents;
  const lists = await Promise.all(shown.map((agent) => entriesOf(agent, type)));
  return { agents, entries: new Map(shown.map((agent, i) => [agent, lists[i] ?? []])), usage };
}

function parts(name: string): { user: string; key: string } {
  const segments = name.split("/"); // agents/{a}/users/{u}/memories/{k}
  return { user: segments[3] ?? "", key: segments[5] ?? "" };
}

function EntryRow({ entry, onDeleted }: { entry: MemoryEntry; onDeleted: () => void }) {
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState("");
  const { user, key } = parts(entry.name);
  async function remove() {
    try {
      await del(resourcePath(entry.name));
      onDeleted();
    } catch (failure) {
      setError(failure instanceof ApiError ? failure.message : String(failure));
    }
  }
  return (
    <tr data-testid={`memory-entry-${entry.name}`}>
      <td class="mono">{user}</td>
      <td class="mono">{key}</td>
      <td class="value mono">{json(entry.value)}</td>
      <td title={entry.updateTime}>{age(entry.updateTime)}</td>
      <td>{entry.expireTime ? new Date(entry.expireTime).toLocaleString() : "never"}</td>
      <td class="num">{num(entry.accessCount)}</td>
      <td>
        {confirming ? (
          <>
            <button class="danger" onClick={remove} data-testid="memory-confirm-delete">
              Delete for good
            </button>{" "}
            <button onClick={() => setConfirming(false)}>Keep</button>
          </>
        ) : (
          <button onClick={() => setConfirming(true)} data-testid="memory-delete">
            Delete
          </button>
        )}
        {error && <div class="error small">{error}</div>}
      </td>
    </tr>
  );
}

function AgentMemories(props: { agent: string; entries: MemoryEntry[]; onChange: () => void }) {
  const { agent, entries, onChange } = props;
  const byType = new Map<string, MemoryEntry[]>();
  for (const entry of entries) {
    const type = entry.type ?? "MEMORY_TYPE_UNSPECIFIED";
    byType.set(type, [...(byType.get(type) ?? []), entry]);
  }
  return (
    <section data-testid={`memory-agent-${agent}`}>
      <h3>
        {agent}{" "}
        <span class="muted small">
          {entries.length} {entries.length === 1 ? "entry" : "entries"}
        </span>
      </h3>
      {!entries.length && <p class="muted">Remembers nothing.</p>}
      {[...byType.entries()].map(([type, list]) => (
        <div key={type} data-testid={`memory-type-${type}`}>
          <h4>
            <Badge value={type} prefix="MEMORY_TYPE_" /> {list.length}
          </h4>
          <table class="data memory">
            <colgroup>
              {["user", "key", "value", "when", "expires", "reads", "actions"].map((c) => (
                <col class={c} key={c} />
              ))}
            </colgroup>
            <thead>
              <tr>
                <th>User</th>
                <th>Key</th>
                <th>Value</th>
                <th>Written</th>
                <th>Expires</th>
                <th class="num">Reads</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {list.map((entry) => (
                <EntryRow entry={entry} key={entry.name} onDeleted={onChange} />
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </section>
  );
}

function UsageByAgent({ usage }: { usage: GetUsageResponse }) {
  return (
    <table class="data" data-testid="memory-usage-table">
      <thead>
        <tr>
          <th>Agent</th>
          <th class="num">Calls</th>
          <th class="num">Prompt</th>
          <th class="num">Completion</th>
          <th class="num">Total tokens</th>
          <th class="num">Cost</th>
        </tr>
      </thead>
      <tbody>
        {(usage.rows ?? []).map((row) => (
          <tr key={row.key} data-testid={`agent-usage-row-${row.key}`}>
            <td>{row.key}</td>
            <td class="num">{num(row.calls)}</td>
            <td class="num">{num(row.usage?.promptTokens).toLocaleString("en-US")}</td>
            <td class="num">{num(row.usage?.completionTokens).toLocaleString("en-US")}</td>
            <td class="num">{num(row.usage?.totalTokens).toLocaleString("en-US")}</td>
            <td class="num">{cost(row.usage?.costMicrosUsd)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function MemoryPage() {
  const [extra, setExtra] = useState<string[]>([]);
  const [typed, setTyped] = useState("");
  const [only, setOnly] = useState("");
  const [type, setType] = useState("");
  const [loaded, setLoaded] = useState<Loaded | undefined>(undefined);
  const [error, setError] = useState("");
  const [tick, setTick] = useState(0);

  useEffect(() => {
    let stopped = false;
    load(extra, only, type).then(
      (result) => {
        if (stopped) return;
        setLoaded(result);
        setError("");
      },
      (failure) => {
        if (!stopped) setError(failure instanceof ApiError ? failure.message : String(failure));
      },
    );
    return () => {
      stopped = true;
    };
  }, [extra, only, type, tick]);

  function addAgent(event: Event) {
    event.preventDefault();
    const id = typed.trim();
    if (!AGENT_ID.test(id)) {
      setError(`${id || "(empty)"} is not an agent id (lower case letters, digits, '-')`);
      return;
    }
    setExtra([...new Set([...extra, id])]);
    setOnly(id);
    setTyped("");
  }

  return (
    <main>
      <div class="toolbar">
        <h2>Agent memory</h2>
        <label>
          Agent{" "}
          <select
            value={only}
            onChange={(e) => setOnly((e.target as HTMLSelectElement).value)}
            data-testid="memory-agent-filter"
          >
            <option value="">all agents</option>
            {(loaded?.agents ?? []).map((agent) => (
              <option value={agent} key={agent}>
                {agent}
              </option>
            ))}
          </select>
        </label>
        <label>
          Type{" "}
          <select
            value={type}
            onChange={(e) => setType((e.target as HTMLSelectElement).value)}
            data-testid="memory-type-filter"
          >
            <option value="">any</option>
            {TYPES.map((t) => (
              <option value={t} key={t}>
                {memoryTypeLabel(`MEMORY_TYPE_${t}`)}
              </option>
            ))}
          </select>
        </label>
        <form onSubmit={addAgent} class="inline">
          <input
            placeholder="another agent id"
            value={typed}
            onInput={(e) => setTyped((e.target as HTMLInputElement).value)}
            data-testid="memory-agent-input"
          />
          <button type="submit">Show</button>
        </form>
      </div>
      {error && (
        <p class="error" data-testid="memory-error">
          {error}
        </p>
      )}
      {!loaded && !error && <p class="muted">Loading…</p>}
      {loaded &&
        [...loaded.entries.entries()].map(([agent, entries]) => (
          <AgentMemories
            agent={agent}
            entries={entries}
            key={agent}
            onChange={() => setTick((t) => t + 1)}
          />
        ))}
      {loaded && !loaded.entries.size && <p class="muted">No agents yet.</p>}
      <h3>Usage per agent</h3>
      {loaded && <UsageByAgent usage={loaded.usage} />}
    </main>
  );
}
