"""RegistrySource: a registry reference as the model manager's source of versions, on a real
directory registry with small real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression

from headrace.models import ModelLoadError, model_ref
from headrace.registry import (
    LocalRegistry,
    ModelValidationError,
    RegisteredModel,
    Sample,
    Signature,
    parse_reference,
)
from headrace.registry.source import RegistrySource
from headrace.runtime.manager import ModelManager, Probation
from helpers import wait_for


@pytest.fixture
def two_versions(
    registry: LocalRegistry,
    logreg_onnx: Path,
    iforest_onnx: Path,
    logreg: LogisticRegression,
    data: np.ndarray,
) -> LocalRegistry:
    """Model "m": version 1 (logistic regression, with a sample and a signature) and 2 (an
    isolation forest); production -> 1, then 2 (history [1]); candidate -> 2."""
    sample = Sample(input=data[:4].tolist(), expected=logreg.predict_proba(data[:4]).tolist())
    signature = Signature(shape=[None, data.shape[1]])
    registry.register("m", logreg_onnx, format="onnx", signature=signature, samples=[sample])
    registry.register("m", iforest_onnx, format="onnx", signature=signature)
    registry.promote("m", "1", "production")
    registry.promote("m", "2", "production")
    registry.promote("m", "2", "candidate")
    return registry


def source(registry: LocalRegistry, ref: str, **kwargs: float | bool | None) -> RegistrySource:
    return RegistrySource(registry, parse_reference(ref), **kwargs)  # type: ignore[arg-type]


def test_latest_follows_the_alias(two_versions: LocalRegistry) -> None:
    src = source(two_versions, "registry:m@production")
    assert src.latest() == "2"
    assert str(src) == src.describe() == "registry:m@production"
    two_versions.rollback("m", "production")
    assert src.latest() == "1"
    two_versions.promote("m", "2", "production")
    assert src.latest() == "2"


def test_a_pinned_version_never_moves(two_versions: LocalRegistry) -> None:
    src = source(two_versions, "registry:m/1")
    assert src.latest() == "1"
    two_versions.promote("m", "1", "production")
    two_versions.promote("m", "2", "production")
    assert src.latest() == "1"
    src.roll_back("1")  # nothing to move: a no-op
    assert two_versions.aliases("m")["production"].version == "2"


def test_load_gives_the_registered_version_with_its_sha256(
    two_versions: LocalRegistry, logreg: LogisticRegression, data: np.ndarray
) -> None:
    src = source(two_versions, "registry:m@production")
    model = src.load("1")
    info = two_versions.get("m", "1")
    assert isinstance(model, RegisteredModel)
    assert (model.name, model.version, model.sha256) == ("m", "1", info.sha256)
    ref = model_ref(model)
    assert ref.sha256 == info.sha256[:12] and len(ref.sha256) == 12
    np.testing.assert_allclose(model.predict_batch(data), logreg.predict_proba(data), atol=1e-4)
    assert src.load("2").version == "2"


def test_load_refuses_a_tampered_artifact(two_versions: LocalRegistry) -> None:
    path = two_versions.artifact_path(two_versions.get("m", "2"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        source(two_versions, "registry:m@production").load("2")


def test_load_validates_samples_and_the_latency_budget(
    registry: LocalRegistry, logreg_onnx: Path, data: np.ndarray
) -> None:
    wrong = Sample(input=data[:2].tolist(), expected=[[0.5, 0.5]] * 2, tolerance=0.01)
    registry.register("m", logreg_onnx, format="onnx", samples=[wrong])
    registry.promote("m", "1")
    with pytest.raises(ModelValidationError, match="sample 0"):
        source(registry, "registry:m@production").load("1")

    registry.register("m", logreg_onnx, format="onnx", signature=Signature(shape=[None, 4]))
    slow = source(registry, "registry:m@production", latency_budget=1e-9)
    with pytest.raises(ModelValidationError, match="latency"):
        slow.load("2")
    assert source(registry, "registry:m@production", latency_budget=10.0).load("2").version == "2"


def test_pickle_is_refused_unless_allowed(
    registry: LocalRegistry, iforest: IsolationForest, tmp_path: Path
) -> None:
    import pickle

    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(iforest))
    registry.register("m", path, format="pickle")
    with pytest.raises(ModelLoadError, match="allow pickle explicitly"):
        source(registry, "registry:m/1").load("1")
    assert source(registry, "registry:m/1", allow_pickle=True).load("1").version == "1"


def test_roll_back_moves_the_alias_one_step_back(two_versions: LocalRegistry) -> None:
    src = source(two_versions, "registry:m@production")
    src.roll_back("2")
    state = two_versions.aliases("m")["production"]
    assert (state.version, state.history) == ("1", [])
    # The candidate alias is another alias: untouched.
    assert two_versions.aliases("m")["candidate"].version == "2"


def test_roll_back_leaves_an_alias_that_moved_on(two_versions: LocalRegistry) -> None:
    """Someone promoted another version meanwhile: rolling "2" back must not undo that."""
    two_versions.promote("m", "1", "production")  # by hand: history [1, 2], points at 1
    src = source(two_versions, "registry:m@production")
    before = two_versions.aliases("m")["production"]
    assert (before.version, before.history) == ("1", ["1", "2"])
    src.roll_back("2")
    assert two_versions.aliases("m")["production"] == before


def test_roll_back_with_no_history_is_a_no_op(two_versions: LocalRegistry) -> None:
    src = source(two_versions, "registry:m@candidate")  # candidate -> 2, no history
    src.roll_back("2")
    state = two_versions.aliases("m")["candidate"]
    assert (state.version, state.history) == ("2", [])


def test_only_local_registry_references() -> None:
    with pytest.raises(ValueError, match="not a reference to the local registry"):
        RegistrySource(LocalRegistry("nowhere"), parse_reference("mlflow:m@production"))


async def test_manager_over_the_registry(two_versions: LocalRegistry, logreg_onnx: Path) -> None:
    """Start on production, refuse a truncated version (the old one keeps serving), and
    roll a failing one back: the alias moves back one step in the registry."""
    two_versions.rollback("m", "production")  # production -> 1
    src = source(two_versions, "registry:m@production")
    manager = ModelManager(src, probation=Probation(seconds=3600, min_records=10))
    v1 = await manager.start()
    assert v1.version == "1"

    bad = two_versions.register("m", logreg_onnx, format="onnx")  # version 3
    path = two_versions.artifact_path(bad)
    path.write_bytes(path.read_bytes()[:-10])
    two_versions.promote("m", "3", "production")
    assert await manager.check() is False
    assert manager.serving is v1 and manager.rejected == {"3"}
    two_versions.rollback("m", "production")  # the operator takes it back: -> 1

    two_versions.promote("m", "2", "production")
    assert await manager.check() is True
    v2 = manager.serving
    assert v2 is not None and v2.version == "2"
    manager.observe(v2, ok=0, failed=10, seconds=0.01)
    assert manager.serving is v1 and "2" in manager.rejected
    # The alias moves back in a thread.
    await wait_for(lambda: two_versions.aliases("m")["production"].version == "1")
    assert await manager.check() is False and manager.serving is v1


def test_roll_back_goes_to_the_version_that_served_not_to_a_rejected_one(
    two_versions: LocalRegistry, logreg_onnx: Path
) -> None:
    """production went 1 -> 2 -> 3 -> 4, but 3 never served (it failed to load), so 2
    served until 4 came; 4 fails its probation: the alias goes back to 2, which served,
    not to 3, which would stop the next restart."""
    two_versions.register("m", logreg_onnx, format="onnx")
    two_versions.register("m", logreg_onnx, format="onnx")
    for v in ("3", "4"):
        two_versions.promote("m", v, "production")
    before = two_versions.aliases("m")["production"]
    assert (before.version, before.history) == ("4", ["1", "2", "3"])
    source(two_versions, "registry:m@production").roll_back("4", to="2")
    state = two_versions.aliases("m")["production"]
    assert (state.version, state.history) == ("2", ["1"])
