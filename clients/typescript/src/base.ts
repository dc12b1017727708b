/**
 * What the Node and the browser clients share: every public RPC of
 * `agentmesh.orchestrator.v1.OrchestratorService`, and of `agentmesh.workflow.v1`'s
 * `WorkflowService` and `ScheduleService`, over a connect transport (gRPC over HTTP/2 in
 * Node, gRPC-web through the web edge in browsers), with the API key sent as
 * `authorization: Bearer <key>`. Nothing here needs Node.
 *
 *     const mesh = new AgentmeshClient("127.0.0.1:50051", { apiKey });
 *     const { session } = await mesh.createSession({ session: { goal: "Plan a picnic", ... } });
 *     for await (const event of mesh.run(session!.name)) console.log(event.seq, event.payload.case);
 *
 * Unary methods take the request as a plain object (protobuf-es init shape) and resolve to the
 * response message. `run`, `execute` and `events` are async iterables of `SessionEvent` that
 * survive dropped connections: they reconnect with StreamSession(after_seq = last seq seen), so
 * each event is delivered once, in seq order, and they stop after the terminal event.
 * `workflowEvents` follows a workflow's (or one token's) events the same way, for as long as
 * the caller reads.
 */

import type { DescMethod, MessageInitShape } from "@bufbuild/protobuf";
import { Code, type Client, ConnectError, type Transport, createClient } from "@connectrpc/connect";
import type { SessionEvent } from "./gen/agentmesh/common/v1/events_pb.js";
import {
  type ExecuteRequestSchema,
  OrchestratorService,
} from "./gen/agentmesh/orchestrator/v1/orchestrator_pb.js";
import { ScheduleService } from "./gen/agentmesh/workflow/v1/schedule_pb.js";
import type { WorkflowEvent } from "./gen/agentmesh/workflow/v1/workflow_pb.js";
import { WorkflowService } from "./gen/agentmesh/workflow/v1/workflow_service_pb.js";
import { type AgentmeshError, FailedPrecondition, errorFor, toAgentmeshError } from "./errors.js";
import { backoffMs, grpcTimeout, isTerminal, randomUUID, remainingMs, sleep, streamSignal } from "./events.js";

/** Options of one call. */
export interface CallOptions {
  /**
   * Deadline in milliseconds. Unary calls default to the client's `timeoutMs`; streams have
   * none unless given, and then it bounds the whole stream, reconnects included.
   */
  readonly timeoutMs?: number;
  /** Aborting it cancels the call (the stream, or the wait between reconnects). */
  readonly signal?: AbortSignal;
  /** Extra request metadata. */
  readonly headers?: Readonly<Record<string, string>>;
}

/** Options of `events` / `streamSession`. */
export interface EventsOptions extends CallOptions {
  /** Deliver events with a seq greater than this; 0 (the default) replays from the start. */
  readonly afterSeq?: bigint | number;
}

/** Options of `workflowEvents`. */
export interface WorkflowEventsOptions extends EventsOptions {
  /** Only this token's events, "workflows/{workflow_id}/tokens/{token_id}". */
  readonly token?: string;
}

/** How the client behaves, whatever carries its calls. */
export interface BaseClientOptions {
  /** The API key, sent as `authorization: Bearer <key>` on every call. */
  readonly apiKey?: string;
  /** Default deadline of unary calls, in milliseconds (30 000). */
  readonly timeoutMs?: number;
  /** Retries of an idempotent unary call that failed UNAVAILABLE (3). */
  readonly maxRetries?: number;
  /** Reconnects of a stream in a row without a new event before it gives up (8). */
  readonly reconnectAttempts?: number;
}

type Rpcs = Client<typeof OrchestratorService>;
type WorkflowRpcs = Client<typeof WorkflowService>;
type ScheduleRpcs = Client<typeof ScheduleService>;
/** The streaming RPCs, which the client wraps as resumable iterables of events. */
type Streams = "run" | "step" | "execute" | "streamSession";
type WorkflowStreams = "streamWorkflow" | "streamToken";
/** The public services whose unary RPCs become the client's methods. */
const SERVICES = [OrchestratorService, WorkflowService, ScheduleService] as const;
type Rpc = (request: unknown, options?: RpcOptions) => unknown;
/** What each underlying connect call is given. */
interface RpcOptions {
  timeoutMs: number | undefined;
  signal: AbortSignal | undefined;
  headers: Record<string, string>;
}
type Opener = (call: RpcOptions) => AsyncIterable<{ event?: SessionEvent }>;

