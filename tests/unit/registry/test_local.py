"""The directory registry: versions, metadata, aliases, atomicity and path safety."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest

from headrace.models import sha256_of
from headrace.registry import (
    AliasState,
    LocalRegistry,
    RegistryError,
    Sample,
    Signature,
    VersionInfo,
)
from headrace.registry.local import HISTORY_LIMIT

# -- register, get, versions -------------------------------------------------------------


def test_register_copies_the_artifact_and_records_its_digest(
    registry: LocalRegistry, artifact: Path
) -> None:
    """The first version is "1"; the artifact is copied in under the version's directory
    and its sha256 recorded; get() reads back exactly what register() returned."""
    info = registry.register("fraud", artifact, format="onnx")
    assert (info.name, info.version, info.format) == ("fraud", "1", "onnx")
    path = registry.artifact_path(info)
    assert path == registry.root / "fraud" / "1" / "model.onnx"
    assert path.read_bytes() == artifact.read_bytes()
    assert info.sha256 == sha256_of(artifact) == sha256_of(path)
    assert registry.get("fraud", "1") == info
    assert registry.names() == ["fraud"]
    assert registry.versions("fraud") == [info]
    artifact.write_bytes(b"changed afterwards")  # the registry holds its own copy
    assert sha256_of(path) == info.sha256


def test_next_version_is_one_past_the_highest_integer(
    registry: LocalRegistry, artifact: Path
) -> None:
    """Without a version, registration takes the next integer, ignoring named versions."""
    assert registry.register("m", artifact, format="onnx").version == "1"
    registry.register("m", artifact, format="onnx", version="9")
    registry.register("m", artifact, format="onnx", version="2024.1-rc1")
    assert registry.register("m", artifact, format="onnx").version == "10"


def test_versions_sort_numbers_numerically(registry: LocalRegistry, artifact: Path) -> None:
    """2 sorts before 10, and 1.9 before 1.10."""
    for v in ["10", "2", "1.10", "1.9", "1"]:
        registry.register("m", artifact, format="onnx", version=v)
    assert [i.version for i in registry.versions("m")] == ["1", "1.9", "1.10", "2", "10"]


def test_existing_version_is_refused(registry: LocalRegistry, artifact: Path) -> None:
    """Versions are immutable: registering one again fails and keeps the original."""
    first = registry.register("m", artifact, format="onnx", version="3")
    other = artifact.with_name("other.bin")
    other.write_bytes(b"another model")
    with pytest.raises(RegistryError) as info:
        registry.register("m", other, format="onnx", version="3")
    message = str(info.value)
    assert str(registry.root) in message and "'m'" in message and "'3'" in message
    assert "already has version" in message
    assert registry.get("m", "3") == first
    assert sorted(p.name for p in (registry.root / "m").iterdir()) == ["3", "_lock"]


def test_metadata_round_trips(registry: LocalRegistry, artifact: Path) -> None:
    """Signature, metrics, samples, trusted types and options are stored as given; NumPy
    values become plain JSON numbers and lists."""
    signature = Signature(fields=["a", "b"], shape=[None, 2], dtype="float64")
    sample = Sample(input=np.array([[1.0, 2.0]]), expected=[np.float32(0.5)], tolerance=0.01)
    info = registry.register(
        "m",
        artifact,
        format="skops",
        signature=signature,
        metrics={"auc": np.float64(0.93), "trained_on": "2024-05"},
        samples=[sample],
        trusted_types=["sklearn.tree._tree.Tree"],
        options={"method": "score_samples", "negate": True},
    )
    assert info.signature == signature
    assert info.metrics == {"auc": 0.93, "trained_on": "2024-05"}
    assert info.samples == [Sample(input=[[1.0, 2.0]], expected=[0.5], tolerance=0.01)]
    assert info.trusted_types == ["sklearn.tree._tree.Tree"]
    assert info.options == {"method": "score_samples", "negate": True}
    assert info.artifact == "model.skops"
    assert registry.get("m", "1") == info
    stored = json.loads((registry.root / "m" / "1" / "version.json").read_text())
    assert stored["signature"]["shape"] == [None, 2]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"format": "tensorflow"}, "unknown format 'tensorflow'"),
        ({"format": "onnx", "options": {"method": "predict"}}, "'method' does not apply to onnx"),
        ({"format": "onnx", "options": {"threads": True}}, "'threads' must be a int"),
        ({"format": "skops", "options": {"method": "fit"}}, "'method' must be one of"),
        ({"format": "torch-weights"}, "needs option 'factory' as 'module:callable'"),
        ({"format": "torch-weights", "options": {"factory": "torch.nn"}}, "'module:callable'"),
        ({"format": "onnx", "trusted_types": ["x.Y"]}, "trusted types apply only to"),
        ({"format": "onnx", "metrics": {"when": object()}}, "must be JSON values"),
    ],
)
def test_bad_registration_names_the_problem_and_adds_nothing(
    registry: LocalRegistry, artifact: Path, kwargs: dict[str, object], expected: str
) -> None:
    with pytest.raises(RegistryError, match=expected) as info:
        registry.register("m", artifact, **kwargs)  # type: ignore[arg-type]
    assert str(registry.root) in str(info.value) and "'m'" in str(info.value)
    assert not (registry.root / "m").exists()


def test_missing_artifact_is_refused(registry: LocalRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"absent\.onnx is not a file"):
        registry.register("m", tmp_path / "absent.onnx", format="onnx")


def test_unknown_model_and_version_list_what_exists(
    registry: LocalRegistry, artifact: Path
) -> None:
    with pytest.raises(RegistryError, match=r"no model 'm' \(registered: none\)"):
        registry.get("m", "1")
    registry.register("m", artifact, format="onnx")
    registry.register("n", artifact, format="onnx")
    with pytest.raises(RegistryError, match=r"no model 'x' \(registered: m, n\)"):
        registry.versions("x")
    with pytest.raises(RegistryError) as info:
        registry.get("m", "7")
    assert str(info.value) == f"{registry.root}: model 'm' has no version '7' (it has: 1)"


def test_names_ignore_what_is_not_a_model(registry: LocalRegistry, artifact: Path) -> None:
    """Stray files, hidden directories and leftovers of an interrupted registration are not
    models or versions."""
    registry.register("m", artifact, format="onnx")
    (registry.root / ".git").mkdir()
    (registry.root / "README.md").write_text("models")
    (registry.root / "m" / "_staging-dead").mkdir()
    (registry.root / "m" / "2").mkdir()  # no version.json: never completed
    assert registry.names() == ["m"]
    assert [i.version for i in registry.versions("m")] == ["1"]
    assert LocalRegistry(registry.root / "absent").names() == []


def test_broken_version_file_is_a_registry_error(registry: LocalRegistry, artifact: Path) -> None:
    info = registry.register("m", artifact, format="onnx")
    meta = registry.root / "m" / "1" / "version.json"
    meta.write_text("{not json")
    with pytest.raises(RegistryError, match=r"'m' version '1': .*version\.json is invalid"):
        registry.get("m", "1")
    # A version.json copied from another version must not pass for this one.
    meta.write_bytes(msgspec.json.encode(msgspec.structs.replace(info, version="2")))
    with pytest.raises(RegistryError, match="describes 'm' version '2'"):
        registry.get("m", "1")


def test_samples_and_signatures_check_themselves() -> None:
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        Sample(input=[[1.0]], expected=[1.0], tolerance=-1)
    with pytest.raises(ValueError, match="2 rows, expected has 1"):
        Sample(input=[[1.0], [2.0]], expected=[1.0])
    with pytest.raises(ValueError, match="non-empty list"):
        Sample(input=[], expected=[])
    with pytest.raises(ValueError, match="not a numeric NumPy dtype"):
        Signature(dtype="banana")
    with pytest.raises(ValueError, match="positive integers or None"):
        Signature(shape=[None, -1])


# -- path safety ---------------------------------------------------------------------------

UNSAFE = [
    "",
    ".",
    "..",
    "../escape",
    "a/b",
    "/abs",
    ".hidden",
    "_aliases.json",
    "a b",
    "a\nb",
    "a\n",
    "a\\b",
    "name:1",
    "x" * 129,
    "é",
]


@pytest.mark.parametrize("bad", UNSAFE)
def test_unsafe_names_versions_and_aliases_are_refused(
    registry: LocalRegistry, artifact: Path, tmp_path: Path, bad: str
) -> None:
    """Anything that could leave the root, hide a file or clash with the registry's own
    files is refused, and nothing is written anywhere."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(RegistryError, match="is not allowed") as info:
        registry.register(bad, artifact, format="onnx")
    assert f"model name {bad!r}" in str(info.value) and str(registry.root) in str(info.value)
    with pytest.raises(RegistryError, match=re.escape(f"version {bad!r} is not allowed")):
        registry.register("m", artifact, format="onnx", version=bad)
    assert sorted(tmp_path.rglob("*")) == before
    registry.register("m", artifact, format="onnx")
    with pytest.raises(RegistryError, match=re.escape(f"alias {bad!r} is not allowed")):
        registry.promote("m", "1", alias=bad)
    with pytest.raises(RegistryError, match="is not allowed"):
        registry.get("m", bad)
    with pytest.raises(RegistryError, match="is not allowed"):
        registry.resolve("m", bad)


