"""Running the real `headrace` command in tests: `from cli_helpers import ...`."""

from __future__ import annotations

import sys
from pathlib import Path

HEADRACE = [sys.executable, "-m", "headrace.cli"]

SLOW_MODEL = """
import os, time

DELAY = float(os.environ.get("SLOW_MODEL_DELAY", "0.002"))


def predict(xs):
    time.sleep(DELAY)
    return [sum(x["features"]) for x in xs]
"""


def pipeline_yaml(
    tmp_path: Path, events: Path, sinks: str, *, extra: str = "", name: str = "p.yaml"
) -> Path:
    path = tmp_path / name
    path.write_text(
        f"""
name: file-pipeline
source:
  type: jsonl
  path: {events}
  checkpoint: {tmp_path / "checkpoint.json"}
  key_field: entity_id
  time_field: ts
model:
  type: callable
  name: slow
  version: "3"
  function: slowmodel:predict
batching:
  max_size: 64
  max_wait_ms: 5
runtime:
  commit_interval_ms: 100
  shutdown_timeout_s: 20
sinks:
{sinks}
{extra}
"""
    )
    return path
