"""The embedded demo, end to end: a real ONNX model, SQLite and an alerts file."""

from __future__ import annotations

import io
import sqlite3
import subprocess
from pathlib import Path

import msgspec
import yaml
from rich.console import Console

from cli_helpers import HEADRACE
from headrace.demo import demo_config, run_demo


def test_demo_writes_one_row_per_record_and_alerts_over_threshold(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summary = run_demo(directory=out, rate=3000, seconds=1.5, console=Console(file=io.StringIO()))
    assert summary.records_in == 4500  # rate * seconds
    assert summary.records_out == summary.records_in
    with sqlite3.connect(out / "predictions.db") as conn:
        count, distinct = conn.execute(
            'SELECT COUNT(*), COUNT(DISTINCT "offset") FROM predictions'
        ).fetchone()
        model = conn.execute(
            "SELECT DISTINCT model_name, model_version FROM predictions"
        ).fetchall()
    assert count == distinct == summary.records_in
    assert model == [("sensor-anomaly", "1")]
    alerts = [
        msgspec.json.decode(line) for line in (out / "alerts.jsonl").read_bytes().splitlines()
    ]
    assert len(alerts) == summary.written["alerts"]
    assert all(a["prediction"] > 0.1 for a in alerts)
    # The injected anomalies are far from normal: the model flags some, and not everything.
    assert 0 < len(alerts) < summary.records_in * 0.05
    assert (out / "pipeline.yaml").exists()


def test_demo_command_runs_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [*HEADRACE, "demo", "--seconds", "1", "--rate", "1000", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Demo summary" in result.stderr
    assert "predictions.db" in result.stderr
    # The resolved pipeline it wrote runs again as a plain `headrace run`.
    rerun = subprocess.run(
        [*HEADRACE, "validate", str(tmp_path / "d" / "pipeline.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr


def test_the_pipeline_file_the_demo_writes_holds_numbers_as_numbers(tmp_path: Path) -> None:
    """The values filled in through ${...} arrive as strings; the file written for a user
    to run again holds them as the numbers they are (strings stay strings)."""
    demo_config(tmp_path, rate=2000.0, seconds=10.0, sha256="0" * 64)
    written = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    source = written["source"]
    assert (source["rate"], source["seconds"], source["entities"]) == (2000.0, 10.0, 200)
    assert written["sinks"][1]["filter"] == {"above": 0.1}
    assert written["model"]["version"] == "1" and written["model"]["sha256"] == "0" * 64
    assert written["model"]["path"] == str(tmp_path / "anomaly.onnx")
