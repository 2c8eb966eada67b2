"""Models from their configuration: a file checked against its sha256, a callable
imported from a module, or versions from a registry; and the checks ``headrace validate``
makes without loading one."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from headrace import config as cfg
from headrace.models.base import CallableModel, Model
from headrace.models.boosting import LightGBMModel, XGBoostModel
from headrace.models.featurizer import Featurizer
from headrace.models.integrity import (
    ModelFileUnreadable,
    ModelLoadError,
    Sha256Mismatch,
    read_verified,
)
from headrace.models.onnx import OnnxModel
from headrace.models.sklearn import SklearnModel, load_skops
from headrace.registry.local import LocalRegistry
from headrace.registry.refs import parse_reference
from headrace.registry.source import RegistrySource
from headrace.runtime.manager import ModelSource

#: Model types loaded from one file whose sha256 the configuration names.
FILE_MODELS = (
    cfg.OnnxModelConfig,
    cfg.XGBoostModelConfig,
    cfg.LightGBMModelConfig,
    cfg.SkopsModelConfig,
)


@contextlib.contextmanager
def located(path: str | Path | None) -> Iterator[None]:
    """Start the message of a configuration or model error raised inside with ``path``,
    the YAML file the configuration came from (as loading it does for its own errors)."""
    if path is None:
        yield
        return
    try:
        yield
    except cfg.ConfigError as exc:
        raise cfg.ConfigError(f"{path}: {exc}") from exc
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def module_search_path(path: str | Path | None) -> list[Path]:
    """Where a ``callable`` model's module is looked up before ``sys.path``: the directory
    of the pipeline file ``path`` (when there is one), then the current directory."""
    dirs = [Path(path).resolve().parent] if path is not None else []
    return [*dirs, Path.cwd()]


def check_model(config: cfg.PipelineConfig, *, path: str | Path | None = None) -> None:
    """What ``headrace validate`` checks of the model without loading it: that a model
    file's sha256 is the configured one, or that a callable's module imports and has the
    function. Raises :class:`ConfigError` or :class:`ModelLoadError` naming the key (and
    ``path``). A registry model is resolved only when loaded."""
    c = config.model
    with located(path):
        if isinstance(c, cfg.CallableModelConfig):
            _import_model(c, module_search_path(path))
        elif isinstance(c, FILE_MODELS):
            with _model_file_errors():
                read_verified(c.path, c.sha256)


def registry_source(ref: str, c: cfg.RegistryModelConfig) -> ModelSource:
    """The versions behind ``ref``, loaded as ``c`` says: in the local registry at
    ``c.root``, or (``mlflow:``) in the MLflow Model Registry at ``c.tracking_uri``."""
    parsed = parse_reference(ref)
    budget = c.latency_budget_ms / 1000.0 if c.latency_budget_ms is not None else None
    if parsed.scheme == "mlflow":
        from headrace.registry.mlflow import MlflowSource

        try:
            return MlflowSource(
                parsed,
                tracking_uri=c.tracking_uri,
                allow_pickle=c.allow_pickle,
                latency_budget=budget,
                device=c.device,
                featurizer=build_featurizer(c.features),
            )
        except ImportError as exc:
            raise cfg.ConfigError(
                f"model reference {ref} needs MLflow, which is not installed "
                f"({exc.__cause__}): pip install 'headrace[mlflow]'"
            ) from None
    return RegistrySource(
        LocalRegistry(c.root),
        parsed,
        allow_pickle=c.allow_pickle,
        latency_budget=budget,
        device=c.device,
    )


def build_featurizer(f: cfg.FeaturesConfig | None) -> Featurizer | None:
    return Featurizer(f.fields, f.vector, allow_nan=f.allow_nan) if f is not None else None


@contextlib.contextmanager
def _model_file_errors() -> Iterator[None]:
    """Say which key a model file's failed check concerns, and what to do about it."""
    try:
        yield
    except Sha256Mismatch as exc:
        raise ModelLoadError(
            f"at model.sha256: the file {exc.path} has sha256 {exc.actual}, not "
            f"{exc.expected} as configured: it changed, or is not the file meant. Restore "
            "that file, or, only if you trust this one, set model.sha256 to its sha256"
        ) from exc
    except ModelFileUnreadable as exc:
        raise ModelLoadError(f"at model.path: {exc}") from exc


