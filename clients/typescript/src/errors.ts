/**
 * Typed errors: every failed call is thrown as a subclass of {@link AgentmeshError}, rebuilt
 * from the gRPC status and its `grpc-status-details-bin` (a `google.rpc.Status`).
 *
 *     AgentmeshError          code, codeName, reason, domain, metadata, fieldViolations, retryAfterMs
 *     ├── Cancelled           (also: the caller's AbortSignal fired)
 *     ├── Unknown
 *     ├── InvalidArgument     (google.rpc.BadRequest -> fieldViolations)
 *     ├── DeadlineExceeded    (also: the call's own deadline passed)
 *     ├── NotFound
 *     ├── AlreadyExists
 *     ├── PermissionDenied
 *     ├── ResourceExhausted   (google.rpc.RetryInfo -> retryAfterMs)
 *     ├── FailedPrecondition
 *     ├── Aborted
 *     ├── OutOfRange
 *     ├── Unimplemented
 *     ├── Internal
 *     ├── Unavailable         (google.rpc.RetryInfo -> retryAfterMs)
 *     ├── DataLoss
 *     └── Unauthenticated
 *
 * `reason` is the `google.rpc.ErrorInfo` reason the service chose (UPPER_SNAKE, such as
 * `SESSION_NOT_FOUND`; docs/api.md lists them), or the code's name when the status has none.
 * This mirrors the Python side (services/common/src/agentmesh_common/status.py).
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** One invalid request field: `field` is a dotted path such as `session.goal`. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** What an {@link AgentmeshError} is built from. */
export interface ErrorInit {
  readonly code: Code;
  readonly message: string;
  readonly reason?: string;
  readonly domain?: string;
  readonly metadata?: Readonly<Record<string, string>>;
  readonly fieldViolations?: readonly FieldViolation[];
  readonly retryAfterMs?: number;
  readonly cause?: unknown;
}

/** The gRPC name of a status code: `Code.InvalidArgument` -> `"INVALID_ARGUMENT"`. */
export function codeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  const name = Code[code] ?? "UNKNOWN";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The base of every error the client throws. */
export class AgentmeshError extends Error {
  /** The gRPC status code (the numbers are gRPC's: 3 is INVALID_ARGUMENT). */
  readonly code: Code;
  /** The status code's gRPC name, e.g. `"NOT_FOUND"`. */
  readonly codeName: string;
  /** The server's message, without the code prefix. */
  readonly rawMessage: string;
  /** ErrorInfo reason (e.g. `"SESSION_NOT_FOUND"`), or {@link codeName} without one. */
  readonly reason: string;
  /** ErrorInfo domain (the service that raised it), when given. */
  readonly domain: string | undefined;
  /** ErrorInfo metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** BadRequest field violations (INVALID_ARGUMENT). */
  readonly fieldViolations: readonly FieldViolation[];
  /** RetryInfo: how long to wait before trying again, when the server said. */
  readonly retryAfterMs: number | undefined;

  constructor(init: ErrorInit) {
    const name = codeName(init.code);
    super(`${name}: ${init.message}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.codeName = name;
    this.rawMessage = init.message;
    this.reason = init.reason || name;
    this.domain = init.domain || undefined;
    this.metadata = init.metadata ?? {};
    this.fieldViolations = init.fieldViolations ?? [];
    this.retryAfterMs = init.retryAfterMs;
  }
}

export class Cancelled extends AgentmeshError {}
export class Unknown extends AgentmeshError {}
export class InvalidArgument extends AgentmeshError {}
export class DeadlineExceeded extends AgentmeshError {}
export class NotFound extends AgentmeshError {}
export class AlreadyExists extends AgentmeshError {}
export class PermissionDenied extends AgentmeshError {}
export class ResourceExhausted extends AgentmeshError {}
export class FailedPrecondition extends AgentmeshError {}
export class Aborted extends AgentmeshError {}
export class OutOfRange extends AgentmeshError {}
export class Unimplemented extends AgentmeshError {}
export class Internal extends AgentmeshError {}
export class Unavailable extends AgentmeshError {}
export class DataLoss extends AgentmeshError {}
export class Unauthenticated extends AgentmeshError {}

const ERROR_TYPES: Readonly<Record<Code, new (init: ErrorInit) => AgentmeshError>> = {
  [Code.Canceled]: Cancelled,
  [Code.Unknown]: Unknown,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.NotFound]: NotFound,
  [Code.AlreadyExists]: AlreadyExists,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.ResourceExhausted]: ResourceExhausted,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.Aborted]: Aborted,
  [Code.OutOfRange]: OutOfRange,
  [Code.Unimplemented]: Unimplemented,
  [Code.Internal]: Internal,
  [Code.Unavailable]: Unavailable,
  [Code.DataLoss]: DataLoss,
  [Code.Unauthenticated]: Unauthenticated,
};

/** Build the typed error for `init.code`. */
export function errorFor(init: ErrorInit): AgentmeshError {
  const Type = ERROR_TYPES[init.code] ?? Unknown;
  return new Type(init);
}

/**
 * Turn anything a call threw into an {@link AgentmeshError}: a ConnectError keeps its code and
 * its decoded status details; an AbortSignal's abort becomes {@link Cancelled}.
 */
export function toAgentmeshError(error: unknown): AgentmeshError {
  if (error instanceof AgentmeshError) return error;
  const connect = ConnectError.from(error);
  const [info] = connect.findDetails(ErrorInfoSchema);
  const fieldViolations = connect
    .findDetails(BadRequestSchema)
    .flatMap((bad) => bad.fieldViolations.map(({ field, description }) => ({ field, description })));
  const [retry] = connect.findDetails(RetryInfoSchema);
  const delay = retry?.retryDelay;
  return errorFor({
    code: connect.code,
    message: connect.rawMessage,
    reason: info?.reason,
    domain: info?.domain,
    metadata: info ? { ...info.metadata } : undefined,
    fieldViolations,
    retryAfterMs: delay ? Number(delay.seconds) * 1000 + delay.nanos / 1e6 : undefined,
    cause: error,
  });
}
