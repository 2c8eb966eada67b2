"""Turning a registered version into a model, checking its sha256 first.

Every loader follows the same order: refuse what is never allowed (pickle without the
opt-in), make sure the runtime is importable, read the artifact's bytes and check their
sha256 against the registry's (:func:`~headrace.models.integrity.read_verified`), and only
then deserialise *those bytes*. The file is never opened a second time, so a file swapped
after the check cannot be what gets loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import pickle
from collections.abc import Callable
from typing import Any

from headrace.models.base import CallableModel, Model
from headrace.models.boosting import LightGBMModel, XGBoostModel
from headrace.models.integrity import ModelLoadError, read_verified
from headrace.models.onnx import OnnxModel
from headrace.models.pytorch import TorchModel
from headrace.models.sklearn import SklearnModel, skops_loads
from headrace.registry.local import LocalRegistry, VersionInfo


class RegisteredModel:
    """A model loaded from the registry: ``name`` and ``version`` are the registry's, and
    ``sha256`` (with ``info``) says exactly which artifact produced its predictions."""

    def __init__(self, inner: Model, info: VersionInfo) -> None:
        self.inner = inner
        self.info = info
        self.name = info.name
        self.version = info.version
        self.sha256 = info.sha256
        self.format = info.format
        if inspect.iscoroutinefunction(inner.predict_batch):
            # Expose the coroutine function itself, so the engine awaits it on the loop
            # instead of calling it in a thread (as CallableModel does).
            self.predict_batch = inner.predict_batch  # type: ignore[method-assign]

    @property
    def short_sha(self) -> str:
        return self.info.short_sha

    def __repr__(self) -> str:
        return f"<RegisteredModel {self.name}/{self.version} {self.format} {self.short_sha}>"

    def predict_batch(self, inputs: Any) -> Any:
        return self.inner.predict_batch(inputs)


def load_version(
    registry: LocalRegistry, info: VersionInfo, *, allow_pickle: bool = False, device: str = "cpu"
) -> RegisteredModel:
    """Load ``info``'s artifact from ``registry`` as a model, on ``device`` (``cpu`` or
    ``cuda``: onnx, xgboost and the torch formats only).

    Raises :class:`ModelLoadError` when the artifact is missing, its sha256 differs from
    the registered one, the format's runtime is not installed, the bytes do not
    deserialise into a model, the format is pickle/joblib and ``allow_pickle`` is false,
    or ``device`` is ``cuda`` and the format, its runtime or the machine has no GPU.
    """
    path = registry.artifact_path(info)
    loader = _loader(info, allow_pickle, device)
    runtime = loader.runtime()  # before reading: a missing runtime is not the file's fault
    data = read_verified(path, info.sha256)
    return _deserialise(loader, runtime, data, info, f"the {info.format} artifact {path}", device)


def load_bytes(
    data: bytes,
    info: VersionInfo,
    *,
    allow_pickle: bool = False,
    origin: str | None = None,
    device: str = "cpu",
) -> RegisteredModel:
    """Load ``data``, an artifact read from elsewhere (an MLflow artifact store), as the
    model ``info`` describes: the same checks as :func:`load_version`, the sha256 of
    ``data`` compared with ``info.sha256`` before any of it is deserialised. ``origin``
    names where the bytes came from, for error messages.
    """
    where = origin or f"model {info.name!r} version {info.version!r}"
    loader = _loader(info, allow_pickle, device)
    runtime = loader.runtime()
    expected = info.sha256.strip().lower()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelLoadError(
            f"{where}: sha256 mismatch: expected {expected}, the artifact has {actual}. "
            "The artifact changed after it was registered, or is not the registered one."
        )
    return _deserialise(loader, runtime, data, info, f"the {info.format} artifact {where}", device)


def _loader(info: VersionInfo, allow_pickle: bool, device: str = "cpu") -> _Loader:
    if info.format in ("pickle", "joblib") and not allow_pickle:
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r} is a {info.format} file, and "
            "loading one runs whatever code it holds: a tampered or untrusted file can do "
            "anything this process can. Prefer ONNX or skops; to load it anyway, allow "
            "pickle explicitly (allow_pickle=True)."
        )
    loader = _LOADERS[info.format]
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: device must be cpu or cuda, "
            f"got {device!r}"
        )
    if device != "cpu" and not loader.gpu:
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: model.device: {device} is not "
            f"supported for the {info.format} format, which runs on the CPU only (GPUs: "
            f"onnx, xgboost, torchscript, torch-weights); use device: cpu"
        )
    return loader


def _deserialise(
    loader: _Loader, runtime: Any, data: bytes, info: VersionInfo, what: str, device: str
) -> RegisteredModel:
    try:
        inner = loader.load(data, info, runtime, device)
    except ModelLoadError:
        raise
    except Exception as exc:  # each runtime fails in its own way on bad bytes
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: cannot load {what}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return RegisteredModel(inner, info)


class _Loader:
    """A format's runtime (imported before any byte is read), how its checked bytes
    become a model on a device, and whether it can run on a GPU at all."""

    def __init__(
        self,
        runtime: Callable[[], Any],
        load: Callable[[bytes, VersionInfo, Any, str], Model],
        *,
        gpu: bool = False,
    ) -> None:
        self.runtime = runtime
        self.load = load
        self.gpu = gpu


def _no_runtime() -> None:
    return None


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(
            f"loading an ONNX model needs onnxruntime ({exc}): pip install 'headrace[onnx]'"
        ) from None
    return onnxruntime


def _torch() -> Any:
    try:
        # Through importlib: torch is optional and has no stubs here, so mypy never needs it.
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise ModelLoadError(
            f"loading a PyTorch model needs torch, which is not installed ({exc}); "
            "install it (pip install torch), or export the model to ONNX"
        ) from None
    return torch


def _xgboost() -> Any:
    try:
        import xgboost
    except ImportError as exc:
        raise ModelLoadError(
            f"loading an XGBoost model needs xgboost ({exc}): pip install 'headrace[xgboost]'"
        ) from None
    return xgboost


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError as exc:
        raise ModelLoadError(
            f"loading a LightGBM model needs lightgbm ({exc}): pip install 'headrace[lightgbm]'"
        ) from None
    return lightgbm


def _skops() -> Any:
    try:
        import skops.io as sio
    except ImportError as exc:
        raise ModelLoadError(
            f"loading a skops model needs skops ({exc}): pip install 'headrace[sklearn]'"
        ) from None
    return sio


def _joblib() -> Any:
    try:
        joblib = importlib.import_module("joblib")
    except ImportError as exc:
        raise ModelLoadError(f"loading a joblib model needs joblib ({exc})") from None
    return joblib


def _load_onnx(data: bytes, info: VersionInfo, _: Any, device: str) -> Model:
    return OnnxModel(
        data,
        name=info.name,
        version=info.version,
        output=info.options.get("output"),
        threads=info.options.get("threads"),
        device=device,
    )


def _load_xgboost(data: bytes, info: VersionInfo, _: Any, device: str) -> Model:
    return XGBoostModel(
        data,
        name=f"model {info.name!r} version {info.version!r}",
        version=info.version,
        output=info.options.get("output", "value"),
        threads=info.options.get("threads"),
        device="cuda" if device == "cuda" else "cpu",
    )


def _load_lightgbm(data: bytes, info: VersionInfo, _: Any, device: str) -> Model:
    return LightGBMModel(
        data,
        name=f"model {info.name!r} version {info.version!r}",
        version=info.version,
        output=info.options.get("output", "value"),
        threads=info.options.get("threads"),
    )


def _load_skops(data: bytes, info: VersionInfo, _: Any, device: str) -> Model:
    obj = skops_loads(
        data,
        trusted=info.trusted_types,
        where=f"model {info.name!r} version {info.version!r}",
        remedy="Review them, then register the version again listing them as trusted types "
        "(--trusted-type).",
    )
    return _estimator(obj, info)


def _estimator(obj: Any, info: VersionInfo) -> Model:
    """A deserialised object as a model: its own predict_batch, else an estimator method."""
    if callable(getattr(obj, "predict_batch", None)):
        return CallableModel(obj.predict_batch, name=info.name, version=info.version)
    method = info.options.get("method", "predict")
    try:
        return SklearnModel(
            obj,
            method=method,
            name=info.name,
            version=info.version,
            negate=bool(info.options.get("negate", False)),
        )
    except ValueError as exc:
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: the artifact holds a "
            f"{type(obj).__name__}, which has neither predict_batch nor {method!r} ({exc})"
        ) from None


def _load_pickle(data: bytes, info: VersionInfo, _: Any, device: str) -> Model:
    return _estimator(pickle.loads(data), info)  # the caller opted in with allow_pickle


def _load_joblib(data: bytes, info: VersionInfo, joblib: Any, device: str) -> Model:
    return _estimator(joblib.load(io.BytesIO(data)), info)


def _torch_device(info: VersionInfo, torch: Any, device: str) -> str:
    """``device`` for torch, refused now (at load) when it is cuda and torch has no GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: model.device: cuda needs a "
            "CUDA build of torch and a GPU; torch.cuda.is_available() is False here"
        )
    return device


