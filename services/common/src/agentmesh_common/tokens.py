"""The offline, deterministic token estimator shared by the gateway and the orchestrator.

No BPE files can be downloaded, so it approximates the tokenizers of current chat models: a
word piece costs one token per four characters (rounded up), each punctuation mark or symbol
one token, each non-ASCII character one token, plus a fixed overhead per message for the chat
template. The gateway bills with it when a provider reports no usage (and answers CountTokens
with it); the orchestrator budgets an agent's context window with the same numbers.
"""

from __future__ import annotations

import re

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
