"""A PostgreSQL sink on psycopg 3: batched inserts, upserts by source position, and
exactly-once delivery by committing consumed offsets in the same transaction as outputs,
fenced against a worker that lost its partitions, and waiting out a database that is
away.

* :mod:`~headrace.connectors.postgres.sink`: :class:`PostgresSink`, what it writes, when;
* :mod:`~headrace.connectors.postgres.exactly_once`: claims, fenced commits, take-over;
* :mod:`~headrace.connectors.postgres.connection`: the one connection, and outages;
* :mod:`~headrace.connectors.postgres.tables`: the tables and their INSERT statements.

psycopg is the ``postgres`` extra: it is imported here first, so that without it this
import fails with one line that says what to install.
"""

from headrace.connectors.extras import MissingExtraError

try:
    import psycopg  # noqa: F401 - only checked here; the modules below use it
except ImportError as exc:
    raise MissingExtraError("PostgreSQL", "psycopg", "postgres", name="psycopg") from exc

from headrace.connectors.postgres.exactly_once import FencedError
from headrace.connectors.postgres.sink import PostgresSink
from headrace.connectors.postgres.tables import DuplicateRowError

__all__ = ["DuplicateRowError", "FencedError", "PostgresSink"]
