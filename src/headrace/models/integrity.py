"""Checking a model artifact before a single byte of it is deserialised."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from headrace.errors import HeadraceError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ModelLoadError(HeadraceError, RuntimeError):
    """A model could not be loaded; the message says which file and why."""


class Sha256Mismatch(ModelLoadError):
    """The file's sha256 is not the one expected: ``path``, ``expected`` and ``actual`` say
    which file and both digests, for a caller that knows where ``expected`` came from."""

    def __init__(self, path: str | Path, expected: str, actual: str) -> None:
        super().__init__(
            f"{path}: sha256 mismatch: expected {expected}, the file has {actual}. "
            "The file changed or is not the one the configuration names."
        )
        self.path = str(path)
        self.expected = expected
        self.actual = actual


class ModelFileUnreadable(ModelLoadError):
    """The model file cannot be read (missing, a directory, no permission)."""


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_verified(path: str | Path, sha256: str) -> bytes:
    """The file's bytes, if and only if their sha256 is the one expected."""
    expected = sha256.strip().lower()
    if not _HEX64.match(expected):
        raise ModelLoadError(f"{path}: sha256 must be 64 hexadecimal characters, got {sha256!r}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelFileUnreadable(f"{path}: cannot read the model file: {exc.strerror}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise Sha256Mismatch(path, expected, actual)
    return data
