"""Collections and documents: ingestion of each format, refusals that store nothing, cascading
deletes, full-text search (ranking, filters, highlights, pages) and tenancy, on both engines."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import sqlalchemy as sa

from agentmesh.common.v1 import knowledge_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh_memory.db import Database
from agentmesh_memory.db.tables import chunks, documents
from agentmesh_memory.testing import (
    Api,
    memory_settings,
    pdf_document,
    rpc_error,
    start_memory,
    violation_fields,
)

COLLECTION = "collections/library"
ANY = knowledge_pb2.SEARCH_MODE_ANY_TERM


def parts(
    data: bytes,
    *,
    name: str = "",
    document_id: str = "",
    parent: str = COLLECTION,
    document_format: int = 0,
    metadata: dict[str, str] | None = None,
    chunk_chars: int = 0,
    piece: int = 700,
    request_id: str = "",
) -> Iterator[kpb.UploadDocumentRequest]:
    header = kpb.DocumentUpload(
        parent=parent,
        document_id=document_id,
        document=knowledge_pb2.Document(
            display_name=name, format=document_format, metadata=metadata or {}
        ),
        chunking=knowledge_pb2.ChunkingOptions(chunk_chars=chunk_chars),
        request_id=request_id,
    )
    yield kpb.UploadDocumentRequest(header=header)
    for start in range(0, len(data), piece):
        yield kpb.UploadDocumentRequest(data=data[start : start + piece])


async def upload(api: Api, data: bytes, **options: object) -> knowledge_pb2.Document:
    reply = await api.UploadDocument(parts(data, **options))  # type: ignore[arg-type]
    return reply.document  # type: ignore[no-any-return]


async def search(api: Api, query: str, **fields: object) -> kpb.SearchDocumentsResponse:
    fields.setdefault("parent", COLLECTION)
    return await api.SearchDocuments(  # type: ignore[no-any-return]
        kpb.SearchDocumentsRequest(query=query, **fields)  # type: ignore[arg-type]
    )


@pytest.fixture
async def library(api: Api) -> Api:
    await api.CreateCollection(
        kpb.CreateCollectionRequest(
            collection_id="library",
            collection=knowledge_pb2.Collection(display_name="Library", description="books"),
        )
    )
    return api


LONG_TEXT = "\n\n".join(
    f"Paragraph {i}. " + " ".join(f"filler{i}w{j}" for j in range(30)) + "." for i in range(12)
)


async def test_each_format_becomes_overlapping_passages_with_positions(library: Api) -> None:
    api = library
    text = await upload(api, LONG_TEXT.encode(), name="notes.txt", chunk_chars=400)
    assert text.format == knowledge_pb2.DOCUMENT_FORMAT_TEXT
    assert text.title == "notes.txt"
    assert text.chunk_count >= 6
    assert text.text_chars == len(LONG_TEXT)
    found = await search(api, "filler3w5", page_size=5)
    citation = found.results[0].citation
    assert citation.document == text.name
    assert LONG_TEXT[citation.start_offset : citation.end_offset] == citation.text
    markdown = await upload(
        api, b"# Walrus Guide\n\nWalruses haul out on sea ice.\n", name="walrus.md"
    )
    assert (markdown.format, markdown.title) == (
        knowledge_pb2.DOCUMENT_FORMAT_MARKDOWN,
        "Walrus Guide",
    )

    html = (
        b"<html><head><title>Otters</title><style>.x{color:red}</style></head><body>"
        b"<h1>Sea otters</h1><p>Otters crack shells with stones &amp; rocks.</p>"
        b"<script>var hidden = 'scriptword';</script></body></html>"
    )
    page = await upload(api, html, name="otters.html")
    assert (page.format, page.title) == (knowledge_pb2.DOCUMENT_FORMAT_HTML, "Otters")
    otters = await search(api, "shells stones")
    assert otters.results[0].citation.text.startswith("Sea otters\n")
    assert "& rocks" in otters.results[0].citation.text
    assert not (await search(api, "scriptword")).results, "script text is not indexed"
    assert not (await search(api, "color")).results, "style text is not indexed"

    pdf = pdf_document(
        ["Penguins live in the south.\nThey cannot fly.", "Puffins nest on northern cliffs."],
        title="Seabirds",
    )
    booklet = await upload(api, pdf, name="birds.bin")  # told by its bytes, not its name
    assert booklet.format == knowledge_pb2.DOCUMENT_FORMAT_PDF
    assert (booklet.title, booklet.page_count) == ("Seabirds", 2)
    assert booklet.sha256
    assert booklet.size_bytes == len(pdf)
    puffins = (await search(api, "puffins")).results[0].citation
    assert (puffins.document, puffins.page, puffins.document_title) == (booklet.name, 1, "Seabirds")
    longer = pdf_document(
        ["Penguins live in the south. " * 8, "Puffins nest on northern cliffs. " * 10]
    )
    small = await upload(api, longer, name="again.pdf", chunk_chars=200, document_id="birds-2")
    by_page = await search(api, "puffins cliffs", documents=[small.name])
    assert 2 in {r.citation.page for r in by_page.results}
    assert {
        r.citation.page for r in (await search(api, "penguins", documents=["birds-2"])).results
    } == {1}

    listed = await api.ListDocuments(kpb.ListDocumentsRequest(parent=COLLECTION, page_size=2))
    assert len(listed.documents) == 2
    assert listed.next_page_token
    collection = (await api.GetCollection(kpb.GetCollectionRequest(name=COLLECTION))).collection
    assert collection.document_count == 5
    assert collection.size_bytes == sum(
        d.size_bytes for d in (text, markdown, page, booklet, small)
    )
    assert collection.chunk_count == sum(
        d.chunk_count for d in (text, markdown, page, booklet, small)
    )


async def test_bad_documents_are_refused_by_name_and_nothing_is_stored(
    library: Api, database_url: str, tenant: str
) -> None:
    api = library
    cases = [
        (b"caf\xe9 latin-1", {"name": "menu.txt"}, "is not UTF-8 text"),
        (b"not a pdf at all", {"name": "scan.pdf"}, "is not a PDF"),
        (b"%PDF-1.7\n garbage \x00\x01", {"name": "broken.pdf"}, "is not a readable PDF"),
        (pdf_document([""]), {"name": "blank.pdf"}, "has no text layer"),
        (b"   \n\n  ", {"name": "empty.md"}, "has no text to index"),
        (b"text", {"name": "x.txt", "chunk_chars": 50}, ""),
    ]
    for data, options, words in cases:
        error = await rpc_error(upload(api, data, **options), grpc.StatusCode.INVALID_ARGUMENT)
        if words:
            assert str(options["name"]) in error.message, error
            assert words in error.message, error
            assert violation_fields(error) == {"data"}
        else:
            assert violation_fields(error) == {"header.chunking.chunk_chars"}
    missing = await rpc_error(
        upload(api, b"x", parent="collections/nope"), grpc.StatusCode.NOT_FOUND
    )
    assert "collections/nope" in missing.message
    assert not (await api.ListDocuments(kpb.ListDocumentsRequest(parent=COLLECTION))).documents

    # The size limit is enforced while the stream is read.
    running = await start_memory(memory_settings(database_url, max_document_bytes="2048"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            limited = Api(channel, tenant)
            # Refused part-way while the client still sends: the rest is read and dropped
            # first, so the client sees this error, not a failed write (INTERNAL), each time.
            for _ in range(10):
                error = await rpc_error(
                    upload(limited, b"word " * 20_000, name="big.txt", piece=512),
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                assert "big.txt" in error.message
                assert "2048" in error.message
            header_only = await upload(limited, b"ok text", name="small.txt")
            assert header_only.chunk_count == 1
    finally:
        await running.stop()


async def test_a_failed_ingestion_rolls_back_every_passage(
    library: Api, db: Database, engine: str, tenant: str
) -> None:
    """A database failure half-way through the passages (a trigger refusing one) leaves
    neither the document nor any passage behind."""
    trigger = f"poison_{uuid.uuid4().hex[:8]}"
    if engine == "sqlite":
        create = [
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON chunks WHEN new.tenant_id = '{tenant}' "
            "AND new.content LIKE '%POISON%' BEGIN SELECT RAISE(ABORT, 'poisoned passage'); END"
        ]
        drop = [f"DROP TRIGGER {trigger}"]
    else:
        create = [
            f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.tenant_id = '{tenant}' AND NEW.content LIKE '%POISON%' THEN "
            "RAISE EXCEPTION 'poisoned passage'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON chunks FOR EACH ROW "
            f"EXECUTE FUNCTION {trigger}()",
        ]
        drop = [f"DROP TRIGGER {trigger} ON chunks", f"DROP FUNCTION {trigger}()"]
    async with db.write("install trigger") as conn:
        for statement in create:
            await conn.execute(sa.text(statement))
    try:
        text = LONG_TEXT.replace("Paragraph 9.", "Paragraph 9. POISON")
        with pytest.raises(grpc.aio.AioRpcError):
            await upload(library, text.encode(), name="poisoned.txt", chunk_chars=400)
    finally:
        async with db.write("remove trigger") as conn:
            for statement in drop:
                await conn.execute(sa.text(statement))
    async with db.read("check") as conn:
        assert (
            await conn.execute(sa.select(sa.func.count()).where(documents.c.tenant_id == tenant))
        ).scalar() == 0
        assert (
            await conn.execute(sa.select(sa.func.count()).where(chunks.c.tenant_id == tenant))
        ).scalar() == 0
    assert not (await search(library, "filler2w3")).results, "nothing reached the index"


async def test_deleting_cascades_to_passages_and_their_index(
    library: Api, db: Database, tenant: str
) -> None:
    api = library
    kept = await upload(api, b"Kestrels hover over fields.", name="kestrel.txt")
    gone = await upload(api, b"Kestrels and falcons share fields.", name="falcon.txt")
    assert len((await search(api, "kestrels")).results) == 2
    await api.DeleteDocument(kpb.DeleteDocumentRequest(name=gone.name))
    assert [r.citation.document for r in (await search(api, "kestrels")).results] == [kept.name]
    assert not (await search(api, "falcons")).results
    await rpc_error(
        api.GetDocument(kpb.GetDocumentRequest(name=gone.name)), grpc.StatusCode.NOT_FOUND
    )
    await api.DeleteCollection(kpb.DeleteCollectionRequest(name=COLLECTION))
    await rpc_error(search(api, "kestrels"), grpc.StatusCode.NOT_FOUND)
    assert not (await search(api, "kestrels", parent="collections/-")).results
    async with db.read("check") as conn:
        left = await conn.execute(sa.select(sa.func.count()).where(chunks.c.tenant_id == tenant))
        assert left.scalar() == 0


async def test_search_ranks_filters_highlights_and_pages(library: Api) -> None:
    api = library
    await api.CreateCollection(kpb.CreateCollectionRequest(collection_id="archive"))
    solar = await upload(
        api,
        b"Solar panels turn sunlight into power. Solar farms need sunlight all day. "
        b"Sunlight is free.",
        name="solar.txt",
        metadata={"topic": "energy", "year": "2024"},
        document_id="solar",
    )
    wind = await upload(
        api,
        b"Wind turbines make power from moving air. Some farms mix wind and solar.",
        name="wind.txt",
        metadata={"topic": "energy", "year": "2023"},
        document_id="wind",
    )
    bread = await upload(
        api, b"Bread needs flour, water and salt.", name="bread.txt", metadata={"topic": "food"}
    )
    elsewhere = await upload(
        api, b"Solar eclipses darken the sky.", parent="collections/archive", document_id="solar"
    )

    ranked = await search(api, "solar sunlight", mode=ANY)
    assert [r.citation.document for r in ranked.results] == [solar.name, wind.name]
    assert ranked.results[0].citation.score > ranked.results[1].citation.score
    assert "<mark>" in ranked.results[0].snippet
    assert "</mark>" in ranked.results[0].snippet
    every = await search(api, "solar power")
    assert {r.citation.document for r in every.results} == {solar.name, wind.name}
    assert [r.citation.document for r in (await search(api, "solar -wind")).results] == [solar.name]
    assert [r.citation.document for r in (await search(api, '"moving air"')).results] == [wind.name]
    either = await search(api, "bread OR turbines")
    assert {r.citation.document for r in either.results} == {wind.name, bread.name}
    # Stemming: "farm" finds "farms".
    assert {r.citation.document for r in (await search(api, "farm")).results} == {
        solar.name,
        wind.name,
    }
    marked = await search(
        api, "eclipses", parent="collections/-", highlight_start="[", highlight_end="]"
    )
    assert marked.results[0].citation.document == elsewhere.name
    assert "[eclipses]" in marked.results[0].snippet.lower()

    # Filters: collection, documents by name or bare id, metadata.
    anywhere = await search(api, "solar", parent="collections/-")
    assert {r.citation.document for r in anywhere.results} == {
        solar.name,
        wind.name,
        elsewhere.name,
    }
    only_archive = await search(
        api,
        "solar",
        parent="collections/-",
        collections=["collections/archive", "collections/none"],
    )
    assert [r.citation.document for r in only_archive.results] == [elsewhere.name]
    by_id = await search(api, "solar", parent="collections/-", documents=["solar"])
    assert {r.citation.document for r in by_id.results} == {solar.name, elsewhere.name}
    by_name = await search(api, "solar", documents=[wind.name])
    assert [r.citation.document for r in by_name.results] == [wind.name]
    recent = await search(api, "solar", metadata={"topic": "energy", "year": "2024"})
    assert [r.citation.document for r in recent.results] == [solar.name]

    # Pages: every hit once, in rank order; a token only serves its own query.
    seen: list[str] = []
    token = ""
    while True:
        page = await search(
            api,
            "solar OR wind OR bread OR eclipses",
            parent="collections/-",
            page_size=1,
            page_token=token,
        )
        seen += [r.citation.document for r in page.results]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 4
    first = await search(api, "solar", page_size=1)
    error = await rpc_error(
        search(api, "wind", page_token=first.next_page_token), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violation_fields(error) == {"page_token"}


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"query": "   "}, "query"),
        ({"query": "-only -negative"}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "ok", "parent": "libraries/x"}, "parent"),
        ({"query": "ok", "page_size": 101}, "page_size"),
        ({"query": "ok", "collections": ["collections/a"]}, "collections"),
        ({"query": "ok", "documents": ["a/b"]}, "documents[0]"),
        ({"query": "ok", "highlight_start": 'a"b'}, "highlight_start"),
        ({"query": "ok", "page_token": "garbage"}, "page_token"),
    ],
)
async def test_bad_searches_name_the_field(
    library: Api, request_fields: dict[str, object], field: str
) -> None:
    request_fields.setdefault("parent", COLLECTION)
    error = await rpc_error(
        library.SearchDocuments(kpb.SearchDocumentsRequest(**request_fields)),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {field}


async def test_another_tenant_sees_no_collection_document_or_passage(library: Api) -> None:
    api = library
    document = await upload(api, b"Confidential merger plans for Acme.", name="secret.txt")
    intruder = api.as_tenant(api.tenant + "-intruder")
    calls = [
        intruder.GetCollection(kpb.GetCollectionRequest(name=COLLECTION)),
        intruder.ListDocuments(kpb.ListDocumentsRequest(parent=COLLECTION)),
        intruder.GetDocument(kpb.GetDocumentRequest(name=document.name)),
        intruder.DeleteDocument(kpb.DeleteDocumentRequest(name=document.name)),
        intruder.DeleteCollection(kpb.DeleteCollectionRequest(name=COLLECTION)),
        search(intruder, "merger"),
        upload(intruder, b"planted", name="plant.txt"),
    ]
    for call in calls:
        error = await rpc_error(call, grpc.StatusCode.NOT_FOUND)
        assert api.tenant not in error.message
    assert not (await intruder.ListCollections(kpb.ListCollectionsRequest())).collections
    assert not (await search(intruder, "merger", parent="collections/-")).results
    assert not (
        await search(intruder, "merger", parent="collections/-", documents=[document.name])
    ).results
    # The owner's document is untouched.
    assert (await search(api, "merger")).results[0].citation.document == document.name


async def test_uploads_are_idempotent_and_ids_unique(library: Api) -> None:
    api = library
    first = await upload(
        api, b"Herons wade.", name="heron.txt", request_id="up-1", document_id="heron"
    )
    again = await upload(
        api, b"Herons wade.", name="heron.txt", request_id="up-1", document_id="heron"
    )
    assert again == first
    await rpc_error(
        upload(api, b"Other text.", name="heron.txt", document_id="heron"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await rpc_error(
        api.CreateCollection(kpb.CreateCollectionRequest(collection_id="library")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    error = await rpc_error(
        api.CreateCollection(kpb.CreateCollectionRequest(collection_id="Bad Id")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"collection_id"}

    async def no_header() -> AsyncIterator[kpb.UploadDocumentRequest]:
        yield kpb.UploadDocumentRequest(data=b"x")

    error = await rpc_error(api.UploadDocument(no_header()), grpc.StatusCode.INVALID_ARGUMENT)
    assert violation_fields(error) == {"header"}


async def test_a_question_ranks_passages_with_more_of_its_words_first_across_pages(
    library: Api,
) -> None:
    """Any-word search of 3+ words ranks passages holding two or more of them before those
    holding one, and pages through both without repeating or losing a passage."""
    api = library
    texts = {
        "both": "Albatross and petrel nest here.",
        "three": "Albatross, petrel and gannet share the cliff.",
        "one-a": "An albatross glides.",
        "one-b": "A petrel dives.",
        "one-c": "The gannet plunges.",
        "none": "Nothing about seabirds.",
    }
    names = {}
    for key, text in texts.items():
        names[key] = (await upload(api, text.encode(), document_id=key)).name
    seen: list[str] = []
    token = ""
    while True:
        page = await search(api, "albatross petrel gannet", mode=ANY, page_size=2, page_token=token)
        seen += [r.citation.document for r in page.results]
        token = page.next_page_token
        if not token:
            break
    assert set(seen[:2]) == {names["three"], names["both"]}
    assert set(seen[2:]) == {names["one-a"], names["one-b"], names["one-c"]}
    assert len(seen) == 5
