"""Tests of panther.nn.SKConv2d: geometry vs nn.Conv2d, unbiasedness, gradients, init, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.nn import SKConv2d

pytestmark = pytest.mark.filterwarnings("ignore:SKConv2d.*more than:UserWarning")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _per_term_forward(layer: SKConv2d, x: torch.Tensor) -> torch.Tensor:
    """``1/(2L) sum_i U_i^T conv(x, K_i) + b`` with one convolution per term."""
    k, terms = layer.low_rank, 2 * layer.num_terms
    y = 0
    for i in range(terms):
        blk = slice(i * k, (i + 1) * k)
        z = F.conv2d(x, layer.S[blk], None, layer.stride, layer.padding, layer.dilation)
        y = y + torch.einsum("nchw,co->nohw", z, layer.U[blk])
    y = y / terms
    return y + layer.bias.view(1, -1, 1, 1) if layer.bias is not None else y


def test_structure_and_sign_sketches():
    layer = SKConv2d(3, 16, kernel_size=3, num_terms=2, low_rank=2, seed=0)
    assert layer.S.shape == (8, 3, 3, 3)
    assert layer.U.shape == (8, 16)
    assert torch.allclose(layer.U.abs(), torch.full_like(layer.U, 2**-0.5))
    assert set(dict(layer.named_buffers())) == {"U"}
    assert isinstance(layer.seed, int)


def test_random_kernels_follow_definition():
    conv = nn.Conv2d(4, 6, 3, dtype=torch.float64)
    layer = SKConv2d.from_conv2d(conv, 1, 2, seed=0)
    Wm = conv.weight.reshape(6, -1)
    torch.testing.assert_close(layer.S.reshape(4, -1), layer.U @ Wm)


def test_forward_matches_per_term_formula_and_dense_kernel():
    layer = SKConv2d(3, 10, kernel_size=3, padding=1, num_terms=2, low_rank=2, seed=1)
    x = torch.randn(2, 3, 9, 8)
    y = layer(x)
    torch.testing.assert_close(y, _per_term_forward(layer, x), rtol=1e-4, atol=1e-5)
    dense = F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1)
    torch.testing.assert_close(y, dense, rtol=1e-4, atol=1e-5)


def test_expectation_over_seeds_approaches_dense_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    target = conv(x).detach()
    n_seeds = 300
    total = torch.zeros_like(target)
    single = []
    with torch.no_grad():
        for seed in range(n_seeds):
            y = SKConv2d.from_conv2d(conv, num_terms=1, low_rank=2, seed=seed)(x)
            single.append(_rel(y, target))
            total += y
    assert sum(single) / n_seeds > 0.5  # one sketch is noisy (bias is exact, so < 1.4)
    assert _rel(total / n_seeds, target) < 0.12


_padding = st.one_of(
    st.integers(0, 2),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.just("valid"),
    st.just("same"),
)


@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 4),
    cout=st.integers(1, 6),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 2), st.integers(1, 3))),
    padding=_padding,
    dilation=st.integers(1, 2),
    batched=st.booleans(),
    bias=st.booleans(),
)
def test_output_shape_and_values_match_nn_conv2d(
    cin, cout, kh, kw, stride, padding, dilation, batched, bias
):
    if padding == "same":
        stride = 1
    conv = nn.Conv2d(cin, cout, (kh, kw), stride, padding, dilation, bias=bias,
                     dtype=torch.float64)
    layer = SKConv2d.from_conv2d(conv, num_terms=1, low_rank=2, seed=0)
    shape = (2, cin, 9, 10) if batched else (cin, 9, 10)
    x = torch.randn(*shape, dtype=torch.float64)
    y = layer(x)
    expected = conv._conv_forward(x, layer.dense_weight(), conv.bias)
    assert y.shape == conv(x).shape
    torch.testing.assert_close(y, expected)


def test_gradcheck_float64():
    layer = SKConv2d(2, 3, kernel_size=2, padding=1, num_terms=1, low_rank=1,
                     dtype=torch.float64, seed=0)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, S, b):
        return torch.func.functional_call(layer, {"S": S, "bias": b}, (x,))

    S = layer.S.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, S, b))


def test_backward_reaches_kernels_and_bias():
    layer = SKConv2d(3, 8, num_terms=1, low_rank=2, seed=0)
    layer(torch.randn(2, 3, 5, 5)).sum().backward()
    assert layer.S.grad is not None and layer.S.grad.abs().sum() > 0
    assert layer.bias.grad is not None and not layer.U.requires_grad


def test_from_conv2d_copies_geometry_dtype_mode_and_bias():
    conv = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                     dtype=torch.float64).eval()
    layer = SKConv2d.from_conv2d(conv, 2, 1, seed=3)
    assert layer.kernel_size == (3, 5) and layer.stride == (2, 1)
    assert layer.padding == (1, 2) and layer.dilation == (1, 2)
    assert layer.S.dtype == torch.float64 and not layer.training
    torch.testing.assert_close(layer.bias, conv.bias)
    assert "seed=3" in repr(layer) and "num_terms=2" in repr(layer)
    same = SKConv2d.from_conv2d(nn.Conv2d(3, 8, 3, padding="same", bias=False), 1, 2)
    assert same.padding == "same" and same.bias is None
    assert same(torch.randn(1, 3, 7, 7)).shape == (1, 8, 7, 7)


def test_seed_reproducibility():
    a = SKConv2d(3, 8, seed=9, low_rank=2)
    b = SKConv2d(3, 8, seed=9, low_rank=2)
    assert torch.equal(a.U, b.U)
    torch.manual_seed(1)
    c = SKConv2d(3, 8, low_rank=2)
    torch.manual_seed(1)
    d = SKConv2d(3, 8, low_rank=2)
    assert c.seed == d.seed and torch.equal(c.S, d.S)


def test_layer_without_bias_gives_zero_bias():
    conv = nn.Conv2d(3, 8, 3, bias=False)
    layer = SKConv2d(3, 8, 3, layer=conv, low_rank=2, seed=0)
    assert torch.equal(layer.bias, torch.zeros(8))


def test_warns_only_when_larger_than_dense():
    with pytest.warns(UserWarning, match="more parameters"):
        SKConv2d(3, 4, num_terms=1, low_rank=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SKConv2d(3, 16, num_terms=2, low_rank=4)


@pytest.mark.parametrize(
    "conv, pattern",
    [
        (nn.Conv2d(4, 4, 3, groups=2), "groups"),
        (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode"),
    ],
)
def test_from_conv2d_rejects_unsupported(conv, pattern):
    with pytest.raises(ValueError, match=pattern):
        SKConv2d.from_conv2d(conv, 1, 1)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"padding": "full"}, ValueError, "padding"),
        ({"padding": "same", "stride": 2}, ValueError, "stride 1"),
        ({"padding": -1}, ValueError, "padding"),
        ({"stride": 0}, ValueError, "stride"),
        ({"kernel_size": (3, 3, 3)}, TypeError, "kernel_size"),
        ({"low_rank": 0}, ValueError, "low_rank"),
        ({"num_terms": 1.0}, TypeError, "num_terms"),
        ({"init": "pca"}, ValueError, "init"),
        ({"layer": nn.Conv2d(3, 8, 5)}, ValueError, "shape"),
        ({"layer": nn.Linear(3, 8)}, TypeError, "nn.Conv2d"),
        ({"layer": nn.Conv2d(3, 8, 3), "bias": False}, ValueError, "bias"),
    ],
)
def test_bad_arguments(kwargs, exc, pattern):
    args = {"in_channels": 3, "out_channels": 8, "low_rank": 2}
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        SKConv2d(**args)


def test_bad_input_shape():
    layer = SKConv2d(3, 8, low_rank=2, seed=0)
    with pytest.raises(ValueError, match="expects inputs"):
        layer(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="expects inputs"):
        layer(torch.randn(3, 5))


# -- data-aware init -------------------------------------------------------------


def _truncated_error(Wm: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(Wm)
    return (s[rank:].pow(2).sum() / s.pow(2).sum()).sqrt().item()


def test_svd_init_is_truncation_along_output_mode():
    g = torch.Generator().manual_seed(0)
    # a kernel with decaying spectrum along the output-channel mode
    A = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64)).Q
    B = torch.linalg.qr(torch.randn(4 * 9, 32, generator=g, dtype=torch.float64)).Q
    Wm = A @ torch.diag(0.8 ** torch.arange(32.0, dtype=torch.float64)) @ B.T
    conv = nn.Conv2d(4, 32, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(Wm.reshape(32, 4, 3, 3))
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    target = conv(x) - conv.bias.view(1, -1, 1, 1)
    for L, k in [(1, 2), (2, 2), (1, 6)]:
        svd = SKConv2d.from_conv2d(conv, L, k, init="svd", seed=0)
        rnd = SKConv2d.from_conv2d(conv, L, k, seed=0)
        w_err = _rel(svd.dense_weight().detach().reshape(32, -1), Wm)
        assert w_err == pytest.approx(_truncated_error(Wm, 2 * L * k), rel=1e-6)
        with torch.no_grad():
            e_svd = _rel(svd(x) - svd.bias.view(1, -1, 1, 1), target)
            e_rnd = _rel(rnd(x) - rnd.bias.view(1, -1, 1, 1), target)
        assert e_svd < 0.2 * e_rnd


def test_svd_init_exact_when_sketch_exceeds_out_channels():
    conv = nn.Conv2d(3, 4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning):
        layer = SKConv2d.from_conv2d(conv, 2, 2, init="svd", seed=0)
    torch.testing.assert_close(layer.dense_weight().detach(), conv.weight.detach())
    # a squared loss: with sum() a spare sign row summing to zero would get no gradient
    layer(torch.randn(1, 3, 5, 5, dtype=torch.float64)).pow(2).sum().backward()
    assert (layer.S.grad.flatten(1).abs().sum(1) > 0).all()


def test_svd_init_reuses_cached_factorization_until_kernel_changes():
    from panther.nn.linear import _SINGULAR_CACHE

    torch.manual_seed(2)
    conv = nn.Conv2d(6, 40, 3)
    _SINGULAR_CACHE.clear()
    first = SKConv2d.from_conv2d(conv, 1, 4, seed=1, init="svd")
    second = SKConv2d.from_conv2d(conv, 1, 4, seed=1, init="svd")
    assert (_SINGULAR_CACHE.hits, _SINGULAR_CACHE.misses) == (1, 1)
    torch.testing.assert_close(first.S, second.S, rtol=0, atol=0)
    torch.testing.assert_close(first.U, second.U, rtol=0, atol=0)
    with torch.no_grad():
        conv.weight.add_(1.0)
    third = SKConv2d.from_conv2d(conv, 1, 4, seed=1, init="svd")
    assert _SINGULAR_CACHE.misses == 2
    assert not torch.allclose(third.S, first.S)


def test_non_finite_kernel_is_rejected_with_a_clear_error():
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        SKConv2d.from_conv2d(conv, 1, 2, init="svd")
