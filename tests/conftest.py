"""Fixtures for tests against real services: a Tansu broker and a PostgreSQL schema.

No mocks: tests that need Kafka get a real Kafka-protocol broker (Tansu, in memory), and
tests that need PostgreSQL get a fresh schema in the local ``test`` database, dropped
after the test. See DEVELOPERS.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from kafka_helpers import TansuBroker
from pg_helpers import PG_BASE_DSN, PgSchema, fresh_schema


@pytest.fixture
def tansu() -> Iterator[TansuBroker]:
    """A fresh broker for one test: nothing another test produced is visible."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def tansu_session() -> Iterator[TansuBroker]:
    """One broker for the whole session; tests must use topic names of their own."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture
def pg_dsn() -> Iterator[PgSchema]:
    """A fresh schema ``t_<uuid>`` in the test database, dropped with its tables after.
    Skips the test, naming the DSN, when PostgreSQL cannot be reached."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_BASE_DSN, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            # CI machines run PostgreSQL: a skip there would hide a broken setup.
            pytest.fail(f"PostgreSQL not reachable at {PG_BASE_DSN}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE_DSN}: {exc}")
    with fresh_schema(PG_BASE_DSN) as pg:
        yield pg


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the services their fixtures start, so ``-m kafka`` / ``-m postgres``
    select (or ``-m "not kafka"`` skips) them without anyone remembering to mark them."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "tansu" in names or "tansu_session" in names:
            item.add_marker(pytest.mark.kafka)
        if "pg_dsn" in names:
            item.add_marker(pytest.mark.postgres)
        if "browser" in names:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed by the test setup when missing."""
    from system_packages import ensure_command

    return ensure_command("chromium", "chromium")


@pytest.fixture
def browser(chromium: str) -> Iterator[Any]:
    """A headless Chromium, driven by Playwright. One per test, not per session:
    Playwright's synchronous API runs an event loop on this thread while it is open, and
    any later test that starts one of its own (``asyncio.run``) would fail."""
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