def test_tampered_artifact_name_cannot_leave_the_version(
    registry: LocalRegistry, artifact: Path
) -> None:
    """artifact_path re-checks what version.json says: a hand-edited name with a path in
    it is refused."""
    info = registry.register("m", artifact, format="onnx")
    for bad in ["../../../etc/passwd", "/etc/passwd", "..", "sub/model.onnx"]:
        with pytest.raises(RegistryError, match="not a plain file name"):
            registry.artifact_path(msgspec.structs.replace(info, artifact=bad))
    with pytest.raises(RegistryError, match="is not allowed"):
        registry.artifact_path(msgspec.structs.replace(info, version="../1"))


# -- aliases ---------------------------------------------------------------------------------


@pytest.fixture
def three(registry: LocalRegistry, artifact: Path) -> LocalRegistry:
    for _ in range(3):
        registry.register("m", artifact, format="onnx")
    return registry


def test_promote_resolve_and_history(three: LocalRegistry) -> None:
    """Each promotion pushes the previous target on the history, oldest first."""
    assert three.aliases("m") == {}
    first = three.promote("m", "1")
    assert (first.version, first.history) == ("1", [])
    three.promote("m", "2")
    state = three.promote("m", "3")
    assert (state.version, state.history) == ("3", ["1", "2"])
    assert three.resolve("m", "production") == three.get("m", "3")
    assert three.aliases("m") == {"production": state}


