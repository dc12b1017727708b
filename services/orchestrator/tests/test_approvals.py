"""Human approval of tool calls on the in-memory ports: approve, reject, expire, cancel, resume.

(Through the real services: tests/e2e/test_teams.py; after a kill -9: tests/e2e/test_mesh.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from google.protobuf import duration_pb2, struct_pb2

from agentmesh.common.v1 import agents_pb2, approvals_pb2, messages_pb2, sessions_pb2, tools_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_orchestrator.runtime import Runtime
from agentmesh_orchestrator.testing import Reply
from agentmesh_orchestrator.tools import Tool, ToolCallContext, builtin_tools

from .conftest import TENANT, Harness, make_agent, make_session

A = approvals_pb2


class Payments:
    """A READ_WRITE tool that records every payment it makes."""

    def __init__(self, *, requires_approval: bool = True) -> None:
        self.paid: list[float] = []
        self.tool = Tool(
            tools_pb2.ToolSpec(
                name="pay",
                description="Pay an amount.",
                permission=tools_pb2.TOOL_PERMISSION_READ_WRITE,
                requires_approval=requires_approval,
            ),
            self._pay,
        )

    async def _pay(self, _: ToolCallContext, arguments: struct_pb2.Struct) -> struct_pb2.Struct:
        amount = arguments.fields["amount"].number_value
        self.paid.append(amount)
        result = struct_pb2.Struct()
        result.update({"paid": amount})
        return result


def pays_then_reports(request: inference_pb2.GenerateRequest) -> Reply:
    tool = next((m for m in request.messages if m.role == messages_pb2.ROLE_TOOL), None)
    if tool is None:
        arguments = struct_pb2.Struct()
        arguments.update({"amount": 25})
        return Reply(tool_calls=[messages_pb2.ToolCall(id="c1", name="pay", arguments=arguments)])
    return Reply(text=f"tool said {tool.content}")


def session_with(timeout_seconds: float = 30.0) -> sessions_pb2.Session:
    limits = sessions_pb2.SessionLimits(
        max_rounds=1, approval_timeout=duration_pb2.Duration(seconds=int(timeout_seconds))
    )
    if timeout_seconds < 1:
        limits.approval_timeout.FromMilliseconds(int(timeout_seconds * 1000))
    return make_session(sessions_pb2.STRATEGY_ROUND_ROBIN, limits=limits)


async def requested(harness: Harness) -> A.Approval:
    """The approval once `approval_requested` is stored."""
    async with asyncio.timeout(5):
        while True:
            for event in harness.events():
                if event.HasField("approval_requested"):
                    return event.approval_requested.approval
            async with harness.store.appended:
                await harness.store.appended.wait()


def payer(
    policy: agents_pb2.ToolApproval.ValueType = agents_pb2.TOOL_APPROVAL_UNSPECIFIED,
) -> object:
    agent = make_agent("payer", tools=["pay"])
    agent.definition.tool_approval = policy
    return agent


def open_run(
    harness: Harness,
    payments: Payments,
    session: sessions_pb2.Session,
    policy: agents_pb2.ToolApproval.ValueType = agents_pb2.TOOL_APPROVAL_UNSPECIFIED,
    last_seq: int = 0,
) -> Runtime:
    tools = builtin_tools() | {"pay": payments.tool}
    return harness.engine.open_run(
        TENANT,
        session,
        [payer(policy)],
        tools=tools,
        last_seq=last_seq,  # type: ignore[list-item]
    )


async def start(
    harness: Harness,
    payments: Payments,
    session: sessions_pb2.Session,
    policy: agents_pb2.ToolApproval.ValueType = agents_pb2.TOOL_APPROVAL_UNSPECIFIED,
) -> asyncio.Task[sessions_pb2.Session]:
    return asyncio.create_task(harness.engine.run(open_run(harness, payments, session, policy)))


@pytest.mark.parametrize("approve", [True, False])
async def test_a_call_waits_for_the_answer_then_runs_or_is_refused(
    harness_factory: Callable[..., Harness], approve: bool
) -> None:
    harness = harness_factory(pays_then_reports)
    payments = Payments()
    task = await start(harness, payments, session_with())
    approval = await requested(harness)
    assert approval.call.name == "pay"
    assert approval.agent == "agents/payer"
    assert approval.state == A.APPROVAL_STATE_PENDING
    await asyncio.sleep(0.05)
    assert payments.paid == [], "nothing runs before the answer"
    state = A.APPROVAL_STATE_APPROVED if approve else A.APPROVAL_STATE_REJECTED
    await harness.store.resolve_approval(TENANT, approval.name, state, "checked by ops")
    final = await asyncio.wait_for(task, 5)

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    kinds = harness.kinds()
    order = [k for k in kinds if k in ("tool_call", "approval_requested", "approval_resolved")]
    assert order == ["tool_call", "approval_requested", "approval_resolved"]
    result = next(e.tool_result for e in harness.events() if e.HasField("tool_result"))
    if approve:
        assert payments.paid == [25.0]
        assert json.loads(final.final_answer.removeprefix("tool said ")) == {"paid": 25}
    else:
        assert payments.paid == []
        assert result.error.message == "a reviewer rejected the call: checked by ops"
        assert "checked by ops" in final.final_answer, "the model is told why"


async def test_nobody_answering_in_time_rejects_the_call(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(pays_then_reports)
    payments = Payments()
    final = await asyncio.wait_for(
        await start(harness, payments, session_with(timeout_seconds=0.3)), 5
    )
    assert payments.paid == []
    resolved = next(e for e in harness.events() if e.HasField("approval_resolved"))
    assert resolved.approval_resolved.approval.state == A.APPROVAL_STATE_EXPIRED
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert "DEADLINE_EXCEEDED" in final.final_answer


async def test_cancelling_a_waiting_session_cancels_its_approval(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(pays_then_reports)
    payments = Payments()
    task = await start(harness, payments, session_with())
    approval = await requested(harness)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await harness.store.get_approval(TENANT, approval.name)
    assert stored is not None
    assert stored.state == A.APPROVAL_STATE_CANCELLED
    kinds = harness.kinds()
    assert kinds[-2:] == ["approval_resolved", "session_cancelled"]
    assert payments.paid == []


async def test_a_replica_resuming_the_session_uses_the_answer_given_meanwhile(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(pays_then_reports)
    payments = Payments()
    first = open_run(harness, payments, session_with())
    task = asyncio.create_task(harness.engine.run(first))
    approval = await requested(harness)
    # The replica loses the session while the call waits (as when its lease is taken over):
    # it stops without a word, and leaves the approval pending for the next owner.
    first.abandoned = True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stored = await harness.store.get_approval(TENANT, approval.name)
    assert stored is not None
    assert stored.state == A.APPROVAL_STATE_PENDING
    # Someone approves it on another replica; then another replica resumes the session.
    await harness.store.resolve_approval(TENANT, approval.name, A.APPROVAL_STATE_APPROVED, "ok")
    resumed = session_with()
    resumed.status = sessions_pb2.SESSION_STATUS_RUNNING
    second = open_run(harness, payments, resumed, last_seq=len(harness.events()))
    final = await asyncio.wait_for(harness.engine.run(second, resumed=True), 5)
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert payments.paid == [25.0], "paid once, after the approval"
    assert harness.kinds().count("approval_requested") == 1, "not asked again"
    assert len(harness.gateway.requests) == 2, "the model call that asked is not repeated"


async def test_the_agent_policy_asks_for_read_write_tools_only(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(pays_then_reports)
    payments = Payments(requires_approval=False)
    task = await start(harness, payments, session_with(), agents_pb2.TOOL_APPROVAL_READ_WRITE)
    approval = await requested(harness)
    await harness.store.resolve_approval(TENANT, approval.name, A.APPROVAL_STATE_APPROVED, "")
    await asyncio.wait_for(task, 5)
    assert payments.paid == [25.0]

    # Without the policy (and a tool that does not require it) nobody is asked.
    plain = harness_factory(pays_then_reports)
    unasked = Payments(requires_approval=False)
    await asyncio.wait_for(await start(plain, unasked, session_with()), 5)
    assert unasked.paid == [25.0]
    assert "approval_requested" not in plain.kinds()
