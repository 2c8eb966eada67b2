"""The tables of the PostgreSQL sink, and the statements that write rows into them.

What changes with the layout of a table: its DDL (created if absent, never altered but
for the fencing columns of older offsets tables), the INSERT of each kind of row, and the
error for a row that is already there. The row values themselves come from
:mod:`headrace.connectors.rows`, shared with the SQLite sink.
"""

from __future__ import annotations

import re
from typing import Literal

import psycopg

from headrace.connectors.rows import FAILURE_COLUMNS, PREDICTION_COLUMNS, WINDOW_COLUMNS, WINDOW_KEY
from headrace.errors import HeadraceError

Mode = Literal["upsert", "insert"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")

PREDICTIONS = """
CREATE TABLE IF NOT EXISTS {table} (
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key text,
    prediction jsonb NOT NULL,
    model_name text NOT NULL,
    model_version text NOT NULL,
    model_sha256 text,
    event_time double precision,
    processed_at double precision NOT NULL,
    input jsonb,
    PRIMARY KEY (topic, partition, "offset")
)"""

WINDOWS = """
CREATE TABLE IF NOT EXISTS {table} (
    key text NOT NULL,
    window_start double precision NOT NULL,
    window_end double precision NOT NULL,
    partition integer NOT NULL,
    count integer NOT NULL,
    prediction jsonb NOT NULL,
    model_name text NOT NULL,
    model_version text NOT NULL,
    model_sha256 text,
    processed_at double precision NOT NULL,
    features jsonb,
    PRIMARY KEY (key, window_start, window_end, partition)
)"""

STATE = """
CREATE TABLE IF NOT EXISTS {table} (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition, key)
)"""

FAILURES = """
CREATE TABLE IF NOT EXISTS {table} (
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key text,
    stage text NOT NULL,
    error_type text NOT NULL,
    error text NOT NULL,
    model_name text,
    model_version text,
    input jsonb,
    raw bytea,
    attempts integer NOT NULL DEFAULT 1,
    PRIMARY KEY (topic, partition, "offset")
)"""

# next_offset is null for a partition claimed before anything of it was committed. epoch
# counts the claims of the partition (a worker that takes it over adds one); last_txn is
# a random number written by every transaction of its owner, to tell after a lost
# connection whether a COMMIT whose answer never came went through.
OFFSETS = """
CREATE TABLE IF NOT EXISTS {table} (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint,
    epoch bigint NOT NULL DEFAULT 0,
    last_txn bigint,
    PRIMARY KEY (consumer_group, topic, partition)
)"""

# Tables written by releases without fencing get the new columns.
OFFSETS_UPGRADE = """
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS last_txn bigint;
ALTER TABLE {table} ALTER COLUMN next_offset DROP NOT NULL"""


class DuplicateRowError(HeadraceError, RuntimeError):
    """In ``mode="insert"``, a row for the same source position (or key and window) is
    already in the table."""


def check_names(*tables: str | None) -> None:
    """Refuse a table name that is not a plain (schema-qualified) identifier: names go
    into the SQL text, not into parameters. ``None`` (no such table) passes.

    >>> check_names("predictions", "audit.dead_letters", None)
    >>> check_names("x; DROP TABLE y")
    Traceback (most recent call last):
    ...
    ValueError: table name 'x; DROP TABLE y' is not a plain (schema.)identifier
    """
    for t in tables:
        if t is not None and not _NAME.match(t):
            raise ValueError(f"table name {t!r} is not a plain (schema.)identifier")


class Inserts:
    """The INSERT statements of one sink: outputs, dead letters and window outputs, each
    replacing a row with the same key in ``mode="upsert"``."""

    def __init__(self, table: str, failures_table: str, windows_table: str | None, mode: Mode):
        conflict = (
            ' ON CONFLICT (topic, partition, "offset") DO UPDATE SET {cols}'
            if mode == "upsert"
            else ""
        )
        cols = (PREDICTION_COLUMNS, FAILURE_COLUMNS)
        self.prediction = (
            f'INSERT INTO {table} (topic, partition, "offset", {cols[0]}) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            + conflict.format(cols=_excluded(cols[0]))
        )
        self.failure = (
            f'INSERT INTO {failures_table} (topic, partition, "offset", {cols[1]}) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            + conflict.format(cols=_excluded(cols[1]))
        )
        self.window = (
            f"INSERT INTO {windows_table} ({WINDOW_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            + (
                f" ON CONFLICT ({WINDOW_KEY}) DO UPDATE SET {_excluded(WINDOW_COLUMNS)}"
                if mode == "upsert"
                else ""
            )
        )


def duplicate_row(
    exc: BaseException, *, mode: Mode, sink: str, table: str
) -> DuplicateRowError | None:
    """The error to raise instead of ``exc`` when it says that a row is already there and
    the sink inserts only; ``None`` for any other error, or in upsert mode."""
    if mode != "insert" or not isinstance(exc, psycopg.errors.UniqueViolation):
        return None
    detail = getattr(getattr(exc, "diag", None), "message_detail", None) or str(exc)
    return DuplicateRowError(
        f"sink {sink!r}: a row for this output is already in {table} ({detail}). "
        "In mode: insert a record read again (after a crash or a restart, records "
        "after the last commit are read again) cannot be written twice. Use mode: "
        "upsert, delivery: exactly-once, or an empty table."
    )


def _excluded(columns: str) -> str:
    return ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in columns.split(","))
