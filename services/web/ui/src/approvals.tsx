// Tool calls waiting for a human: each with its agent, tool and arguments, and buttons to
// approve or reject it (with an optional comment, which a rejection gives to the model).
// The answer goes to ApproveToolCall / RejectToolCall; the session's own event
// (approval_resolved) then updates the list, so an answer given elsewhere shows too.

import { useState } from "preact/hooks";

import { ApiError, post, resourcePath } from "./api";
import type { SessionModel } from "./model";
import type { Approval } from "./types";

const PENDING = "APPROVAL_STATE_PENDING";

export function PendingApprovals({ model, session }: { model: SessionModel; session: string }) {
  const pending = [...model.approvals.values()].filter((a) => a.state === PENDING);
  if (!pending.length) return null;
  return (
    <section class="approvals" data-testid="approvals">
      <h3>Waiting for your approval</h3>
      {pending.map((approval) => (
        <ApprovalCard key={approval.approvalId} approval={approval} session={session} />
      ))}
    </section>
  );
}

function ApprovalCard({ approval, session }: { approval: Approval; session: string }) {
  const [comment, setComment] = useState("");
  const [state, setState] = useState<"idle" | "sending" | "error">("idle");
  const [error, setError] = useState("");

  async function answer(verb: "approveToolCall" | "rejectToolCall") {
    setState("sending");
    setError("");
    try {
      await post(resourcePath(session) + ":" + verb, {
        approvalId: approval.approvalId,
        comment,
      });
      setState("idle");
    } catch (failure) {
      setState("error");
      setError(failure instanceof ApiError ? failure.message : String(failure));
    }
  }

  const call = approval.call ?? {};
  return (
    <div class="approval" data-testid="approval" data-approval-id={approval.approvalId}>
      <div>
        <strong>{approval.agent}</strong> wants to call <code>{call.name}</code>
        <pre class="mono small">{JSON.stringify(call.arguments ?? {}, null, 1)}</pre>
      </div>
      <input
        placeholder="comment (optional; told to the model on reject)"
        value={comment}
        onInput={(e) => setComment((e.target as HTMLInputElement).value)}
        data-testid="approval-comment"
      />
      <button
        disabled={state === "sending"}
        onClick={() => answer("approveToolCall")}
        data-testid="approve-button"
      >
        Approve
      </button>
      <button
        class="danger"
        disabled={state === "sending"}
        onClick={() => answer("rejectToolCall")}
        data-testid="reject-button"
      >
        Reject
      </button>
      {error && (
        <p class="error" data-testid="approval-error">
          {error}
        </p>
      )}
    </div>
  );
}
