"""Tool calls on the local runner, for chat templates that use the Hermes convention.

Qwen2.5, Hermes, SmolLM3 and many other instruct models are trained to answer a tool call
as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``; their chat templates
render the offered tools and contain that tag. For such a model and a request with tools,
the answer is constrained (``constraints.py``) to be either plain text that does not start
with ``<`` or exactly one such call whose name is an offered tool and whose arguments match
that tool's JSON schema. The runner then reports the call as a tool call (finish reason
TOOL_CALLS) instead of text. Models whose templates have no tools (SmolLM2) or another
convention get the tools in their prompt as before and answer text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from agentmesh_runner.domain import ToolCall, ToolDefinition

__all__ = ["TAG", "parse_tool_call", "supports_tool_calls", "tool_call_grammar"]

TAG = "<tool_call>"
_END = "</tool_call>"


def supports_tool_calls(chat_template: Any) -> bool:
    """Whether a model's chat template renders tools with the ``<tool_call>`` convention."""
    return isinstance(chat_template, str) and "tools" in chat_template and TAG in chat_template


# JSON written the way models saw it in training: ", " and ": ", no other whitespace, so a
# small model cannot wander off into endless indentation. Lenient: keywords llguidance does
# not enforce (uniqueItems, ...) are left to the gateway's validation of the whole answer.
JSON_LAYOUT: dict[str, Any] = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    "lenient": True,
}


def tool_call_grammar(tools: Sequence[ToolDefinition]) -> str:
    """A Lark grammar for llguidance: free text, or one call of one of ``tools``."""
    calls = [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "arguments"],
            "properties": {
                "name": {"const": tool.name},
                "arguments": json.loads(tool.parameters_json or "{}") or {"type": "object"},
            },
        }
        for tool in tools
    ]
    # The same JSON layout as constrained answers (", " and ": ", no other whitespace): a
    # small model must not spend its max_tokens on indentation inside a call.
    document = {**(calls[0] if len(calls) == 1 else {"anyOf": calls})}
    document["x-guidance"] = dict(JSON_LAYOUT)
    schema = json.dumps(document)
    return "\n".join(
        (
            "start: text | call",
            r"text: /[^<][\s\S]*/",
            f'call: "{TAG}\\n" arguments "\\n{_END}"',
            f"arguments: %json {schema}",
        )
    )


def parse_tool_call(text: str) -> ToolCall | None:
    """The call ``text`` holds, if it is one (as the grammar above writes it)."""
    body = text.strip()
    if not body.startswith(TAG):
        return None
    body = body.removeprefix(TAG).removesuffix(_END).strip()
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    return ToolCall(
        call_id=f"call_{uuid.uuid4().hex[:24]}",
        name=call["name"],
        arguments_json=json.dumps(arguments, separators=(",", ":")),
    )
