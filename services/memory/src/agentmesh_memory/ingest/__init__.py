"""Reading documents into passages: text extraction per format, then overlapping chunks.

Pure functions, no I/O and no database: :func:`extract_text` turns uploaded bytes into text
(plain text, Markdown, HTML, PDF) or raises :class:`DocumentRejected` saying what is wrong
with the document; :func:`split_into_chunks` cuts the text into passages with overlap,
character offsets and pages. PDF parsing is CPU work: callers run it off the event loop.
"""

from .chunking import Chunk, split_into_chunks
from .formats import DocumentRejected, ExtractedText, detect_format, extract_text

__all__ = [
    "Chunk",
    "DocumentRejected",
    "ExtractedText",
    "detect_format",
    "extract_text",
    "split_into_chunks",
]
