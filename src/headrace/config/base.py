"""What every schema module shares: the error type, the strict base class of a section,
and the constrained types and patterns more than one section uses."""

from __future__ import annotations

from typing import Annotated

import msgspec

from headrace.errors import HeadraceError

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(HeadraceError, ValueError):
    """A configuration mistake, with the key it concerns and what was expected."""


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A section of the YAML file: an unknown key in it is an error."""


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# registry:NAME@ALIAS, registry:NAME/VERSION, mlflow:NAME@ALIAS, mlflow:NAME/VERSION (an
# MLflow name may hold more, spaces for one; an MLflow version is a positive integer).
REF = (
    rf"^(registry:{_NAME}[@/]{_NAME}"
    rf"|mlflow:[^@/:\s](?:[^@/:]*[^@/:\s])?(?:@{_NAME}|/[1-9][0-9]*))$"
)

# A table name, optionally schema-qualified: it is written into SQL, so nothing else.
TABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"
# A SQLite table name (SQLite has no schemas: one identifier).
SQLITE_TABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