/**
 * Codes after which a stream reconnects: the connection dropped or the stream was reset. A
 * dropped socket reaches connect-node as an HTTP/2 stream closed with CANCEL, so CANCELLED is
 * one too, unless it is the caller's own AbortSignal. A web edge that cut off a slow reader
 * (RESOURCE_EXHAUSTED, reason SLOW_CONSUMER) is resumed too.
 */
const RECONNECTABLE = new Set([Code.Unavailable, Code.Internal, Code.Canceled]);

function isDropped(error: AgentmeshError): boolean {
  return RECONNECTABLE.has(error.code) || error.reason === "SLOW_CONSUMER";
}

// Declaration merging gives the class one typed method per unary and client-streaming RPC;
// they are installed on the prototype below from the service descriptor, so a new RPC in the
// protos becomes a method as soon as the code is regenerated.
// biome-ignore lint: an interface merged into the class on purpose
export interface BaseClient
  extends Omit<Rpcs, Streams>,
    Omit<WorkflowRpcs, WorkflowStreams>,
    ScheduleRpcs {}

/**
 * The client over a transport of any kind; {@link AgentmeshClient} (Node) and the browser
 * entry's `createBrowserClient` build it with theirs.
 */
export class BaseClient {
  readonly #rpc: Rpcs;
  readonly #workflows: WorkflowRpcs;
  /** Each service's connect client, by the service's full name. */
  readonly #clients: Record<string, Record<string, Rpc>>;
  readonly #headers: Readonly<Record<string, string>>;
  readonly #timeoutMs: number;
  readonly #maxRetries: number;
  readonly #reconnectAttempts: number;

