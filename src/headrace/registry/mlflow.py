"""Model versions from an MLflow Model Registry: ``mlflow:NAME@ALIAS`` or ``mlflow:NAME/VERSION``.

An optional extra (``pip install 'headrace[mlflow]'``); MLflow is imported only when an
``mlflow:`` reference is used. A version serves only if Headrace can check its artifact,
so it must carry these model-version tags (:func:`register_mlflow_version` sets them):

``headrace.format``
    ``onnx``, ``skops``, ``xgboost``, ``lightgbm``, ``torchscript``, ``torch-weights``,
    ``pickle`` or ``joblib``
    (pickle and joblib load only with ``allow_pickle``).
``headrace.artifact``
    the artifact file's path relative to the version's artifacts (its ``source``).
``headrace.sha256``
    the artifact's sha256, checked against the downloaded bytes before any of them is
    deserialised.
``headrace.options``, ``headrace.signature``, ``headrace.samples``, ``headrace.trusted_types``
    optional, JSON: the same as in the local registry (:class:`~headrace.registry.VersionInfo`).
    MLflow limits a tag value's length (100,000 characters in MLflow 3, 5,000 before), so
    keep samples small.

Rollback: MLflow keeps no history of an alias. :func:`promote_mlflow_version` (used by
:func:`register_mlflow_version`) records it in the registered model's tag
``headrace.alias_history.ALIAS`` as ``{"version": current, "history": [older, ...]}``;
:meth:`MlflowSource.roll_back` trusts that tag only while its ``version`` is where the
alias points (an alias moved by other tools, the MLflow UI for one, leaves it stale), and
otherwise falls back to the versions this process loaded from the alias, newest last.
MLflow has no compare-and-set on aliases: between the check that the alias still points at
the bad version and the move, another writer can move it, and the last writer wins.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final

import msgspec
import numpy as np

from headrace.models.base import Model
from headrace.models.featurizer import Featurizer
from headrace.models.integrity import ModelLoadError, sha256_of
from headrace.registry.loading import RegisteredModel, load_bytes
from headrace.registry.local import (
    FORMATS,
    HISTORY_LIMIT,
    LocalRegistry,
    RegistryError,
    Sample,
    Signature,
    VersionInfo,
)
from headrace.registry.pyfunc import pyfunc_version
from headrace.registry.refs import ModelReference
from headrace.registry.validation import validate_model

log = logging.getLogger(__name__)

TAG_FORMAT: Final = "headrace.format"
TAG_ARTIFACT: Final = "headrace.artifact"
TAG_SHA256: Final = "headrace.sha256"
TAG_OPTIONS: Final = "headrace.options"
TAG_SIGNATURE: Final = "headrace.signature"
TAG_SAMPLES: Final = "headrace.samples"
TAG_TRUSTED_TYPES: Final = "headrace.trusted_types"
#: Registered-model tag prefix: ``headrace.alias_history.ALIAS``.
TAG_ALIAS_HISTORY: Final = "headrace.alias_history."

_REQUIRED: Final = (TAG_FORMAT, TAG_ARTIFACT, TAG_SHA256)
_JSON_TAGS: Final = {
    TAG_OPTIONS: "options",
    TAG_SIGNATURE: "signature",
    TAG_SAMPLES: "samples",
    TAG_TRUSTED_TYPES: "trusted_types",
}
#: Where register_mlflow_version logs the artifact within its run.
ARTIFACT_DIR: Final = "headrace"
_HOW_TO_REGISTER: Final = (
    "register it with headrace.registry.mlflow.register_mlflow_version(client, name, "
    "artifact_path, format=...), or set the model-version tags headrace.format (onnx, "
    "skops, xgboost, lightgbm, torchscript, torch-weights, pickle or joblib), "
    "headrace.artifact (the artifact file's path within the version's artifacts) and "
    "headrace.sha256 (its sha256); or log it as an MLflow model with a signature "
    "(mlflow.<flavour>.log_model)"
)


def import_mlflow() -> Any:
    """The ``mlflow`` module, or an ImportError saying which extra to install.

    Imported through importlib: mlflow is optional, and mypy never needs its types.
    """
    try:
        return importlib.import_module("mlflow")
    except ImportError as exc:
        raise ImportError(
            f"mlflow: references need MLflow, which is not installed ({exc}): "
            "pip install 'headrace[mlflow]'"
        ) from exc


def mlflow_client(tracking_uri: str | None = None, registry_uri: str | None = None) -> Any:
    """An ``MlflowClient``; ``None`` URIs fall back on MLflow's own settings
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``). The registry defaults to the
    tracking URI."""
    mlflow = import_mlflow()
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


class MlflowSource:
    """Versions behind ``mlflow:NAME@ALIAS`` (or one pinned ``mlflow:NAME/VERSION``) in an
    MLflow Model Registry: the same protocol as
    :class:`~headrace.registry.source.RegistrySource`.

    :meth:`load` downloads only the artifact the version's ``headrace.artifact`` tag
    names, checks its sha256 against ``headrace.sha256``, deserialises the checked bytes
    and validates the model (signature, samples, latency budget) before it may serve.
    """

    def __init__(
        self,
        ref: ModelReference,
        *,
        client: Any = None,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        allow_pickle: bool = False,
        latency_budget: float | None = None,
        device: str = "cpu",
        featurizer: Featurizer | None = None,
    ) -> None:
        if ref.scheme != "mlflow":
            raise ValueError(f"{ref} is not a reference to an MLflow Model Registry")
        self.ref = ref
        self.client = client if client is not None else mlflow_client(tracking_uri, registry_uri)
        self.allow_pickle = allow_pickle
        self.latency_budget = latency_budget
        self.device = device
        self.featurizer = featurizer
        self._lock = threading.Lock()
        # The versions this process loaded from the alias, oldest first: the rollback
        # history when the registered model's tag is stale or missing.
        self._loaded: list[str] = []

    def describe(self) -> str:
        return str(self.ref)

    def __str__(self) -> str:
        return str(self.ref)

    def latest(self) -> str:
        if self.ref.version is not None:
            return self.ref.version
        assert self.ref.alias is not None
        mlflow = import_mlflow()
        try:
            mv = self.client.get_model_version_by_alias(self.ref.name, self.ref.alias)
        except mlflow.exceptions.MlflowException as exc:
            raise RegistryError(f"{self.ref}: cannot resolve the alias: {exc.message}") from None
        return str(mv.version)

    def load(self, version: str) -> Model:
        model = load_mlflow_version(
            self.client,
            self.ref.name,
            version,
            self.allow_pickle,
            device=self.device,
            featurizer=self.featurizer,
        )
        validate_model(model, model.info, latency_budget_s=self.latency_budget)
        if self.ref.alias is not None:
            with self._lock:
                if version in self._loaded:
                    self._loaded.remove(version)
                self._loaded.append(version)
                del self._loaded[:-HISTORY_LIMIT]
        return model

    def roll_back(self, bad_version: str, to: str | None = None) -> None:
        """Point the alias back at ``to`` (the version that served before
        ``bad_version``), else at the version before ``bad_version``, if it still points
        at ``bad_version`` (a pinned reference has nothing to move)."""
        alias = self.ref.alias
        if alias is None:
            return
        name = self.ref.name
        aliases, tags = _registered(self.client, name, str(self.ref))
        current = aliases.get(alias)
        if current != bad_version:
            log.info(
                "%s: not rolled back: the alias points at %s now, not at %s",
                self.ref,
                current or "nothing",
                bad_version,
            )
            return
        history = _read_history(tags, name, alias)
        if to is not None:
            older = history[1] if history is not None and history[0] == bad_version else []
            if to in older:
                older = older[: len(older) - 1 - older[::-1].index(to)]
            previous = to
        elif history is not None and history[0] == bad_version and history[1]:
            previous, older = history[1][-1], history[1][:-1]
        else:
            with self._lock:
                earlier = [v for v in self._loaded if v != bad_version]
            if not earlier:
                raise RegistryError(
                    f"{self.ref}: cannot roll back from version {bad_version}: no earlier "
                    f"version is known (the registered model's tag {TAG_ALIAS_HISTORY}{alias} "
                    "records none for it, and this process loaded no other version)"
                )
            previous, older = earlier[-1], earlier[:-1]
        self.client.set_registered_model_alias(name, alias, previous)
        with self._lock:  # the bad version is no place to come back to
            kept = [v for v in self._loaded if v not in (bad_version, previous)]
            self._loaded = [*kept, previous]
        _write_history(self.client, name, alias, previous, older)
        log.warning("%s: alias moved back from version %s to %s", self.ref, bad_version, previous)


def load_mlflow_version(
    client: Any,
    name: str,
    version: str,
    allow_pickle: bool = False,
    *,
    device: str = "cpu",
    featurizer: Featurizer | None = None,
) -> RegisteredModel:
    """Download, verify and deserialise one MLflow model version (not validated).

    A version with the Headrace tags: its artifact, checked against ``headrace.sha256``.
    A version with none of them: a plain MLflow model, through ``mlflow.pyfunc``
    (:mod:`headrace.registry.pyfunc`: its signature checked against ``featurizer``,
    pickles only with ``allow_pickle``). Raises :class:`ModelLoadError` when the version
    is neither, its artifact is missing or differs from the registered sha256, or it does
    not load.
    """
    mlflow = import_mlflow()
    where = f"mlflow model {name!r} version {version}"
    try:
        mv = client.get_model_version(name, version)
        download_uri = client.get_model_version_download_uri(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise ModelLoadError(f"{where}: {exc.message}") from None
    tags: dict[str, str] = dict(mv.tags or {})
    if not any(tags.get(t) for t in _REQUIRED):

        def download(uri: str, dst: str) -> str:
            return _download(mlflow, client, uri, dst)

        return pyfunc_version(
            name,
            str(mv.version),
            where,
            download,
            str(download_uri),
            allow_pickle=allow_pickle,
            device=device,
            featurizer=featurizer,
            not_a_model=_not_registered(where, list(_REQUIRED), no_mlmodel=True),
        )
    info = version_info(name, mv)
    with tempfile.TemporaryDirectory(prefix="headrace-mlflow-") as tmp:
        try:
            local = _download(
                mlflow, client, f"{str(download_uri).rstrip('/')}/{info.artifact}", tmp
            )
            data = Path(local).read_bytes()
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            raise ModelLoadError(
                f"{where}: cannot download its artifact {info.artifact!r} from "
                f"{download_uri}: {exc}"
            ) from None
    # load_bytes checks the sha256 of these bytes before deserialising any of them.
    return load_bytes(
        data,
        info,
        allow_pickle=allow_pickle,
        origin=f"{where} (artifact {info.artifact!r} from {download_uri})",
        device=device,
    )


def _download(mlflow: Any, client: Any, uri: str, dst: str) -> str:
    """Download ``uri`` (``runs:/...`` resolves through the client's tracking store, not
    the process-wide one) into ``dst``; returns the local path."""
    download = mlflow.artifacts.download_artifacts
    kwargs: dict[str, Any] = {"tracking_uri": getattr(client, "tracking_uri", None)}
    if "registry_uri" in inspect.signature(download).parameters:  # MLflow 3
        kwargs["registry_uri"] = getattr(client, "_registry_uri", None)
    return str(download(artifact_uri=uri, dst_path=dst, **kwargs))


def version_info(name: str, mv: Any) -> VersionInfo:
    """A model version's Headrace tags as a :class:`VersionInfo`; raises
    :class:`ModelLoadError` when a required tag is missing or a tag is invalid."""
    version = str(mv.version)
    where = f"mlflow model {name!r} version {version}"
    tags: dict[str, str] = dict(mv.tags or {})
    missing = [t for t in _REQUIRED if not tags.get(t)]
    if missing:
        raise ModelLoadError(_not_registered(where, missing))
    artifact = tags[TAG_ARTIFACT]
    path = PurePosixPath(artifact)
    if path.is_absolute() or ".." in path.parts or "\\" in artifact or not path.parts:
        raise ModelLoadError(
            f"{where}: tag {TAG_ARTIFACT} must be a relative path within the version's "
            f"artifacts, got {artifact!r}"
        )
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "format": tags[TAG_FORMAT],
        "artifact": str(path),
        "sha256": tags[TAG_SHA256].strip().lower(),
        "created_at": (getattr(mv, "creation_timestamp", None) or 0) / 1000.0,
    }
    for tag, field in _JSON_TAGS.items():
        if tags.get(tag):
            try:
                fields[field] = json.loads(tags[tag])
            except ValueError as exc:
                raise ModelLoadError(f"{where}: tag {tag} is not valid JSON: {exc}") from None
    if fields["format"] not in FORMATS:
        raise ModelLoadError(
            f"{where}: tag {TAG_FORMAT} is {fields['format']!r}; use one of {', '.join(FORMATS)}"
        )
    try:
        return msgspec.convert(fields, VersionInfo)
    except msgspec.ValidationError as exc:
        raise ModelLoadError(f"{where}: invalid Headrace tags: {exc}") from None


def _not_registered(where: str, missing: list[str], *, no_mlmodel: bool = False) -> str:
    plain = ", and is no MLflow model (no MLmodel file)" if no_mlmodel else ""
    return (
        f"{where} is not registered for Headrace: it lacks the model-version tags "
        f"{', '.join(missing)}{plain}. Headrace loads only artifacts whose sha256 it can "
        f"check, or MLflow models with a signature: {_HOW_TO_REGISTER}."
    )


def register_mlflow_version(
    client: Any,
    name: str,
    artifact_path: str | Path,
    format: str,
    options: Mapping[str, Any] | None = None,
    alias: str | None = None,
    *,
    signature: Signature | None = None,
    samples: Sequence[Sample] | None = None,
    trusted_types: Sequence[str] = (),
    experiment_id: str = "0",
) -> Any:
    """Log ``artifact_path`` in a new run, create a version of ``name`` (and the
    registered model, if new) with the Headrace tags, point ``alias`` at it if given
    (:func:`promote_mlflow_version`), and return the MLflow ``ModelVersion``.

    The options, signature, samples and trusted types are checked as the local registry
    checks them; the sha256 is computed from the file before it is logged.
    """
    mlflow = import_mlflow()
    source = Path(artifact_path)
    where = f"mlflow model {name!r}"
    if not source.is_file():
        raise RegistryError(f"{where}: artifact {source} is not a file")
    if format not in FORMATS:
        raise RegistryError(f"{where}: unknown format {format!r}; use one of {', '.join(FORMATS)}")
    opts = dict(options or {})
    # The local registry's option rules (names, types), so a typo fails here, not at load.
    LocalRegistry("<mlflow>")._check_options(where, format, opts)
    if trusted_types and format != "skops":
        raise RegistryError(f"{where}: trusted types apply only to the skops format")
    tags = {
        TAG_FORMAT: format,
        TAG_ARTIFACT: source.name,
        TAG_SHA256: sha256_of(source),
    }
    extra = {
        TAG_OPTIONS: opts or None,
        TAG_SIGNATURE: signature,
        TAG_SAMPLES: list(samples) if samples else None,
        TAG_TRUSTED_TYPES: list(trusted_types) or None,
    }
    for tag, value in extra.items():
        if value is not None:
            tags[tag] = _json(where, value)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    run = client.create_run(experiment_id, run_name=f"headrace-register-{name}")
    run_id = run.info.run_id
    try:
        client.log_artifact(run_id, str(source), artifact_path=ARTIFACT_DIR)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    mv = client.create_model_version(
        name, f"runs:/{run_id}/{ARTIFACT_DIR}", run_id=run_id, tags=tags
    )
    if alias is not None:
        promote_mlflow_version(client, name, str(mv.version), alias)
    return mv


def promote_mlflow_version(client: Any, name: str, version: str, alias: str) -> None:
    """Point ``alias`` at ``version`` and record where it pointed before in the registered
    model's tag ``headrace.alias_history.ALIAS`` (what rollback reads). Promoting to the
    version already current changes nothing."""
    aliases, tags = _registered(client, name, f"mlflow model {name!r}")
    old = aliases.get(alias)
    if old == version:
        return
    history = _read_history(tags, name, alias)
    if old is None:
        older: list[str] = []
    elif history is not None and history[0] == old:
        older = [*history[1], old]
    else:  # no tag, or a stale one (the alias was moved by something else)
        older = [old]
    client.set_registered_model_alias(name, alias, version)
    _write_history(client, name, alias, version, older)


def _registered(client: Any, name: str, where: str) -> tuple[dict[str, str], dict[str, str]]:
    """The registered model's aliases (alias -> version) and tags, read together."""
    mlflow = import_mlflow()
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"{where}: {exc.message}") from None
    aliases = {str(k): str(v) for k, v in (getattr(model, "aliases", None) or {}).items()}
    return aliases, {str(k): str(v) for k, v in (model.tags or {}).items()}


