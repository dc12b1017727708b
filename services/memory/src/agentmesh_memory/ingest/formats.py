"""Text extraction: plain text and Markdown (UTF-8), HTML (the body's text), PDF (pypdf)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from agentmesh.common.v1 import knowledge_pb2

__all__ = ["DocumentRejected", "ExtractedText", "detect_format", "extract_text"]

TEXT = knowledge_pb2.DOCUMENT_FORMAT_TEXT
MARKDOWN = knowledge_pb2.DOCUMENT_FORMAT_MARKDOWN
HTML = knowledge_pb2.DOCUMENT_FORMAT_HTML
PDF = knowledge_pb2.DOCUMENT_FORMAT_PDF

_EXTENSIONS = {
    ".txt": TEXT,
    ".text": TEXT,
    ".log": TEXT,
    ".csv": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".xhtml": HTML,
    ".pdf": PDF,
}
MAX_PDF_PAGES = 5000


class DocumentRejected(Exception):
    """The document cannot be read; the message says why, in words for its uploader."""


@dataclass(frozen=True)
class ExtractedText:
    """A document's text, its title, and where its pages start (PDF)."""

    text: str
    title: str
    format: int
    page_starts: tuple[int, ...] = ()  # offset of each page's first character, page 1 first


def detect_format(declared: int, display_name: str, data: bytes) -> int:
    """The declared format, else the name's extension, else PDF by its magic bytes, else text."""
    if declared:
        return declared
    lowered = display_name.lower()
    for extension, found in _EXTENSIONS.items():
        if lowered.endswith(extension):
            return found
    if data.startswith(b"%PDF-"):
        return PDF
    return TEXT


def extract_text(data: bytes, document_format: int, display_name: str = "") -> ExtractedText:
    """The text of `data` read as `document_format`; raises DocumentRejected."""
    if document_format == PDF:
        extracted = _pdf(data, display_name)
    else:
        text = _normalize(_utf8(data, document_format))
        if document_format == HTML:
            parser = _TextOfHtml()
            parser.feed(text)
            parser.close()
            extracted = ExtractedText(parser.text(), parser.title.strip() or display_name, HTML, ())
        elif document_format == MARKDOWN:
            heading = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
            title = heading.group(1) if heading else display_name
            extracted = ExtractedText(text, title, MARKDOWN)
        else:
            extracted = ExtractedText(text, display_name, TEXT)
    if not extracted.text.strip():
        if document_format == PDF:
            raise DocumentRejected(
                "has no text layer to index (scanned pages need text recognition first)"
            )
        raise DocumentRejected("has no text to index")
    return extracted


def _utf8(data: bytes, document_format: int) -> str:
    if data.startswith(b"%PDF-"):
        raise DocumentRejected("is a PDF, not text: upload it with the PDF format")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentRejected(
            f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
        ) from None
    if "\x00" in text:
        raise DocumentRejected("is not text: it contains NUL bytes")
    return text


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _pdf(data: bytes, display_name: str) -> ExtractedText:
    if not data.startswith(b"%PDF-"):
        raise DocumentRejected("is not a PDF (it does not start with %PDF-)")
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentRejected("is an encrypted PDF; upload it without a password")
        pages = reader.pages
        if len(pages) > MAX_PDF_PAGES:
            raise DocumentRejected(f"has {len(pages)} pages; at most {MAX_PDF_PAGES} are read")
        parts: list[str] = []
        starts: list[int] = []
        offset = 0
        for page in pages:
            starts.append(offset)
            text = _normalize(page.extract_text() or "").strip()
            parts.append(text)
            offset += len(text) + 2  # the blank line joining pages
        title = ""
        metadata = reader.metadata
        if metadata is not None and metadata.title:
            title = str(metadata.title)
    except DocumentRejected:
        raise
    except Exception as error:  # pypdf raises many types on malformed files
        raise DocumentRejected(f"is not a readable PDF: {type(error).__name__}: {error}") from None
    return ExtractedText("\n\n".join(parts), title.strip() or display_name, PDF, tuple(starts))


class _TextOfHtml(HTMLParser):
    """The visible text of an HTML document, with line breaks at block elements."""

    _SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    _BLOCKS = frozenset(
        {
            "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
            "table", "section", "article", "header", "footer", "blockquote", "pre", "hr",
            "dt", "dd", "nav", "main", "aside", "figure", "figcaption", "td", "th",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skipping = 0
        self._in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIPPED:
            self._skipping = max(self._skipping - 1, 0)
        elif tag in self._BLOCKS:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self._parts.append(data)

    def text(self) -> str:
        joined = "".join(self._parts)
        lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
