"""A stand-in model for windowed features: scores each entity's window by how far its
mean reading strays from its extremes, plus how often it raised an alarm. Replace it with
your own (ONNX, skops, a registry version): it receives one feature dictionary per window.
"""

from __future__ import annotations

from typing import Any


def score(windows: list[dict[str, Any]]) -> list[float]:
    out = []
    for w in windows:
        spread = (w["max_value"] - w["min_value"]) / (abs(w["mean_value"]) + 1.0)
        alarms = w["types"].get("alarm", 0) / max(w["events"], 1)
        out.append(round(spread + alarms, 6))
    return out
