// Sign-in: the user pastes an API key; it is tried once against the API and then kept in
// sessionStorage for this tab only.

import { useState } from "preact/hooks";

import { ApiError, call, setApiKey } from "./api";

interface Props {
  /** Why the user is here again (a key the edge refused), if that is why. */
  notice?: string;
  onSignedIn: () => void;
}

export function SignIn({ notice, onSignedIn }: Props) {
  const [key, setKey] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    const trimmed = key.trim();
    if (!trimmed) {
      setError("Paste an API key first.");
      return;
    }
    setBusy(true);
    setError("");
    try {
      await call("GET", "/v1/sessions", { query: { page_size: 1 }, key: trimmed });
      setApiKey(trimmed);
      onSignedIn();
    } catch (failure) {
      if (failure instanceof ApiError && failure.httpStatus === 401) {
        const reason = failure.reason ? ` (${failure.reason})` : "";
        setError(`This API key was refused: ${failure.message}${reason}.`);
      } else if (failure instanceof ApiError) {
        setError(`The edge answered ${failure.httpStatus}: ${failure.message}`);
      } else {
        setError(`Could not reach the edge: ${String(failure)}`);
      }
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="sign-in">
      <h1>agentmesh</h1>
      <p class="muted">Monitoring for the sessions, agents and providers of your tenant.</p>
      {notice && (
        <p class="notice" data-testid="sign-in-notice">
          {notice}
        </p>
      )}
      <form onSubmit={submit}>
        <label for="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autoComplete="off"
          placeholder="amk_…"
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
          data-testid="api-key-input"
        />
        <button type="submit" disabled={busy} data-testid="sign-in-button">
          {busy ? "Checking…" : "Sign in"}
        </button>
      </form>
      {error && (
        <p class="error" role="alert" data-testid="sign-in-error">
          {error}
        </p>
      )}
      <p class="muted small">
        <code>agentmesh up</code> writes a key to <code>.data/api-key</code>. It is kept in this tab only
        (sessionStorage) and sent as <code>Authorization: Bearer</code>.
      </p>
    </main>
  );
}
