"""The vector search the gateway runs: pgvector HNSW over the corpus's chunks.

Schema (built by :mod:`ragstress.reference.corpus`)::

    chunks(id bigint primary key, doc_id integer, title text, body text, embedding vector(384))
    chunks_embedding_hnsw: HNSW index on embedding with vector_cosine_ops

Embeddings are L2-normalised, so cosine distance orders like inner product. ``hnsw.ef_search``
is set once per pooled connection (``configure``), not per query: psycopg prepares a query
after it has run 5 times on a connection, and a per-query ``SET`` would both cost a round
trip and make the prepared plan's behaviour depend on the connection's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = ["EMBEDDING_DIM", "SEARCH_SQL", "Source", "open_pool", "search_chunks", "vector_literal"]

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2

SEARCH_SQL = (
    "SELECT id, doc_id, title, body, embedding <=> %(q)s::vector AS distance "
    "FROM chunks ORDER BY embedding <=> %(q)s::vector LIMIT %(k)s"
)


@dataclass(frozen=True)
class Source:
    """One retrieved chunk."""

    chunk_id: int
    doc_id: int
    title: str
    text: str
    distance: float


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, ``[0.1,0.2,…]``; 7 significant digits keep float32 exact enough."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def open_pool(dsn: str, size: int, ef_search: int) -> AsyncConnectionPool:
    """An (unopened) async pool of ``size`` connections with ``hnsw.ef_search`` set on each.

    Open it with ``await pool.open(wait=True)`` and close it with ``await pool.close()``.
    """

    async def configure(conn: psycopg.AsyncConnection) -> None:
        # ef_search is an integer we validated; SET does not take bind parameters.
        await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
        await conn.commit()

    return AsyncConnectionPool(
        dsn,
        min_size=size,
        max_size=size,
        open=False,
        configure=configure,
        kwargs={"autocommit": True},
    )


async def search_chunks(
    conn: psycopg.AsyncConnection, embedding: Sequence[float], top_k: int
) -> list[Source]:
    """The ``top_k`` chunks nearest to ``embedding``, nearest first."""
    cur = await conn.execute(SEARCH_SQL, {"q": vector_literal(embedding), "k": top_k})
    rows = await cur.fetchall()
    return [
        Source(
            chunk_id=int(r[0]),
            doc_id=int(r[1]),
            title=str(r[2]),
            text=str(r[3]),
            distance=float(r[4]),
        )
        for r in rows
    ]