def test_promote_to_the_current_version_changes_nothing(three: LocalRegistry) -> None:
    state = three.promote("m", "1")
    assert three.promote("m", "1") == state
    assert three.aliases("m")["production"].history == []


def test_rollback_steps_back_until_history_runs_out(three: LocalRegistry) -> None:
    for v in ["1", "2", "3"]:
        three.promote("m", v)
    state = three.rollback("m")
    assert (state.version, state.history) == ("2", ["1"])
    assert three.resolve("m", "production").version == "2"
    assert three.rollback("m").version == "1"
    with pytest.raises(RegistryError) as info:
        three.rollback("m")
    message = str(info.value)
    assert str(three.root) in message and "'m'" in message and "'production'" in message
    assert "no earlier version" in message
    assert three.resolve("m", "production").version == "1"


def test_aliases_are_independent(three: LocalRegistry) -> None:
    three.promote("m", "1")
    three.promote("m", "2", alias="candidate")
    three.promote("m", "3", alias="candidate")
    three.rollback("m", alias="candidate")
    assert {a: s.version for a, s in three.aliases("m").items()} == {
        "candidate": "2",
        "production": "1",
    }


def test_alias_errors_name_the_alias_and_what_exists(three: LocalRegistry) -> None:
    three.promote("m", "1", alias="candidate")
    with pytest.raises(RegistryError, match=r"no alias 'production' \(it has: candidate\)"):
        three.resolve("m", "production")
    with pytest.raises(RegistryError, match=r"no alias 'production' to roll back"):
        three.rollback("m")
    with pytest.raises(RegistryError, match=r"has no version '9' \(it has: 1, 2, 3\)"):
        three.promote("m", "9", alias="candidate")
    assert three.resolve("m", "candidate").version == "1"
    with pytest.raises(RegistryError, match="no model 'x'"):
        three.promote("x", "1")


