"""Messages (append, paged list, newest-N window) and tasks (batches, status, retries)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from agentmesh.common.v1 import messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import Api, rpc_error, violation_fields

S = sessions_pb2


async def session(api: Api, session_id: str = "conv") -> str:
    await api.CreateSession(
        memory_pb2.CreateSessionRequest(session=S.Session(goal="talk"), session_id=session_id)
    )
    return f"sessions/{session_id}"


def text(
    content: str, role: int = messages_pb2.ROLE_USER, **fields: object
) -> memory_pb2.StoredMessage:
    return memory_pb2.StoredMessage(
        message=messages_pb2.Message(role=role, content=content),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


async def test_append_keeps_order_token_counts_and_tool_calls(api: Api) -> None:
    parent = await session(api)
    arguments = struct_pb2.Struct()
    arguments.update({"q": "weather"})
    call = messages_pb2.ToolCall(id="c1", name="search", arguments=arguments)
    appended = await api.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            parent=parent,
            messages=[
                text("hi"),
                memory_pb2.StoredMessage(
                    name=f"{parent}/messages/m-2",
                    message=messages_pb2.Message(
                        role=messages_pb2.ROLE_ASSISTANT, tool_calls=[call]
                    ),
                    agent="agents/helper",
                    prompt_tokens=12,
                    completion_tokens=5,
                    round=1,
                ),
            ],
        )
    )
    assert [m.message.content for m in appended.messages] == ["hi", ""]
    assert appended.messages[1].name == f"{parent}/messages/m-2"
    listed = (await api.ListMessages(memory_pb2.ListMessagesRequest(parent=parent))).messages
    assert list(listed) == list(appended.messages)
    assistant = listed[1]
    assert assistant.prompt_tokens == 12
    assert assistant.completion_tokens == 5
    assert assistant.message.tool_calls[0].arguments["q"] == "weather"
    await rpc_error(
        api.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=parent, messages=[text("again", name=f"{parent}/messages/m-2")]
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )


async def test_pages_and_newest_window(api: Api) -> None:
    parent = await session(api)
    for batch in range(3):
        await api.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=parent, messages=[text(f"m{batch * 4 + i}") for i in range(4)]
            )
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await api.ListMessages(
            memory_pb2.ListMessagesRequest(parent=parent, page_size=5, page_token=token)
        )
        seen.extend(m.message.content for m in page.messages)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"m{i}" for i in range(12)]
    newest = await api.ListMessages(memory_pb2.ListMessagesRequest(parent=parent, newest=3))
    assert [m.message.content for m in newest.messages] == ["m9", "m10", "m11"]
    assert not newest.next_page_token


async def test_message_batch_is_all_or_nothing(api: Api) -> None:
    parent = await session(api)
    error = await rpc_error(
        api.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=parent,
                messages=[text("fine"), text("no role", role=messages_pb2.ROLE_UNSPECIFIED)],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "messages[1].message.role" in violation_fields(error)
    assert not (await api.ListMessages(memory_pb2.ListMessagesRequest(parent=parent))).messages
    await rpc_error(
        api.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent="sessions/none", messages=[text("x")])
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await rpc_error(
        api.ListMessages(memory_pb2.ListMessagesRequest(parent=parent, newest=5000)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def task(task_id: str, *depends_on: str, **fields: object) -> S.Task:
    return S.Task(
        task_id=task_id, description=f"do {task_id}", depends_on=list(depends_on), **fields
    )  # type: ignore[arg-type]


async def test_batch_create_with_dependencies_and_priorities(api: Api) -> None:
    parent = await session(api, "plan")
    created = await api.BatchCreateTasks(
        memory_pb2.BatchCreateTasksRequest(
            parent=parent,
            tasks=[
                task("t1", priority=5),
                task("t2", "t1"),
                task("t2a", "t1", parent_task_id="t2"),
            ],
        )
    )
    assert [t.name for t in created.tasks] == [
        f"{parent}/tasks/t1",
        f"{parent}/tasks/t2",
        f"{parent}/tasks/t2a",
    ]
    assert all(t.status == S.TASK_STATUS_PENDING for t in created.tasks)
    assert created.tasks[0].priority == 5
    assert list(created.tasks[1].depends_on) == ["t1"]
    assert created.tasks[2].parent_task_id == "t2"
    # Later batches may depend on earlier tasks; unknown ones, cycles and duplicates are refused.
    await api.BatchCreateTasks(
        memory_pb2.BatchCreateTasksRequest(parent=parent, tasks=[task("t3", "t2")])
    )
    for bad in (
        [task("t4", "nope")],
        [task("a", "b"), task("b", "a")],
        [task("t1")],
        [task("x"), task("x")],
    ):
        await rpc_error(
            api.BatchCreateTasks(memory_pb2.BatchCreateTasksRequest(parent=parent, tasks=bad)),
            grpc.StatusCode.ALREADY_EXISTS
            if bad[0].task_id == "t1"
            else grpc.StatusCode.INVALID_ARGUMENT,
        )
    listed = await api.ListTasks(memory_pb2.ListTasksRequest(parent=parent))
    assert [t.task_id for t in listed.tasks] == ["t1", "t2", "t2a", "t3"]


async def update_task(api: Api, name: str, paths: list[str], **fields: object) -> S.Task:
    response = await api.UpdateTask(
        memory_pb2.UpdateTaskRequest(
            task=S.Task(name=name, **fields),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )
    return response.task  # type: ignore[no-any-return]


async def test_status_output_and_retry_count(api: Api) -> None:
    parent = await session(api, "retry")
    await api.BatchCreateTasks(
        memory_pb2.BatchCreateTasksRequest(parent=parent, tasks=[task("t1"), task("t2")])
    )
    name = f"{parent}/tasks/t1"
    running = await update_task(
        api, name, ["status", "agent"], status=S.TASK_STATUS_RUNNING, agent="agents/x"
    )
    assert running.start_time.seconds
    assert running.agent == "agents/x"
    assert running.retry_count == 0
    failed = await update_task(api, name, ["status"], status=S.TASK_STATUS_FAILED)
    assert failed.end_time.seconds
    retried = await update_task(api, name, ["status"], status=S.TASK_STATUS_RUNNING)
    assert retried.retry_count == 1
    assert not retried.HasField("end_time")
    requeued = await update_task(api, name, ["status"], status=S.TASK_STATUS_PENDING)
    assert requeued.retry_count == 2
    await update_task(api, name, ["status"], status=S.TASK_STATUS_RUNNING)
    done = await update_task(
        api, name, ["status", "output"], status=S.TASK_STATUS_COMPLETED, output="42"
    )
    assert done.output == "42"
    assert done.status == S.TASK_STATUS_COMPLETED
    error = await rpc_error(
        update_task(api, name, ["status"], status=S.TASK_STATUS_RUNNING),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "INVALID_STATUS_TRANSITION"
    completed = await api.ListTasks(
        memory_pb2.ListTasksRequest(parent=parent, status=S.TASK_STATUS_COMPLETED)
    )
    assert [t.task_id for t in completed.tasks] == ["t1"]
    pending = await api.ListTasks(
        memory_pb2.ListTasksRequest(parent=parent, status=S.TASK_STATUS_PENDING)
    )
    assert [t.task_id for t in pending.tasks] == ["t2"]
    await rpc_error(
        update_task(api, f"{parent}/tasks/none", ["output"], output="x"), grpc.StatusCode.NOT_FOUND
    )
    await rpc_error(update_task(api, name, ["description"]), grpc.StatusCode.INVALID_ARGUMENT)
    await rpc_error(
        update_task(api, "sessions/x/task/t1", ["output"]), grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("count", [0, 1001])
async def test_batch_size_limits(api: Api, count: int) -> None:
    parent = await session(api)
    await rpc_error(
        api.BatchCreateTasks(
            memory_pb2.BatchCreateTasksRequest(
                parent=parent, tasks=[task(f"t{i}") for i in range(count)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
