"""PyTorch modules as models, and calls on a CUDA device that overlap with the host's work.

On a GPU the engine's own work per batch (reading, decoding, featurizing, writing) and the
device's work add up unless they overlap. Three things make them overlap here:

* **a lane per calling thread**: the engine calls a model from up to ``max_concurrency``
  pool threads at once; each thread gets its own CUDA stream, so one batch's copies run
  while another's kernels do;
* **pinned host buffers**, kept by the lane and reused from call to call: a copy from
  pageable memory is synchronous (the host waits for the device and the other way round),
  and pinning a buffer per call costs more than the copy;
* **waiting on a CUDA event**, whose ``synchronize()`` lets go of the GIL (a ``.cpu()`` on
  the result would wait too, but callers cannot count on it releasing the GIL meanwhile),
  so the event loop goes on reading and batching while the device works.

torch is imported by whoever builds the model and handed in (``torch``): it is optional,
and has no type stubs here.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: Half-precision results come back as float32: NumPy has no bfloat16, and sinks encode
#: float32 as they do every other float.
_HALF = ("torch.bfloat16", "torch.float16")


def module_dtype(module: Any) -> Any:
    """The floating dtype of ``module``'s first floating parameter (inputs are cast to it
    on the device: a bfloat16 module called on float32 inputs fails), or ``None``."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


class CudaLanes:
    """Runs ``fn`` on a CUDA ``device``, one lane (stream and pinned buffers) per thread."""

    def __init__(self, torch: Any, device: str, *, compute_dtype: Any = None) -> None:
        self._torch = torch
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self._local = threading.local()

    def run(self, fn: Any, inputs: np.ndarray) -> np.ndarray:
        """``fn`` on ``inputs`` copied to the device; the result as a new NumPy array.

        1. Copy ``inputs`` into this thread's pinned input buffer.
        2. On this thread's stream: copy it to the device (without waiting), cast floating
           inputs to the module's dtype, call ``fn``, copy the result into the pinned
           output buffer (without waiting) and record an event.
        3. Wait for the event (the GIL is released meanwhile), and copy the result out of
           the buffer that the next call on this thread reuses.
        """
        torch, lane = self._torch, self._lane()
        source = torch.from_numpy(inputs)
        staged = lane.buffer("input", source.shape, source.dtype)
        staged.copy_(source)
        with torch.cuda.stream(lane.stream), torch.inference_mode():
            x = staged.to(self.device, non_blocking=True)
            if self.compute_dtype is not None and x.is_floating_point():
                x = x.to(self.compute_dtype)
            out = fn(x).detach()
            if str(out.dtype) in _HALF:
                out = out.float()
            host = lane.buffer("output", out.shape, out.dtype)
            host.copy_(out, non_blocking=True)
            lane.done.record(lane.stream)
        lane.done.synchronize()
        result: np.ndarray = host.numpy().copy()
        return result

    def _lane(self) -> _Lane:
        lane: _Lane | None = getattr(self._local, "lane", None)
        if lane is None:
            lane = self._local.lane = _Lane(self._torch, self.device)
        return lane


class _Lane:
    """One thread's stream, completion event and pinned buffers (grown, never shrunk)."""

    def __init__(self, torch: Any, device: Any) -> None:
        self._torch = torch
        self.stream = torch.cuda.Stream(device=device)
        self.done = torch.cuda.Event()
        self._buffers: dict[tuple[str, Any], Any] = {}

    def buffer(self, role: str, shape: Any, dtype: Any) -> Any:
        """A pinned tensor of ``shape`` and ``dtype``: a view of this lane's buffer for
        ``role``, reallocated (twice as large) only when it is too small."""
        n = 1
        for d in shape:
            n *= int(d)
        key = (role, dtype)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < n:
            size = max(n, 2 * flat.numel() if flat is not None else n)
            flat = self._buffers[key] = self._torch.empty(size, dtype=dtype, pin_memory=True)
        return flat[:n].view(shape)


class TorchModel:
    """A PyTorch module in eval mode, called on each batch without gradients, on
    ``device``; an output of shape ``(N, 1)`` is flattened to ``N`` scalars, as with ONNX.

    Inputs are made a contiguous array of ``dtype`` (``float32`` unless the model's
    signature says otherwise, e.g. ``int64`` token ids) and cast to the module's own
    floating dtype; half-precision outputs come back as float32. On ``cuda`` each batch
    goes through a :class:`CudaLanes` lane of the calling thread."""

    def __init__(
        self,
        module: Any,
        *,
        torch: Any,
        name: str,
        version: str,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self.module = module.eval()
        self.device = device
        self.name = name
        self.version = version
        self._torch = torch
        self._dtype = np.dtype(dtype)
        self._compute = module_dtype(module)
        self._lanes = (
            CudaLanes(torch, device, compute_dtype=self._compute)
            if device.startswith("cuda")
            else None
        )

    def predict_batch(self, inputs: Any) -> Any:
        x = np.ascontiguousarray(inputs, dtype=self._dtype)
        lanes = self._lanes
        result = lanes.run(self.module, x) if lanes is not None else self._on_host(x)
        if result.ndim == 2 and result.shape[1] == 1:
            result = result[:, 0]
        return result

    def _on_host(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        t = torch.from_numpy(x)
        if self._compute is not None and t.is_floating_point():
            t = t.to(self._compute)
        with torch.inference_mode():
            out = self.module(t).detach()
        if str(out.dtype) in _HALF:
            out = out.float()
        result: np.ndarray = out.numpy()
        return result
