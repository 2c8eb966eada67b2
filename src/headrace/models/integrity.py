"""Checking a model artifact before a single byte of it is deserialised."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which file and why."""


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
        raise ModelLoadError(f"{path}: cannot read the model file: {exc.strerror}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelLoadError(
            f"{path}: sha256 mismatch: expected {expected}, the file has {actual}. "
            "The file changed or is not the one the configuration names."
        )
    return data
