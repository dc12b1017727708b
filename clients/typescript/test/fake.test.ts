// The client against a fake OrchestratorService on port 0 (real gRPC over HTTP/2, served by
// connect-node): rich status details decoded, retries of idempotent calls, request ids, and
// every public RPC present as a method.

import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  AgentmeshClient,
  AgentmeshError,
  FailedPrecondition,
  OrchestratorService,
  ResourceExhausted,
  Unavailable,
} from "@agentmesh/client";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "@agentmesh/client/gen/google/rpc/error_details_pb";

const calls: { method: string; requestId?: string; authorization: string | null }[] = [];
let unavailableLeft = 0;

const impl: Partial<ServiceImpl<typeof OrchestratorService>> = {
  getSession(request, context) {
    calls.push({ method: "getSession", authorization: context.requestHeader.get("authorization") });
    if (unavailableLeft-- > 0) {
      throw new ConnectError("restarting", Code.Unavailable, undefined, [
        { desc: RetryInfoSchema, value: { retryDelay: create(DurationSchema, { nanos: 50_000_000 }) } },
      ]);
    }
    return { session: { name: request.name, goal: "g" } };
  },
  cancelSession(request, context) {
    calls.push({ method: "cancelSession", requestId: request.requestId, authorization: null });
    void context;
    throw new ConnectError("tenant over its limit", Code.ResourceExhausted, undefined, [
      { desc: ErrorInfoSchema, value: { reason: "RATE_LIMITED", domain: "orchestrator.agentmesh", metadata: { limit: "60" } } },
      { desc: RetryInfoSchema, value: { retryDelay: create(DurationSchema, { seconds: 2n, nanos: 500_000_000 }) } },
    ]);
  },
  endSession(request) {
    calls.push({ method: "endSession", requestId: request.requestId, authorization: null });
    throw new ConnectError("bad", Code.FailedPrecondition, undefined, [
      { desc: ErrorInfoSchema, value: { reason: "SESSION_ENDED", domain: "orchestrator.agentmesh" } },
      { desc: BadRequestSchema, value: { fieldViolations: [{ field: "session", description: "has ended" }] } },
    ]);
  },
};

let server: http2.Http2Server;
let mesh: AgentmeshClient;

before(async () => {
  server = http2.createServer(
    connectNodeAdapter({ routes: (router: ConnectRouter) => router.service(OrchestratorService, impl) }),
  );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  mesh = new AgentmeshClient(`127.0.0.1:${port}`, { apiKey: "k-123", timeoutMs: 5_000 });
});

after(async () => {
  mesh.close();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

test("every public RPC of OrchestratorService is a client method", () => {
  const missing = OrchestratorService.methods
    .map((m) => m.localName)
    .filter((name) => typeof (mesh as unknown as Record<string, unknown>)[name] !== "function");
  assert.deepEqual(missing, []);
  assert.ok(OrchestratorService.methods.length >= 40);
});

test("the API key is sent as a bearer token", async () => {
  calls.length = 0;
  const reply = await mesh.getSession({ name: "sessions/s1" });
  assert.equal(reply.session?.name, "sessions/s1");
  assert.equal(calls[0]?.authorization, "Bearer k-123");
});

test("an idempotent call is retried after UNAVAILABLE, waiting at least as long as RetryInfo says", async () => {
  calls.length = 0;
  unavailableLeft = 2;
  const started = Date.now();
  const reply = await mesh.getSession({ name: "sessions/s2" });
  assert.equal(reply.session?.name, "sessions/s2");
  assert.equal(calls.length, 3);
  assert.ok(Date.now() - started >= 100, "waited 50 ms twice");
});

test("retries stop at maxRetries with the typed error and its RetryInfo", async () => {
  unavailableLeft = 10;
  const strict = new AgentmeshClient(`127.0.0.1:${(server.address() as AddressInfo).port}`, { maxRetries: 1 });
  try {
    const error = await strict.getSession({ name: "sessions/s3" }).catch((e: unknown) => e);
    assert.ok(error instanceof Unavailable);
    assert.equal(error.retryAfterMs, 50);
    assert.equal(error.reason, "UNAVAILABLE", "no ErrorInfo: the code's name");
  } finally {
    unavailableLeft = 0;
    strict.close();
  }
});

test("ErrorInfo, RetryInfo and BadRequest are decoded into the typed error", async () => {
  const exhausted = await mesh.cancelSession({ session: "sessions/s4" }).catch((e: unknown) => e);
  assert.ok(exhausted instanceof ResourceExhausted && exhausted instanceof AgentmeshError);
  assert.equal(exhausted.code, Code.ResourceExhausted);
  assert.equal(exhausted.reason, "RATE_LIMITED");
  assert.equal(exhausted.domain, "orchestrator.agentmesh");
  assert.deepEqual(exhausted.metadata, { limit: "60" });
  assert.equal(exhausted.retryAfterMs, 2500);
  assert.equal(exhausted.message, "RESOURCE_EXHAUSTED: tenant over its limit");

  const ended = await mesh.endSession({ session: "sessions/s4" }).catch((e: unknown) => e);
  assert.ok(ended instanceof FailedPrecondition);
  assert.equal(ended.reason, "SESSION_ENDED");
  assert.deepEqual(ended.fieldViolations, [{ field: "session", description: "has ended" }]);
});

test("calls carrying a request_id get a fresh one unless the caller gives one", async () => {
  calls.length = 0;
  await mesh.cancelSession({ session: "sessions/s5" }).catch(() => undefined);
  await mesh.endSession({ session: "sessions/s5", requestId: "mine" }).catch(() => undefined);
  const [generated, given] = calls.map((c) => c.requestId);
  assert.match(generated ?? "", /^[0-9a-f-]{36}$/);
  assert.equal(given, "mine");
});
