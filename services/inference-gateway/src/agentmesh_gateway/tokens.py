"""Prompt-size estimates for the gateway's own types, from the shared estimator.

`agentmesh_common.tokens` holds the estimator itself (the orchestrator budgets context with it
too); this module counts a whole conversation and its tool schemas.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from agentmesh_common.tokens import MESSAGE_OVERHEAD, REPLY_PRIMER, count_text

from .domain import ChatMessage, ToolSpec

__all__ = ["MESSAGE_OVERHEAD", "REPLY_PRIMER", "count_messages", "count_text"]


def count_messages(messages: Iterable[ChatMessage], tools: Iterable[ToolSpec] = ()) -> int:
    """Estimated prompt tokens of a conversation and its tool schemas."""
    total = REPLY_PRIMER
    for message in messages:
        total += MESSAGE_OVERHEAD + count_text(message.content) + count_text(message.name)
        for call in message.tool_calls:
            total += count_text(call.name) + count_text(json.dumps(call.arguments))
    for tool in tools:
        total += 8 + count_text(tool.name) + count_text(tool.description)
        total += count_text(json.dumps(tool.parameters))
    return total
