"""The reference stack's corpus: synthetic documents (Faker), chunked, embedded by the real
embedder, stored in pgvector with an HNSW index — built once, reused while its settings hold.

Documents read like a company knowledge base (products, teams, places, dates, figures) rather
than Faker's lorem ipsum, so that embeddings of a chunk and of a question made from it are
near for the reasons they would be on real text. Everything follows from
``CorpusSettings.seed`` through one ``Faker`` instance seeded for this corpus (never Faker's
shared random state), so the same settings give the same text, chunk for chunk.

Reuse: table ``ragstress_corpus`` holds a fingerprint of the settings, the embedding model
and the schema version; a start with the same fingerprint skips the build, any change
rebuilds from scratch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ragstress.reference.search import EMBEDDING_DIM, vector_literal
from ragstress.reference.settings import CHARS_PER_TOKEN, CorpusSettings

__all__ = [
    "BuildReport",
    "Chunk",
    "Document",
    "chunk_document",
    "corpus_fingerprint",
    "ensure_corpus",
    "generate_documents",
]

SCHEMA_VERSION = 1
EMBED_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
_EMBED_BATCH = 64  # inputs per embeddings request while building
# Fixed dates: Faker's "this decade" moves with today's date, which would change the corpus.
_FIRST_DAY = datetime.date(2020, 1, 1)
_LAST_DAY = datetime.date(2025, 12, 31)


@dataclass(frozen=True)
class Document:
    doc_id: int
    title: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    doc_id: int
    title: str
    text: str


def _sentence(f: Any, kind: int) -> str:
    """One knowledge-base sentence from a seeded Faker ``f``; ``kind`` picks the template."""
    templates = (
        lambda: (
            f"{f.company()} rolled out {f.catch_phrase().lower()} for customers in "
            f"{f.city()} on {f.date_between_dates(_FIRST_DAY, _LAST_DAY).isoformat()}."
        ),
        lambda: (
            f"The {f.job().lower()} team owns the {f.word()} service and answers "
            f"incidents within {f.random_int(5, 90)} minutes."
        ),
        lambda: (
            f"To {f.bs()}, open the {f.word()} settings page and choose {f.word()} before saving."
        ),
        lambda: (
            f"Invoices above {f.random_int(100, 20000)} dollars need approval from "
            f"{f.name()} in the {f.state()} office."
        ),
        lambda: (
            f"Our {f.color_name().lower()} plan includes {f.random_int(2, 500)} seats, "
            f"{f.random_int(1, 64)} GB of storage and support by {f.free_email_domain()}."
        ),
        lambda: (
            f"{f.name()} wrote that the {f.word()} release fixed "
            f"{f.random_int(2, 40)} bugs reported from {f.country()}."
        ),
        lambda: (
            f"Customers can {f.bs()} by calling {f.phone_number()} "
            f"between {f.random_int(6, 11)} am and {f.random_int(1, 9)} pm."
        ),
        lambda: (
            f"The {f.word()} warehouse at {f.street_address()} ships orders to "
            f"{f.city()} in {f.random_int(1, 14)} days."
        ),
    )
    return templates[kind % len(templates)]()


def generate_documents(settings: CorpusSettings) -> Iterator[Document]:
    """The corpus's documents, in order, from its seed."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(settings.seed)
    for doc_id in range(settings.documents):
        title = f"{fake.company()}: {fake.catch_phrase()}"
        paragraphs = []
        for _ in range(settings.paragraphs_per_document):
            n = fake.random_int(3, 6)
            paragraphs.append(" ".join(_sentence(fake, fake.random_int(0, 99)) for _ in range(n)))
        yield Document(doc_id=doc_id, title=title, paragraphs=tuple(paragraphs))


def chunk_document(doc: Document, chunk_tokens: int, first_chunk_id: int) -> list[Chunk]:
    """Cut a document into chunks of about ``chunk_tokens`` tokens (4 characters each) at word
    boundaries; a chunk never starts mid-word and the last one may be shorter."""
    limit = chunk_tokens * CHARS_PER_TOKEN
    chunks: list[Chunk] = []
    words = " ".join(doc.paragraphs).split()
    current: list[str] = []
    size = 0
    for word in words:
        extra = len(word) + (1 if current else 0)
        if current and size + extra > limit:
            chunks.append(
                Chunk(first_chunk_id + len(chunks), doc.doc_id, doc.title, " ".join(current))
            )
            current, size = [], 0
            extra = len(word)
        current.append(word)
        size += extra
    if current:
        chunks.append(Chunk(first_chunk_id + len(chunks), doc.doc_id, doc.title, " ".join(current)))
    return chunks