def build_model(
    c: cfg.OnnxModelConfig
    | cfg.XGBoostModelConfig
    | cfg.LightGBMModelConfig
    | cfg.SkopsModelConfig
    | cfg.CallableModelConfig,
    *,
    search: Sequence[str | Path] = (),
) -> tuple[Model, Featurizer | None]:
    """The model ``c`` describes, and its featurizer. A callable's module is looked up in
    the directories of ``search`` first, in order, then on ``sys.path``."""
    featurizer = build_featurizer(c.features)
    model: Model
    if isinstance(c, cfg.OnnxModelConfig):
        with _model_file_errors():
            model = OnnxModel.from_file(
                c.path,
                sha256=c.sha256,
                name=c.name,
                version=c.version,
                output=c.output,
                threads=c.threads,
                device=c.device,
            )
    elif isinstance(c, cfg.XGBoostModelConfig):
        with _model_file_errors():
            model = XGBoostModel.from_file(
                c.path,
                sha256=c.sha256,
                name=c.name,
                version=c.version,
                output=c.output,
                threads=c.threads,
                device=c.device,
            )
        _check_width(c, model.num_features)
    elif isinstance(c, cfg.LightGBMModelConfig):
        with _model_file_errors():
            model = LightGBMModel.from_file(
                c.path,
                sha256=c.sha256,
                name=c.name,
                version=c.version,
                output=c.output,
                threads=c.threads,
            )
        _check_width(c, model.num_features)
    elif isinstance(c, cfg.SkopsModelConfig):
        with _model_file_errors():
            estimator = load_skops(c.path, sha256=c.sha256, trusted=c.trusted_types)
        model = SklearnModel(
            estimator,
            method=c.method,
            name=c.name,
            version=c.version,
            negate=c.negate,
            sha256=c.sha256,
        )
    else:
        model = _import_model(c, search)
    return model, featurizer


def _check_width(c: cfg.XGBoostModelConfig | cfg.LightGBMModelConfig, width: int) -> None:
    """A booster knows how many features it takes: named ``features.fields`` (no vector,
    so the row's width is known now) must match, at load rather than at every batch."""
    f = c.features
    if f is not None and f.vector is None and len(f.fields) != width:
        raise cfg.ConfigError(
            f"at model.features.fields: {len(f.fields)} fields, but the {c.path} model "
            f"takes {width} features"
        )


def _import_model(c: cfg.CallableModelConfig, search: Sequence[str | Path]) -> Model:
    obj = import_function(c.function, search)
    if hasattr(obj, "predict_batch"):
        return CallableModel(obj.predict_batch, name=c.name, version=c.version)
    if not callable(obj):
        raise cfg.ConfigError(
            f"at model.function: {c.function!r} is a {type(obj).__name__}, not a function "
            "or an object with predict_batch"
        )
    return CallableModel(obj, name=c.name, version=c.version)


def import_function(spec: str, search: Sequence[str | Path] = ()) -> Any:
    """The object ``module:name`` names (``name`` may be dotted).

    The module is looked up in the directories of ``search`` first, in order, then on
    ``sys.path``; those directories are on ``sys.path`` only while it is imported. A module
    imported once stays in ``sys.modules``: a second pipeline naming the same module gets
    that one. Errors are :class:`ConfigError` at ``model.function``, one line each.
    """
    module_name, _, attr = spec.partition(":")
    dirs = list(dict.fromkeys(str(Path(d).resolve()) for d in search))
    sys.path[:0] = dirs
    try:
        importlib.invalidate_caches()  # a module written a moment ago is found
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            where = "".join(f"{d}, " for d in dirs)
            raise cfg.ConfigError(
                f"at model.function: cannot import {spec!r}: no module named {exc.name!r} "
                f"(looked in {where}then sys.path)"
            ) from exc
        raise _import_failed(spec, module_name, exc) from exc
    except Exception as exc:  # the module's own code failed: report it, not a traceback
        raise _import_failed(spec, module_name, exc) from exc
    finally:
        for d in dirs:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            origin = getattr(module, "__file__", None) or module_name
            raise cfg.ConfigError(
                f"at model.function: cannot import {spec!r}: {origin} has no {part!r}"
            )
        obj = getattr(obj, part)
    return obj


def _import_failed(spec: str, module_name: str, exc: Exception) -> cfg.ConfigError:
    message = " ".join(str(exc).split())  # one line
    return cfg.ConfigError(
        f"at model.function: cannot import {spec!r}: importing {module_name} failed: "
        f"{type(exc).__name__}: {message}"
    )
