"""`nas export` for every registered space: TorchScript and ONNX models that run and agree
with the PyTorch model they came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.export import _export_model
from search_spaces import get_space, list_spaces

pytestmark = pytest.mark.integration


def _reference(space, arch, seed: int) -> torch.nn.Module:
    """The model `_export_model` builds: the same seed gives the same initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return space.build(arch).eval()


@pytest.mark.parametrize("name", list_spaces())
def test_onnx_export_runs_in_onnxruntime_and_agrees_with_torch(name, tmp_path):
    import onnxruntime

    space = get_space(name)
    rng = np.random.default_rng(7)
    for i in range(2):
        arch = space.sample(rng)
        path = tmp_path / f"{name}-{i}.onnx"
        _export_model(space, arch, "onnx", path, seed=3)
        x = torch.randn(3, *space.input_shape(arch), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            expected = _reference(space, arch, seed=3)(x).numpy()
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"input": x.numpy()})  # batch 3: the batch axis is dynamic
        assert got.shape == expected.shape and np.isfinite(got).all()
        # 1e-4 of the output's scale: an untrained net in eval mode (BatchNorm statistics at
        # their initial values) can emit logits in the thousands
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0,
                                   err_msg=f"{name} arch {space.key(arch)}")


@pytest.mark.parametrize("name", list_spaces())
def test_torchscript_export_agrees_with_torch(name, tmp_path):
    space = get_space(name)
    arch = space.sample(np.random.default_rng(11))
    path = tmp_path / f"{name}.pt"
    _export_model(space, arch, "torchscript", path, seed=5)
    x = torch.randn(2, *space.input_shape(arch), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _reference(space, arch, seed=5)(x)
        got = torch.jit.load(str(path))(x)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=0)
