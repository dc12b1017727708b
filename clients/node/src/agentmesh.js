// A small Node client for agentmesh's public API (agentmesh.orchestrator.v1.OrchestratorService),
// loaded at run time from the repository's .proto files with @grpc/proto-loader.
//
//   const mesh = new AgentmeshClient("127.0.0.1:50051", { apiKey: process.env.AGENTMESH_API_KEY });
//   const session = await mesh.createSession({ goal: "Plan a picnic", inlineAgents: [...] });
//   for await (const event of mesh.run(session.name)) console.log(event.seq, event.payload);
//
// `run` and `events` resume after a dropped connection with StreamSession(after_seq = last seq
// seen), so a caller sees every event exactly once, in order, until the terminal event.

import path from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO_ROOT = path.resolve(here, "../../../protos");
export const TERMINAL = new Set(["session_completed", "session_failed", "session_cancelled"]);
const RECONNECTABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL]);

function loadService() {
  const definition = protoLoader.loadSync("agentmesh/orchestrator/v1/orchestrator.proto", {
    includeDirs: [PROTO_ROOT, path.join(PROTO_ROOT, "third_party/googleapis")],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition);
  return loaded.agentmesh.orchestrator.v1.OrchestratorService;
}

function randomId() {
  return Math.random().toString(16).slice(2) + Date.now().toString(16);
}

export class AgentmeshError extends Error {
  constructor(serviceError) {
    super(`${grpc.status[serviceError.code] ?? serviceError.code}: ${serviceError.details}`);
    this.code = serviceError.code;
    this.details = serviceError.details;
  }
}

export class AgentmeshClient {
  constructor(target, { apiKey, credentials = grpc.credentials.createInsecure(), timeoutMs = 30000 } = {}) {
    const Service = loadService();
    this.stub = new Service(target, credentials);
    this.metadata = new grpc.Metadata();
    this.metadata.set("authorization", `Bearer ${apiKey}`);
    this.timeoutMs = timeoutMs;
  }

  close() {
    this.stub.close();
  }

  #unary(method, request) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      this.stub[method](request, this.metadata, { deadline }, (error, reply) => {
        if (error) reject(new AgentmeshError(error));
        else resolve(reply);
      });
    });
  }

  async createSession({ goal, agents = [], inlineAgents = [], strategy = "STRATEGY_UNSPECIFIED", limits = {}, metadata = {} }) {
    const reply = await this.#unary("CreateSession", {
      session: { goal, agents, inline_agents: inlineAgents, strategy, limits, metadata },
      request_id: randomId(),
    });
    return reply.session;
  }

  async getSession(name) {
    return this.#unary("GetSession", { name });
  }

  async cancelSession(session) {
    return (await this.#unary("CancelSession", { session, request_id: randomId() })).session;
  }

  /** Stream a server call's events; yields [event] and stops at the terminal event. */
  async *#events(call) {
    try {
      for await (const reply of call) {
        const event = reply.event;
        yield event;
        if (TERMINAL.has(event.payload)) return;
      }
    } finally {
      call.cancel();
    }
  }

  /** Run a session; resumes from the last seq if the connection drops. */
  async *run(session, { onCall } = {}) {
    const call = this.stub.Run({ session, request_id: randomId() }, this.metadata);
    if (onCall) onCall(call);
    let last = 0;
    try {
      for await (const event of this.#events(call)) {
        last = event.seq;
        yield event;
        if (TERMINAL.has(event.payload)) return;
      }
    } catch (error) {
      if (!RECONNECTABLE.has(error.code) && error.code !== grpc.status.CANCELLED) {
        throw new AgentmeshError(error);
      }
    }
    yield* this.events(session, { afterSeq: last });
  }

  /** Replay a session's events after `afterSeq`, then follow it live to its end. */
  async *events(session, { afterSeq = 0, attempts = 8 } = {}) {
    let last = afterSeq;
    for (let attempt = 0; ; attempt++) {
      const call = this.stub.StreamSession({ session, after_seq: last }, this.metadata);
      try {
        for await (const event of this.#events(call)) {
          if (event.seq <= last) continue;
          last = event.seq;
          attempt = 0;
          yield event;
          if (TERMINAL.has(event.payload)) return;
        }
        return;
      } catch (error) {
        if (!RECONNECTABLE.has(error.code) || attempt >= attempts) throw new AgentmeshError(error);
        await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** attempt, 5000)));
      }
    }
  }
}
