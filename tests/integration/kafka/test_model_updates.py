"""Live model updates through a real broker (Tansu), a real `headrace run` worker and a real
local registry holding real ONNX models: a swap under load, versions that must never
serve, an automatic rollback, a shadow and a canary.

The versions are linear models (``features . w + b``, and one ``relu`` of that) with
different weights, so every output can be checked against what the version it is labelled
with computes for its input: a batch scored by one version and labelled with another
would show. Versions are promoted with ``headrace registry promote``, as a user would, and
the worker is told to look with the admin call or finds them by polling.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from headrace.registry import LocalRegistry, Sample, Signature, VersionInfo
from headrace.runtime.rollout import canary_bucket
from headrace.tools.audit import audit
from kafka_helpers import TansuBroker
from version_helpers import Linear
from workers import (
    PacedProducer,
    TopicReader,
    Worker,
    admin_post,
    kafka_pipeline,
    log_text,
    metrics_port,
    wait_until,
    worker_metrics,
)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

NAME = "scorer"
WIDTH = 8  # the reference events' feature vector
PARTITIONS = 4
TOKEN_ENV = "HEADRACE_TEST_ADMIN_TOKEN"
TOKEN = "s3cret-admin-token"
OUTPUT_SINK = "  - type: kafka\n    topic: predictions"
DEAD_LETTERS = "dead_letter:\n  type: kafka\n  topic: dead-letters\n"
SOURCE = "kafka kafka"  # the Kafka source's name in its log lines
TOLERANCE = 1e-4

W1 = [0.5, -0.25, 1.0, 0.75, -0.5, 0.25, -1.0, 0.125]
B1 = 0.1
W2 = [-1.5, 0.5, 0.25, -0.75, 1.0, -0.25, 0.5, 2.0]
B2 = -3.0
W3 = [2.0, 2.0, -2.0, 0.0, 0.5, 0.5, 0.0, -1.0]
B3 = 7.0

_decode = msgspec.json.Decoder().decode


# -- models ------------------------------------------------------------------------------


V1 = Linear(W1, B1)
V2 = Linear(W2, B2)
SAMPLE_ROWS = np.random.default_rng(3).normal(size=(4, WIDTH)).round(3).tolist()


def samples(of: Linear) -> list[Sample]:
    rows = [r[: len(of.w)] for r in SAMPLE_ROWS]
    return [Sample(input=rows, expected=of(rows).tolist(), tolerance=TOLERANCE)]


def register(
    registry: LocalRegistry,
    tmp_path: Path,
    model: Linear,
    *,
    expected: Linear | None = None,
    width: int = WIDTH,
) -> VersionInfo:
    """Register ``model`` as ONNX with a signature and sample outputs (those of
    ``expected``, by default its own)."""
    artifact = model.onnx(tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}.onnx")
    return registry.register(
        NAME,
        artifact,
        format="onnx",
        signature=Signature(shape=[None, width]),
        samples=samples(expected or model),
        options={"threads": 1},
    )


def cli(registry: LocalRegistry, *args: str) -> str:
    """``headrace registry ARGS --root ROOT`` in a process of its own; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "headrace.cli", "registry", *args, "--root", str(registry.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- the pipeline ------------------------------------------------------------------------


def pipeline(
    tmp_path: Path, bootstrap: str, registry: LocalRegistry, *, updates: str, extra: str = ""
) -> Path:
    model = f"""model:
  type: registry
  ref: registry:{NAME}@production
  root: {registry.root}
  features:
    vector: features"""
    return kafka_pipeline(
        tmp_path / "p.yaml",
        bootstrap,
        sinks=OUTPUT_SINK,
        model=model,
        extra=DEAD_LETTERS
        + "metrics:\n  port: 0\n"
        + f"admin:\n  token_env: {TOKEN_ENV}\n"
        + "failures:\n  retries: 1\n  backoff_ms: 5\n"
        + updates
        + extra,
    )


@dataclass
class Running:
    worker: Worker
    port: int
    outputs: TopicReader
    dead: TopicReader

    def log(self) -> str:
        return log_text(self.worker)

    def metric(self, sample: str) -> float:
        return worker_metrics(self.port).get(sample, 0.0)

    def check_now(self) -> None:
        assert admin_post(self.port, "/admin/models/check", TOKEN) == 202

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.log(), timeout, repr(text), (self.worker,))

    def wait_outputs(self, n: int, timeout: float = 60) -> None:
        wait_until(lambda: self.outputs.read() >= n, timeout, f"{n} outputs", (self.worker,))

    def stop(self) -> None:
        """SIGTERM (a graceful stop: it must exit 0), then read what is left."""
        assert self.worker.terminate() == 0, self.worker.tail()
        for reader in (self.outputs, self.dead):
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                reader.read()


