"""scikit-learn estimators as models, and loading them safely from skops files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from headrace.models.integrity import read_verified

Method = Literal["predict", "predict_proba", "decision_function", "score_samples"]


class SklearnModel:
    """Calls one method of a fitted estimator on each batch.

    ``method`` picks what a prediction is: ``predict`` (labels or values), ``predict_proba``
    (one probability per class), ``decision_function`` or ``score_samples`` (anomaly scores,
    for example from an IsolationForest). ``negate`` flips the sign, so that for
    ``score_samples`` a higher value means more anomalous.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        method: Method = "predict",
        name: str,
        version: str = "0",
        negate: bool = False,
        sha256: str | None = None,
    ) -> None:
        fn = getattr(estimator, method, None)
        if fn is None:
            raise ValueError(f"{type(estimator).__name__} has no method {method!r}")
        self.estimator = estimator
        self.method = method
        self.name = name
        self.version = version
        self.sha256 = sha256.lower() if sha256 else None
        self._fn = fn
        self._negate = negate

    def predict_batch(self, inputs: Any) -> Any:
        out = self._fn(inputs)
        return -out if self._negate else out


def load_skops(path: str | Path, *, sha256: str, trusted: list[str] | None = None) -> Any:
    """Load an estimator saved with ``skops.io.dump``, after checking its sha256.

    skops refuses types outside its safe defaults unless ``trusted`` names them; the error
    lists the untrusted types found, so a user can review them before trusting any.
    """
    import skops.io as sio

    from headrace.models.integrity import ModelLoadError

    data = read_verified(path, sha256)
    untrusted = sio.get_untrusted_types(data=data)
    missing = sorted(set(untrusted) - set(trusted or ()))
    if missing:
        raise ModelLoadError(
            f"{path}: the skops file holds types that are not trusted: {', '.join(missing)}. "
            "Review them, then list them under model.trusted_types to load it."
        )
    return sio.loads(data, trusted=list(untrusted))
