"""Approvals: created with the step that announces them, answered once, from any caller."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from agentmesh.common.v1 import approvals_pb2, events_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import Api, rpc_error, violation_fields

A = approvals_pb2


async def new_session(api: Api, session_id: str = "asks") -> str:
    response = await api.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=sessions_pb2.Session(goal="g"), session_id=session_id
        )
    )
    return str(response.session.name)


def pending(approval_id: str = "ap-1", tool: str = "wire_money") -> A.Approval:
    arguments = struct_pb2.Struct()
    arguments.update({"amount": 10})
    approval = A.Approval(
        approval_id=approval_id,
        agent="agents/payer",
        call=messages_pb2.ToolCall(id="call_0", name=tool, arguments=arguments),
    )
    approval.expire_time.CopyFrom(timestamp_pb2.Timestamp(seconds=4_102_444_800))  # 2100
    return approval


def asked(approval: A.Approval) -> events_pb2.SessionEvent:
    return events_pb2.SessionEvent(
        approval_requested=events_pb2.ApprovalRequested(approval=approval)
    )


async def ask(api: Api, session: str, approval: A.Approval) -> memory_pb2.CommitStepResponse:
    return await api.CommitStep(  # type: ignore[no-any-return]
        memory_pb2.CommitStepRequest(
            session=session, approvals=[approval], events=[asked(approval)]
        )
    )


async def test_an_approval_is_stored_with_its_event_and_answered_once(api: Api) -> None:
    session = await new_session(api)
    stored = await ask(api, session, pending())
    name = f"{session}/approvals/ap-1"
    got = (await api.GetApproval(memory_pb2.GetApprovalRequest(name=name))).approval
    assert got.name == name
    assert got.state == A.APPROVAL_STATE_PENDING
    assert got.call.name == "wire_money"
    assert got.call.arguments.fields["amount"].number_value == 10
    assert got.HasField("create_time")
    assert got.expire_time.seconds == 4_102_444_800

    answer = await api.ResolveApproval(
        memory_pb2.ResolveApprovalRequest(
            name=name, state=A.APPROVAL_STATE_APPROVED, comment="fine", request_id="r-1"
        )
    )
    assert answer.approval.state == A.APPROVAL_STATE_APPROVED
    assert answer.approval.comment == "fine"
    assert answer.seq == stored.last_seq + 1
    log = await api.WatchEvents(
        memory_pb2.WatchEventsRequest(session=session, after_seq=stored.last_seq), timeout=5
    ).read()
    (event,) = log.events
    assert event.approval_resolved.approval.state == A.APPROVAL_STATE_APPROVED
    assert event.agent == "agents/payer"

    # A retry of the same request answers the same; another answer is refused, nothing written.
    again = await api.ResolveApproval(
        memory_pb2.ResolveApprovalRequest(
            name=name, state=A.APPROVAL_STATE_APPROVED, comment="fine", request_id="r-1"
        )
    )
    assert again == answer
    error = await rpc_error(
        api.ResolveApproval(
            memory_pb2.ResolveApprovalRequest(name=name, state=A.APPROVAL_STATE_REJECTED)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "APPROVAL_RESOLVED"
    session_after = (await api.GetSession(memory_pb2.GetSessionRequest(name=session))).session
    assert session_after.last_event_seq == answer.seq, "the refused answer appended nothing"


async def test_an_approval_asked_again_keeps_its_first_record(api: Api) -> None:
    session = await new_session(api)
    await ask(api, session, pending())
    await api.ResolveApproval(
        memory_pb2.ResolveApprovalRequest(
            name=f"{session}/approvals/ap-1", state=A.APPROVAL_STATE_REJECTED, comment="no"
        )
    )
    # A replica resuming the session asks for the same call again: the answer stands.
    stored = await api.CommitStep(
        memory_pb2.CommitStepRequest(session=session, approvals=[pending()])
    )
    assert stored.first_seq == 0
    listed = await api.ListApprovals(memory_pb2.ListApprovalsRequest(parent=session))
    assert [(a.approval_id, a.state, a.comment) for a in listed.approvals] == [
        ("ap-1", A.APPROVAL_STATE_REJECTED, "no")
    ]


async def test_racing_answers_one_wins_and_the_other_writes_nothing(api: Api) -> None:
    session = await new_session(api)
    await ask(api, session, pending())
    name = f"{session}/approvals/ap-1"
    answers = await asyncio.gather(
        *(
            api.ResolveApproval(memory_pb2.ResolveApprovalRequest(name=name, state=state))
            for state in (A.APPROVAL_STATE_APPROVED, A.APPROVAL_STATE_EXPIRED)
        ),
        return_exceptions=True,
    )
    won = [a for a in answers if isinstance(a, memory_pb2.ResolveApprovalResponse)]
    lost = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 1
    assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    got = (await api.GetApproval(memory_pb2.GetApprovalRequest(name=name))).approval
    assert got.state == won[0].approval.state
    session_after = (await api.GetSession(memory_pb2.GetSessionRequest(name=session))).session
    assert session_after.last_event_seq == won[0].seq == 2


async def test_an_ended_session_takes_no_answer_and_nothing_is_half_written(api: Api) -> None:
    session = await new_session(api)
    await ask(api, session, pending())
    ended = events_pb2.SessionEvent(session_cancelled=events_pb2.SessionCancelled(reason="x"))
    await api.AppendEvents(memory_pb2.AppendEventsRequest(session=session, events=[ended]))
    name = f"{session}/approvals/ap-1"
    error = await rpc_error(
        api.ResolveApproval(
            memory_pb2.ResolveApprovalRequest(name=name, state=A.APPROVAL_STATE_APPROVED)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "SESSION_ENDED"
    got = (await api.GetApproval(memory_pb2.GetApprovalRequest(name=name))).approval
    assert got.state == A.APPROVAL_STATE_PENDING, "the approval did not move"


async def test_another_tenant_sees_no_approval_and_bad_input_names_the_field(api: Api) -> None:
    session = await new_session(api)
    await ask(api, session, pending())
    name = f"{session}/approvals/ap-1"
    stranger = api.as_tenant(api.tenant + "-other")
    for call in (
        stranger.GetApproval(memory_pb2.GetApprovalRequest(name=name)),
        stranger.ResolveApproval(
            memory_pb2.ResolveApprovalRequest(name=name, state=A.APPROVAL_STATE_APPROVED)
        ),
    ):
        error = await rpc_error(call, grpc.StatusCode.NOT_FOUND)
        assert error.reason == "APPROVAL_NOT_FOUND"
    missing = await rpc_error(
        api.GetApproval(memory_pb2.GetApprovalRequest(name=f"{session}/approvals/nope")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert missing.reason == "APPROVAL_NOT_FOUND"
    for request, field in (
        (memory_pb2.ResolveApprovalRequest(name="sessions/x", state=2), "name"),
        (memory_pb2.ResolveApprovalRequest(name=name, state=A.APPROVAL_STATE_PENDING), "state"),
        (memory_pb2.ResolveApprovalRequest(name=name, state=2, comment="x" * 4001), "comment"),
    ):
        bad = await rpc_error(api.ResolveApproval(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert violation_fields(bad) == {field}
    no_call = pending("ap-2", tool="")
    bad_step = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session, approvals=[no_call], events=[asked(no_call)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(bad_step) == {"approvals[0].call.name"}
    listed = await api.ListApprovals(
        memory_pb2.ListApprovalsRequest(parent=session, state=A.APPROVAL_STATE_PENDING)
    )
    assert [a.approval_id for a in listed.approvals] == ["ap-1"], "the bad step stored nothing"
