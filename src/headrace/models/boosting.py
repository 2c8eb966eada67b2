"""XGBoost and LightGBM boosters in their native formats: no pickle.

XGBoost: what ``Booster.save_model`` writes, UBJSON (``.ubj``) or JSON (``.json``), told
apart by the bytes. LightGBM: the text ``Booster.save_model`` writes (``.txt``). Both are
loaded from bytes whose sha256 was checked first (never from a path the runtime could
reopen). Each runtime is an optional extra: ``pip install 'headrace[xgboost]'``,
``pip install 'headrace[lightgbm]'``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from headrace.connectors.extras import MissingExtraError
from headrace.models.integrity import ModelLoadError, read_verified

Output = Literal["value", "raw_margin"]
Device = Literal["cpu", "cuda"]
OUTPUTS: tuple[str, ...] = ("value", "raw_margin")


def import_xgboost() -> Any:
    """The ``xgboost`` module, or a :class:`MissingExtraError` naming the extra."""
    try:
        import xgboost
    except ImportError as exc:
        raise MissingExtraError(
            "XGBoost", "xgboost", "xgboost", name="xgboost", part="model type"
        ) from exc
    return xgboost


def import_lightgbm() -> Any:
    """The ``lightgbm`` module, or a :class:`MissingExtraError` naming the extra."""
    try:
        import lightgbm
    except ImportError as exc:
        raise MissingExtraError(
            "LightGBM", "lightgbm", "lightgbm", name="lightgbm", part="model type"
        ) from exc
    return lightgbm


def _flat(out: np.ndarray) -> np.ndarray:
    """``(N, 1)`` as ``N`` scalars, as with ONNX; ``(N, K)`` (one score per class) kept."""
    if out.ndim == 2 and out.shape[1] == 1:
        return out[:, 0]
    return out


class XGBoostModel:
    """An XGBoost ``Booster`` scoring each batch.

    ``output="value"`` is what the objective gives: for ``binary:logistic`` the
    positive-class probability, for ``multi:softprob`` one probability per class, for a
    regression objective the value. ``raw_margin`` is the untransformed margin.
    ``threads`` sets XGBoost's ``nthread`` (default: XGBoost's own, every core);
    ``device="cuda"`` predicts on the GPU, and is refused at load when XGBoost has no CUDA
    or finds no GPU (XGBoost itself would fall back to the CPU with a warning).
    """

    def __init__(
        self,
        model: bytes,
        *,
        name: str,
        version: str = "0",
        output: Output = "value",
        threads: int | None = None,
        device: Device = "cpu",
        sha256: str | None = None,
    ) -> None:
        xgb = import_xgboost()
        if output not in OUTPUTS:
            raise ModelLoadError(
                f"{name}: output must be one of {', '.join(OUTPUTS)}, got {output!r}"
            )
        try:
            booster = xgb.Booster()
            # A bytearray: XGBoost reads UBJSON or JSON from memory, telling them apart.
            booster.load_model(bytearray(model))
        except Exception as exc:  # XGBoostError, or anything the parser raises
            raise ModelLoadError(f"{name}: XGBoost cannot load the model: {exc}") from exc
        if device == "cuda" and not xgb.build_info().get("USE_CUDA"):
            raise ModelLoadError(
                f"{name}: model.device: cuda needs XGBoost built with CUDA and a GPU; this "
                "XGBoost has no CUDA (xgboost-cpu): pip install xgboost"
            )
        params: dict[str, Any] = {"device": device}
        if threads:
            params["nthread"] = threads
        booster.set_param(params)
        self.booster = booster
        self.num_features = int(booster.num_features())
        self.name = name
        self.version = version
        self.sha256 = sha256.lower() if sha256 else None
        self.device = device
        self._predict_type = "margin" if output == "raw_margin" else "value"
        if device == "cuda":
            self._check_gpu()

    def _check_gpu(self) -> None:
        # XGBoost falls back to the CPU with a warning when it finds no GPU: make that an
        # error now, at load, rather than a pipeline silently scoring on the CPU.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.predict_batch(np.zeros((1, self.num_features), dtype=np.float32))
        for w in caught:
            text = str(w.message)
            if "GPU" in text and "CPU" in text:
                raise ModelLoadError(
                    f"{self.name}: model.device: cuda, but XGBoost finds no GPU: {text}"
                )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        sha256: str,
        name: str,
        version: str = "0",
        output: Output = "value",
        threads: int | None = None,
        device: Device = "cpu",
    ) -> XGBoostModel:
        data = read_verified(path, sha256)
        return cls(
            data,
            name=name,
            version=version,
            output=output,
            threads=threads,
            device=device,
            sha256=sha256,
        )

    def predict_batch(self, inputs: Any) -> Any:
        # The fastest batch path: inplace_predict on a float32 array, which XGBoost reads
        # where it lies (no DMatrix built per batch), and which releases the GIL.
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        return _flat(np.asarray(self.booster.inplace_predict(x, predict_type=self._predict_type)))


class LightGBMModel:
    """A LightGBM ``Booster`` (from its text model) scoring each batch.

    ``output="value"``: for a binary objective the positive-class probability, for
    ``multiclass`` one probability per class, for regression the value; ``raw_margin`` is
    the raw score. ``threads`` sets ``num_threads`` for each prediction (default:
    LightGBM's own, OpenMP's every core). LightGBM predicts on the CPU only (its GPU
    builds speed up training), so there is no ``device`` but ``cpu``.
    """

    def __init__(
        self,
        model: bytes,
        *,
        name: str,
        version: str = "0",
        output: Output = "value",
        threads: int | None = None,
        sha256: str | None = None,
    ) -> None:
        lgb = import_lightgbm()
        if output not in OUTPUTS:
            raise ModelLoadError(
                f"{name}: output must be one of {', '.join(OUTPUTS)}, got {output!r}"
            )
        try:
            text = model.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(
                f"{name}: LightGBM cannot load the model: not a text model file ({exc})"
            ) from None
        try:
            self.booster = lgb.Booster(model_str=text)
        except Exception as exc:  # LightGBMError
            raise ModelLoadError(f"{name}: LightGBM cannot load the model: {exc}") from exc
        self.num_features = int(self.booster.num_feature())
        self.name = name
        self.version = version
        self.sha256 = sha256.lower() if sha256 else None
        self._kwargs: dict[str, Any] = {"raw_score": output == "raw_margin"}
        if threads:
            self._kwargs["num_threads"] = threads

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        sha256: str,
        name: str,
        version: str = "0",
        output: Output = "value",
        threads: int | None = None,
    ) -> LightGBMModel:
        data = read_verified(path, sha256)
        return cls(data, name=name, version=version, output=output, threads=threads, sha256=sha256)

    def predict_batch(self, inputs: Any) -> Any:
        # A float32 array straight to LightGBM's C API (it takes float32 as it is).
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        return _flat(np.asarray(self.booster.predict(x, **self._kwargs)))