def iter_chunks(settings: CorpusSettings) -> Iterator[Chunk]:
    next_id = 0
    for doc in generate_documents(settings):
        chunks = chunk_document(doc, settings.chunk_tokens, next_id)
        next_id += len(chunks)
        yield from chunks


def corpus_fingerprint(settings: CorpusSettings) -> str:
    """What the stored corpus depends on; a change in any part means a rebuild."""
    payload = json.dumps(
        {
            "corpus": settings.model_dump(mode="json"),
            "model": EMBED_MODEL_ID,
            "schema": SCHEMA_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BuildReport:
    built: bool  # False: the stored corpus was reused
    documents: int
    chunks: int
    seconds: float


def _embed(embed_url: str, texts: Sequence[str]) -> list[list[float]]:
    body = json.dumps({"input": list(texts)}).encode()
    req = urllib.request.Request(
        f"{embed_url}/v1/embeddings", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = json.loads(resp.read())
    rows = sorted(data["data"], key=lambda d: d["index"])
    return [row["embedding"] for row in rows]


def _stored_fingerprint(conn: psycopg.Connection) -> tuple[str, int, int] | None:
    cur = conn.execute("SELECT to_regclass('ragstress_corpus') IS NOT NULL")
    row = cur.fetchone()
    if row is None or not row[0]:
        return None
    got = conn.execute("SELECT fingerprint, documents, chunks FROM ragstress_corpus").fetchone()
    if got is None:
        return None
    return str(got[0]), int(got[1]), int(got[2])


def ensure_corpus(
    dsn: str,
    embed_url: str,
    settings: CorpusSettings,
    progress: Callable[[str], None] = lambda _m: None,
) -> BuildReport:
    """Build the corpus in the database at ``dsn`` unless the same one is there already."""
    start = time.monotonic()
    fingerprint = corpus_fingerprint(settings)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        stored = _stored_fingerprint(conn)
        if stored is not None and stored[0] == fingerprint:
            return BuildReport(False, stored[1], stored[2], time.monotonic() - start)
        progress(
            f"building the corpus: {settings.documents} documents, "
            f"~{settings.chunk_tokens}-token chunks"
        )
        conn.execute("DROP TABLE IF EXISTS ragstress_corpus")
        conn.execute("DROP TABLE IF EXISTS chunks")
        conn.execute(
            f"CREATE TABLE chunks (id bigint PRIMARY KEY, doc_id integer NOT NULL, "
            f"title text NOT NULL, body text NOT NULL, embedding vector({EMBEDDING_DIM}) NOT NULL)"
        )
        n_chunks = 0
        batch: list[Chunk] = []

        def flush() -> None:
            nonlocal n_chunks
            vectors = _embed(embed_url, [c.text for c in batch])
            with (
                conn.cursor() as cur,
                cur.copy("COPY chunks (id, doc_id, title, body, embedding) FROM STDIN") as copy,
            ):
                for c, v in zip(batch, vectors, strict=True):
                    copy.write_row((c.chunk_id, c.doc_id, c.title, c.text, vector_literal(v)))
            n_chunks += len(batch)
            batch.clear()
            if n_chunks % (_EMBED_BATCH * 16) == 0:
                progress(f"  {n_chunks} chunks embedded")

        for chunk in iter_chunks(settings):
            batch.append(chunk)
            if len(batch) == _EMBED_BATCH:
                flush()
        if batch:
            flush()
        progress(f"  {n_chunks} chunks embedded; building the HNSW index")
        conn.execute(
            "CREATE INDEX chunks_embedding_hnsw ON chunks "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        conn.execute("ANALYZE chunks")
        conn.execute(
            "CREATE TABLE ragstress_corpus (fingerprint text NOT NULL, documents integer NOT "
            "NULL, chunks integer NOT NULL, settings jsonb NOT NULL, built_at timestamptz "
            "NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO ragstress_corpus (fingerprint, documents, chunks, settings) "
            "VALUES (%s, %s, %s, %s)",
            (fingerprint, settings.documents, n_chunks, settings.model_dump_json()),
        )
    return BuildReport(True, settings.documents, n_chunks, time.monotonic() - start)
