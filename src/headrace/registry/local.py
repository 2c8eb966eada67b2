"""A model registry in a plain directory: versions, their metadata, and movable aliases.

Layout (names and versions start with a letter or digit, so the ``_`` files never clash)::

    ROOT/NAME/VERSION/model.onnx      the artifact, copied in at registration
    ROOT/NAME/VERSION/version.json    its VersionInfo
    ROOT/NAME/_aliases.json           alias -> AliasState
    ROOT/NAME/_lock                   serialises writers between processes (fcntl)

A version appears whole or not at all: it is assembled in a temporary directory and
renamed into place. Alias changes write a temporary file in the same directory, fsync it
and ``os.replace`` it over the old one, so a reader (which takes no lock) sees the old
aliases or the new ones, never half a file. Versions are immutable: registering an
existing one is refused, and the sha256 recorded at registration is what loaders check.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import msgspec

from headrace.models.integrity import sha256_of
from headrace.registry.metadata import (
    FORMATS,
    NAME_PATTERN,
    AliasState,
    Format,
    RegistryError,
    Sample,
    Signature,
    VersionInfo,
    artifact_name,
    check_options,
    normalised,
    version_key,
)

__all__ = [
    "FORMATS",
    "HISTORY_LIMIT",
    "NAME_PATTERN",
    "AliasState",
    "Format",
    "LocalRegistry",
    "RegistryError",
    "Sample",
    "Signature",
    "VersionInfo",
    "version_key",
]

#: How many earlier versions an alias remembers; rollback goes back one step at a time.
HISTORY_LIMIT: Final = 100

_VERSION_FILE: Final = "version.json"
_ALIASES_FILE: Final = "_aliases.json"
_LOCK_FILE: Final = "_lock"

_ALIASES_TYPE = dict[str, AliasState]


def _head(path: Path) -> bytes:
    """The first bytes of a file (what tells an XGBoost model's JSON from UBJSON)."""
    with path.open("rb") as f:
        return f.read(64)


class LocalRegistry:
    """A directory of model versions and aliases; no server. Safe to share between
    processes on one machine (writers take an ``fcntl`` lock per model name)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    # -- reading -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """The registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if NAME_PATTERN.fullmatch(p.name) and p.is_dir()
        )

    def versions(self, name: str) -> list[VersionInfo]:
        """The versions of ``name``, oldest first by version (``2`` before ``10``)."""
        directory = self._model_dir(name)
        found = [
            p.name
            for p in directory.iterdir()
            if NAME_PATTERN.fullmatch(p.name) and (p / _VERSION_FILE).is_file()
        ]
        return [self._read_version(name, v) for v in sorted(found, key=version_key)]

    def get(self, name: str, version: str) -> VersionInfo:
        """One version's metadata."""
        self._model_dir(name)
        self._check("version", version, name)
        if not (self.root / name / version / _VERSION_FILE).is_file():
            have = ", ".join(v.version for v in self.versions(name)) or "none"
            raise RegistryError(
                f"{self.root}: model {name!r} has no version {version!r} (it has: {have})"
            )
        return self._read_version(name, version)

    def artifact_path(self, info: VersionInfo) -> Path:
        """Where the version's artifact lies. The name comes from version.json, so it is
        checked again here: a hand-edited file must not point outside the directory."""
        self._check("model name", info.name)
        self._check("version", info.version, info.name)
        if not NAME_PATTERN.fullmatch(info.artifact):
            raise RegistryError(
                f"{self.root}: model {info.name!r} version {info.version!r}: artifact name "
                f"{info.artifact!r} is not a plain file name"
            )
        return self.root / info.name / info.version / info.artifact

    def aliases(self, name: str) -> dict[str, AliasState]:
        """The aliases of ``name`` (empty when it has none)."""
        path = self._model_dir(name) / _ALIASES_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(data, type=_ALIASES_TYPE)
        except msgspec.DecodeError as exc:  # also a ValidationError: valid JSON, wrong shape
            raise RegistryError(f"{self.root}: model {name!r}: {path} is invalid: {exc}") from None

    def resolve(self, name: str, alias: str) -> VersionInfo:
        """The version ``alias`` points at."""
        self._check("alias", alias, name)
        aliases = self.aliases(name)
        state = aliases.get(alias)
        if state is None:
            have = ", ".join(sorted(aliases)) or "none"
            raise RegistryError(
                f"{self.root}: model {name!r} has no alias {alias!r} (it has: {have})"
            )
        return self.get(name, state.version)

    # -- writing -----------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifact: str | Path,
        *,
        format: str,
        version: str | None = None,
        signature: Signature | None = None,
        metrics: Mapping[str, Any] | None = None,
        samples: Sequence[Sample] | None = None,
        trusted_types: Sequence[str] = (),
        options: Mapping[str, Any] | None = None,
    ) -> VersionInfo:
        """Copy ``artifact`` in as a new version of ``name`` and return its metadata.

        ``version=None`` takes the next integer (one past the highest integer version).
        An existing version is never overwritten. The sha256 is computed from the copy,
        so what is recorded is exactly what loaders will read.
        """
        self._check("model name", name)
        if version is not None:
            self._check("version", version, name)
        where = f"{self.root}: model {name!r}"
        if format not in FORMATS:
            raise RegistryError(
                f"{where}: unknown format {format!r}; use one of {', '.join(FORMATS)}"
            )
        opts = dict(options or {})
        check_options(where, format, opts)
        if trusted_types and format != "skops":
            raise RegistryError(f"{where}: trusted types apply only to the skops format")
        source = Path(artifact)
        if not source.is_file():
            raise RegistryError(f"{where}: artifact {source} is not a file")
        for i, sample in enumerate(samples or ()):
            if not isinstance(sample, Sample):
                raise RegistryError(
                    f"{where}: sample {i} is a {type(sample).__name__}, not a Sample"
                )
        # Everything but the digest, version and time, checked before anything is written.
        draft = normalised(
            where,
            VersionInfo(
                name=name,
                version=version or "0",
                format=cast(Format, format),
                artifact=artifact_name(format, _head(source)),
                sha256="",
                created_at=0.0,
                signature=signature,
                metrics=dict(metrics or {}),
                samples=list(samples or ()),
                trusted_types=list(trusted_types),
                options=opts,
            ),
        )

        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(name):
            if version is None:
                version = self._next_version(name)
            target = model_dir / version
            if target.exists():
                raise RegistryError(
                    f"{where} already has version {version!r}; versions are immutable, "
                    "register a new one"
                )
            # mkdir (not mkdtemp, which makes it private) so the umask decides who may read.
            staging = model_dir / f"_staging-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                copy = staging / draft.artifact
                shutil.copyfile(source, copy)
                _fsync(copy)
                info = msgspec.structs.replace(
                    draft, version=version, sha256=sha256_of(copy), created_at=time.time()
                )
                meta = staging / _VERSION_FILE
                meta.write_bytes(msgspec.json.format(msgspec.json.encode(info)))
                _fsync(meta)
                _fsync(staging)
                # A directory rename is atomic: the version is complete or absent.
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _fsync(model_dir)
        return info

    def promote(self, name: str, version: str, alias: str = "production") -> AliasState:
        """Point ``alias`` at ``version``; the version it pointed at goes on its history.
        Promoting to the version already current changes nothing."""
        self._check("alias", alias, name)
        self._model_dir(name)
        with self._locked(name):
            self.get(name, version)
            aliases = self.aliases(name)
            old = aliases.get(alias)
            if old is not None and old.version == version:
                return old
            history = [*old.history, old.version] if old is not None else []
            state = AliasState(
                version=version, history=history[-HISTORY_LIMIT:], updated_at=time.time()
            )
            aliases[alias] = state
            self._write_aliases(name, aliases)
        return state

    def rollback(
        self, name: str, alias: str = "production", *, to: str | None = None
    ) -> AliasState:
        """Point ``alias`` back at the version it pointed at before the last change, or at
        ``to`` (the history then drops what came after ``to``'s last place in it)."""
        self._check("alias", alias, name)
        self._model_dir(name)
        with self._locked(name):
            aliases = self.aliases(name)
            old = aliases.get(alias)
            if old is None:
                have = ", ".join(sorted(aliases)) or "none"
                raise RegistryError(
                    f"{self.root}: model {name!r} has no alias {alias!r} to roll back "
                    f"(it has: {have})"
                )
            if to is not None:
                history = old.history
                if to in history:
                    history = history[: len(history) - 1 - history[::-1].index(to)]
                previous = to
            elif not old.history:
                raise RegistryError(
                    f"{self.root}: model {name!r} alias {alias!r} has no earlier version to "
                    f"roll back to (it points at {old.version!r}; its history is empty)"
                )
            else:
                previous, history = old.history[-1], old.history[:-1]
            self.get(name, previous)
            state = AliasState(version=previous, history=history, updated_at=time.time())
            aliases[alias] = state
            self._write_aliases(name, aliases)
        return state

    # -- internals ---------------------------------------------------------------------

    def _check(self, what: str, value: str, name: str | None = None) -> None:
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            model = f" model {name!r}:" if name is not None and what != "model name" else ""
            raise RegistryError(
                f"{self.root}:{model} {what} {value!r} is not allowed: use 1 to 128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )

    def _model_dir(self, name: str) -> Path:
        self._check("model name", name)
        directory = self.root / name
        if not directory.is_dir():
            have = ", ".join(self.names()) or "none"
            raise RegistryError(f"{self.root}: no model {name!r} (registered: {have})")
        return directory

    def _read_version(self, name: str, version: str) -> VersionInfo:
        path = self.root / name / version / _VERSION_FILE
        try:
            info = msgspec.json.decode(path.read_bytes(), type=VersionInfo)
        except OSError as exc:
            raise RegistryError(
                f"{self.root}: model {name!r} version {version!r}: cannot read {path}: "
                f"{exc.strerror}"
            ) from None
        except msgspec.DecodeError as exc:
            raise RegistryError(
                f"{self.root}: model {name!r} version {version!r}: {path} is invalid: {exc}"
            ) from None
        if (info.name, info.version) != (name, version):
            raise RegistryError(
                f"{self.root}: model {name!r} version {version!r}: {path} describes "
                f"{info.name!r} version {info.version!r}"
            )
        return info

    def _next_version(self, name: str) -> str:
        numbers = [
            int(p.name) for p in (self.root / name).iterdir() if re.fullmatch("[0-9]+", p.name)
        ]
        return str(max(numbers, default=0) + 1)

    def _check_options(self, where: str, format: str, options: dict[str, Any]) -> None:
        # Kept for the MLflow registry, which checks options as registration does.
        check_options(where, format, options)

    def _write_aliases(self, name: str, aliases: dict[str, AliasState]) -> None:
        directory = self.root / name
        data = msgspec.json.format(msgspec.json.encode(dict(sorted(aliases.items()))))
        tmp = directory / f"_aliases-{uuid.uuid4().hex}.tmp"
        # Not mkstemp, whose file is private: readers in other accounts must see the aliases.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / _ALIASES_FILE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The rename itself is durable only once the directory is synced.
        _fsync(directory)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        fd = os.open(self.root / name / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock locks belong to the open file description, so this serialises threads
            # of one process (each opens its own) as well as processes.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
