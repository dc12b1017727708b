/** Session events: which end a session; deadlines, waits and backoff of the client's streams;
 * request ids. */

import { Code, ConnectError } from "@connectrpc/connect";
import type { SessionEvent } from "./gen/agentmesh/common/v1/events_pb.js";

/** The payload cases that end a session; a stream stops after one of them. */
export const TERMINAL_EVENTS: ReadonlySet<string> = new Set([
  "sessionCompleted",
  "sessionFailed",
  "sessionCancelled",
]);

/** True when `event` ends its session (completed, failed or cancelled). */
export function isTerminal(event: SessionEvent): boolean {
  return event.payload.case !== undefined && TERMINAL_EVENTS.has(event.payload.case);
}

/** Milliseconds left before `deadline` (epoch ms), or undefined without one. */
export function remainingMs(deadline: number | undefined): number | undefined {
  return deadline === undefined ? undefined : Math.max(deadline - Date.now(), 0);
}

/** Wait `ms`, or reject with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Exponential backoff from 100 ms, capped at 5 s; the server's RetryInfo wins when longer. */
export function backoffMs(attempt: number, retryAfterMs?: number): number {
  return Math.max(Math.min(100 * 2 ** (attempt - 1), 5000), retryAfterMs ?? 0);
}

/**
 * A signal for one stream attempt that aborts when `signal` does or when `deadline` passes
 * (then with DEADLINE_EXCEEDED). Streams keep their deadline here rather than in connect's
 * `timeoutMs`, whose timer outlives a stream that fails mid-way and would hold the process
 * open until the deadline; this timer is unref'd and disposed after every attempt.
 */
export function streamSignal(
  signal: AbortSignal | undefined,
  deadline: number | undefined,
): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onAbort = (): void => controller.abort(signal?.reason);
  if (signal?.aborted) onAbort();
  signal?.addEventListener("abort", onAbort, { once: true });
  const left = remainingMs(deadline);
  const timer =
    left === undefined
      ? undefined
      : setTimeout(() => {
          controller.abort(new ConnectError("the stream's deadline passed", Code.DeadlineExceeded));
        }, left);
  timer?.unref?.();
  return {
    signal: controller.signal,
    dispose: () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    },
  };
}

/** The gRPC `grpc-timeout` header for `ms` milliseconds, so the server knows the deadline. */
export function grpcTimeout(ms: number): string {
  return ms < 1e8 ? `${Math.max(Math.ceil(ms), 1)}m` : `${Math.min(Math.ceil(ms / 1000), 99_999_999)}S`;
}

/**
 * A random (v4) UUID for `request_id`: `crypto.randomUUID` where it exists (Node, and pages in a
 * secure context), else built from `crypto.getRandomValues` (pages served over plain http).
 */
export function randomUUID(): string {
  const { crypto } = globalThis;
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
