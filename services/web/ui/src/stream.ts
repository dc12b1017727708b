// A session's live events over Server-Sent Events.
//
// EventSource cannot send an Authorization header, so the page asks the edge for a short-lived
// stream token bound to the session (POST ...:createStreamToken) and opens
// `/v1/sessions/{id}/events?stream_token=...`. When the connection drops, the browser
// reconnects by itself with Last-Event-ID; when the edge refuses it (the token expired: 401),
// the EventSource closes and this class gets a fresh token and reopens after the last seq it
// has. Events are delivered once each, in seq order, however often it reconnects.

import { ApiError, post, resourcePath } from "./api";
import { num } from "./format";
import type { SessionEvent } from "./types";

/** The `event:` names of the stream: payload kinds in snake_case (EventSource has no wildcard
 * listener, so an unlisted kind would be dropped: tests/e2e/test_web_ui.py checks this list
 * against the SessionEvent proto). */
export const EVENT_KINDS = [
  "session_started",
  "analysis",
  "plan_created",
  "task_started",
  "task_completed",
  "task_failed",
  "agent_spawned",
  "message_started",
  "content_delta",
  "thinking",
  "tool_call",
  "tool_result",
  "agent_message",
  "message_completed",
  "user_message",
  "handoff",
  "approval_requested",
  "approval_resolved",
  "session_completed",
  "session_failed",
  "session_cancelled",
] as const;

const TERMINAL = new Set(["session_completed", "session_failed", "session_cancelled"]);

export type StreamState = "connecting" | "live" | "reconnecting" | "ended" | "failed";

export interface StreamCallbacks {
  /** One event, or several delivered together (in order). */
  events(events: { kind: string; event: SessionEvent; raw: string }[]): void;
  state(state: StreamState, detail?: string): void;
}

const TOKEN_TTL = "300s";

export class SessionStream {
  private source: EventSource | null = null;
  private lastSeq = 0;
  private closed = false;
  private ended = false;
  private retryDelay = 500;
  private timer: number | undefined;
  private pending: { kind: string; event: SessionEvent; raw: string }[] = [];
  private flushQueued = false;

  constructor(
    private readonly session: string,
    private readonly callbacks: StreamCallbacks,
  ) {}

  start(): void {
    void this.open();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  private async open(): Promise<void> {
    if (this.closed) return;
    this.callbacks.state(this.lastSeq ? "reconnecting" : "connecting");
    let token: string;
    try {
      const reply = await post<{ token: string }>(
        resourcePath(this.session) + ":createStreamToken",
        { ttl: TOKEN_TTL },
      );
      token = reply.token;
    } catch (error) {
      if (error instanceof ApiError && error.httpStatus < 500 && error.httpStatus !== 429) {
        this.callbacks.state("failed", error.message);
        return;
      }
      this.reopenLater();
      return;
    }
    if (this.closed) return;
    const query = new URLSearchParams({ stream_token: token });
    if (this.lastSeq) query.set("after_seq", String(this.lastSeq));
    const source = new EventSource(`${resourcePath(this.session)}/events?${query}`);
    this.source = source;
    source.onopen = () => {
      this.retryDelay = 500;
      this.callbacks.state("live");
    };
    for (const kind of EVENT_KINDS) {
      source.addEventListener(kind, (message) => this.receive(kind, message as MessageEvent));
    }
    source.addEventListener("stream_error", (message) => {
      // The edge ends the stream after this (e.g. a slow consumer); EventSource resumes.
      const data = (message as MessageEvent).data as string;
      this.callbacks.state("reconnecting", safeMessage(data));
    });
    source.onerror = () => {
      if (this.closed || this.ended) {
        source.close();
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        // Refused, not dropped (an expired token answers 401): a new token, after lastSeq.
        source.close();
        this.reopenLater();
      } else {
        this.callbacks.state("reconnecting"); // the browser resumes with Last-Event-ID
      }
    };
  }

  private reopenLater(): void {
    if (this.closed) return;
    this.callbacks.state("reconnecting");
    this.timer = window.setTimeout(() => void this.open(), this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 10_000);
  }

  private receive(kind: string, message: MessageEvent): void {
    const raw = message.data as string;
    const event = JSON.parse(raw) as SessionEvent;
    const seq = num(event.seq);
    if (seq <= this.lastSeq) return; // a resumed stream may repeat what we have
    this.lastSeq = seq;
    this.pending.push({ kind, event, raw });
    if (TERMINAL.has(kind)) {
      this.ended = true;
      this.source?.close();
      this.flush();
      this.callbacks.state("ended");
      return;
    }
    // Deltas come in bursts: hand them over a few times a second, not once per event.
    if (!this.flushQueued) {
      this.flushQueued = true;
      window.setTimeout(() => this.flush(), 50);
    }
  }

  private flush(): void {
    this.flushQueued = false;
    if (!this.pending.length) return;
    const batch = this.pending;
    this.pending = [];
    this.callbacks.events(batch);
  }
}

function safeMessage(data: string): string {
  try {
    return (JSON.parse(data) as { message?: string }).message ?? data;
  } catch {
    return data;
  }
}
