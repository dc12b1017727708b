// Workflows: each workflow's places with the tokens in them now (GetWorkflow's token counts),
// its transitions and place agents, polled every five seconds. Tokens live in the memory
// service, so the counts are the same from any replica.

import { usePoll } from "./common";
import { get } from "./api";
import { num } from "./format";

const POLL_MS = 5000;

interface Place {
  id: string;
  description?: string;
}
interface Transition {
  id: string;
  fromPlaces?: string[];
  toPlace?: string;
  agentExecution?: { agent?: string };
}
interface PlaceAgent {
  id: string;
  place?: string;
  execution?: { agent?: string };
}
interface Workflow {
  name: string;
  displayName?: string;
  places?: Place[];
  transitions?: Transition[];
  placeAgents?: PlaceAgent[];
  tokenCounts?: Record<string, string | number>;
  revision?: string | number;
  warnings?: string[];
}

async function loadWorkflows(): Promise<Workflow[]> {
  const listed = await get<{ workflows?: Workflow[] }>("/v1/workflows?page_size=100");
  // The list leaves out token counts: GetWorkflow counts them (one GROUP BY each).
  return Promise.all(
    (listed.workflows ?? []).map(async (w) => (await get<{ workflow: Workflow }>(`/v1/${w.name}`)).workflow),
  );
}

function WorkflowCard({ workflow }: { workflow: Workflow }) {
  const counts = workflow.tokenCounts ?? {};
  const agents = new Map((workflow.placeAgents ?? []).map((a) => [a.place ?? "", a]));
  const id = workflow.name.replace(/^workflows\//, "");
  return (
    <section class="card" data-testid={`workflow-${id}`}>
      <h3>
        {workflow.displayName || id} <span class="muted small mono">{workflow.name}</span>
      </h3>
      <table class="data">
        <thead>
          <tr>
            <th>Place</th>
            <th class="num">Tokens</th>
            <th>Place agent</th>
          </tr>
        </thead>
        <tbody>
          {(workflow.places ?? []).map((p) => (
            <tr key={p.id} data-testid={`place-${id}-${p.id}`}>
              <td title={p.description}>{p.id}</td>
              <td class="num" data-testid="token-count">
                {num(counts[p.id] ?? 0).toLocaleString("en-US")}
              </td>
              <td class="mono">{agents.get(p.id)?.execution?.agent ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="muted small">
        {(workflow.transitions ?? [])
          .map((t) => {
            const agent = t.agentExecution?.agent ? ` (${t.agentExecution.agent})` : "";
            return `${t.id}: ${(t.fromPlaces ?? []).join(", ")} → ${t.toPlace ?? ""}${agent}`;
          })
          .join(" · ")}
      </p>
    </section>
  );
}

export function WorkflowsPage() {
  const { value, error, updated } = usePoll(loadWorkflows, POLL_MS);
  const workflows = value ?? [];
  return (
    <main>
      <div class="toolbar">
        <h2>Workflows</h2>
        <span class="muted small">
          {updated ? `live · updated ${new Date(updated).toLocaleTimeString()}` : "loading…"}
        </span>
      </div>
      {error && (
        <p class="error" data-testid="workflows-error">
          {error}
        </p>
      )}
      {workflows.map((w) => (
        <WorkflowCard workflow={w} key={w.name} />
      ))}
      {value && !workflows.length && (
        <p class="muted">No workflows yet: `agentmesh workflows create FILE.yaml` makes one.</p>
      )}
    </main>
  );
}
