// The shell: sign-in when there is no key (or the edge refused it), else the navigation and
// the page the hash names.

import { useEffect, useState } from "preact/hooks";

import { apiKey, onKeyRefused, setApiKey } from "./api";
import { MemoryPage } from "./memory";
import { ProvidersPage } from "./providers";
import { href, navigate, useRoute } from "./router";
import { SessionPage, type UiConfig } from "./session";
import { SessionsPage } from "./sessions";
import { SignIn } from "./signin";
import { WorkflowsPage } from "./workflows";

async function loadConfig(): Promise<UiConfig> {
  try {
    const response = await fetch("ui/config.json");
    if (response.ok) return (await response.json()) as UiConfig;
  } catch {
    // No config: the UI works without trace links.
  }
  return { traceUrlTemplate: null };
}

export function App() {
  const route = useRoute();
  const [signedIn, setSignedIn] = useState(() => apiKey() !== null);
  const [notice, setNotice] = useState("");
  const [config, setConfig] = useState<UiConfig>({ traceUrlTemplate: null });

  useEffect(() => {
    void loadConfig().then(setConfig);
    return onKeyRefused((error) => {
      setApiKey(null);
      setSignedIn(false);
      setNotice(`Signed out: the edge refused the API key (${error.message}).`);
    });
  }, []);

  if (!signedIn) {
    return (
      <SignIn
        notice={notice}
        onSignedIn={() => {
          setNotice("");
          setSignedIn(true);
          if (!route.segments.length) navigate("/sessions");
        }}
      />
    );
  }

  const [page = "sessions", id] = route.segments;
  let content;
  if (page === "sessions" && id) content = <SessionPage id={id} config={config} key={id} />;
  else if (page === "memory") content = <MemoryPage />;
  else if (page === "providers") content = <ProvidersPage />;
  else if (page === "workflows") content = <WorkflowsPage />;
  else content = <SessionsPage route={route} />;

  const tab = (name: string, label: string) => (
    <a href={href(name)} class={page === name ? "active" : ""} data-testid={`nav-${name}`}>
      {label}
    </a>
  );
  return (
    <>
      <nav class="top">
        <span class="brand">agentmesh</span>
        {tab("sessions", "Sessions")}
        {tab("memory", "Agent memory")}
        {tab("workflows", "Workflows")}
        {tab("providers", "Providers")}
        <span class="spacer" />
        <button
          class="link"
          onClick={() => {
            setApiKey(null);
            setSignedIn(false);
          }}
          data-testid="sign-out"
        >
          Sign out
        </button>
      </nav>
      {content}
    </>
  );
}
