"""Triton kernels of RandMultiHeadAttention in Triton's CPU interpreter (tiny shapes).

Not collected by the main run (no ``test_`` prefix): tests/test_attention_gpu.py runs this file
in a fresh process, because ``TRITON_INTERPRET=1`` must be set before ``triton`` is imported.
The same layer with ``gpu_backend="off"`` (the CPU reference path) is the yardstick.
"""

from __future__ import annotations

import os
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Shared helpers (pytest puts tests/ on sys.path when it imports this file).
from test_attention_gpu import TOL, _both, _layer, _padding, _rel  # noqa: E402

from panther.native import reference  # noqa: E402
from panther.native.triton.linear_attention import fused_random_feature_attention  # noqa: E402

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 (set before importing triton) or a GPU",
                allow_module_level=True)


# Tiny tensors: one torch thread (tests/conftest.py) avoids OpenMP spin-waits on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def interpreted():
    """Nothing to set up: the module header set the interpreter before triton was imported."""
    from panther.native.triton import kernels

    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_matches_reference_path(interpreted, dtype, kernel_fn, causal):
    # 40 tokens = three 16-token chunks (the last one partial; _both sets the block), with
    # padded keys.
    layer = _layer(kernel_fn, causal, dtype)
    x = torch.randn(2, 40, 32).to(dtype)
    mask = _padding(2, 40)
    with torch.no_grad():
        out, ref = _both(layer, x, x, x, key_padding_mask=mask)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < TOL[dtype]


def test_block_size_and_chunk_boundaries(interpreted):
    # block=16 with 40 tokens: partial last chunk, carried state over two boundaries; compare
    # the raw core against the reference scan at several block sizes.
    layer = _layer("softmax", True)
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    q_feat, k_feat = layer.feature_maps(q, k)
    ref = reference.causal_linear_attention(q_feat, k_feat, v, layer.eps)
    w = layer._feature_weights(torch.float32)
    for block in (16, 32, 64):
        out = fused_random_feature_attention(q, k, v, w, None, layer.feature_maps, softmax=True,
                                             causal=True, eps=layer.eps, block=block)
        assert _rel(out.transpose(1, 2), ref) < 2e-5
    with pytest.raises(ValueError, match="power of two"):
        fused_random_feature_attention(q, k, v, w, None, layer.feature_maps, softmax=True,
                                       causal=True, eps=layer.eps, block=24)


def test_cross_attention_unbatched_and_seq_first(interpreted):
    layer = _layer("softmax", False, batch_first=False)
    query = torch.randn(7, 2, 32)  # (L, N, E)
    memory = torch.randn(19, 2, 32)
    with torch.no_grad():
        out, ref = _both(layer, query, memory, memory)
        assert out.shape == (7, 2, 32) and _rel(out, ref) < 2e-5
        out, ref = _both(layer, query[:, 0], memory[:, 0], memory[:, 0])
        assert out.shape == (7, 32) and _rel(out, ref) < 2e-5


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_row_is_zero_not_nan(interpreted, causal):
    layer = _layer("softmax", causal)
    with torch.no_grad():
        layer.out_proj.bias.zero_()
    x = torch.randn(2, 20, 32)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1] = True
    with torch.no_grad():
        out, ref = _both(layer, x, x, x, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    assert _rel(out[0], ref[0]) < 2e-5


@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_reference_autograd(interpreted, kernel_fn, causal):
    layer = _layer(kernel_fn, causal)
    x = torch.randn(2, 20, 32)
    mask = _padding(2, 20)
    grads = {}
    layer._gpu_block = 16  # several chunks in the forward and in the recomputed backward
    for backend in ("off", "triton", "torch"):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        layer.gpu_backend = backend
        out = layer(xi, xi, xi, key_padding_mask=mask)[0]
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = [xi.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    for backend in ("triton", "torch"):
        for got, want in zip(grads[backend], grads["off"]):
            assert _rel(got, want) < 1e-4, backend


def test_half_precision_gradients_keep_dtype(interpreted):
    layer = _layer("softmax", True, torch.bfloat16)
    layer.gpu_backend = "triton"
    x = torch.randn(1, 20, 32, dtype=torch.bfloat16, requires_grad=True)
    layer(x, x, x)[0].float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
