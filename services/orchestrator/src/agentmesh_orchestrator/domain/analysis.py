"""The router's analysis of a goal: decided by the goal's shape where that is clear, else by
the model.

Small local models cannot classify goals: SmolLM2-135M, constrained to the three kinds, got
3 of 7 test goals right with either of two prompts (mostly answering "simple"). Two shapes
need no model at all: one short question that touches no tool is answered directly; a goal
that lists several parts (and is not a question) needs a plan. Everything else, and every
goal when the shortcuts are off (``EngineSettings.router_shortcuts``), is the model's call.
The shortcuts are conservative on purpose: a question with a number in it, or naming a
word of a tool's name or description, goes to the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["shape_of"]

_SHORT_QUESTION_WORDS = 20
_MULTI_PART_WORDS = 12
_WORD = re.compile(r"[A-Za-z]{4,}")
_NUMBER = re.compile(r"\d")  # "2 to the 10th", "15% of 80": numbers may need a calculator
_SENTENCE_END = re.compile(r"[.!?](?:\s+|$)")
# Separators of the parts of a list: "a, b and c", "a; b", "first ..., then ...".
_PARTS = re.compile(r",|;|\band then\b|\bthen\b|\band\b")
_TIME_WORDS = {"time", "date", "today", "tomorrow", "yesterday", "now", "clock", "remember"}
_COMMON = {"what", "which", "when", "where", "whom", "whose", "with", "this", "that", "these"}
_COMMON |= {"those", "from", "have", "does", "your", "about", "into", "there", "their", "they"}


def shape_of(goal: str, tool_texts: Iterable[str] = ()) -> tuple[str, str] | None:
    """("simple" | "complex", why) when the goal's shape decides it, else None.

    ``tool_texts`` are the names and descriptions of the tools the session may use.
    """
    text = " ".join(goal.split())
    words = text.split(" ")
    if _is_short_question(text, words) and not _touches_tools(text, tool_texts):
        return "simple", "one short question: one agent answers it directly"
    if not text.endswith("?") and len(words) >= _MULTI_PART_WORDS and _parts(text) >= 3:
        return "complex", "the goal lists several parts: a plan gives each part a task"
    return None


def _is_short_question(text: str, words: list[str]) -> bool:
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    return text.endswith("?") and len(sentences) == 1 and len(words) <= _SHORT_QUESTION_WORDS


def _touches_tools(text: str, tool_texts: Iterable[str]) -> bool:
    if _NUMBER.search(text):
        return True
    goal_words = {w.lower() for w in _WORD.findall(text)} | {
        w for w in re.findall(r"[a-z]+", text.lower()) if w in _TIME_WORDS
    }
    if goal_words & _TIME_WORDS:
        return True
    tool_words = {w.lower() for t in tool_texts for w in _WORD.findall(t)}
    return bool((goal_words - _COMMON) & tool_words)


def _parts(text: str) -> int:
    """How many parts the goal lists: sentences, or items of its longest list."""
    sentences = [s for s in _SENTENCE_END.split(text) if len(s.split()) >= 3]
    items = max((len(_PARTS.split(s)) for s in sentences), default=1)
    return max(len(sentences), items)
