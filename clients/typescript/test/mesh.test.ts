// The client against a running mesh (tests/e2e/test_typescript_client.py starts one with a
// scripted provider and sets AGENTMESH_TARGET and AGENTMESH_API_KEY). Without them the tests
// are skipped, and that pytest file fails on any skip.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  AgentType,
  AgentmeshClient,
  Cancelled,
  DeadlineExceeded,
  FailedPrecondition,
  InvalidArgument,
  NotFound,
  type SessionEvent,
  Strategy,
  Unauthenticated,
  isTerminal,
} from "@agentmesh/client";
import { startProxy } from "./proxy.js";

const target = process.env.AGENTMESH_TARGET ?? "";
const apiKey = process.env.AGENTMESH_API_KEY ?? "";
const skip = target && apiKey ? false : "set AGENTMESH_TARGET and AGENTMESH_API_KEY";

/** A round-robin session of two inline agents on the scripted provider, two rounds. */
async function roundRobin(mesh: AgentmeshClient, goal = "Say hello to the team."): Promise<string> {
  const { session } = await mesh.createSession({
    session: {
      goal,
      strategy: Strategy.ROUND_ROBIN,
      limits: { maxRounds: 2 },
      inlineAgents: [
        {
          name: "greeter",
          type: AgentType.CUSTOM,
          model: { route: "default" },
          prompts: { system: "You greet people warmly." },
        },
        { name: "critic", type: AgentType.CRITIC, model: { route: "default" } },
      ],
    },
  });
  assert.ok(session && session.name.startsWith("sessions/"), "a session name");
  return session.name;
}

/** What a whole run must look like: gapless seqs from 1, one terminal event, last. */
function assertWholeRun(events: SessionEvent[]): void {
  assert.deepEqual(
    events.map((e) => e.seq),
    events.map((_, i) => BigInt(i + 1)),
    "gapless seqs from 1",
  );
  assert.deepEqual(
    events.filter(isTerminal).map((e) => e.payload.case),
    ["sessionCompleted"],
  );
  assert.equal(events.at(-1)?.payload.case, "sessionCompleted");
  const speakers = events.filter((e) => e.payload.case === "messageCompleted").map((e) => e.agent);
  assert.deepEqual(speakers, ["agents/greeter", "agents/critic", "agents/greeter", "agents/critic"]);
}

describe("against a running mesh", { skip }, () => {
  let mesh: AgentmeshClient;
  before(() => {
    mesh = new AgentmeshClient(target, { apiKey, timeoutMs: 20_000 });
  });
  after(() => mesh.close());

  test("run yields every event of a round-robin session once, ending with the terminal one", async () => {
    const events: SessionEvent[] = [];
    for await (const event of mesh.run(await roundRobin(mesh))) events.push(event);
    assertWholeRun(events);
  });

  test("a connection cut mid-run is resumed from the last seq, inside the same iteration", async () => {
    const proxy = await startProxy(target);
    const viaProxy = new AgentmeshClient(proxy.target, { apiKey });
    try {
      const session = await roundRobin(viaProxy);
      const events: SessionEvent[] = [];
      for await (const event of viaProxy.run(session, { timeoutMs: 60_000 })) {
        events.push(event);
        if (events.length === 3) proxy.cut();
      }
      assertWholeRun(events);
      assert.ok(events.length > 3, "the run went on after the cut");
      assert.ok(proxy.connections() >= 2, "the client connected again");
    } finally {
      viaProxy.close();
      await proxy.close();
    }
  });

  test("events resumes an abandoned run from afterSeq", async () => {
    const session = await roundRobin(mesh);
    const events: SessionEvent[] = [];
    for await (const event of mesh.run(session)) {
      events.push(event);
      if (events.length === 3) break; // disconnect on purpose; the run goes on server-side
    }
    for await (const event of mesh.events(session, { afterSeq: events.at(-1)!.seq })) {
      events.push(event);
    }
    assertWholeRun(events);
  });

  test("workflows: a token fires a transition and its events are followed from afterSeq", async () => {
    const workflowId = `wf-${Date.now().toString(36)}`;
    const { workflow } = await mesh.createWorkflow({
      workflowId,
      workflow: {
        places: [{ id: "todo" }, { id: "done" }],
        transitions: [{ id: "finish", fromPlaces: ["todo"], toPlace: "done", rules: ["exists(data.n)"] }],
      },
    });
    const { token } = await mesh.createToken({ parent: workflow!.name, token: { data: { n: 1 } } });
    const fired = await mesh.fireTransition({ token: token!.name, transition: "finish" });
    assert.equal(fired.fired, true);
    assert.equal(fired.token?.place, "done");
    const again = await mesh.fireTransition({ token: token!.name, transition: "finish" }).catch((e: unknown) => e);
    assert.ok(again instanceof FailedPrecondition, String(again));
    assert.equal(again.reason, "TRANSITION_NOT_ENABLED");
    const kinds: string[] = [];
    for await (const event of mesh.workflowEvents(workflow!.name, { afterSeq: 1 })) {
      kinds.push(String(event.payload.case));
      if (event.seq === fired.eventSeq) break;
    }
    assert.deepEqual(kinds, ["transitionStarted", "transitionCompleted", "tokenMoved"]);
    const { workflow: counted } = await mesh.getWorkflow({ name: workflow!.name });
    assert.deepEqual({ ...counted!.tokenCounts }, { done: 1n });
  });

  test("an empty goal is InvalidArgument naming session.goal", async () => {
    const error = await mesh.createSession({ session: { goal: "" } }).catch((e: unknown) => e);
    assert.ok(error instanceof InvalidArgument, String(error));
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.reason, /^[A-Z][A-Z0-9_]+$/);
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["session.goal"],
    );
    assert.ok(error.fieldViolations[0]!.description);
  });

  test("a missing session is NotFound with the service's reason", async () => {
    const error = await mesh.getSession({ name: "sessions/does-not-exist" }).catch((e: unknown) => e);
    assert.ok(error instanceof NotFound, String(error));
    assert.equal(error.reason, "SESSION_NOT_FOUND");
    assert.ok(error.domain, "ErrorInfo domain");
  });

  test("a wrong API key is Unauthenticated", async () => {
    const stranger = new AgentmeshClient(target, { apiKey: "not-a-key" });
    try {
      await assert.rejects(stranger.listSessions({}), Unauthenticated);
    } finally {
      stranger.close();
    }
  });

  test("a stream's deadline ends it with DeadlineExceeded", async () => {
    const session = await roundRobin(mesh); // never run: StreamSession waits for events
    const started = Date.now();
    const drain = async () => {
      for await (const _ of mesh.events(session, { timeoutMs: 300 }));
    };
    await assert.rejects(drain(), DeadlineExceeded);
    assert.ok(Date.now() - started < 5_000, "the deadline was kept");
  });

  test("aborting the signal cancels a running stream", async () => {
    const session = await roundRobin(mesh, "Say hello slowly."); // each answer takes ~30 s
    const controller = new AbortController();
    const seen: SessionEvent[] = [];
    const started = Date.now();
    const drain = async () => {
      for await (const event of mesh.run(session, { signal: controller.signal })) {
        seen.push(event);
        if (event.payload.case === "messageStarted") controller.abort();
      }
    };
    await assert.rejects(drain(), Cancelled);
    assert.ok(seen.length >= 1 && Date.now() - started < 10_000, "cancelled before the slow answer");
    await mesh.cancelSession({ session });
  });
});
