// Providers: the health and circuit-breaker state of every deployment of every route
// (GetProviderStatus), polled every five seconds.

import { Badge, usePoll } from "./common";
import { get } from "./api";
import { num } from "./format";
import type { ProviderStatus } from "./types";

const POLL_MS = 5000;

function remaining(value: number | string | undefined): string {
  const count = num(value);
  return count < 0 ? "unlimited" : count.toLocaleString("en-US");
}

export function ProvidersPage() {
  const { value, error, updated } = usePoll(
    () => get<{ providers?: ProviderStatus[] }>("/v1/providers"),
    POLL_MS,
  );
  const providers = value?.providers ?? [];
  return (
    <main>
      <div class="toolbar">
        <h2>Providers</h2>
        <span class="muted small">
          {updated ? `live · updated ${new Date(updated).toLocaleTimeString()}` : "loading…"}
        </span>
      </div>
      {error && (
        <p class="error" data-testid="providers-error">
          {error}
        </p>
      )}
      <table class="data" data-testid="providers-table">
        <thead>
          <tr>
            <th>Route</th>
            <th>Deployment</th>
            <th>Provider</th>
            <th>Model</th>
            <th>Health</th>
            <th>Circuit</th>
            <th class="num">Requests left / min</th>
            <th class="num">Tokens left / min</th>
          </tr>
        </thead>
        <tbody>
          {providers.map((p) => (
            <tr key={`${p.route}/${p.deployment}`} data-testid={`provider-row-${p.deployment}`}>
              <td>{p.route}</td>
              <td class="mono">{p.deployment}</td>
              <td>{p.provider}</td>
              <td class="mono">{p.model}</td>
              <td>
                <Badge value={p.health} prefix="DEPLOYMENT_HEALTH_" testId="provider-health" />
              </td>
              <td>
                <Badge value={p.circuitState} prefix="CIRCUIT_STATE_" testId="provider-circuit" />
              </td>
              <td class="num">{remaining(p.rpmRemaining)}</td>
              <td class="num">{remaining(p.tpmRemaining)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {value && !providers.length && <p class="muted">No deployments are configured.</p>}
      <p class="muted small">
        Health comes from recent calls; an open circuit skips the deployment until its
        cooldown ends, then one probe call is let through (half open).
      </p>
    </main>
  );
}
