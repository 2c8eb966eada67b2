"""Plain MLflow versions: models logged the standard way (``mlflow.<flavour>.log_model``,
a ``python_function`` flavour and a signature), with no Headrace tags.

Nothing registered says what such a version's bytes should be, so there is no sha256 to
check; what is checked instead, before a byte of the model is deserialised, is its
``MLmodel`` file (downloaded alone first):

1. a ``python_function`` flavour, and a signature whose inputs are numeric columns or one
   2-D numeric tensor, as wide as the featurizer's rows (and, for named columns and
   ``features.fields`` without a vector, the same names);
2. pickle: a version whose flavour keeps its model as a pickle, or brings code of its own,
   loads only with ``allow_pickle``. Those that load without it: ``mlflow.onnx``,
   ``mlflow.xgboost`` (XGBoost's own format) and ``mlflow.lightgbm`` when it logged a
   ``lightgbm.Booster`` (its text format). ``mlflow.sklearn`` (pickle or cloudpickle),
   ``mlflow.pytorch``, custom ``PythonModel``s and LightGBM's scikit-learn classes all
   carry pickles.

Then the version's files are downloaded (their MLmodel file must be the one checked),
their sha256 (over every file's path and bytes)
taken as the model's ``sha256`` for outputs, and ``mlflow.pyfunc.load_model`` loads them.
``mlflow.pyfunc`` needs pandas (the ``mlflow`` extra installs it; ``mlflow-skinny`` alone
does not): without it a plain version is refused with one line saying so.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import yaml

from headrace.models.featurizer import Featurizer
from headrace.models.integrity import ModelLoadError
from headrace.registry.loading import RegisteredModel
from headrace.registry.metadata import Format, Signature, VersionInfo

#: The format a plain MLflow version reports (``RegisteredModel.format``); never one a
#: registry records.
PYFUNC_FORMAT: Final = "mlflow-pyfunc"
#: pyfunc loader modules whose artifacts hold no pickle and no code of their own.
_NO_PICKLE: Final = ("mlflow.onnx", "mlflow.xgboost", "mlflow.lightgbm")
# MLflow column types the featurizer's numbers can become, and the dtype of each.
_COLUMN_DTYPES: Final = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
}


def pyfunc_version(
    name: str,
    version: str,
    where: str,
    download: Callable[[str, str], str],
    download_uri: str,
    *,
    allow_pickle: bool,
    device: str,
    featurizer: Featurizer | None,
    not_a_model: str,
) -> RegisteredModel:
    """Check, download and load a plain MLflow version. ``download(uri, dst)`` fetches an
    artifact URI into ``dst`` and returns its local path; ``not_a_model`` is the error
    for a version with no MLmodel file (not an MLflow model at all)."""
    base = download_uri.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="headrace-mlmodel-") as tmp:
        try:
            checked = Path(download(f"{base}/MLmodel", tmp)).read_bytes()
        except Exception:  # no MLmodel file: MLflow raises its own errors, or OSError
            raise ModelLoadError(not_a_model) from None
    try:
        mlmodel = yaml.safe_load(checked)
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{where}: its MLmodel file is not YAML: {exc}") from None
    if not isinstance(mlmodel, dict):
        raise ModelLoadError(f"{where}: its MLmodel file is not a YAML mapping")
    flavors = mlmodel.get("flavors") or {}
    pyfunc = flavors.get("python_function")
    if not isinstance(pyfunc, dict):
        raise ModelLoadError(
            f"{where}: the MLflow model has no python_function flavour (it has: "
            f"{', '.join(flavors) or 'none'}); log it with a flavour's log_model, which adds one"
        )
    loader = str(pyfunc.get("loader_module", ""))
    _check_pickle(where, loader, pyfunc, flavors, allow_pickle)
    if device != "cpu":
        raise ModelLoadError(
            f"{where}: model.device: {device} is not supported for plain MLflow pyfunc versions "
            "(MLflow picks the device); use device: cpu"
        )
    columns, dtypes, width = _signature(where, mlmodel.get("signature"), featurizer)
    try:
        mlflow_pyfunc = importlib.import_module("mlflow.pyfunc")
    except ImportError as exc:
        raise ModelLoadError(
            f"{where}: loading a plain MLflow pyfunc version needs mlflow.pyfunc, which cannot "
            f"be imported here ({exc}): pip install pandas, or the full mlflow package"
        ) from None
    local = Path(tempfile.mkdtemp(prefix="headrace-pyfunc-"))
    try:
        path = Path(download(base, str(local)))
        if (path / "MLmodel").read_bytes() != checked:
            raise ModelLoadError(
                f"{where}: its MLmodel file changed between the check and the download; not loaded"
            )
        digest = _tree_sha256(path)
        loaded = mlflow_pyfunc.load_model(str(path))
    except ModelLoadError:
        shutil.rmtree(local, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(local, ignore_errors=True)
        raise ModelLoadError(
            f"{where}: mlflow.pyfunc cannot load it: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}"
        ) from exc
    info = VersionInfo(
        name=name,
        version=version,
        format=cast(Format, PYFUNC_FORMAT),
        artifact="MLmodel",
        sha256=digest,
        created_at=0.0,
        # The featurizer's float32 rows, as wide as the signature: validate_model's check.
        signature=Signature(shape=[None, width]) if width > 0 else None,
        options={"loader_module": loader},
    )
    model = RegisteredModel(PyfuncModel(loaded, columns, dtypes, name, version), info)
    # Some flavours read their files lazily: they stay until the model is dropped.
    weakref.finalize(model, shutil.rmtree, local, ignore_errors=True)
    return model


def _check_pickle(
    where: str, loader: str, pyfunc: dict[str, Any], flavors: dict[str, Any], allow: bool
) -> None:
    why = None
    if loader not in _NO_PICKLE:
        why = f"its flavour {loader or '(none)'} keeps the model as a pickle or as code"
    elif loader == "mlflow.xgboost":
        # MLflow imports and instantiates the class the MLmodel file names.
        model_class = str((flavors.get("xgboost") or {}).get("model_class", "xgboost.core.Booster"))
        if not model_class.startswith("xgboost."):
            why = f"mlflow.xgboost would instantiate {model_class}, which is not XGBoost's"
    elif loader == "mlflow.lightgbm":
        model_class = str((flavors.get("lightgbm") or {}).get("model_class", ""))
        if model_class != "lightgbm.basic.Booster":
            why = f"mlflow.lightgbm pickles a {model_class or 'scikit-learn model'}"
    if why is None and (pyfunc.get("code") or pyfunc.get("python_model")):
        why = "it brings Python code of its own"
    if why is not None and not allow:
        raise ModelLoadError(
            f"{where} is a plain MLflow pyfunc model and {why}: loading it runs whatever code "
            "it holds. Set allow_pickle: true to load it anyway (those that load without it: "
            "mlflow.onnx, mlflow.xgboost, mlflow.lightgbm Boosters)"
        )


def _signature(
    where: str, signature: Any, featurizer: Featurizer | None
) -> tuple[list[str] | None, list[Any], int]:
    """The input columns' names (``None`` for a tensor input), their dtypes (the tensor's
    one) and the width of a row (-1: any), checked against the featurizer's rows."""
    if not isinstance(signature, dict) or not signature.get("inputs"):
        raise ModelLoadError(
            f"{where} has no input signature: log it with one (log_model(..., "
            "signature=infer_signature(X, y))), so its input can be checked against "
            "model.features before it serves"
        )
    try:
        inputs = json.loads(signature["inputs"])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: its signature's inputs are not JSON: {exc}") from None
    if featurizer is None:
        raise ModelLoadError(
            f"{where}: a plain MLflow pyfunc version needs model.features (the signature's "
            "columns are filled from them)"
        )
    columns: list[str] | None
    if len(inputs) == 1 and inputs[0].get("type") == "tensor":
        spec = inputs[0].get("tensor-spec") or {}
        shape, dtype = spec.get("shape") or [], str(spec.get("dtype", ""))
        if len(shape) != 2 or np.dtype(dtype).kind not in "biuf":
            raise ModelLoadError(
                f"{where}: its signature takes a tensor of shape {shape} and dtype {dtype}; "
                "Headrace feeds a 2-D numeric batch"
            )
        columns, width, dtypes = None, shape[1], [np.dtype(dtype)]
    else:
        kinds = [(str(c.get("name", f"[{i}]")), str(c.get("type"))) for i, c in enumerate(inputs)]
        bad = [f"{n} ({t})" for n, t in kinds if t not in _COLUMN_DTYPES]
        if bad:
            raise ModelLoadError(
                f"{where}: its signature has non-numeric input columns: {', '.join(bad)}; "
                "the featurizer gives numbers"
            )
        columns = [n for n, _ in kinds]
        width, dtypes = len(columns), [np.dtype(_COLUMN_DTYPES[t]) for _, t in kinds]
    fields = list(featurizer.fields)
    if featurizer.vector is None:
        if width not in (-1, len(fields)):
            shown = f" ({', '.join(columns)})" if columns else ""
            raise ModelLoadError(
                f"{where}: its signature takes {width} inputs{shown}, the featurizer gives "
                f"{len(fields)} (model.features.fields: {', '.join(fields)})"
            )
        if columns is not None and set(columns) != set(fields):
            raise ModelLoadError(
                f"{where}: its signature's columns ({', '.join(columns)}) are not "
                f"model.features.fields ({', '.join(fields)})"
            )
        if columns is not None:  # the featurizer's order, each column's own dtype
            order = dict(zip(columns, dtypes, strict=True))
            columns, dtypes = fields, [order[f] for f in fields]
    return columns, dtypes, width


