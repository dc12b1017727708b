"""A seeded request fuzzer over every public RPC, enumerated from the descriptors.

Each request starts as a plausible one (fields filled by type and name: resource names, small
sizes, short strings) and gets one mutation: corrupt bytes, invalid UTF-8 in a string field, a
Struct nested past the parser's limit, NaN or infinity, a Timestamp or Duration out of range,
an unknown enum number, a bogus page token, a huge or negative size, or none. The request goes
out as bytes, so undecodable ones reach the server as they are.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import descriptor, struct_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh.workflow.v1 import schedule_pb2, workflow_service_pb2

FD = descriptor.FieldDescriptor
#: The public API the orchestrator serves (ToolService is implemented by tool servers, not
#: by agentmesh, so it is not fuzzed here).
SERVICES = (
    orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
    schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
)


@dataclass(frozen=True)
class Method:
    path: str
    input: descriptor.Descriptor
    server_streaming: bool
    client_streaming: bool


def public_methods() -> list[Method]:
    return [
        Method(
            f"/{service.full_name}/{method.name}",
            method.input_type,
            method.server_streaming,
            method.client_streaming,
        )
        for service in SERVICES
        for method in service.methods
    ]


def _fields(message: Message, depth: int = 0) -> list[tuple[Message, FD]]:
    """Every (message, field) reachable in `message`'s set sub-messages, up to depth 3."""
    found = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        if (
            field.type == FD.TYPE_MESSAGE
            and not field.is_repeated
            and depth < 3
            and message.HasField(field.name)
        ):
            found += _fields(getattr(message, field.name), depth + 1)
    return found


def plausible(input_type: descriptor.Descriptor, rng: random.Random, depth: int = 0) -> Message:
    message = GetMessageClass(input_type)()
    for field in input_type.fields:
        if rng.random() < 0.4 or (field.containing_oneof is not None and rng.random() < 0.5):
            continue
        if field.type == FD.TYPE_MESSAGE:
            if depth >= 2 or field.is_repeated or field.message_type.GetOptions().map_entry:
                continue
            if field.message_type.full_name == "google.protobuf.Struct":
                getattr(message, field.name).update({"k": "v", "n": 1})
                continue
            if field.message_type.full_name.startswith("google.protobuf."):
                getattr(message, field.name).SetInParent()
                continue
            getattr(message, field.name).CopyFrom(plausible(field.message_type, rng, depth + 1))
        elif field.is_repeated:
            continue
        elif field.type == FD.TYPE_STRING:
            setattr(message, field.name, _string_for(field.name, rng))
        elif field.type == FD.TYPE_BOOL:
            setattr(message, field.name, rng.random() < 0.5)
        elif field.type == FD.TYPE_ENUM:
            setattr(message, field.name, rng.choice(field.enum_type.values).number)
        elif field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            setattr(message, field.name, rng.random())
        elif field.type in (FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64):
            setattr(message, field.name, rng.randint(0, 20))
    return message


def _string_for(name: str, rng: random.Random) -> str:
    if name in ("name", "session", "parent", "agent", "approval") or name.endswith("_name"):
        return rng.choice(["sessions/", "agents/", "approvals/"]) + rng.choice(
            ["x", "0", "../x", "a" * 300, ""]
        )
    return rng.choice(["", "x", "hello", "ü" * 10, "a" * 5000])


def _set_deep_struct(struct: struct_pb2.Struct, levels: int) -> None:
    inner = struct
    for _ in range(levels):
        inner = inner.fields["k"].struct_value


def _mutate_fields(
    message: Message,
    rng: random.Random,
    pick: Callable[[Message, FD], bool],
    apply: Callable[[Message, FD], None],
) -> bool:
    candidates = [(m, f) for m, f in _fields(message) if pick(m, f)]
    if not candidates:
        return False
    owner, field = rng.choice(candidates)
    apply(owner, field)
    return True


def _scalar(field: FD) -> bool:
    return not field.is_repeated and field.containing_oneof is None


