"""``headrace registry ...`` through the real ``headrace`` app (Typer's CliRunner)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner, Result

from headrace.cli import app
from headrace.registry import LocalRegistry, Sample, Signature, VersionInfo


def cli(root: Path | None, *args: str, env: dict[str, str | None] | None = None) -> Result:
    extra = ["--root", str(root)] if root is not None else []
    environment: dict[str, str | None] = {"HEADRACE_REGISTRY": None, "COLUMNS": "200"}
    environment.update(env or {})
    return CliRunner().invoke(app, ["registry", *args, *extra], env=environment)


def one_line_error(result: Result, *fragments: str) -> None:
    """Exit 2 with a single line on stderr that holds every fragment."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["registry", "--help"])
    assert result.exit_code == 0
    for command in ("register", "list", "show", "promote", "rollback"):
        assert command in result.output


def test_register_with_everything_then_show(root: Path, logreg_onnx: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples.json"
    samples.write_text(
        json.dumps([{"input": [[0, 0, 0, 0]], "expected": [[0.5, 0.5]], "tolerance": 0.1}])
    )
    result = cli(
        root,
        "register",
        "fraud",
        str(logreg_onnx),
        "--format",
        "onnx",
        "--signature-fields",
        "a,b,c,d",
        "--shape",
        "None,4",
        "--metric",
        "auc=0.93",
        "--metric",
        "data=2024-05",
        "--samples",
        str(samples),
        "--option",
        "output=probabilities",
        "--option",
        "threads=1",
        "--promote",
        "production",
    )
    assert result.exit_code == 0, result.output
    info = LocalRegistry(root).get("fraud", "1")
    assert result.stdout.splitlines() == [
        f"registered fraud version 1 (sha256 {info.sha256})",
        "fraud: production -> 1",
    ]
    assert info.signature == Signature(fields=["a", "b", "c", "d"], shape=[None, 4])
    assert info.metrics == {"auc": 0.93, "data": "2024-05"}
    assert info.samples == [Sample(input=[[0, 0, 0, 0]], expected=[[0.5, 0.5]], tolerance=0.1)]
    assert info.options == {"output": "probabilities", "threads": 1}
    assert LocalRegistry(root).resolve("fraud", "production") == info

    shown = cli(root, "show", "fraud/1")
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    shown_rows = {
        key.strip(): value
        for key, value in (re.split(r"\s{2,}", line, maxsplit=1) for line in text.splitlines())
    }
    assert shown_rows == {
        "model": "fraud",
        "version": "1",
        "format": "onnx",
        "artifact": "model.onnx",
        "sha256": info.sha256,
        "created": shown_rows["created"],
        "aliases": "production",
        "signature": "fields a, b, c, d; shape [None, 4]; dtype float32",
        "metric auc": "0.93",
        "metric data": "2024-05",
        "samples": "1 (tolerance 0.1)",
        "option output": "probabilities",
        "option threads": "1",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", shown_rows["created"])
    assert "[0, 0, 0, 0]" not in text  # sample data and artifact bytes are not dumped

    as_json = cli(root, "show", "fraud@production", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert msgspec.json.decode(as_json.stdout, type=VersionInfo) == info


def test_list_promote_rollback_show_model(root: Path, artifact: Path) -> None:
    for version in ["1", "2", "10"]:
        assert (
            cli(
                root, "register", "m", str(artifact), "-f", "pickle", "--version", version
            ).exit_code
            == 0
        )
    assert cli(root, "register", "other", str(artifact), "-f", "skops").exit_code == 0

    promoted = cli(root, "promote", "m", "2")
    assert (promoted.exit_code, promoted.stdout) == (0, "m: production -> 2\n")
    assert cli(root, "promote", "m", "10").stdout == "m: production -> 10 (was 2)\n"
    assert cli(root, "promote", "m", "10").stdout == "m: production -> 10 (unchanged)\n"
    assert cli(root, "promote", "m", "1", "--alias", "candidate").exit_code == 0

    listed = cli(root, "list")
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.stdout.splitlines() if " m " in line or " other " in line]
    assert [row.split("│")[2].strip() for row in rows] == ["1", "2", "10", "1"]
    assert "candidate" in rows[0] and "production" in rows[2] and "skops" in rows[3]
    assert "production" not in rows[1]

    rolled = cli(root, "rollback", "m")
    assert (rolled.exit_code, rolled.stdout) == (0, "m: production -> 2 (was 10)\n")

    model = cli(root, "show", "m")
    assert model.exit_code == 0, model.output
    lines = model.stdout.splitlines()
    assert lines[0] == "model m: 3 version(s)"
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "10"]
    assert "  candidate -> 1" in lines and "  production -> 2" in lines

    cli(root, "promote", "m", "10")
    cli(root, "promote", "m", "1")
    assert "  production -> 1 (before: 10 <- 2)" in cli(root, "show", "m").stdout.splitlines()


def test_root_comes_from_the_environment_or_the_default(
    tmp_path: Path, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_root = tmp_path / "from-env"
    result = cli(
        None, "register", "m", str(artifact), "-f", "onnx", env={"HEADRACE_REGISTRY": str(env_root)}
    )
    assert result.exit_code == 0, result.output
    assert LocalRegistry(env_root).names() == ["m"]

    monkeypatch.chdir(tmp_path)
    assert cli(None, "register", "n", str(artifact), "-f", "onnx").exit_code == 0
    assert LocalRegistry(tmp_path / "model-registry").names() == ["n"]
    assert "n" in cli(None, "list").stdout


def test_empty_registry_lists_nothing(root: Path) -> None:
    result = cli(root, "list")
    assert (result.exit_code, result.stdout) == (0, f"no models in {root}\n")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["show", "absent"], ["registry error", "no model 'absent'"]),
        (["show", "m/9"], ["no version '9' (it has: 1)"]),
        (["show", "m@production"], ["no alias 'production'"]),
        (["list", "absent"], ["no model 'absent'"]),
        (["promote", "m", "9"], ["has no version '9'"]),
        (["rollback", "m"], ["no alias 'production' to roll back"]),
        (["register", "m", "ART", "-f", "onnx", "--version", "1"], ["already has version '1'"]),
        (["register", "../x", "ART", "-f", "onnx"], ["model name '../x' is not allowed"]),
        (["register", "m", "ART", "-f", "tensorflow"], ["unknown format 'tensorflow'"]),
        (
            ["register", "m", "ART", "-f", "onnx", "--metric", "auc"],
            ["--metric: expected key=value"],
        ),
        (
            ["register", "m", "ART", "-f", "onnx", "--option", "colour=red"],
            ["option 'colour' does not apply to onnx"],
        ),
        (["register", "m", "ART", "-f", "onnx", "--shape", "None,x"], ["--shape: expected"]),
        (["register", "m", "ART", "-f", "onnx", "--shape", "None,0"], ["[None, 0]"]),
        (["register", "m", "ART", "-f", "onnx", "--dtype", "str"], ["not a numeric NumPy dtype"]),
        (
            ["register", "m", "ART", "-f", "onnx", "--samples", "BAD"],
            ["--samples:", "expected a JSON list", "tolerance must be >= 0"],
        ),
        (["register", "m", "ART", "-f", "onnx", "--samples", "NONE"], ["--samples: cannot read"]),
        (
            ["register", "m", "ART", "-f", "onnx", "--promote", "a/b"],
            ["alias 'a/b' is not allowed"],
        ),
        (["register", "m", "NONE", "-f", "onnx"], ["is not a file"]),
    ],
)
def test_errors_exit_2_with_one_line(
    root: Path, artifact: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    assert cli(root, "register", "m", str(artifact), "-f", "onnx").exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text('[{"input": [[1]], "expected": [1], "tolerance": -1}]')
    paths = {"ART": str(artifact), "BAD": str(bad), "NONE": str(tmp_path / "none")}
    result = cli(root, *[paths.get(a, a) for a in args])
    one_line_error(result, *fragments)
    versions: list[Any] = [i.version for i in LocalRegistry(root).versions("m")]
    assert versions == ["1"]  # a failed registration (or --promote) added nothing
