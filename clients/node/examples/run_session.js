// Runs a session against a running mesh, prints every event as one JSON line, drops the
// connection on purpose after a few events, and resumes from the last seq it saw.
//
//   AGENTMESH_API_KEY=... node examples/run_session.js [--target 127.0.0.1:50051]
//       [--goal "..."] [--disconnect-after 3]
//
// Exit code 0 when the session reached a terminal event and the seqs were gapless from 1.

import { parseArgs } from "node:util";
import { AgentmeshClient, TERMINAL } from "../src/agentmesh.js";

const { values } = parseArgs({
  options: {
    target: { type: "string", default: process.env.AGENTMESH_TARGET ?? "127.0.0.1:50051" },
    goal: { type: "string", default: "Say hello to the team." },
    route: { type: "string", default: "default" },
    "disconnect-after": { type: "string", default: "3" },
  },
});
const apiKey = process.env.AGENTMESH_API_KEY;
if (!apiKey) {
  console.error("error: set AGENTMESH_API_KEY");
  process.exit(2);
}

const mesh = new AgentmeshClient(values.target, { apiKey });
const disconnectAfter = Number(values["disconnect-after"]);
const seen = [];
let terminal = null;
try {
  const session = await mesh.createSession({
    goal: values.goal,
    strategy: "STRATEGY_ROUND_ROBIN",
    limits: { max_rounds: 2 },
    inlineAgents: [
      { name: "greeter", type: "AGENT_TYPE_CUSTOM", model: { route: values.route },
        prompts: { system: "You greet people warmly." } },
      { name: "critic", type: "AGENT_TYPE_CRITIC", model: { route: values.route } },
    ],
  });
  console.error(`session ${session.name}`);

  // First connection: Run, cut deliberately after a few events (the run goes on server-side).
  let call;
  for await (const event of mesh.run(session.name, { onCall: (c) => { call = c; } })) {
    seen.push(event.seq);
    console.log(JSON.stringify({ seq: event.seq, payload: event.payload, agent: event.agent }));
    if (seen.length === disconnectAfter) {
      call.cancel();
      console.error(`disconnected after seq ${event.seq}; resuming`);
      break;
    }
    if (TERMINAL.has(event.payload)) terminal = event.payload;
  }
  // Second connection: resume from the last seq seen.
  if (!terminal) {
    for await (const event of mesh.events(session.name, { afterSeq: seen.at(-1) ?? 0 })) {
      seen.push(event.seq);
      console.log(JSON.stringify({ seq: event.seq, payload: event.payload, agent: event.agent }));
      if (TERMINAL.has(event.payload)) terminal = event.payload;
    }
  }
} catch (error) {
  console.error(`error: ${error.message}`);
  process.exit(1);
} finally {
  mesh.close();
}

const gapless = seen.every((seq, i) => seq === i + 1);
console.error(`events: ${seen.length}, gapless: ${gapless}, terminal: ${terminal}`);
process.exit(terminal && gapless ? 0 : 1);
