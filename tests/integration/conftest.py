"""Fixtures for tests that run the real `headrace` command in a subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from cli_helpers import SLOW_MODEL
from headrace.connectors.generator import SensorEvents


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    """20,000 reference sensor events, one JSON object per line."""
    path = tmp_path / "events.jsonl"
    events, _ = SensorEvents(entities=50, seed=3).make(start_id=0, n=20_000, ts=1.7e9)
    path.write_bytes(msgspec.json.Encoder().encode_lines(events))
    return path


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PYTHONPATH has a deliberately slow model, `slowmodel:predict`."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "slowmodel.py").write_text(SLOW_MODEL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(models), env.get("PYTHONPATH", "")])
    # Slow enough that a run of the 20,000 events takes seconds: signals land mid-run.
    env["SLOW_MODEL_DELAY"] = "0.01"
    return env