def _read_history(tags: dict[str, str], name: str, alias: str) -> tuple[str, list[str]] | None:
    """The alias history tag as (version it describes, earlier versions), or None when
    absent or unreadable."""
    raw = tags.get(TAG_ALIAS_HISTORY + alias)
    if not raw:
        return None
    try:
        value = json.loads(raw)
        version, history = value["version"], value["history"]
    except (ValueError, TypeError, KeyError):
        log.warning("mlflow model %r: tag %s%s is not readable", name, TAG_ALIAS_HISTORY, alias)
        return None
    if not isinstance(version, str) or not (
        isinstance(history, list) and all(isinstance(v, str) for v in history)
    ):
        return None
    return version, history


def _write_history(client: Any, name: str, alias: str, version: str, older: list[str]) -> None:
    value = {"version": version, "history": older[-HISTORY_LIMIT:], "updated_at": time.time()}
    client.set_registered_model_tag(name, TAG_ALIAS_HISTORY + alias, json.dumps(value))


def _json(where: str, value: Any) -> str:
    def numpy_to_json(obj: Any) -> Any:
        if isinstance(obj, np.ndarray | np.generic):
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not a JSON value")

    try:
        return msgspec.json.encode(value, enc_hook=numpy_to_json).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise RegistryError(f"{where}: the metadata must be JSON values: {exc}") from None
