"""How a pipeline names a registered model: ``registry:NAME@ALIAS`` or ``registry:NAME/VERSION``.

An alias follows the registry as it moves (``production`` today may be version 7 tomorrow);
a version pins one artifact. ``mlflow:`` references name a model in an MLflow Model
Registry with the same two forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from headrace.errors import HeadraceError
from headrace.registry.local import NAME_PATTERN

Scheme = Literal["registry", "mlflow"]
SCHEMES: Final[tuple[Scheme, ...]] = ("registry", "mlflow")

# MLflow allows more in a registered model's name (spaces, for example) than the directory
# registry does; only the characters that would make the reference ambiguous are refused.
_MLFLOW_NAME: Final = re.compile(r"[^@/:\s](?:[^@/:]*[^@/:\s])?")
_MLFLOW_VERSION: Final = re.compile(r"[1-9][0-9]*")


class ModelReferenceError(HeadraceError, ValueError):
    """A model reference that cannot be parsed; the message says what form is expected."""


@dataclass(frozen=True, slots=True)
class ModelReference:
    """A parsed reference: exactly one of ``alias`` and ``version`` is set.

    >>> ref = parse_reference("registry:fraud@production")
    >>> ref.name, ref.alias, ref.version, str(ref)
    ('fraud', 'production', None, 'registry:fraud@production')
    """

    scheme: Scheme
    name: str
    alias: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if (self.alias is None) == (self.version is None):
            raise ModelReferenceError(
                f"model reference {self.scheme}:{self.name}: give an alias or a version, "
                "not both or neither"
            )

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.scheme}:{self.name}@{self.alias}"
        return f"{self.scheme}:{self.name}/{self.version}"


_FORMS: Final = "SCHEME:NAME@ALIAS or SCHEME:NAME/VERSION (SCHEME: registry or mlflow)"


def parse_reference(text: str) -> ModelReference:
    """Parse ``registry:NAME@ALIAS``, ``registry:NAME/VERSION`` or their ``mlflow:`` forms.

    >>> parse_reference("registry:fraud/12")
    ModelReference(scheme='registry', name='fraud', alias=None, version='12')
    >>> parse_reference("fraud@production")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace...ModelReferenceError: ... has no scheme: write registry:fraud@production ...
    """
    if not isinstance(text, str):
        raise ModelReferenceError(f"a model reference must be a string, got {type(text).__name__}")
    scheme, colon, rest = text.partition(":")
    if not colon:
        raise ModelReferenceError(
            f"model reference {text!r} has no scheme: write registry:{text} (or mlflow:...); "
            f"the forms are {_FORMS}"
        )
    if scheme not in SCHEMES:
        raise ModelReferenceError(
            f"model reference {text!r}: unknown scheme {scheme!r}; the forms are {_FORMS}"
        )
    at, slash = "@" in rest, "/" in rest
    if at and slash:
        raise ModelReferenceError(
            f"model reference {text!r}: give an alias (@) or a version (/), not both"
        )
    if not at and not slash:
        raise ModelReferenceError(
            f"model reference {text!r} names no alias or version: write {text}@production "
            f"or {text}/VERSION"
        )
    name, _, tail = rest.partition("@" if at else "/")
    what = "alias" if at else "version"
    _check(text, scheme, "model name", name)
    _check(text, scheme, what, tail)
    if at:
        return ModelReference(scheme, name, alias=tail)
    return ModelReference(scheme, name, version=tail)


def _check(text: str, scheme: Scheme, what: str, value: str) -> None:
    if not value:
        raise ModelReferenceError(f"model reference {text!r}: the {what} is empty")
    if scheme == "registry" or what == "alias":
        ok = NAME_PATTERN.fullmatch(value) is not None
        rule = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    elif what == "version":
        ok = _MLFLOW_VERSION.fullmatch(value) is not None
        rule = "an MLflow model version is a positive integer"
    else:
        ok = _MLFLOW_NAME.fullmatch(value) is not None
        rule = "no '@', '/' or ':', and no blanks at either end"
    if not ok:
        raise ModelReferenceError(
            f"model reference {text!r}: {what} {value!r} is not allowed: {rule}"
        )