def mutate(message: Message, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of `message` that applies to it; (its name, the bytes to send)."""
    kinds = list(MUTATIONS)
    rng.shuffle(kinds)
    for kind in kinds:
        data = _mutated(kind, message, rng)
        if data is not None:
            return kind, data
    return "none", message.SerializeToString()


def _mutated(kind: str, message: Message, rng: random.Random) -> bytes | None:
    data = message.SerializeToString()
    if kind == "none":
        return data
    if kind == "corrupt bytes":
        raw = bytearray(data or b"\x0a\x05hello")
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 3)))
    if kind == "invalid utf-8":
        strings = [f for f in message.DESCRIPTOR.fields if f.type == FD.TYPE_STRING]
        if strings:
            field = rng.choice(strings)
            tag = (field.number << 3) | 2
            bad = b"\xff\xfe\xc3("
            return data + _varint(tag) + _varint(len(bad)) + bad
        return None
    done = False
    if kind == "deep struct":

        def deep(m: Message, f: FD) -> None:
            _set_deep_struct(getattr(m, f.name), 120)

        done = _mutate_fields(
            message,
            rng,
            lambda m, f: (
                _scalar(f)
                and f.type == FD.TYPE_MESSAGE
                and f.message_type.full_name == "google.protobuf.Struct"
            ),
            deep,
        )
        if done:
            return _serialize_deep(message)
    elif kind == "nan or inf":
        value = rng.choice([math.nan, math.inf, -math.inf])

        def nan(m: Message, f: FD) -> None:
            if f.type == FD.TYPE_MESSAGE:
                getattr(m, f.name).update({"x": value})
            else:
                setattr(m, f.name, value)

        done = _mutate_fields(
            message,
            rng,
            lambda m, f: (
                _scalar(f)
                and (
                    f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT)
                    or (
                        f.type == FD.TYPE_MESSAGE
                        and f.message_type.full_name == "google.protobuf.Struct"
                    )
                )
            ),
            nan,
        )
    elif kind == "time out of range":

        def out_of_range(m: Message, f: FD) -> None:
            target = getattr(m, f.name)
            target.seconds = rng.choice([10**12, -(10**12), 253402300800])
            target.nanos = rng.choice([-1, 0, 1_000_000_000])

        done = _mutate_fields(
            message,
            rng,
            lambda m, f: (
                _scalar(f)
                and f.type == FD.TYPE_MESSAGE
                and f.message_type.full_name
                in ("google.protobuf.Timestamp", "google.protobuf.Duration")
            ),
            out_of_range,
        )
    elif kind == "unknown enum":
        done = _mutate_fields(
            message,
            rng,
            lambda m, f: _scalar(f) and f.type == FD.TYPE_ENUM,
            lambda m, f: setattr(m, f.name, rng.choice([99, -5, 2**30])),
        )
    elif kind == "bogus page token":
        done = _mutate_fields(
            message,
            rng,
            lambda m, f: f.name == "page_token",
            lambda m, f: setattr(m, f.name, rng.choice(["bogus", "!!", "eyJ4IjoxfQ", "\x00"])),
        )
    elif kind == "huge or negative size":
        done = _mutate_fields(
            message,
            rng,
            lambda m, f: _scalar(f) and f.type in (FD.TYPE_INT32, FD.TYPE_INT64),
            lambda m, f: setattr(m, f.name, rng.choice([-1, -(2**31), 2**31 - 1, 5000, 10**6])),
        )
    return message.SerializeToString() if done else None


def _serialize_deep(message: Message) -> bytes:
    try:
        return message.SerializeToString()
    except Exception:  # the library's own recursion guard: send the bytes built by hand
        return b"\x0a" + _varint(0)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


MUTATIONS = (
    "none",
    "corrupt bytes",
    "invalid utf-8",
    "deep struct",
    "nan or inf",
    "time out of range",
    "unknown enum",
    "bogus page token",
    "huge or negative size",
)
