"""scikit-learn estimators as models, and loading them safely from skops files."""

from __future__ import annotations

from collections.abc import Iterable
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
    return skops_loads(
        read_verified(path, sha256),
        trusted=trusted or (),
        where=str(path),
        remedy="Review them, then list them under model.trusted_types to load it.",
    )


def skops_loads(data: bytes, *, trusted: Iterable[str], where: str, remedy: str) -> Any:
    """Deserialise verified skops bytes, refusing (with ``where`` and ``remedy`` in the
    error) any type outside skops' safe defaults that ``trusted`` does not name."""
    import skops.io as sio

    from headrace.models.integrity import ModelLoadError

    untrusted = sio.get_untrusted_types(data=data)
    missing = sorted(set(untrusted) - set(trusted))
    if missing:
        raise ModelLoadError(
            f"{where}: the skops file holds types that are not trusted: "
            f"{', '.join(missing)}. {remedy}"
        )
    # Exactly the types found, all of which were trusted.
    return sio.loads(data, trusted=list(untrusted))
