"""Reading an upload: the stream within its size limit, then the text and its passages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh_memory.ingest import extract_text, split_into_chunks
from agentmesh_memory.names import invalid

__all__ = ["read_passages", "read_upload"]


async def read_upload(
    parts: AsyncIterator[kpb.UploadDocumentRequest], max_bytes: int
) -> tuple[kpb.DocumentUpload, bytes]:
    """The header and the bytes of an upload stream; INVALID_ARGUMENT as soon as it is
    malformed or passes `max_bytes` (the server's error mapping reads and drops the rest
    before it answers)."""
    header: kpb.DocumentUpload | None = None
    received = bytearray()
    async for part in parts:
        kind = part.WhichOneof("part")
        if kind == "header":
            if header is not None:
                raise invalid("header", "only the first message of an upload may be a header")
            header = part.header
        elif kind == "data":
            if header is None:
                raise invalid("header", "the first message of an upload must be the header")
            received += part.data
            if len(received) > max_bytes:
                name = header.document.display_name or header.document_id or "the document"
                raise invalid(
                    "data",
                    f"document {name!r} is larger than the limit of {max_bytes} bytes",
                )
        else:
            raise invalid("part", "each message must hold a header or data")
    if header is None:
        raise invalid("header", "the upload is empty; send a header, then the document's bytes")
    return header, bytes(received)


def read_passages(
    data: bytes, document_format: int, display_name: str, chunk_chars: int, overlap: int
) -> tuple[Any, list[Any]]:
    extracted = extract_text(data, document_format, display_name)
    passages = split_into_chunks(
        extracted.text,
        chunk_chars=chunk_chars,
        overlap_chars=overlap,
        page_starts=extracted.page_starts,
    )
    return extracted, passages