@pytest.fixture
def running(tansu: TansuBroker, tmp_path: Path) -> Iterator[Any]:
    """Starts a worker on a config once called; stops and closes everything after."""
    started: list[Running] = []

    def start(config: Path) -> Running:
        env = {**os.environ, TOKEN_ENV: TOKEN}
        worker = Worker(config, env, tmp_path / "worker.log").start()
        outputs = TopicReader(tansu.bootstrap, "predictions", PARTITIONS)
        dead = TopicReader(tansu.bootstrap, "dead-letters", PARTITIONS)
        run = Running(worker, 0, outputs, dead)
        started.append(run)
        run.port = metrics_port(worker)
        run.wait_log(f"{SOURCE}: assigned", 60)
        return run

    yield start
    for run in started:
        run.worker.stop()
        run.outputs.close()
        run.dead.close()


def topics(tansu: TansuBroker, *names: str) -> None:
    for name in ("events", "predictions", "dead-letters", *names):
        tansu.create_topic(name, PARTITIONS)


def outputs_of(run: Running) -> list[dict[str, Any]]:
    return [_decode(v) for v in run.outputs.values]


def check_predictions(outputs: list[dict[str, Any]], versions: dict[str, Linear]) -> None:
    """Each output's prediction is what the version it is labelled with computes."""
    by_version: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for out in outputs:
        by_version[out["model"]["version"]].append(out)
    assert set(by_version) <= set(versions), sorted(by_version)
    for version, outs in by_version.items():
        x = [o["input"]["features"] for o in outs]
        expected = versions[version](x)
        got = np.asarray([o["prediction"] for o in outs], dtype=np.float64)
        wrong = ~np.isclose(got, expected, rtol=1e-5, atol=TOLERANCE)
        assert not wrong.any(), (
            f"{int(wrong.sum())} outputs labelled version {version} were not computed by it, "
            f"e.g. id {outs[int(np.argmax(wrong))]['input']['id']}"
        )


def check_labels(outputs: list[dict[str, Any]], registry: LocalRegistry) -> None:
    """Each output names the model, its version and that version's sha256 prefix."""
    sha = {v.version: v.short_sha for v in registry.versions(NAME)}
    for out in outputs:
        m = out["model"]
        assert m["name"] == NAME, m
        assert m["sha256"] == sha[m["version"]], m


def check_every_input_once(
    run: Running, tansu: TansuBroker, produced: int, *, dead_letters: int = 0
) -> None:
    ids = run.outputs.ids()
    assert len(ids) == len(set(ids)) == produced, (len(ids), len(set(ids)), produced)
    assert set(ids) == set(range(produced))
    assert len(run.dead.values) == dead_letters
    report = audit(
        tansu.bootstrap,
        "events",
        output_topic="predictions",
        dead_letter_topic="dead-letters",
        idle_timeout=0.5,
    )
    assert report.holds("exactly-once"), report
    assert report.input_count == report.output_count == produced, report
    assert report.dead_letter_count == dead_letters, report


def info_sample(registry: LocalRegistry, version: str) -> str:
    """The model-info gauge's sample for ``version``."""
    sha = registry.get(NAME, version).short_sha
    return f'headrace_model_info{{name="{NAME}",sha256="{sha}",version="{version}"}}'


def runs(versions: str) -> str:
    """``"1112"`` as ``"1 x3, 2 x1"``."""
    return ", ".join(f"{m.group(1)} x{len(m.group(0))}" for m in re.finditer(r"(.)\1*", versions))


def updates_total(run: Running, outcome: str) -> float:
    return run.metric(f'headrace_model_updates_total{{outcome="{outcome}"}}')


