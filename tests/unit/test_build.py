"""From a YAML configuration to a running pipeline with a registry model: production and a
candidate from a real directory registry, canary and shadow, end to end."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression

from headrace import ModelLoadError, Pipeline, PipelineError
from headrace.build import check_model
from headrace.config import ConfigError, load_config
from headrace.connectors.generator import N_FEATURES
from headrace.registry import LocalRegistry, Sample, Signature
from headrace.runtime.rollout import canary_bucket

OPSET = {"": 17}


@pytest.fixture(scope="module")
def linear_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two linear regressions on the generator's features, as ONNX files, by version."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
    directory = tmp_path_factory.mktemp("onnx")
    found: dict[str, Any] = {}
    for version, weights in (("1", np.arange(N_FEATURES)), ("2", -np.arange(N_FEATURES))):
        model = LinearRegression().fit(x, x @ weights.astype(np.float32) + float(version))
        path = directory / f"lin{version}.onnx"
        path.write_bytes(to_onnx(model, x[:1], target_opset=OPSET).SerializeToString())
        found[version] = (model, path, x)
    return found


@pytest.fixture
def registry(tmp_path: Path, linear_models: dict[str, Any]) -> LocalRegistry:
    """Model "lin": version 1 as production, version 2 as candidate, each with a sample."""
    reg = LocalRegistry(tmp_path / "registry")
    for version, (model, path, x) in linear_models.items():
        sample = Sample(input=x[:4].tolist(), expected=model.predict(x[:4]).tolist())
        reg.register(
            "lin",
            path,
            format="onnx",
            version=version,
            signature=Signature(shape=[None, N_FEATURES]),
            samples=[sample],
        )
    reg.promote("lin", "1", "production")
    reg.promote("lin", "2", "candidate")
    return reg


YAML = """
name: versions
source: {{type: generator, rate: 0, count: 400, entities: 50, seed: 1}}
model:
  type: registry
  ref: registry:lin@production
  root: {root}
  latency_budget_ms: 5000
  features: {{vector: features}}
sinks:
  - {{type: jsonl, path: {out}}}
batching: {{max_size: 32, max_wait_ms: 5}}
updates:
  poll_interval_s: 60
  canary: {{ref: registry:lin@candidate, fraction: 0.3}}
  shadow:
    ref: registry:lin@candidate
    destination: {{type: jsonl, path: {shadow}}}
    max_batches_in_flight: 100
"""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_registry_pipeline_with_canary_and_shadow_runs_end_to_end(
    tmp_path: Path, registry: LocalRegistry, linear_models: dict[str, Any]
) -> None:
    out, shadow = tmp_path / "out.jsonl", tmp_path / "shadow.jsonl"
    path = tmp_path / "pipeline.yaml"
    path.write_text(YAML.format(root=registry.root, out=out, shadow=shadow))
    summary = Pipeline.from_config(load_config(path, env={})).run(install_signal_handlers=False)
    assert summary.records_out == 400 and summary.records_failed == 0

    sha = {v: registry.get("lin", v).sha256[:12] for v in ("1", "2")}
    outputs = read_jsonl(out)
    assert sorted(o["input"]["id"] for o in outputs) == list(range(400))
    versions = set()
    for o in outputs:
        version = "2" if canary_bucket(o["key"]) < 3000 else "1"  # the canary's keys
        versions.add(version)
        assert o["model"] == {"name": "lin", "version": version, "sha256": sha[version]}
        model = linear_models[version][0]
        expected = model.predict(np.array([o["input"]["features"]], dtype=np.float32))[0]
        assert o["prediction"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert versions == {"1", "2"}

    shadowed = read_jsonl(shadow)
    assert sorted(o["input"]["id"] for o in shadowed) == list(range(400))
    assert all(o["model"] == {"name": "lin", "version": "2", "sha256": sha["2"]} for o in shadowed)


def test_an_admin_token_that_is_not_set_fails_the_build(
    tmp_path: Path, registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEADRACE_TEST_ADMIN_TOKEN", raising=False)
    path = tmp_path / "pipeline.yaml"
    text = YAML.format(root=registry.root, out=tmp_path / "o", shadow=tmp_path / "s")
    path.write_text(text + "admin: {token_env: HEADRACE_TEST_ADMIN_TOKEN}\nmetrics: {port: 0}\n")
    config = load_config(path, env={})
    with pytest.raises(ConfigError, match="HEADRACE_TEST_ADMIN_TOKEN is not set"):
        Pipeline.from_config(config)


def test_a_missing_alias_fails_the_start_not_the_build(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    """Versions are resolved when the pipeline starts (the manager loads them)."""
    path = tmp_path / "pipeline.yaml"
    text = YAML.format(root=registry.root, out=tmp_path / "o", shadow=tmp_path / "s")
    path.write_text(text.replace("registry:lin@production", "registry:lin@staging"))
    pipeline = Pipeline.from_config(load_config(path, env={}))
    with pytest.raises(PipelineError, match="no alias 'staging'"):
        pipeline.run(install_signal_handlers=False)
    assert not (tmp_path / "o").exists()


# -- a callable model's module, and the model file's sha256 -----------------------------

CALLABLE_YAML = """
source: {{type: generator, rate: 0, count: 20, seed: 1}}
model:
  type: callable
  name: m
  version: "1"
  function: {module}:score
  features: {{vector: features}}
