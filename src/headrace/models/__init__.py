"""Models: the protocol, adapters for common runtimes, and the featurizer."""

from headrace.models.base import CallableModel, Model, model_ref
from headrace.models.boosting import LightGBMModel, XGBoostModel
from headrace.models.featurizer import FeatureError, Featurizer
from headrace.models.integrity import ModelLoadError, sha256_of
from headrace.models.onnx import OnnxModel
from headrace.models.sklearn import SklearnModel, load_skops

__all__ = [
    "CallableModel",
    "FeatureError",
    "Featurizer",
    "LightGBMModel",
    "Model",
    "ModelLoadError",
    "OnnxModel",
    "SklearnModel",
    "XGBoostModel",
    "load_skops",
    "model_ref",
    "sha256_of",
]
