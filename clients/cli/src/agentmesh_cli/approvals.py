"""Answering a session's tool-call approvals from the command line.

`agentmesh run` (and `sessions watch`) meet `approval_requested` while showing a session: on a
terminal they ask y/n and answer with ApproveToolCall or RejectToolCall; anywhere else they
stop with one line saying what waits and how to answer it (`agentmesh sessions approve` /
`reject`), while the session keeps waiting for an answer from anywhere (another terminal, the
web UI, any replica) until its approval timeout.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from google.protobuf.json_format import MessageToDict

from agentmesh.common.v1 import approvals_pb2
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import FailedPrecondition

Prompt = Callable[[str], Awaitable[str]]


class ApprovalNeeded(Exception):
    """A call waits for approval and there is no terminal to ask on."""


def describe(approval: approvals_pb2.Approval) -> str:
    """`keeper wants to call memory_write({"key":"plan"})`, on one line."""
    arguments = json.dumps(MessageToDict(approval.call.arguments), separators=(",", ":"))
    if len(arguments) > 200:
        arguments = arguments[:199] + "…"
    agent = approval.agent.rsplit("/", 1)[-1] or "an agent"
    return f"{agent} wants to call {approval.call.name}({arguments})"


async def answer(
    client: AgentmeshClient,
    session: str,
    approval: approvals_pb2.Approval,
    *,
    interactive: bool,
    prompt: Prompt,
) -> approvals_pb2.Approval | None:
    """Ask whether to approve `approval` and send the answer; None when it no longer waits
    (answered elsewhere, or a replay of an old one). Raises `ApprovalNeeded` when not
    `interactive`."""
    waiting = await client.get_session(session)
    if approval.approval_id not in {a.approval_id for a in waiting.pending_approvals}:
        return None
    if not interactive:
        raise ApprovalNeeded(
            f"{session} waits for approval: {describe(approval)}; there is no terminal to ask"
            f" on. Answer it with `agentmesh sessions approve {session} {approval.approval_id}`"
            " (or `sessions reject`), then follow it with `agentmesh sessions watch"
            f" {session}`."
        )
    reply = await prompt(f"{describe(approval)}. Approve? [y/N] ")
    try:
        if reply.strip().lower() in ("y", "yes"):
            return await client.approve_tool_call(
                session, approval.approval_id, comment="approved at the terminal"
            )
        return await client.reject_tool_call(
            session, approval.approval_id, comment="rejected at the terminal"
        )
    except FailedPrecondition as exc:
        if exc.reason == "APPROVAL_RESOLVED":  # answered elsewhere meanwhile: that stands
            return None
        raise
