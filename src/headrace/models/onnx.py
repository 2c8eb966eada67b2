"""ONNX models through ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from headrace.models.integrity import ModelLoadError, read_verified

_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxModel:
    """Runs an ONNX graph with one input on each batch.

    ``output`` picks an output by name (default: the last one, which for converted
    scikit-learn models is the scores or probabilities rather than the label). An output of
    shape ``(N, 1)`` is flattened to ``N`` scalars. ONNX Runtime releases the GIL, so the
    engine's event loop keeps reading and writing while a batch computes.

    ``device="cuda"`` runs the graph with ONNX Runtime's CUDAExecutionProvider (CPU for
    the operators it lacks); an onnxruntime without it (the CPU package), or one that
    cannot start it (no GPU), is refused here, at load, not at the first batch.
    """

    def __init__(
        self,
        model: bytes,
        *,
        name: str,
        version: str = "0",
        output: str | None = None,
        threads: int | None = None,
        sha256: str | None = None,
        device: str = "cpu",
    ) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            available = list(ort.get_available_providers())
            if CUDA_PROVIDER not in available:
                raise ModelLoadError(
                    f"{name}: model.device: cuda needs onnxruntime-gpu and a GPU; this "
                    f"onnxruntime offers: {available}"
                )
            providers = [CUDA_PROVIDER, *providers]
        elif device != "cpu":
            raise ModelLoadError(f"{name}: device must be cpu or cuda, got {device!r}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise ModelLoadError(f"{name}: ONNX Runtime cannot load the model: {exc}") from exc
        if device == "cuda" and CUDA_PROVIDER not in self.session.get_providers():
            # ORT falls back to the CPU (with a log line) when the provider cannot start.
            raise ModelLoadError(
                f"{name}: model.device: cuda, but ONNX Runtime could not start its "
                f"{CUDA_PROVIDER} (no GPU, or CUDA/cuDNN libraries missing); it runs on: "
                f"{self.session.get_providers()}"
            )
        self.device = device
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(
                f"{name}: the ONNX model has {len(inputs)} inputs; Headrace feeds exactly one"
            )
        self._input = inputs[0].name
        self._dtype = _ONNX_TO_NUMPY.get(inputs[0].type, np.float32)
        names = [o.name for o in self.session.get_outputs()]
        if output is None:
            output = names[-1]
        elif output not in names:
            raise ModelLoadError(
                f"{name}: the ONNX model has no output {output!r}; it has {', '.join(names)}"
            )
        self._output = output
        self.name = name
        self.version = version
        self.sha256 = sha256.lower() if sha256 else None

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        sha256: str,
        name: str,
        version: str = "0",
        output: str | None = None,
        threads: int | None = None,
        device: str = "cpu",
    ) -> OnnxModel:
        data = read_verified(path, sha256)
        return cls(
            data,
            name=name,
            version=version,
            output=output,
            threads=threads,
            sha256=sha256,
            device=device,
        )

    def predict_batch(self, inputs: Any) -> Any:
        x = np.asarray(inputs, dtype=self._dtype)
        (out,) = self.session.run([self._output], {self._input: x})
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out
