"""A PostgreSQL schema of its own for one test: `from pg_helpers import PgSchema`.

Tests share the local ``test`` database; a fresh schema per test keeps their tables apart
without needing the right to create databases, and dropping it (CASCADE) removes
everything the test made.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

# Trust auth on the local server (user postgres); CI may point elsewhere.
PG_BASE_DSN = os.environ.get("HEADRACE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class PgSchema:
    """``dsn`` sets ``search_path`` to ``schema``, so unqualified table names land there;
    ``base_dsn`` is the same database without it (qualify names as ``schema.table``)."""

    dsn: str
    schema: str
    base_dsn: str


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` (a URL) with ``options=-c search_path=<schema>`` added."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={quote(f'-c search_path={schema}', safe='')}"


@contextmanager
def fresh_schema(base_dsn: str = PG_BASE_DSN) -> Iterator[PgSchema]:
    """Create ``t_<uuid>``, yield it, drop it with everything in it. Raises
    ``psycopg.OperationalError`` when the server cannot be reached."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield PgSchema(with_search_path(base_dsn, schema), schema, base_dsn)
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
