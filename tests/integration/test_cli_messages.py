"""What a user reads from `headrace`: an error is one clear line (what happened, where,
and what to do), never a traceback; the summary's figures agree; help text is reflowed."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from cli_helpers import HEADRACE
from headrace.cli import app

CALLABLE_YAML = """
source: {source}
model: {{type: callable, name: m, version: "1", function: "slowmodel:predict"}}
sinks: [{sinks}]
"""


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEADRACE, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def one_line(stderr: str) -> str:
    """The only line on stderr: an error message, and no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_busy_metrics_port_is_one_line_naming_the_port(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(
        CALLABLE_YAML.format(source="{type: generator, rate: 0, count: 10}", sinks='{type: "null"}')
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", str(config), "--metrics-port", str(port), env=cli_env)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line and "--metrics-port" in line


def test_a_record_that_stops_the_run_is_one_readable_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The position, then the stage and error type, then the library's message, each set
    off by punctuation, then what to do."""
    events = tmp_path / "in.jsonl"
    events.write_text('{"features": [1, 2]}\n{"features": [3, 4]}\nnot json\n')
    config = tmp_path / "p.yaml"
    config.write_text(
        CALLABLE_YAML.format(source="{type: jsonl, path: in.jsonl}", sinks='{type: "null"}')
    )
    result = run_cli("run", str(config), "--no-progress", env=cli_env, cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(
        "pipeline stopped: record in.jsonl[0]@2 failed at stage 'decode' (invalid-json): "
    ), line
    assert line.endswith(
        "Configure a dead_letter sink to set such records aside and go on; "
        "nothing from this record on was committed."
    )


def _summary(stderr: str) -> dict[str, str]:
    """The rows of the summary table: ``{"elapsed": "12.3 ms", ...}``."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def _seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"ms": 1e-3, "s": 1.0, "min": 60.0}[unit]


def test_the_summary_shows_the_run_time_the_rate_is_measured_over(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A short file run takes milliseconds: the summary shows them, not `0.0 s`, and the
    throughput is the records scored over that time."""
    events = tmp_path / "in.jsonl"
    events.write_text("".join(f'{{"features": [{i}, 1]}}\n' for i in range(300)))
    config = tmp_path / "p.yaml"
    config.write_text(
        CALLABLE_YAML.format(source="{type: jsonl, path: in.jsonl}", sinks='{type: "null"}')
        + "batching: {max_size: 64, max_wait_ms: 5}\n"
    )
    result = run_cli("run", str(config), "--no-progress", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _summary(result.stderr)
    assert rows["records scored"] == "300"
    elapsed = _seconds(rows["elapsed"])
    assert elapsed > 0.02  # five batches of a model that sleeps 10 ms each
    rate = float(rows["throughput"].split()[0].replace(",", ""))
    assert rate == pytest.approx(300 / elapsed, rel=0.02)


# -- SQLite in insert mode, restarted after a crash ----------------------------------------


def _wait_for_rows(db: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline exited early"
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    if conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] >= n:
                        return
            except sqlite3.OperationalError:
                pass  # table not created yet
        time.sleep(0.02)
    raise AssertionError(f"{db} did not reach {n} rows")


def test_insert_mode_after_a_crash_says_what_happened_and_what_to_do(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """SIGKILL a run whose outputs are written but not yet committed (no commit falls due
    in a minute); the restart re-reads them, and insert mode refuses the first row again
    in one line that names the row and says what to do."""
    db = tmp_path / "out.db"
    config = tmp_path / "p.yaml"
    config.write_text(
        CALLABLE_YAML.format(
            source=f"{{type: jsonl, path: {events_file}, checkpoint: {tmp_path / 'ck.json'}}}",
            sinks=f"{{type: sqlite, path: {db}, mode: insert}}",
        )
        + "runtime: {commit_interval_ms: 60000}\nbatching: {max_size: 64, max_wait_ms: 5}\n"
    )
    proc = subprocess.Popen(
        [*HEADRACE, "run", str(config), "--no-progress"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_rows(db, 500, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    result = run_cli("run", str(config), "--no-progress", env=cli_env)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"table predictions already has a row for source position {events_file}[0]@0" in line
    assert "read again" in line and "mode: upsert" in line
    with sqlite3.connect(db) as conn:  # the refused batch left nothing behind
        count, distinct = conn.execute(
            'SELECT COUNT(*), COUNT(DISTINCT "offset") FROM predictions'
        ).fetchone()
    assert count == distinct >= 500


# -- help ------------------------------------------------------------------------------------


def _commands(command: Any, path: str = "headrace") -> list[tuple[str, Any]]:
    """The command and every subcommand under it (typer's click: a group has ``commands``)."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def test_help_text_has_no_line_breaks_of_the_source() -> None:
    """Every paragraph of every command's and option's help is one line, for rich to wrap
    at the terminal's width (a docstring's line breaks would show as they are)."""
    commands = _commands(typer.main.get_command(app))
    assert {"headrace run", "headrace registry register", "headrace loadgen"} <= dict(
        commands
    ).keys()
    for path, command in commands:
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            for paragraph in text.split("\n\n"):
                assert "\n" not in paragraph.strip(), f"{path}: {paragraph!r}"


def test_help_reads_as_sentences_at_any_width() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    listing = run_cli("--help", env=env).stdout
    assert "no broker, no server. Writes a SQLite table" in listing
    validate = run_cli("validate", "--help", env=env).stdout
    assert "never the values of its settings (they may hold secrets)" in validate