def test_history_is_bounded(registry: LocalRegistry, artifact: Path) -> None:
    for _ in range(HISTORY_LIMIT + 5):
        info = registry.register("m", artifact, format="onnx")
        state = registry.promote("m", info.version)
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[-1] == str(HISTORY_LIMIT + 4)


def test_alias_file_is_replaced_never_rewritten(three: LocalRegistry) -> None:
    """A promotion replaces the file (a new inode), so a reader holding the old one still
    reads it whole; no temporary file is left behind."""
    three.promote("m", "1")
    path = three.root / "m" / "_aliases.json"
    with path.open("rb") as old:
        three.promote("m", "2")
        assert os.fstat(old.fileno()).st_ino != path.stat().st_ino
        assert msgspec.json.decode(old.read())["production"]["version"] == "1"
    assert sorted(p.name for p in (three.root / "m").iterdir() if p.name.startswith("_")) == [
        "_aliases.json",
        "_lock",
    ]


def test_reader_never_sees_a_half_written_alias_file(three: LocalRegistry) -> None:
    """While one thread promotes back and forth, another reads the aliases as fast as it
    can: every read is complete, valid JSON naming one of the versions."""
    three.promote("m", "1")
    done = threading.Event()
    seen: list[str] = []
    problems: list[BaseException] = []
    path = three.root / "m" / "_aliases.json"

    def read() -> None:
        try:
            while not done.is_set():
                raw = path.read_bytes()
                decoded = msgspec.json.decode(raw, type=dict[str, AliasState])
                seen.append(decoded["production"].version)
                seen.append(three.resolve("m", "production").version)
        except BaseException as exc:
            problems.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            three.promote("m", str(2 + i % 2))
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert seen and set(seen) <= {"1", "2", "3"}


def test_concurrent_registrations_get_distinct_versions(
    registry: LocalRegistry, artifact: Path
) -> None:
    """The lock serialises writers: threads registering at once never share a number."""
    barrier = threading.Barrier(4)
    versions: list[str] = []

    def work() -> None:
        barrier.wait()
        for _ in range(5):
            versions.append(registry.register("m", artifact, format="onnx").version)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions, key=int) == [str(i) for i in range(1, 21)]


PROMOTER = """
import sys
from headrace.registry import LocalRegistry

registry = LocalRegistry(sys.argv[1])
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.readline()  # both processes start promoting together
for version in sys.argv[2:]:
    registry.promote("m", version)
"""


def test_concurrent_promotions_from_processes_lose_nothing(
    registry: LocalRegistry, artifact: Path
) -> None:
    """Two processes promote 20 distinct versions each at the same time: every change is
    on the history, so none was lost to an unlocked read-modify-write."""
    mine = {p: [f"{p}{i}" for i in range(20)] for p in "ab"}
    for versions in mine.values():
        for v in versions:
            registry.register("m", artifact, format="onnx", version=v)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTER, str(registry.root), *versions],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for versions in mine.values()
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    state = registry.aliases("m")["production"]
    changes = [*state.history, state.version]
    assert sorted(changes) == sorted(mine["a"] + mine["b"])
    for versions in mine.values():  # each process's own order is kept
        assert [v for v in changes if v in versions] == versions


def test_version_info_defaults_allow_minimal_construction() -> None:
    """Fields after created_at have defaults, so older version files still decode."""
    raw = b'{"name":"m","version":"1","format":"onnx","artifact":"model.onnx",'
    raw += b'"sha256":"' + b"0" * 64 + b'","created_at":1.5}'
    info = msgspec.json.decode(raw, type=VersionInfo)
    assert (info.signature, info.metrics, info.samples, info.options) == (None, {}, [], {})
    assert info.short_sha == "0" * 12


def test_broken_alias_file_is_a_registry_error(three: LocalRegistry) -> None:
    three.promote("m", "1")
    path = three.root / "m" / "_aliases.json"
    for content in ["{half", '{"production": {"history": []}}']:
        path.write_text(content)
        with pytest.raises(RegistryError, match=r"model 'm': .*_aliases\.json is invalid"):
            three.resolve("m", "production")