# -- 1. a swap under load ----------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_swap_under_load_loses_nothing_and_changes_version_once_per_partition(
    tansu: TansuBroker, tmp_path: Path, running: Any
) -> None:
    """A steady 1,000 records/s into 4 partitions; v2 is promoted (the CLI) and the worker
    told to look (the admin call) mid-stream: nothing is lost or dead-lettered, every
    output was computed by the version it names, no batch mixes versions, and per
    partition the version changes exactly once, from 1 to 2."""
    rate, n = 1000, 10_000
    topics(tansu)
    registry = LocalRegistry(tmp_path / "registry")
    register(registry, tmp_path, V1)
    register(registry, tmp_path, V2)
    cli(registry, "promote", NAME, "1")
    # A long poll interval: the admin call is what makes it look.
    config = pipeline(
        tmp_path, tansu.bootstrap, registry, updates="updates:\n  poll_interval_s: 600\n"
    )
    run = running(config)
    producer = PacedProducer(tansu.bootstrap, "events", rate=rate, count=n).start()
    run.wait_outputs(n // 4)
    assert f"now serving {NAME}@2" not in run.log()

    assert cli(registry, "promote", NAME, "2").strip() == f"{NAME}: production -> 2 (was 1)"
    promoted_at = producer.produced
    run.check_now()
    run.wait_log(f"now serving {NAME}@2 (was {NAME}@1")
    swapped_at = producer.produced
    assert swapped_at < n * 0.9, "the swap must happen under load, not after it"
    produced = producer.join(30)
    run.wait_outputs(produced)
    swapped = updates_total(run, "swapped")
    run.stop()

    outputs = outputs_of(run)
    check_every_input_once(run, tansu, produced)
    check_labels(outputs, registry)
    check_predictions(outputs, {"1": V1, "2": V2})
    assert swapped == 1
    # No batch mixes versions: the outputs of one batch share its processed_at.
    batches: dict[float, set[str]] = defaultdict(set)
    for out in outputs:
        batches[out["processed_at"]].add(out["model"]["version"])
    assert all(len(v) == 1 for v in batches.values())
    # Per partition, in offset order: 1 ... 1 2 ... 2.
    sequences: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for out in outputs:
        sequences[out["source"]["partition"]].append(
            (out["source"]["offset"], out["model"]["version"])
        )
    assert sorted(sequences) == list(range(PARTITIONS))
    for partition, seq in sequences.items():
        versions = "".join(v for _, v in sorted(seq))
        assert re.fullmatch(r"1+2+", versions), (
            f"partition {partition}: the version sequence is not 1...1 2...2: {runs(versions)}"
        )
    ones = sum(o["model"]["version"] == "1" for o in outputs)
    log = run.log()
    print(
        f"\nswap under load: {produced} records at {rate}/s, promoted after {promoted_at}, "
        f"swapped by {swapped_at}; {ones} scored by v1, {produced - ones} by v2; "
        + re.search(r"loaded and validated in [0-9.]+s", log).group(0)  # type: ignore[union-attr]
    )
    assert f"model registry:{NAME}@production: serving {NAME}@1" in log


# -- 2. versions that must never serve ---------------------------------------------------


class CreatesFile:
    """Pickles into a call of ``open(path, "w")``: loading it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.timeout(120)
def test_broken_versions_are_rejected_before_serving_and_the_old_one_keeps_serving(
    tansu: TansuBroker, tmp_path: Path, running: Any
) -> None:
    """Promoted in turn while records flow, found by polling: an artifact truncated after
    registration, one overwritten with another (valid) model, a pickle whose loading would
    create a file (pickle is not allowed), one that fails its sample inputs, and one
    registered truncated. Each is rejected (logged and counted) and never serves; v1
    scores every record; nothing is lost; the file is never created."""
    topics(tansu)
    registry = LocalRegistry(tmp_path / "registry")
    register(registry, tmp_path, V1)
    cli(registry, "promote", NAME, "1")

    # 2: truncated after registration.
    v2 = register(registry, tmp_path, V2)
    path = registry.artifact_path(v2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # 3: overwritten with another valid model: its sha256 is not the registered one.
    v3 = register(registry, tmp_path, V2)
    registry.artifact_path(v3).write_bytes(
        Linear(W3, B3).onnx(tmp_path / "other.onnx").read_bytes()
    )
    # 4: a pickle that would create a file when loaded.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(CreatesFile(marker)))
    v4 = registry.register(NAME, evil, format="pickle")
    # 5: a valid model whose outputs are not the ones its samples expect.
    v5 = register(registry, tmp_path, V2, expected=V1)
    # 6: registered truncated (its sha256 is right; the bytes are no ONNX model).
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(V2.onnx(tmp_path / "whole.onnx").read_bytes()[:100])
    v6 = registry.register(NAME, cut, format="onnx", options={"threads": 1})
    reasons = {
        v2.version: "sha256 mismatch",
        v3.version: "sha256 mismatch",
        v4.version: "is a pickle file, and loading one runs whatever code it holds",
        v5.version: "sample 0, output [0]: expected",
        v6.version: "ONNX Runtime cannot load the model",
    }

    config = pipeline(
        tmp_path, tansu.bootstrap, registry, updates="updates:\n  poll_interval_s: 0.3\n"
    )
    run = running(config)
    producer = PacedProducer(tansu.bootstrap, "events", rate=500, count=100_000).start()
    run.wait_outputs(500)
    rejected_lines = []
    for i, (version, reason) in enumerate(reasons.items(), start=1):
        cli(registry, "promote", NAME, version)
        line = (
            f"model registry:{NAME}@production: version {version} rejected, {NAME}@1 keeps serving"
        )
        run.wait_log(line)
        found = next(x for x in run.log().splitlines() if line in x)
        assert reason in found, found
        rejected_lines.append(found)
        wait_until(lambda i=i: updates_total(run, "rejected") == i, 10, "the rejected count")
        # Records keep flowing after each rejection, through v1.
        seen = run.outputs.read()
        run.wait_outputs(seen + 200)
    producer.stop()
    produced = producer.join(30)
    run.wait_outputs(produced)
    metrics = worker_metrics(run.port)
    run.stop()

    print(f"\nrejected: {produced} records; " + "; ".join(x[-160:] for x in rejected_lines))
    assert not marker.exists(), "loading the pickle ran its code"
    assert metrics['headrace_model_updates_total{outcome="rejected"}'] == len(reasons)
    assert metrics.get('headrace_model_updates_total{outcome="swapped"}', 0) == 0
    assert metrics[info_sample(registry, "1")] == 1
    outputs = outputs_of(run)
    check_every_input_once(run, tansu, produced)
    assert {o["model"]["version"] for o in outputs} == {"1"}
    check_labels(outputs, registry)
    check_predictions(outputs, {"1": V1})
    assert "now serving" not in run.log()


# -- 3. automatic rollback ---------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_version_failing_every_record_is_rolled_back_and_its_records_rescored(
    tansu: TansuBroker, tmp_path: Path, running: Any
) -> None:
    """v2 was built for 4 features and the stream has 8: it passes its own checks
    (signature [None, 4], samples), then raises on every batch it gets. Within its
    probation the manager swaps v1 back, moves the alias back, and v1 scores the records
    v2 failed: no dead letter, every input in the output, all by v1."""
    topics(tansu)
    registry = LocalRegistry(tmp_path / "registry")
    register(registry, tmp_path, V1)
    register(registry, tmp_path, Linear(W2[:4], B2), width=4)
    cli(registry, "promote", NAME, "1")
    probation = "  probation:\n    seconds: 30\n    max_error_rate: 0.05\n    min_records: 20\n"
    config = pipeline(
        tmp_path,
        tansu.bootstrap,
        registry,
        updates="updates:\n  poll_interval_s: 600\n" + probation,
    )
    run = running(config)
    producer = PacedProducer(tansu.bootstrap, "events", rate=1000, count=6000).start()
    run.wait_outputs(1000)
    cli(registry, "promote", NAME, "2")
    run.check_now()
    run.wait_log(f"now serving {NAME}@2")
    swapped = time.monotonic()
    run.wait_log(f"rolled back from {NAME}@2 to {NAME}@1")
    rolled_back = time.monotonic() - swapped
    wait_until(
        lambda: registry.resolve(NAME, "production").version == "1",
        10,
        "the alias moved back",
    )
    show = _decode(cli(registry, "show", f"{NAME}@production", "--json"))
    assert show["version"] == "1"
    produced = producer.join(30)
    run.wait_outputs(produced)
    metrics = worker_metrics(run.port)
    run.stop()

    errors = sum(v for k, v in metrics.items() if k.startswith("headrace_model_errors_total"))
    line = next(x for x in run.log().splitlines() if "rolled back from" in x)
    print(
        f"\nrollback: {rolled_back:.2f}s after the swap; {errors:.0f} failed calls; {line[-120:]}"
    )
    assert rolled_back < 30, "rolled back after the probation"
    assert errors >= 1, "v2 never ran"
    assert re.search(r"\d+ of \d+ records failed \(100\.0% > 5\.0%\)", line), line
    assert metrics['headrace_model_updates_total{outcome="swapped"}'] == 1
    assert metrics['headrace_model_updates_total{outcome="rolled_back"}'] == 1
    assert not any(k.startswith("headrace_records_failed_total") and v for k, v in metrics.items())
    # One step back: the promotion of 2 undone (history 1 -> 2 popped).
    assert registry.aliases(NAME)["production"].history == []
    outputs = outputs_of(run)
    check_every_input_once(run, tansu, produced)
    assert {o["model"]["version"] for o in outputs} == {"1"}
    check_labels(outputs, registry)
    check_predictions(outputs, {"1": V1})


# -- 4. shadow and canary ----------------------------------------------------------------


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def finish_with_shadow(
    run: Running, bootstrap: str, produced: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Once every output is out: wait for every record to be shadowed (or skipped), stop
    the worker; the shadow outputs and the worker's last metrics."""
    shadowed = TopicReader(bootstrap, "shadow", PARTITIONS)
    try:
        run.wait_outputs(produced)

        def all_shadowed() -> bool:
            skipped = run.metric('headrace_shadow_records_total{outcome="skipped"}')
            return shadowed.read() + skipped >= produced

        wait_until(all_shadowed, 30, "the shadow outputs", (run.worker,))
        metrics = worker_metrics(run.port)
        run.stop()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            shadowed.read()
    finally:
        shadowed.close()
    return [_decode(v) for v in shadowed.values], metrics


def shadow_counts(metrics: dict[str, float]) -> dict[str, float]:
    return {
        k: metrics.get(f'headrace_shadow_records_total{{outcome="{k}"}}', 0.0)
        for k in ("agree", "disagree", "skipped", "failed")
    }


def check_shadow(
    shadow: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    count: dict[str, float],
    produced: int,
) -> None:
    """Shadow outputs: each for a record of the main output, at its source position, once;
    every record shadowed or counted as skipped; agree + disagree = shadowed."""
    main_position = {o["input"]["id"]: o["source"] for o in outputs}
    ids = [o["input"]["id"] for o in shadow]
    assert len(ids) == len(set(ids)), "a record was shadowed twice"
    assert all(o["source"] == main_position[o["input"]["id"]] for o in shadow)
    assert count["failed"] == 0
    assert count["agree"] + count["disagree"] == len(shadow)
    assert len(shadow) + count["skipped"] == produced
    assert len(shadow) >= produced // 2, "the shadow skipped most batches"


SHADOW = (
    f"  shadow:\n    ref: registry:{NAME}@candidate\n"
    "    destination: {type: kafka, topic: shadow}\n"
    f"    tolerance: {TOLERANCE}\n    max_batches_in_flight: 4\n"
)


@pytest.mark.timeout(90)
def test_a_shadow_scores_the_same_records_off_to_the_side(
    tansu: TansuBroker, tmp_path: Path, running: Any
) -> None:
    """A candidate (``relu`` of v1: equal to it where v1 >= 0) in shadow mode: the shadow
    topic gets its outputs, labelled v2, for the same source positions; agreement and
    disagreement are counted as they really are; the main output is v1's, every input
    once."""
    topics(tansu, "shadow")
    shadow_model = Linear(W1, B1, relu=True)
    registry = LocalRegistry(tmp_path / "registry")
    register(registry, tmp_path, V1)
    register(registry, tmp_path, shadow_model)
    cli(registry, "promote", NAME, "1")
    cli(registry, "promote", NAME, "2", "--alias", "candidate")
    config = pipeline(tmp_path, tansu.bootstrap, registry, updates="updates:\n" + SHADOW)
    run = running(config)
    produced = PacedProducer(tansu.bootstrap, "events", rate=1000, count=6000).start().join(30)
    shadow, metrics = finish_with_shadow(run, tansu.bootstrap, produced)

    outputs = outputs_of(run)
    check_every_input_once(run, tansu, produced)
    assert {o["model"]["version"] for o in outputs} == {"1"}
    check_predictions(outputs, {"1": V1})
    assert {o["model"]["version"] for o in shadow} == {"2"}
    check_labels(shadow, registry)
    check_predictions(shadow, {"2": shadow_model})
    count = shadow_counts(metrics)
    print(f"\nshadow: {produced} records; {len(shadow)} shadowed; {count}")
    check_shadow(shadow, outputs, count, produced)
    # Where v1 is negative the shadow (relu) disagrees, elsewhere it agrees.
    v1 = V1([o["input"]["features"] for o in shadow])
    assert count["disagree"] == int((v1 < -TOLERANCE).sum())
    assert count["agree"] > 0 and count["disagree"] > 0
    assert metrics.get("headrace_shadow_inference_seconds_count", 0) >= 1


@pytest.mark.timeout(90)
def test_a_canary_scores_a_stable_share_of_keys_and_a_shadow_all_of_them(
    tansu: TansuBroker, tmp_path: Path, running: Any
) -> None:
    """Candidate v2 as a canary at 0.3 and as the shadow (one manager for both): the keys
    whose hash bucket is below 30% (16 of the 64 entities) are scored by v2, always, and
    the others by v1, always; the main output holds every input exactly once; the shadow
    scores every record with v2, agreeing exactly where the canary served it."""
    topics(tansu, "shadow")
    registry = LocalRegistry(tmp_path / "registry")
    register(registry, tmp_path, V1)
    register(registry, tmp_path, V2)
    cli(registry, "promote", NAME, "1")
    cli(registry, "promote", NAME, "2", "--alias", "candidate")
    canary = f"  canary:\n    ref: registry:{NAME}@candidate\n    fraction: 0.3\n"
    config = pipeline(tmp_path, tansu.bootstrap, registry, updates="updates:\n" + canary + SHADOW)
    run = running(config)
    produced = PacedProducer(tansu.bootstrap, "events", rate=1000, count=6000).start().join(30)
    shadow, metrics = finish_with_shadow(run, tansu.bootstrap, produced)

    outputs = outputs_of(run)
    check_every_input_once(run, tansu, produced)
    check_labels(outputs, registry)
    check_predictions(outputs, {"1": V1, "2": V2})
    by_key: dict[str, set[str]] = defaultdict(set)
    for out in outputs:
        by_key[out["key"]].add(out["model"]["version"])
    assert all(len(v) == 1 for v in by_key.values()), "a key was scored by both versions"
    canary_keys = {k for k, v in by_key.items() if v == {"2"}}
    assert canary_keys == {k for k in by_key if canary_bucket(k) < 3000}
    share = len(canary_keys) / len(by_key)
    records = sum(o["model"]["version"] == "2" for o in outputs) / len(outputs)
    count = shadow_counts(metrics)
    print(
        f"\ncanary: {len(canary_keys)}/{len(by_key)} keys ({share:.0%}), {records:.0%} of "
        f"records; shadow {count}"
    )
    assert 0.15 <= share <= 0.45 and 0.1 <= records <= 0.5
    # The serving version is what the info gauge shows; the canary is not.
    info = {k: v for k, v in metrics.items() if k.startswith("headrace_model_info")}
    assert info == {info_sample(registry, "1"): 1}

    assert {o["model"]["version"] for o in shadow} == {"2"}
    check_labels(shadow, registry)
    check_predictions(shadow, {"2": V2})
    check_shadow(shadow, outputs, count, produced)
    # It agrees with what was served where the canary served it (v2 against v2), and
    # elsewhere only where v1 and v2 happen to be within the tolerance.
    x = [o["input"]["features"] for o in shadow]
    same = np.abs(V1(x) - V2(x)) <= TOLERANCE
    agree = np.asarray([o["key"] in canary_keys for o in shadow]) | same
    assert count["agree"] == int(agree.sum()) and count["disagree"] == len(shadow) - agree.sum()