sinks:
  - {{type: jsonl, path: {out}}}
"""


def write_model(directory: Path, module: str, score: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(f"def score(rows):\n    return [{score}] * len(rows)\n")


def fresh_module() -> str:
    """A module name no test imported before (a module imported once stays imported)."""
    return f"hr_model_{uuid.uuid4().hex}"


@pytest.mark.parametrize("where", ["pipeline directory", "current directory", "both"])
def test_a_callable_model_is_looked_up_next_to_the_pipeline_file_then_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The pipeline file's directory first, then the current directory; neither stays on
    sys.path afterwards."""
    module, pipelines, cwd = fresh_module(), tmp_path / "pipelines", tmp_path / "cwd"
    cwd.mkdir()
    if where != "current directory":
        write_model(pipelines, module, 1.0)
    if where != "pipeline directory":
        write_model(cwd, module, 2.0)
    pipelines.mkdir(exist_ok=True)
    path, out = pipelines / "pipeline.yaml", tmp_path / "out.jsonl"
    path.write_text(CALLABLE_YAML.format(module=module, out=out))
    monkeypatch.chdir(cwd)
    before = list(sys.path)
    summary = Pipeline.from_yaml(path).run(install_signal_handlers=False)
    assert sys.path == before
    assert summary.records_out == 20
    expected = 2.0 if where == "current directory" else 1.0
    assert {o["prediction"] for o in read_jsonl(out)} == {expected}


def test_a_missing_callable_is_one_line_naming_the_key_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = fresh_module()
    path = tmp_path / "pipeline.yaml"
    path.write_text(CALLABLE_YAML.format(module=module, out=tmp_path / "out.jsonl"))
    before = list(sys.path)
    for check in (check_model, lambda config, path: Pipeline.from_config(config, path=path)):
        with pytest.raises(ConfigError) as info:
            check(load_config(path, env={}), path=path)
        message = str(info.value)
        assert message.startswith(f"{path}: at model.function: cannot import '{module}:score'")
        assert f"no module named '{module}'" in message and "\n" not in message
    assert sys.path == before
    write_model(tmp_path, module, 1.0)
    path.write_text(path.read_text().replace(":score", ":scores"))
    with pytest.raises(ConfigError, match=r"at model\.function: .*has no 'scores'"):
        check_model(load_config(path, env={}), path=path)


ONNX_YAML = """
source: {{type: generator, rate: 0, count: 20}}
model:
  type: onnx
  name: m
  version: "1"
  path: {model}
  sha256: {sha256}
sinks:
  - {{type: "null"}}
"""


def test_a_sha256_mismatch_names_the_key_the_file_and_both_digests(tmp_path: Path) -> None:
    """The same one line whether the pipeline is built or only validated."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not the model the configuration names")
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    path = tmp_path / "pipeline.yaml"
    path.write_text(ONNX_YAML.format(model=model, sha256="ab" * 32))
    config = load_config(path, env={})
    messages = []
    for check in (check_model, lambda config, path: Pipeline.from_config(config, path=path)):
        with pytest.raises(ModelLoadError) as info:
            check(config, path=path)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(
        f"{path}: at model.sha256: the file {model} has sha256 {actual}, not {'ab' * 32} "
        "as configured"
    )
    assert "\n" not in messages[0]
