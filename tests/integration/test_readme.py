"""The README's Python snippets run as they are written (in a scratch directory, so their
outputs land there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_snippets() -> list[tuple[int, str]]:
    """Every ```python block of the README, with the line it starts on."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    ]


def test_the_readme_has_python_snippets() -> None:
    assert len(python_snippets()) >= 2


@pytest.mark.parametrize(
    ("line", "code"), python_snippets(), ids=[f"line {n}" for n, _ in python_snippets()]
)
def test_a_readme_snippet_runs(
    line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__readme__"})
