"""The `headrace` command as a user runs it: validate, run, signals."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from cli_helpers import HEADRACE, pipeline_yaml

SQLITE_SINK = """  - type: sqlite
    path: {db}"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEADRACE, *args], capture_output=True, text=True, env=env, timeout=120)


def test_validate_accepts_a_good_file_and_names_what_it_runs(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    config = pipeline_yaml(tmp_path, events_file, "  - type: stdout")
    result = run_cli("validate", str(config), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "slow version 3" in result.stdout


def test_validate_names_the_windows_of_the_example() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "windows.yaml"
    result = run_cli("validate", str(example))
    assert result.returncode == 0, result.stderr
    assert "windows     tumbling 10.0 s by entity_id: events, mean_value" in result.stdout


def test_validate_rejects_an_unknown_key_with_exit_2(tmp_path: Path, events_file: Path) -> None:
    config = pipeline_yaml(tmp_path, events_file, "  - type: stdout\n    colour: blue")
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    assert "sinks[0]" in result.stderr and "colour" in result.stderr


def test_an_unknown_log_level_is_a_usage_error(tmp_path: Path, events_file: Path) -> None:
    config = pipeline_yaml(tmp_path, events_file, "  - type: stdout")
    result = run_cli("run", str(config), "--log-level", "bogus")
    assert result.returncode == 2
    assert "'bogus' is not one of" in result.stderr and "--log-level" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_does_not_print_secret_values(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    config = pipeline_yaml(tmp_path, events_file, "  - type: jsonl\n    path: ${SECRET_PATH}")
    env = {"SECRET_PATH": str(tmp_path / "hunter2-secret.jsonl")}
    result = run_cli("validate", str(config), env={**cli_env, **env})
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr


WEBHOOK_SINK = """  - type: webhook
    name: alerts
    url: ${ALERT_WEBHOOK_URL}
    headers: {Authorization: "Bearer ${ALERT_TOKEN}"}
    template: TEMPLATE"""


def test_validate_checks_a_webhook_sink_and_never_prints_its_secrets(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    env = {
        **cli_env,
        "ALERT_WEBHOOK_URL": "https://hooks.example.com/hunter2-path",
        "ALERT_TOKEN": "hunter2-token",
    }
    good = pipeline_yaml(tmp_path, events_file, WEBHOOK_SINK.replace("TEMPLATE", "slack"))
    result = run_cli("validate", str(good), env=env)
    assert result.returncode == 0, result.stderr
    assert "alerts (webhook)" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    bad = pipeline_yaml(tmp_path, events_file, WEBHOOK_SINK.replace("TEMPLATE", "slak"))
    result = run_cli("validate", str(bad), env=env)
    assert result.returncode == 2
    assert "at sinks[0].template: unknown template 'slak'" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_run_scores_a_file_to_stdout(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join(events_file.read_text().splitlines(keepends=True)[:300]))
    config = pipeline_yaml(tmp_path, small, "  - type: stdout")
    result = run_cli("run", str(config), "--no-progress", env=cli_env)
    assert result.returncode == 0, result.stderr
    outputs = [msgspec.json.decode(line) for line in result.stdout.splitlines()]
    assert [o["source"]["offset"] for o in outputs] == list(range(300))
    assert outputs[0]["key"] == outputs[0]["input"]["entity_id"]
    assert outputs[0]["model"] == {"name": "slow", "version": "3", "sha256": None}


def test_model_calls_process_scores_a_file_in_the_models_own_process(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """``batching.model_calls: process`` from YAML: the model (a function found by its
    module name) runs in a process of its own; the outputs are those of a thread, in
    order."""
    small = tmp_path / "small.jsonl"
    small.write_text("".join(events_file.read_text().splitlines(keepends=True)[:300]))
    config = pipeline_yaml(tmp_path, small, "  - type: stdout")
    config.write_text(
        config.read_text().replace("  max_wait_ms: 5", "  max_wait_ms: 5\n  model_calls: process")
    )
    result = run_cli("run", str(config), "--no-progress", env=cli_env)
    assert result.returncode == 0, result.stderr
    outputs = [msgspec.json.decode(line) for line in result.stdout.splitlines()]
    assert [o["source"]["offset"] for o in outputs] == list(range(300))
    assert outputs[0]["model"] == {"name": "slow", "version": "3", "sha256": None}


def test_malformed_lines_go_to_the_dead_letter_file(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    events = tmp_path / "mixed.jsonl"
    events.write_bytes(
        b'{"entity_id": "a", "ts": 1.0, "features": [1, 2]}\n'
        b"{not json\n"
        b'{"entity_id": "b", "ts": 2.0, "features": [3, 4]}\n'
        b"\xff\xfe\n"
        b'{"entity_id": "c", "ts": "yesterday", "features": [5, 6]}\n'
    )
    dlq = tmp_path / "dlq.jsonl"
    out = tmp_path / "out.jsonl"
    config = pipeline_yaml(
        tmp_path,
        events,
        f"  - type: jsonl\n    path: {out}",
        extra=f"dead_letter:\n  type: jsonl\n  path: {dlq}",
    )
    result = run_cli("run", str(config), "--no-progress", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert [o["key"] for o in map(msgspec.json.decode, out.read_bytes().splitlines())] == [
        "a",
        "b",
    ]
    dead = [msgspec.json.decode(line) for line in dlq.read_bytes().splitlines()]
    assert [d["source"]["offset"] for d in dead] == [1, 3, 4]
    assert {d["stage"] for d in dead} == {"decode"}


def test_sigterm_stops_gracefully_and_a_restart_resumes_without_duplicates(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """SIGTERM: finish in-flight batches, flush, commit, exit 0. The restart reads on from
    the checkpoint: every event is output exactly once across both runs."""
    out = tmp_path / "out.jsonl"
    config = pipeline_yaml(tmp_path, events_file, f"  - type: jsonl\n    path: {out}")
    cmd = [*HEADRACE, "run", str(config), "--no-progress"]
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_lines(out, 2000, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr.decode()
    first_run = len(out.read_bytes().splitlines())
    assert 2000 <= first_run < 20_000, "the run should have been stopped part-way"

    result = run_cli("run", str(config), "--no-progress", env=cli_env)
    assert result.returncode == 0, result.stderr
    ids = Counter(
        msgspec.json.decode(line)["input"]["id"] for line in out.read_bytes().splitlines()
    )
    assert set(ids) == set(range(20_000)), "missing records"
    assert max(ids.values()) == 1, "duplicated records"


def test_sigusr1_prints_every_threads_stack_and_the_run_goes_on(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """`kill -USR1`: each thread's stack on stderr (a worker that will not stop says what
    it waits for); the run goes on and still stops gracefully on SIGTERM."""
    out = tmp_path / "out.jsonl"
    log = tmp_path / "stderr.log"
    config = pipeline_yaml(tmp_path, events_file, f"  - type: jsonl\n    path: {out}")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(config), "--no-progress"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        _wait_for_lines(out, 500, proc)
        proc.send_signal(signal.SIGUSR1)
        _wait_for(lambda: _stacks(log) >= 2, proc)
        before = out.read_bytes().count(b"\n")
        _wait_for_lines(out, before + 500, proc)  # still scoring
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    text = log.read_text(errors="replace")
    assert "Current thread" in text and "most recent call first" in text
    assert "base_events.py" in text  # the event loop's thread
    assert "asyncio tasks (outermost call first):" in text  # and what each awaits:
    assert "in _every" in text  # the periodic commit, waiting for its next turn


def test_sigusr1_prints_the_threads_while_the_event_loop_is_stuck(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """A model called on the event loop that takes 20 s: the loop cannot run a handler
    of its own, and the threads' stacks still come at once, the model's call in them."""
    log = tmp_path / "stderr.log"
    config = pipeline_yaml(tmp_path, events_file, '  - type: "null"')
    config.write_text(
        config.read_text().replace("  max_wait_ms: 5", "  max_wait_ms: 5\n  model_calls: loop")
    )
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(config), "--no-progress", "--metrics-port", "0"],
            env={**cli_env, "SLOW_MODEL_DELAY": "20"},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        # Running (its handlers in place) once it names its dashboard; then dump after
        # dump until one shows the model's call (the first batch reached it).
        _wait_for(lambda: b"dashboard:" in log.read_bytes(), proc)
        for dumps in range(1, 60):
            proc.send_signal(signal.SIGUSR1)
            _wait_for(lambda n=dumps: _dumps(log) >= n, proc)
            if "in predict" in log.read_text(errors="replace").split("Current thread")[-1]:
                break
        # The last dump: earlier ones, sent before the call began, may have had their
        # tasks printed by a loop that was still free.
        last = log.read_text(errors="replace").split("Current thread")[-1]
        assert "in predict" in last  # the call the loop is stuck in
        assert "asyncio tasks" not in last  # the loop has not got to its part yet
    finally:
        proc.kill()
        proc.wait(10)


def test_a_second_sigterm_exits_at_once_while_the_stop_waits(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """The first SIGTERM's stop waits (here for a webhook nobody listens on, up to
    shutdown_timeout_s=20); a second signal ends the run at once, exit 130. Nothing it
    had not committed is lost: a restart reads it again."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "stderr.log"
    config = pipeline_yaml(
        tmp_path, events_file, f"  - type: webhook\n    url: http://127.0.0.1:{port}/hook"
    )
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(config), "--no-progress", "--log-level", "info"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        _wait_for(lambda: b"is unavailable" in log.read_bytes(), proc)
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: b"stopping" in log.read_bytes(), proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    text = log.read_text(errors="replace")
    assert proc.returncode == 130, text[-3000:]
    assert "second signal" in text


def test_a_stop_while_the_webhook_is_down_exits_1_after_shutdown_timeout_committing_nothing(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """README, webhook limits: a stop during an outage waits `shutdown_timeout_s` for the
    final commit (which would send what the sink holds), then exits 1 without committing:
    the checkpoint does not move, so a restart sends those alerts."""
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "stderr.log"
    config = pipeline_yaml(
        tmp_path, events_file, f"  - type: webhook\n    url: http://127.0.0.1:{port}/hook"
    )
    config.write_text(config.read_text().replace("shutdown_timeout_s: 20", "shutdown_timeout_s: 1"))
    checkpoint = tmp_path / "checkpoint.json"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(config), "--no-progress"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        _wait_for(lambda: b"is unavailable" in log.read_bytes(), proc)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
    text = log.read_text(errors="replace")
    assert proc.returncode == 1, text[-3000:]
    assert took < 15, f"the stop took {took:.1f} s"
    assert not checkpoint.exists(), "a position was committed for alerts never answered"


def _dumps(log: Path) -> int:
    return log.read_bytes().count(b"Current thread")


def _stacks(log: Path) -> int:
    return log.read_bytes().count(b"most recent call first")


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline exited"
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met within 30 s")


def test_sigkill_then_restart_loses_nothing(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    """SIGKILL at an arbitrary point: at-least-once. The SQLite sink's upsert by source
    position then leaves exactly one row per event."""
    db = tmp_path / "out.db"
    config = pipeline_yaml(tmp_path, events_file, SQLITE_SINK.format(db=db))
    for threshold in (3000, 9000):
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(config), "--no-progress"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_rows(db, threshold, proc)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    result = run_cli("run", str(config), "--no-progress", env=cli_env)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute('SELECT COUNT(*), COUNT(DISTINCT "offset") FROM predictions').fetchone()
        ids = {r[0] for r in conn.execute("SELECT json_extract(input, '$.id') FROM predictions")}
    assert rows == (20_000, 20_000)
    assert ids == set(range(20_000))


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline exited early"
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} lines")


def _wait_for_rows(db: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    import time

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


# -- a callable next to the pipeline file, errors in one line, several files -------------

# The console script, as a user runs it: unlike `python -m`, it does not put the current
# directory on sys.path.
HEADRACE_SCRIPT = str(Path(sys.executable).with_name("headrace"))

GENERATOR_YAML = """
source: {type: generator, rate: 0, count: 50}
model: {type: callable, name: m, version: "1", function: "MODULE:score",
        features: {vector: features}}
sinks: [{type: "null"}]
"""


def plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("where", ["pipeline directory", "current directory"])
def test_run_and_validate_find_a_callable_without_pythonpath(tmp_path: Path, where: str) -> None:
    module = f"hr_cli_model_{uuid.uuid4().hex[:8]}"
    pipelines, cwd = tmp_path / "pipelines", tmp_path / "cwd"
    pipelines.mkdir()
    cwd.mkdir()
    config = pipelines / "pipeline.yaml"
    config.write_text(GENERATOR_YAML.replace("MODULE", module))
    home = pipelines if where == "pipeline directory" else cwd
    (home / f"{module}.py").write_text("def score(rows):\n    return [0.5] * len(rows)\n")
    for command in (["validate", str(config)], ["run", str(config), "--no-progress"]):
        result = subprocess.run(
            [HEADRACE_SCRIPT, *command],
            capture_output=True,
            text=True,
            env=plain_env(),
            cwd=cwd,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr


def test_validate_imports_the_callable_and_says_what_is_missing_in_one_line(
    tmp_path: Path,
) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(GENERATOR_YAML.replace("MODULE", "hr_cli_model_nowhere"))
    result = run_cli("validate", str(config), env=plain_env())
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"configuration error {config}: at model.function: cannot import "
        "'hr_cli_model_nowhere:score': no module named 'hr_cli_model_nowhere'"
    )
    (tmp_path / "hr_cli_model_nowhere.py").write_text("def scores(rows):\n    return rows\n")
    result = run_cli("validate", str(config), env=plain_env())
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "at model.function: " in result.stderr and "has no 'score'" in result.stderr


def test_a_sha256_mismatch_is_the_same_one_line_from_validate_and_run(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"a file that is not the configured model")
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        GENERATOR_YAML.replace(
            'type: callable, name: m, version: "1", function: "MODULE:score"',
            f'type: onnx, name: m, version: "1", path: {model}, sha256: "{"0" * 64}"',
        )
    )
    validated = run_cli("validate", str(config))
    ran = run_cli("run", str(config), "--no-progress")
    assert validated.returncode == ran.returncode == 2
    assert validated.stderr == ran.stderr
    assert ran.stderr == (
        f"configuration error {config}: at model.sha256: the file {model} has sha256 "
        f"{actual}, not {'0' * 64} as configured: it changed, or is not the file meant. "
        "Restore that file, or, only if you trust this one, set model.sha256 to its sha256\n"
    )


def test_a_model_that_cannot_go_to_a_process_is_one_line_from_validate_and_run(
    tmp_path: Path,
) -> None:
    """``model_calls: process`` with an ONNX model (its session cannot be pickled):
    ``validate --load-model`` and ``run`` print the same line, naming the file, the key
    and the fix, and exit 2."""
    from headrace.demo import build_demo_model

    model = tmp_path / "model.onnx"
    sha256 = build_demo_model(model, samples=2_000)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        GENERATOR_YAML.replace(
            'type: callable, name: m, version: "1", function: "MODULE:score"',
            f'type: onnx, name: m, version: "1", path: {model}, sha256: "{sha256}", '
            "output: anomaly_score",
        )
        + "batching: {model_calls: process}\n"
    )
    validated = run_cli("validate", "--load-model", str(config))
    ran = run_cli("run", str(config), "--no-progress")
    assert validated.returncode == ran.returncode == 2, ran.stderr
    assert validated.stderr == ran.stderr
    assert ran.stderr.startswith(
        f"configuration error {config}: at batching.model_calls: process: the model cannot "
        "be sent to its process"
    )
    assert "use model_calls: thread" in ran.stderr and ran.stderr.count("\n") == 1


def test_validate_takes_several_files_one_line_each(
    tmp_path: Path, events_file: Path, cli_env: dict[str, str]
) -> None:
    good = pipeline_yaml(tmp_path, events_file, "  - type: stdout", name="good.yaml")
    bad = pipeline_yaml(tmp_path, events_file, "  - type: stdout\n    colour: blue", name="b.yaml")
    result = run_cli("validate", str(good), str(bad), str(good), env=cli_env)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"{good}: valid", f"{good}: valid"]
    assert len(result.stderr.splitlines()) == 1 and f"{bad}: at sinks[0]" in result.stderr
    result = run_cli("validate", str(good), str(good), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{good}: valid", f"{good}: valid"]


def test_run_refuses_start_options_that_do_not_fit_in_one_line(
    tmp_path: Path, events_file: Path
) -> None:
    """Checked before anything connects: no broker is needed to be told."""
    kafka = tmp_path / "kafka.yaml"
    kafka.write_text(
        "name: k\nkafka: {bootstrap_servers: '127.0.0.1:1'}\n"
        "source: {type: kafka, topics: [in], group_id: g}\n"
        "model: {type: callable, name: m, version: '1', function: 'nowhere:f'}\n"
        "sinks: [{type: stdout}]\n"
    )
    jsonl = pipeline_yaml(tmp_path, events_file, "  - type: stdout")
    cases = [
        ((str(kafka), "--from-timestamp", "2026-12-01"), "--from-timestamp: '2026-12-01' is not"),
        ((str(kafka), "--reset-offsets"), "--reset-offsets: "),
        (
            (
                str(kafka),
                "--from-timestamp",
                "2026-12-01T00:00:00Z",
                "--reset-offsets",
                "--workers",
                "2",
            ),
            "--reset-offsets runs with one worker",
        ),
        ((str(jsonl), "--from-timestamp", "2026-12-01T00:00:00Z"), "only a kafka source"),
    ]
    for args, expected in cases:
        result = run_cli("run", *args)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )


def test_validate_names_the_start_and_refuses_a_bad_one_like_run(tmp_path: Path) -> None:
    config = tmp_path / "kafka.yaml"
    text = (
        "name: k\nkafka: {bootstrap_servers: '127.0.0.1:1'}\n"
        "source: {type: kafka, topics: [in], group_id: g, start: {timestamp: %s}}\n"
        "model: {type: callable, name: m, version: '1', function: 'json:dumps'}\n"
        "sinks: [{type: stdout}]\n"
    )
    config.write_text(text % "2026-12-01T00:00:00Z")
    result = run_cli("validate", str(config))
    assert result.returncode == 0, result.stderr
    assert "start       2026-12-01T00:00:00+00:00" in result.stdout
    config.write_text(text % "2026-12-01T00:00:00")
    for command in ("validate", "run"):
        result = run_cli(command, str(config))
        assert result.returncode == 2, result.stderr
        assert "at source.start.timestamp: 2026-12-01T00:00:00 has no time zone" in result.stderr
