"""Text extraction and chunking as pure functions: boundaries, overlap, offsets, pages."""

from __future__ import annotations

import itertools

import pytest

from agentmesh.common.v1 import knowledge_pb2
from agentmesh_memory.ingest import (
    DocumentRejected,
    detect_format,
    extract_text,
    split_into_chunks,
)
from agentmesh_memory.testing import pdf_document

SENTENCES = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(80))


def test_chunks_overlap_end_at_sentences_and_cover_the_text() -> None:
    chunks = split_into_chunks(SENTENCES, chunk_chars=300, overlap_chars=80)
    assert len(chunks) > 10
    for chunk in chunks:
        assert SENTENCES[chunk.start : chunk.end] == chunk.text
        assert len(chunk.text) <= 300
    for before, after in itertools.pairwise(chunks):
        assert before.start < after.start < before.end, "consecutive passages overlap"
        assert before.text.endswith("."), "a passage ends at a sentence end"
        assert SENTENCES[after.start - 1] == " ", "a passage starts at a word"
    assert chunks[0].start == 0
    assert chunks[-1].end == len(SENTENCES)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_paragraphs_win_over_sentences_and_long_words_are_cut() -> None:
    text = "First paragraph here. " * 7 + "\n\n" + "Second paragraph. " * 20
    first = split_into_chunks(text, chunk_chars=200, overlap_chars=20)[0]
    assert first.text == text.split("\n\n")[0].strip()
    word = "x" * 1000
    pieces = split_into_chunks(word, chunk_chars=300, overlap_chars=50)
    assert all(len(p.text) <= 300 for p in pieces)
    assert pieces[-1].end == 1000
    with pytest.raises(ValueError, match="overlap_chars"):
        split_into_chunks(text, chunk_chars=100, overlap_chars=50)


def test_pdf_pages_map_to_passages() -> None:
    pdf = pdf_document(["Alpha page one. " * 20, "Beta page two. " * 20], title="Greek")
    extracted = extract_text(pdf, detect_format(0, "x.pdf", pdf))
    assert extracted.title == "Greek"
    assert len(extracted.page_starts) == 2
    chunks = split_into_chunks(
        extracted.text, chunk_chars=200, overlap_chars=20, page_starts=extracted.page_starts
    )
    assert {c.page for c in chunks if "Alpha" in c.text} == {1}
    assert {c.page for c in chunks if "Alpha" not in c.text} == {2}


def test_formats_are_told_by_declaration_then_name_then_bytes() -> None:
    pdf = knowledge_pb2.DOCUMENT_FORMAT_PDF
    assert detect_format(knowledge_pb2.DOCUMENT_FORMAT_HTML, "a.pdf", b"%PDF-") == 3
    assert detect_format(0, "README.MD", b"") == knowledge_pb2.DOCUMENT_FORMAT_MARKDOWN
    assert detect_format(0, "upload", b"%PDF-1.4") == pdf
    assert detect_format(0, "upload", b"hello") == knowledge_pb2.DOCUMENT_FORMAT_TEXT
    with pytest.raises(DocumentRejected, match="is a PDF, not text"):
        extract_text(b"%PDF-1.4 ...", knowledge_pb2.DOCUMENT_FORMAT_TEXT)
    with pytest.raises(DocumentRejected, match="NUL"):
        extract_text(b"a\x00b", knowledge_pb2.DOCUMENT_FORMAT_TEXT)
    html = extract_text(
        b"<p>one</p><div>two<br>three</div><noscript>hidden</noscript>",
        knowledge_pb2.DOCUMENT_FORMAT_HTML,
        "page.html",
    )
    assert html.text == "one\n\ntwo\nthree"
    assert html.title == "page.html"
    assert extract_text(b"\xef\xbb\xbfBOM text\r\nline", 1).text == "BOM text\nline"
