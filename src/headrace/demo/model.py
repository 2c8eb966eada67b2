"""Building the demo's anomaly model: an IsolationForest exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headrace.connectors.generator import SensorEvents
from headrace.models.integrity import sha256_of


def build_demo_model(
    path: str | Path,
    *,
    entities: int = 200,
    seed: int = 7,
    samples: int = 20_000,
    trees: int = 100,
) -> str:
    """Fit an IsolationForest on normal sensor events and save it as ONNX; returns its sha256.

    The training events come from the same seeded generator the demo reads, without
    injected anomalies. The graph gains an ``anomaly_score`` output, the negated decision
    function: above 0 means the forest considers the event an outlier.
    """
    from onnx import TensorProto, checker, helper
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    events = SensorEvents(entities=entities, anomaly_rate=0.0, seed=seed)
    _, x, _ = events.features(samples)
    x = x.astype(np.float32)
    forest = IsolationForest(n_estimators=trees, random_state=seed).fit(x)
    graph = to_onnx(forest, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    graph.graph.node.append(helper.make_node("Neg", ["scores"], ["anomaly_score"]))
    graph.graph.output.append(
        helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [None, 1])
    )
    checker.check_model(graph)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(graph.SerializeToString())
    return sha256_of(out)
