"""`headrace run` reading standard input that stays open: records stream, SIGTERM stops."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cli_helpers import HEADRACE

STDIN_PIPELINE = """
name: stdin-pipeline
source:
  type: jsonl
  path: "-"
  key_field: entity_id
model:
  type: callable
  name: slow
  version: "3"
  function: slowmodel:predict
batching:
  max_size: 64
  max_wait_ms: 5
runtime:
  commit_interval_ms: 20
  shutdown_timeout_s: 20
sinks:
  - type: jsonl
    path: {out}
"""


def event(entity: str, value: float) -> bytes:
    return msgspec.json.encode({"entity_id": entity, "features": [value, 1.0]}) + b"\n"


def outputs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Only complete lines: the sink may be part-way through a write.
    data = path.read_bytes()
    return [msgspec.json.decode(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def wait_until(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the pipeline exited early waiting for {what}"
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def stdin_run(
    tmp_path: Path, cli_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`headrace run` with standard input an open pipe, and its jsonl output file."""
    out = tmp_path / "out.jsonl"
    config = tmp_path / "stdin.yaml"
    config.write_text(STDIN_PIPELINE.format(out=out))
    env = {**cli_env, "SLOW_MODEL_DELAY": "0"}
    proc = subprocess.Popen(
        [*HEADRACE, "run", str(config), "--no-progress"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc, out
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_a_line_on_an_open_pipe_is_scored_without_waiting_for_more(
    stdin_run: tuple[subprocess.Popen[bytes], Path],
) -> None:
    """One line written to stdin, which stays open, is scored; then a second; closing
    stdin ends the run with exit 0 and both outputs, in order."""
    proc, out = stdin_run
    assert proc.stdin is not None
    proc.stdin.write(event("a", 1.0))
    proc.stdin.flush()
    # Generous: the interpreter starts and imports first. The bug never scores it at all.
    wait_until(lambda: len(outputs(out)) == 1, proc, "the first output", timeout=30)
    first = outputs(out)[0]
    assert (first["key"], first["prediction"], first["source"]["offset"]) == ("a", 2.0, 0)
    # The event time is the line's arrival: scoring followed within a fraction of a second
    # (max_wait is 5 ms; the bound is loose for loaded test machines).
    assert 0 <= first["processed_at"] - first["event_time"] < 1.0

    proc.stdin.write(event("b", 2.0))
    proc.stdin.flush()
    wait_until(lambda: len(outputs(out)) == 2, proc, "the second output", timeout=10)
    proc.stdin.close()
    proc.wait(timeout=30)
    assert proc.stderr is not None
    assert proc.returncode == 0, proc.stderr.read().decode()
    rows = outputs(out)
    assert [(r["key"], r["source"]["offset"]) for r in rows] == [("a", 0), ("b", 1)]


def test_sigterm_with_stdin_open_exits_promptly(
    stdin_run: tuple[subprocess.Popen[bytes], Path],
) -> None:
    """SIGTERM while the source waits on an open, silent stdin: the run stops at once
    (exit 0), having written what it read; nothing waits for stdin to close."""
    proc, out = stdin_run
    assert proc.stdin is not None
    proc.stdin.write(event("a", 1.0))
    proc.stdin.flush()
    # The partial line is never completed: it must not hold the stop back either.
    proc.stdin.write(b'{"entity_id": "half')
    proc.stdin.flush()
    wait_until(lambda: len(outputs(out)) == 1, proc, "the first output", timeout=30)
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    # wait(), not communicate(): that would close stdin, and the run would end anyway.
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("headrace run did not exit within 10 s of SIGTERM") from None
    assert time.monotonic() - start < 5.0
    assert proc.stderr is not None
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert [r["key"] for r in outputs(out)] == ["a"]
