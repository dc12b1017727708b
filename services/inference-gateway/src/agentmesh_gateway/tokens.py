"""An offline, deterministic token estimator (no BPE files can be downloaded).

It approximates BPE tokenizers of current chat models: a word piece costs one token per
four characters (rounded up), each punctuation mark or symbol one token, each non-ASCII
character one token, plus a fixed overhead per message for the chat template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from .domain import ChatMessage, ToolSpec

_PIECES = re.compile(r"[A-Za-z]+|[0-9]{1,3}|[^\sA-Za-z0-9]")
MESSAGE_OVERHEAD = 4
REPLY_PRIMER = 3


def count_text(text: str) -> int:
    """Estimated tokens of ``text``."""
    if not text:
        return 0
    total = 0
    for piece in _PIECES.findall(text):
        total += (len(piece) + 3) // 4 if piece[0].isascii() and piece.isalpha() else 1
    return total


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