  constructor(transport: Transport, options: BaseClientOptions = {}) {
    this.#rpc = createClient(OrchestratorService, transport);
    this.#workflows = createClient(WorkflowService, transport);
    this.#clients = {
      [OrchestratorService.typeName]: this.#rpc as unknown as Record<string, Rpc>,
      [WorkflowService.typeName]: this.#workflows as unknown as Record<string, Rpc>,
      [ScheduleService.typeName]: createClient(ScheduleService, transport) as unknown as Record<string, Rpc>,
    };
    this.#headers = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {};
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#maxRetries = options.maxRetries ?? 3;
    this.#reconnectAttempts = options.reconnectAttempts ?? 8;
  }

  /** Release the connection, if the transport holds one; safe to call twice. */
  close(): void {}

  static {
    for (const method of SERVICES.flatMap((service) => service.methods)) {
      if (method.methodKind === "unary") {
        Object.defineProperty(BaseClient.prototype, method.localName, {
          value: function (this: BaseClient, request: object, options?: CallOptions) {
            return this.#unary(method, request, options);
          },
        });
      } else if (method.methodKind === "client_streaming") {
        Object.defineProperty(BaseClient.prototype, method.localName, {
          value: function (this: BaseClient, requests: AsyncIterable<object>, options?: CallOptions) {
            return this.#clientStream(method, requests, options);
          },
        });
      }
    }
  }

  /**
   * Run a session to its end (Run), yielding every event once, in seq order, up to and
   * including the terminal one. A dropped connection is resumed with StreamSession.
   */
  run(session: string, options: CallOptions = {}): AsyncIterable<SessionEvent> {
    const requestId = randomUUID();
    return this.#resumable(session, 0n, options, (call) => this.#rpc.run({ session, requestId }, call));
  }

  /** Replay a session's events after `afterSeq`, then follow it live to its end (resumable). */
  events(session: string, options: EventsOptions = {}): AsyncIterable<SessionEvent> {
    return this.#resumable(session, BigInt(options.afterSeq ?? 0), options, undefined);
  }

  /** StreamSession in its request form; the same as {@link events}. */
  streamSession(
    request: { session: string; afterSeq?: bigint | number },
    options: CallOptions = {},
  ): AsyncIterable<SessionEvent> {
    return this.events(request.session, { ...options, afterSeq: request.afterSeq ?? 0 });
  }

  /**
   * Execute: create a session for a task and run it. Resumed after a dropped connection only
   * when `cancelOnDisconnect` is false (by default the server cancels it when the stream drops).
   */
  execute(
    request: MessageInitShape<typeof ExecuteRequestSchema>,
    options: CallOptions = {},
  ): AsyncIterable<SessionEvent> {
    const init = { ...request, requestId: request.requestId || randomUUID() };
    const resumable = init.cancelOnDisconnect === false;
    return this.#resumable("", 0n, options, (call) => this.#rpc.execute(init, call), resumable);
  }

  /**
   * A workflow's events after `afterSeq` (StreamWorkflow), or one token's (StreamToken), then
   * the live ones for as long as the caller reads; a dropped connection is resumed after the
   * last seq seen, so each event arrives once, in order.
   */
  async *workflowEvents(workflow: string, options: WorkflowEventsOptions = {}): AsyncIterable<WorkflowEvent> {
    const deadline = deadlineOf(options.timeoutMs);
    let last = BigInt(options.afterSeq ?? 0);
    let attempts = 0;
    while (true) {
      const { call, dispose } = this.#streamCall(options, deadline);
      try {
        const stream = options.token
          ? this.#workflows.streamToken({ token: options.token, afterSeq: last }, call)
          : this.#workflows.streamWorkflow({ workflow, afterSeq: last }, call);
        for await (const { event } of stream) {
          if (event === undefined) continue;
          stopIfOver(options.signal, deadline);
          if (event.seq <= last) continue;
          last = event.seq;
          attempts = 0;
          yield event;
        }
        return;
      } catch (caught) {
        const error = toAgentmeshError(caught);
        attempts++;
        if (!isDropped(error) || options.signal?.aborted || attempts > this.#reconnectAttempts) throw error;
        await this.#wait(backoffMs(attempts, error.retryAfterMs), deadline, options.signal, error);
      } finally {
        dispose();
      }
    }
  }

  /** One iteration of every agent (Step); its events only, not resumed. */
  async *step(session: string, options: CallOptions = {}): AsyncIterable<SessionEvent> {
    const requestId = randomUUID();
    const { call, dispose } = this.#streamCall(options, deadlineOf(options.timeoutMs));
    try {
      for await (const reply of this.#rpc.step({ session, requestId }, call)) {
        if (reply.event) yield reply.event;
      }
    } catch (error) {
      throw toAgentmeshError(error);
    } finally {
      dispose();
    }
  }

  /** Options of one stream attempt: its deadline as an unref'd timer and `grpc-timeout`. */
  #streamCall(options: CallOptions, deadline: number | undefined): { call: RpcOptions; dispose: () => void } {
    const left = remainingMs(deadline);
    const { headers } = this.#callOptions(options, left);
    const { signal, dispose } = streamSignal(options.signal, deadline);
    if (left !== undefined) headers["grpc-timeout"] = grpcTimeout(left);
    return { call: { timeoutMs: undefined, signal, headers }, dispose };
  }

  #callOptions(options: CallOptions, timeoutMs: number | undefined): RpcOptions {
    if (timeoutMs !== undefined && timeoutMs <= 0) {
      throw errorFor({ code: Code.DeadlineExceeded, message: "the call's deadline has passed" });
    }
    return {
      timeoutMs,
      signal: options.signal,
      headers: { ...this.#headers, ...options.headers },
    };
  }

  /** A unary call with the client's deadline; idempotent ones are retried when UNAVAILABLE. */
  async #unary(method: DescMethod, request: object, options: CallOptions = {}): Promise<unknown> {
    const carriesRequestId = method.input.fields.some((field) => field.name === "request_id");
    const init = carriesRequestId ? withRequestId(request) : request;
    const idempotent = carriesRequestId || /^(Get|List|Search)/.test(method.name);
    const deadline = deadlineOf(options.timeoutMs ?? this.#timeoutMs);
    const call = this.#callable(method);
    for (let attempt = 1; ; attempt++) {
      try {
        return await call(init, this.#callOptions(options, remainingMs(deadline)));
      } catch (caught) {
        const error = toAgentmeshError(caught);
        if (!idempotent || error.code !== Code.Unavailable || attempt > this.#maxRetries) throw error;
        await this.#wait(backoffMs(attempt, error.retryAfterMs), deadline, options.signal, error);
      }
    }
  }

  #callable(method: DescMethod): Rpc {
    const client = this.#clients[method.parent.typeName] as Record<string, Rpc>;
    return client[method.localName] as Rpc;
  }

  async #clientStream(method: DescMethod, requests: AsyncIterable<object>, options: CallOptions = {}) {
    const call = this.#callable(method);
    try {
      return await call(requests, this.#callOptions(options, options.timeoutMs ?? this.#timeoutMs));
    } catch (error) {
      throw toAgentmeshError(error);
    }
  }

  /** Wait before a retry, unless the deadline would pass first (then `error` stands). */
  async #wait(ms: number, deadline: number | undefined, signal: AbortSignal | undefined, error: AgentmeshError) {
    const left = remainingMs(deadline);
    if (left !== undefined && left <= ms) throw error;
    try {
      await sleep(ms, signal);
    } catch (aborted) {
      throw toAgentmeshError(aborted);
    }
  }

  /**
   * Events of `first` (Run or Execute), or of StreamSession without it, resumed with
   * StreamSession(after_seq = last seq seen) after a drop. Run is asked again while it has
   * produced nothing (the run may not have started); once the session is running elsewhere
   * (SESSION_BUSY), its events are followed instead.
   */
  async *#resumable(
    session: string,
    afterSeq: bigint,
    options: CallOptions,
    first: Opener | undefined,
    resumable = true,
  ): AsyncGenerator<SessionEvent, void, undefined> {
    const deadline = deadlineOf(options.timeoutMs);
    let last = afterSeq;
    let opener = first;
    let seen = false;
    let attempts = 0;
    while (true) {
      const { call, dispose } = this.#streamCall(options, deadline);
      try {
        const stream = opener ? opener(call) : this.#rpc.streamSession({ session, afterSeq: last }, call);
        for await (const { event } of stream) {
          if (event === undefined) continue;
          // Events a transport had buffered are not delivered once the caller gave up (a
          // fetch-based one hands them over after the abort).
          stopIfOver(options.signal, deadline);
          session ||= event.session;
          seen = true;
          if (event.seq <= last) continue; // delivered before the reconnect
          last = event.seq;
          attempts = 0;
          yield event;
          if (isTerminal(event)) return;
        }
        // StreamSession ends cleanly only when the session has ended; Run or Execute ending
        // without a terminal event leaves the rest to StreamSession.
        if (opener === undefined || !session) return;
        opener = undefined;
      } catch (caught) {
        const error = toAgentmeshError(caught);
        if (opener !== undefined && attempts > 0 && isBusy(error)) {
          opener = undefined; // our first Run is still running server-side: follow it
          continue;
        }
        attempts++;
        const dropped = isDropped(error) && !options.signal?.aborted;
        if (!dropped || !resumable || !session || attempts > this.#reconnectAttempts) throw error;
        if (seen || first === undefined) opener = undefined;
        await this.#wait(backoffMs(attempts, error.retryAfterMs), deadline, options.signal, error);
      } finally {
        dispose();
      }
    }
  }
}

function stopIfOver(signal: AbortSignal | undefined, deadline: number | undefined): void {
  if (signal?.aborted) throw toAgentmeshError(signal.reason ?? new ConnectError("the call was aborted", Code.Canceled));
  if (remainingMs(deadline) === 0) {
    throw errorFor({ code: Code.DeadlineExceeded, message: "the stream's deadline passed" });
  }
}

function deadlineOf(timeoutMs: number | undefined): number | undefined {
  return timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
}

function withRequestId(request: object): object {
  const { requestId } = request as { requestId?: string };
  return requestId ? request : { ...request, requestId: randomUUID() };
}

function isBusy(error: AgentmeshError): boolean {
  return error instanceof FailedPrecondition && error.reason === "SESSION_BUSY";
}