def _load_torchscript(data: bytes, info: VersionInfo, torch: Any, device: str) -> Model:
    where = _torch_device(info, torch, device)
    module = torch.jit.load(io.BytesIO(data), map_location=where)
    return _torch_model(module, info, torch, where)


def _load_torch_weights(data: bytes, info: VersionInfo, torch: Any, device: str) -> Model:
    where = _torch_device(info, torch, device)
    factory = _import_factory(info)
    # weights_only: the unpickler accepts tensors and plain containers, no arbitrary code.
    state = torch.load(io.BytesIO(data), map_location=where, weights_only=True)
    module = factory(**info.options.get("factory_kwargs", {}))
    module.load_state_dict(state)
    return _torch_model(module.to(where), info, torch, where)


def _torch_model(module: Any, info: VersionInfo, torch: Any, device: str) -> Model:
    dtype = info.signature.dtype if info.signature is not None else "float32"
    return TorchModel(
        module, torch=torch, name=info.name, version=info.version, device=device, dtype=dtype
    )


def _import_factory(info: VersionInfo) -> Callable[..., Any]:
    spec = str(info.options.get("factory", ""))
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: cannot import the factory "
            f"{spec!r}: {exc}"
        ) from None
    if not callable(obj):
        raise ModelLoadError(
            f"model {info.name!r} version {info.version!r}: factory {spec!r} is not callable"
        )
    return obj  # type: ignore[no-any-return]


_LOADERS: dict[str, _Loader] = {
    "onnx": _Loader(_onnxruntime, _load_onnx, gpu=True),
    "skops": _Loader(_skops, _load_skops),
    "xgboost": _Loader(_xgboost, _load_xgboost, gpu=True),
    "lightgbm": _Loader(_lightgbm, _load_lightgbm),
    "torchscript": _Loader(_torch, _load_torchscript, gpu=True),
    "torch-weights": _Loader(_torch, _load_torch_weights, gpu=True),
    "pickle": _Loader(_no_runtime, _load_pickle),
    "joblib": _Loader(_joblib, _load_joblib),
}
