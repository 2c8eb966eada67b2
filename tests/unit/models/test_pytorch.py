"""TorchModel: dtypes in and out on the host, and the CUDA lanes where a GPU is present."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from headrace.models.pytorch import TorchModel, module_dtype

torch: Any = pytest.importorskip("torch")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def mlp(dtype: Any = None) -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    return net.to(dtype) if dtype is not None else net


def test_float32_module_gives_one_score_per_row() -> None:
    net = mlp()
    model = TorchModel(net, torch=torch, name="m", version="1")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()[:, 0]
    out = model.predict_batch(x.tolist())
    assert out.shape == (5,) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_bfloat16_module_takes_float32_inputs_and_returns_float32() -> None:
    """A half-precision module called on the featurizer's float32 matrix: the inputs are
    cast to its dtype and the scores come back as float32 (NumPy has no bfloat16)."""
    net = mlp(torch.bfloat16)
    assert module_dtype(net) == torch.bfloat16
    model = TorchModel(net, torch=torch, name="m", version="1")
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    out = model.predict_batch(x)
    assert out.shape == (6,) and out.dtype == np.float32
    with torch.no_grad():
        expected = net(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()[:, 0]
    np.testing.assert_allclose(out, expected, rtol=1e-2, atol=1e-2)


class Tokens(torch.nn.Module):  # type: ignore[misc]
    """Token ids in, one vector per sequence out: integer inputs are never cast."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 3)

    def forward(self, ids: Any) -> Any:
        return self.embed(ids).mean(dim=1)


def test_integer_inputs_keep_their_dtype() -> None:
    net = Tokens()
    model = TorchModel(net, torch=torch, name="t", version="1", dtype="int64")
    ids = np.arange(12).reshape(3, 4) % 50
    out = model.predict_batch(ids)
    assert out.shape == (3, 3)
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(ids)).numpy(), atol=1e-6)


@cuda
def test_cuda_lanes_give_the_host_results_from_several_threads_at_once() -> None:
    """Each thread has its own stream and pinned buffers, reused across calls and grown
    for a larger batch: results match the host's, whatever the batch sizes and threads."""
    host = mlp()
    model = TorchModel(mlp().cuda(), torch=torch, name="m", version="1", device="cuda")
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 700, 64, 1, 2048) * 4]
    with torch.no_grad():
        expected = [host(torch.from_numpy(b)).numpy()[:, 0] for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for i in range(k, len(batches), 4):
            results[i] = model.predict_batch(batches[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, rtol=1e-4, atol=1e-5)
