"""Splitting text into overlapping passages that end at natural boundaries.

Each passage is about `chunk_chars` long and ends at the last paragraph break, else sentence
end, else line break, else space in its final 40%; the next one starts `overlap_chars` before
that end (moved forward to a word start), so a sentence cut by one passage is whole in the
next. Offsets index the extracted text; a passage's page is the page of its first character.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_CHUNK_CHARS", "DEFAULT_OVERLAP_CHARS", "Chunk", "split_into_chunks"]

DEFAULT_CHUNK_CHARS = 1200
DEFAULT_OVERLAP_CHARS = 200
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")


@dataclass(frozen=True)
class Chunk:
    """One passage: its text and where it sits in the document."""

    index: int
    text: str
    start: int
    end: int
    page: int = 0


def _boundary(text: str, start: int, end: int) -> int:
    """Where a passage from `start` should end, at most at `end` (exclusive)."""
    if end >= len(text):
        return len(text)
    floor = start + (end - start) * 6 // 10
    window = text[floor:end]
    paragraph = window.rfind("\n\n")
    if paragraph >= 0:
        return floor + paragraph + 2
    sentences = list(_SENTENCE_END.finditer(window))
    if sentences:
        return floor + sentences[-1].end()
    for separator in ("\n", " ", "\t"):
        found = window.rfind(separator)
        if found >= 0:
            return floor + found + 1
    return end  # one very long word: cut it


def _word_start(text: str, position: int, limit: int) -> int:
    """The first word start at or after `position` (not past `limit`)."""
    if position <= 0 or text[position - 1].isspace():
        return max(position, 0)
    index = position
    while index < limit and not text[index].isspace():
        index += 1
    while index < limit and text[index].isspace():
        index += 1
    return index if index < limit else position


def split_into_chunks(
    text: str,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overlap_chars: int = DEFAULT_OVERLAP_CHARS,
    page_starts: Sequence[int] = (),
) -> list[Chunk]:
    """The passages of `text`, in order; empty passages (whitespace only) are left out."""
    if chunk_chars <= 0 or overlap_chars < 0 or overlap_chars * 2 >= chunk_chars:
        raise ValueError("need chunk_chars > 0 and 0 <= overlap_chars < chunk_chars / 2")
    chunks: list[Chunk] = []
    start = 0
    length = len(text)
    while start < length:
        end = _boundary(text, start, min(start + chunk_chars, length))
        raw = text[start:end]
        stripped = raw.strip()
        if stripped:
            first = start + (len(raw) - len(raw.lstrip()))
            page = bisect.bisect_right(page_starts, first) if page_starts else 0
            chunks.append(Chunk(len(chunks), stripped, first, first + len(stripped), page))
        if end >= length:
            break
        following = _word_start(text, max(end - overlap_chars, start + 1), end)
        start = following if following > start else end
    return chunks
