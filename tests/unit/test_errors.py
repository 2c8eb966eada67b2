"""The error-type vocabulary is a public contract: the README's table is the code's."""

from __future__ import annotations

import re
from pathlib import Path

from headrace.errors import ErrorType, Stage

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> dict[str, set[str]]:
    text = README.read_text()
    section = text.split("### Error types", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", section, flags=re.M)
    return {name: set(re.findall(r"`([a-z]+)`", stages)) for name, stages in rows}


def test_the_readme_lists_every_error_type_and_no_other() -> None:
    table = readme_table()
    assert sorted(table) == sorted(t.value for t in ErrorType)


def test_every_stage_in_the_readme_is_a_stage() -> None:
    stages = {s.value for s in Stage}
    for name, named in readme_table().items():
        assert named and named <= stages, (name, named)


def test_error_types_are_lowercase_words_joined_by_hyphens() -> None:
    """Safe as header values, label values and column values alike."""
    for t in ErrorType:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", t.value), t
