"""Model references: ``registry:NAME@ALIAS``, ``registry:NAME/VERSION`` and the mlflow forms."""

from __future__ import annotations

import pytest

from headrace.registry import ModelReference, ModelReferenceError, parse_reference


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry:fraud@production", ModelReference("registry", "fraud", alias="production")),
        ("registry:fraud/12", ModelReference("registry", "fraud", version="12")),
        (
            "registry:fraud-v2.x/2024.05-rc1",
            ModelReference("registry", "fraud-v2.x", None, "2024.05-rc1"),
        ),
        ("mlflow:fraud@champion", ModelReference("mlflow", "fraud", alias="champion")),
        ("mlflow:fraud/3", ModelReference("mlflow", "fraud", version="3")),
        ("mlflow:Fraud Detector@prod", ModelReference("mlflow", "Fraud Detector", alias="prod")),
    ],
)
def test_valid_references(text: str, expected: ModelReference) -> None:
    """Each form parses, and str() gives the text back."""
    ref = parse_reference(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fraud@production", "has no scheme: write registry:fraud@production"),
        ("s3:fraud@production", "unknown scheme 's3'"),
        ("registry:fraud", "names no alias or version: write registry:fraud@production"),
        ("registry:fraud@prod/3", "not both"),
        ("registry:@production", "the model name is empty"),
        ("registry:fraud@", "the alias is empty"),
        ("registry:fraud/", "the version is empty"),
        ("registry:../x/1", "not both|is not allowed"),
        ("registry:..@production", "model name '..' is not allowed"),
        ("registry:fraud/1/2", "version '1/2' is not allowed"),
        ("registry:fraud@a@b", "alias 'a@b' is not allowed"),
        ("registry:fr aud@production", "model name 'fr aud' is not allowed"),
        ("mlflow:fraud/latest", "an MLflow model version is a positive integer"),
        ("mlflow:fraud/0", "positive integer"),
        ("mlflow: fraud@prod", "no blanks at either end"),
        ("", "has no scheme"),
    ],
)
def test_invalid_references_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ModelReferenceError, match=message) as info:
        parse_reference(text)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_reference_needs_exactly_one_of_alias_and_version() -> None:
    with pytest.raises(ModelReferenceError, match="not both or neither"):
        ModelReference("registry", "m")
    with pytest.raises(ModelReferenceError, match="not both or neither"):
        ModelReference("registry", "m", alias="a", version="1")


def test_non_string_is_refused() -> None:
    with pytest.raises(ModelReferenceError, match="must be a string, got int"):
        parse_reference(3)  # type: ignore[arg-type]