def _tree_sha256(path: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


class PyfuncModel:
    """An MLflow pyfunc model called on each batch: named columns (a DataFrame, each
    column cast to its signature type; an integer column refuses a non-integral value)
    or one tensor. A single output column, or ``(N, 1)``, becomes ``N`` scalars."""

    def __init__(
        self, pyfunc: Any, columns: list[str] | None, dtypes: list[Any], name: str, version: str
    ) -> None:
        self.pyfunc = pyfunc
        self.columns = columns
        self.dtypes = dtypes
        self.name = name
        self.version = version

    def predict_batch(self, inputs: Any) -> Any:
        x = np.asarray(inputs)
        if self.columns is None:
            return _outputs(self.pyfunc.predict(x.astype(self.dtypes[0], copy=False)))
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(
                f"the signature takes {len(self.columns)} columns, the batch has shape {x.shape}"
            )
        pd = importlib.import_module("pandas")  # there: mlflow.pyfunc loaded the model
        data = {}
        for i, (column, dtype) in enumerate(zip(self.columns, self.dtypes, strict=True)):
            values = x[:, i]
            if dtype.kind in "iub" and not np.array_equal(values, np.round(values)):
                raise ValueError(f"column {column!r} is {dtype.name}, got a non-integral value")
            data[column] = values.astype(dtype)
        return _outputs(self.pyfunc.predict(pd.DataFrame(data)))


def _outputs(out: Any) -> Any:
    """A pyfunc's predictions as one output per row."""
    if hasattr(out, "to_numpy"):  # a DataFrame or a Series
        out = out.to_numpy()
    if isinstance(out, dict) and len(out) == 1:
        out = next(iter(out.values()))
    if isinstance(out, np.ndarray) and out.ndim == 2 and out.shape[1] == 1:
        return out[:, 0]
    return out
