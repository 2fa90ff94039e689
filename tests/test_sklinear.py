"""Tests of panther.nn.SKLinear: the sketch formula, unbiasedness, gradients, init modes, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.nn import SKLinear

# Small layers are often larger than their dense form; that warning is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:SKLinear.*more than:UserWarning")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _per_term_forward(layer: SKLinear, x: torch.Tensor) -> torch.Tensor:
    """The issue's formula written term by term, independent of the stacked layout."""
    L, k = layer.num_terms, layer.low_rank
    y = torch.zeros(*x.shape[:-1], layer.out_features, dtype=x.dtype)
    for i in range(L):
        blk = slice(i * k, (i + 1) * k)
        S1_i, U1_i = layer.S1[:, blk], layer.U1[blk]
        U2_i, S2_i = layer.U2[:, blk], layer.S2[blk]
        y = y + (x @ S1_i) @ U1_i + (x @ U2_i) @ S2_i
    y = y / (2 * L)
    return y + layer.bias if layer.bias is not None else y


def _spectrum_weight(out_f: int, in_f: int, decay: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q1 = torch.linalg.qr(torch.randn(out_f, out_f, generator=g, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(in_f, in_f, generator=g, dtype=torch.float64)).Q
    r = min(in_f, out_f)
    s = decay ** torch.arange(r, dtype=torch.float64)
    return Q1[:, :r] @ torch.diag(s) @ Q2[:, :r].T


def _truncated_error(W: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(W)
    return (s[rank:].pow(2).sum() / s.pow(2).sum()).sqrt().item()


# -- structure -----------------------------------------------------------------


def test_shapes_layout_and_sign_sketches():
    layer = SKLinear(20, 12, num_terms=3, low_rank=4, seed=7)
    assert layer.S1.shape == (20, 12) and layer.U2.shape == (20, 12)
    assert layer.U1.shape == (12, 12) and layer.S2.shape == (12, 12)
    assert isinstance(layer.S1, nn.Parameter) and isinstance(layer.S2, nn.Parameter)
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"U1", "U2"}
    # Scaled sign sketches: every entry is +-1/sqrt(k), both signs occur.
    for U in (layer.U1, layer.U2):
        assert torch.allclose(U.abs(), torch.full_like(U, 0.5))
        assert (U > 0).any() and (U < 0).any()
    assert layer.seed == 7 and layer.init == "random"


def test_forward_matches_per_term_formula_and_dense_weight():
    layer = SKLinear(16, 10, num_terms=3, low_rank=2, seed=1)
    x = torch.randn(5, 16)
    y = layer(x)
    torch.testing.assert_close(y, _per_term_forward(layer, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, x @ layer.dense_weight().T + layer.bias, rtol=1e-5, atol=1e-5)


def test_random_init_factors_follow_definition():
    W = torch.randn(6, 9, dtype=torch.float64)
    layer = SKLinear(9, 6, 2, 3, W_init=W, dtype=torch.float64, seed=3)
    Wt = W.T
    torch.testing.assert_close(layer.S1, Wt @ layer.U1.T)
    torch.testing.assert_close(layer.S2, layer.U2.T @ Wt)


def test_expectation_over_seeds_is_dense_weight():
    torch.manual_seed(0)
    W = torch.randn(8, 8, dtype=torch.float64)
    single, total = [], torch.zeros_like(W)
    n_seeds = 400
    for seed in range(n_seeds):
        layer = SKLinear(8, 8, 1, 2, W_init=W, dtype=torch.float64, seed=seed)
        est = layer.dense_weight().detach()
        single.append(_rel(est, W))
        total += est
    # One sketch is a poor estimate (relative error ~ sqrt(out/k)/sqrt(2) = 1.4) ...
    assert sum(single) / n_seeds > 0.8
    # ... but it is unbiased, so the average converges like 1/sqrt(n_seeds).
    assert _rel(total / n_seeds, W) < 0.15


@settings(max_examples=20, deadline=None)
@given(
    in_f=st.integers(1, 24),
    out_f=st.integers(1, 24),
    L=st.integers(1, 3),
    k=st.integers(1, 6),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    bias=st.booleans(),
)
def test_any_leading_shape(in_f, out_f, L, k, batch, bias):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layer = SKLinear(in_f, out_f, L, k, bias=bias, seed=0)
    x = torch.randn(*batch, in_f)
    y = layer(x)
    assert y.shape == (*batch, out_f)
    torch.testing.assert_close(y, _per_term_forward(layer, x), rtol=1e-4, atol=1e-4)


def test_one_dimensional_input():
    layer = SKLinear(7, 5, 1, 2, seed=0)
    x = torch.randn(7)
    y = layer(x)
    assert y.shape == (5,)
    torch.testing.assert_close(y, layer(x.unsqueeze(0))[0])


def test_wrong_input_width_is_rejected():
    layer = SKLinear(7, 5, 1, 2, seed=0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 7\)"):
        layer(torch.randn(3, 6))


# -- gradients -----------------------------------------------------------------


def test_gradcheck_float64():
    layer = SKLinear(6, 5, 2, 2, dtype=torch.float64, seed=0)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def fn(x, S1, S2, b):
        return torch.func.functional_call(layer, {"S1": S1, "S2": S2, "bias": b}, (x,))

    params = [p.detach().clone().requires_grad_(True) for p in (layer.S1, layer.S2, layer.bias)]
    assert torch.autograd.gradcheck(fn, (x, *params))


def test_backward_populates_parameters_only():
    layer = SKLinear(6, 5, 2, 2, seed=0)
    layer(torch.randn(4, 6)).pow(2).sum().backward()
    assert layer.S1.grad is not None and layer.S1.grad.abs().sum() > 0
    assert layer.S2.grad is not None and layer.S2.grad.abs().sum() > 0
    assert layer.bias.grad is not None
    assert not layer.U1.requires_grad and not layer.U2.requires_grad


# -- construction, seeds, conversion ---------------------------------------------


def test_seed_reproducibility_and_recording():
    a = SKLinear(10, 8, 2, 3, seed=123)
    b = SKLinear(10, 8, 2, 3, seed=123)
    c = SKLinear(10, 8, 2, 3, seed=124)
    assert torch.equal(a.U1, b.U1) and torch.equal(a.U2, b.U2)
    assert not torch.equal(a.U1, c.U1)
    torch.manual_seed(5)
    d = SKLinear(10, 8, 2, 3)
    torch.manual_seed(5)
    e = SKLinear(10, 8, 2, 3)
    assert isinstance(d.seed, int) and d.seed == e.seed
    assert torch.equal(d.S1, e.S1) and torch.equal(d.U1, e.U1)


def test_default_init_matches_nn_linear_distribution():
    torch.manual_seed(0)
    layer = SKLinear(64, 32, 1, 4, seed=0)
    bound = 1.0 / math.sqrt(64)
    assert layer.bias.abs().max() <= bound
    # Kaiming-uniform(a=sqrt(5)) has the same bound for the weight; the sketch recovers it
    # in expectation, so its dense estimate has the dense weight's scale.
    assert 0.1 * bound < layer.dense_weight().detach().std() < 10 * bound


def test_from_linear_copies_weight_bias_dtype_and_mode():
    lin = nn.Linear(12, 9, dtype=torch.float64).eval()
    layer = SKLinear.from_linear(lin, num_terms=2, low_rank=2, seed=4)
    assert layer.S1.dtype == torch.float64 and layer.U1.dtype == torch.float64
    assert not layer.training
    torch.testing.assert_close(layer.bias, lin.bias)
    torch.testing.assert_close(layer.S1, lin.weight.T @ layer.U1.T)
    no_bias = SKLinear.from_linear(nn.Linear(12, 9, bias=False), 1, 2)
    assert no_bias.bias is None
    assert no_bias(torch.randn(2, 12)).shape == (2, 9)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear"):
        SKLinear.from_linear(nn.Conv2d(3, 3, 3), 1, 2)


def test_state_dict_round_trip():
    a = SKLinear(10, 8, 2, 2, seed=1)
    b = SKLinear(10, 8, 2, 2, seed=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 10)
    torch.testing.assert_close(a(x), b(x))


def test_extra_repr_names_configuration():
    text = repr(SKLinear(10, 8, 2, 3, seed=11, bias=False))
    for part in ("in_features=10", "out_features=8", "num_terms=2", "low_rank=3",
                 "bias=False", "init='random'", "seed=11"):
        assert part in text


def test_warns_only_when_larger_than_dense():
    with pytest.warns(UserWarning, match="more than"):
        SKLinear(8, 8, 2, 4)  # 8*(16) = 128 > 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SKLinear(64, 64, 1, 8)  # 8*128 = 1024 < 4096


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"in_features": 0}, ValueError, "in_features"),
        ({"out_features": -3}, ValueError, "out_features"),
        ({"num_terms": 0}, ValueError, "num_terms"),
        ({"low_rank": 0}, ValueError, "low_rank"),
        ({"low_rank": 2.5}, TypeError, "low_rank"),
        ({"init": "qr"}, ValueError, "init"),
        ({"W_init": torch.randn(10, 8)}, ValueError, r"transpose"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "x"}, TypeError, "seed"),
    ],
)
def test_bad_arguments(kwargs, exc, pattern):
    args = {"in_features": 10, "out_features": 8, "num_terms": 1, "low_rank": 2}
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        SKLinear(**args)


# -- data-aware init -------------------------------------------------------------


def test_svd_init_is_truncated_svd_of_rank_2lk():
    W = _spectrum_weight(40, 48, 0.8)
    for L, k in [(1, 3), (2, 2), (3, 1)]:
        layer = SKLinear(48, 40, L, k, W_init=W, dtype=torch.float64, init="svd", seed=0)
        err = _rel(layer.dense_weight().detach(), W)
        assert err == pytest.approx(_truncated_error(W, 2 * L * k), rel=1e-6)
        # far better than the random sketch, and better than rank L*k
        rand = SKLinear(48, 40, L, k, W_init=W, dtype=torch.float64, seed=0)
        assert err < 0.1 * _rel(rand.dense_weight().detach(), W)
        assert err < _truncated_error(W, L * k)


def test_svd_init_randomized_path_close_to_optimal():
    # 2*(q + oversample) < rank, so the randomized range finder is used.
    torch.manual_seed(0)
    W = torch.randn(200, 160, dtype=torch.float64)
    layer = SKLinear(160, 200, 2, 5, W_init=W, dtype=torch.float64, init="svd", seed=0)
    err = _rel(layer.dense_weight().detach(), W)
    assert err <= 1.02 * _truncated_error(W, 20)
    again = SKLinear(160, 200, 2, 5, W_init=W, dtype=torch.float64, init="svd", seed=0)
    torch.testing.assert_close(layer.U1, again.U1)


def test_svd_init_exact_when_sketch_covers_rank_and_spares_learn():
    W = _spectrum_weight(6, 9, 0.7)
    with pytest.warns(UserWarning):
        layer = SKLinear(9, 6, 2, 4, W_init=W, dtype=torch.float64, init="svd", seed=0)
    torch.testing.assert_close(layer.dense_weight().detach(), W)
    layer(torch.randn(5, 9, dtype=torch.float64)).pow(2).sum().backward()
    # every column of S1 / row of S2 gets gradient, including the zero-initialised spares
    assert (layer.S1.grad.abs().sum(0) > 0).all()
    assert (layer.S2.grad.abs().sum(1) > 0).all()


def test_svd_init_from_linear_float32():
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(_spectrum_weight(48, 64, 0.85).float())
    layer = SKLinear.from_linear(lin, 1, 8, init="svd")
    x = torch.randn(32, 64)
    err = _rel(layer(x) - lin.bias, lin(x) - lin.bias)
    assert err < 1.5 * _truncated_error(lin.weight.double(), 16) + 1e-5
    assert layer.init == "svd" and "init='svd'" in repr(layer)


@settings(max_examples=20, deadline=None)
@given(
    in_f=st.integers(2, 40),
    out_f=st.integers(2, 40),
    L=st.integers(1, 3),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**31),
)
def test_svd_init_never_worse_than_truncation_of_same_storage(in_f, out_f, L, k, seed):
    W = torch.randn(out_f, in_f, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    layer = SKLinear(in_f, out_f, L, k, W_init=W, dtype=torch.float64, init="svd", seed=seed)
    rank = min(2 * L * k, in_f, out_f)
    err = _rel(layer.dense_weight().detach(), W)
    assert err <= 1.05 * _truncated_error(W, rank) + 1e-9


def test_reset_parameters_keeps_random_sketches_and_redraws_weight():
    layer = SKLinear(12, 10, 1, 3, seed=5)
    U1, S1 = layer.U1.clone(), layer.S1.detach().clone()
    layer.reset_parameters()
    assert torch.equal(layer.U1, U1)
    assert not torch.equal(layer.S1, S1)


def test_init_from_weight_resketches_in_place():
    layer = SKLinear(12, 10, 1, 5, seed=5, init="svd")  # 2Lk = 10 covers the full rank
    W = _spectrum_weight(10, 12, 0.5).float()
    layer.init_from_weight(W)
    assert _rel(layer.dense_weight().detach().double(), W.double()) < 1e-5
    with pytest.raises(ValueError, match="shape"):
        layer.init_from_weight(W.T)


def test_end_to_end_svd_sketch_of_low_rank_mlp_is_lossless():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():  # weights of rank 4, as after heavy low-rank training
        for lin in (model[0], model[2]):
            out_f, in_f = lin.weight.shape
            lin.weight.copy_(torch.randn(out_f, 4) @ torch.randn(4, in_f) / in_f)
    x = torch.randn(16, 32)
    expected = model(x)
    for init, bound in (("svd", 1e-4), ("random", None)):
        sketched = nn.Sequential(
            SKLinear.from_linear(model[0], 1, 2, seed=0, init=init), nn.ReLU(),
            SKLinear.from_linear(model[2], 1, 2, seed=0, init=init),
        )
        err = _rel(sketched(x), expected)
        if bound is not None:
            assert err < bound
        else:
            assert err > 0.05  # a random sketch of the same size is visibly lossy


# -- the init="svd" factorization cache ------------------------------------------------------


def _svd_state(layer: SKLinear) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def test_svd_cache_hit_equals_uncached_build_across_seeds():
    from panther.nn.linear import _SINGULAR_CACHE

    torch.manual_seed(0)
    lin = nn.Linear(120, 90)  # randomized range finder path: 2 * (2*1*6 + 10) < 90
    _SINGULAR_CACHE.clear()
    first = SKLinear.from_linear(lin, 1, 6, seed=3, init="svd")
    assert (_SINGULAR_CACHE.hits, _SINGULAR_CACHE.misses) == (0, 1)
    cached = SKLinear.from_linear(lin, 1, 6, seed=4, init="svd")
    assert (_SINGULAR_CACHE.hits, _SINGULAR_CACHE.misses) == (1, 1)
    _SINGULAR_CACHE.enabled = False
    try:
        uncached = SKLinear.from_linear(lin, 1, 6, seed=4, init="svd")
        again = SKLinear.from_linear(lin, 1, 6, seed=3, init="svd")
    finally:
        _SINGULAR_CACHE.enabled = True
    for name, value in _svd_state(uncached).items():
        torch.testing.assert_close(_svd_state(cached)[name], value, rtol=0, atol=0)
    for name, value in _svd_state(again).items():
        torch.testing.assert_close(_svd_state(first)[name], value, rtol=0, atol=0)
    # A different rank is a different entry.
    SKLinear.from_linear(lin, 2, 6, seed=4, init="svd")
    assert _SINGULAR_CACHE.misses == 2


@pytest.mark.parametrize("change", ["in_place", "data_bypass", "replace_data"])
def test_svd_cache_invalidated_when_weight_changes(change):
    from panther.nn.linear import _SINGULAR_CACHE

    torch.manual_seed(1)
    lin = nn.Linear(64, 48)
    _SINGULAR_CACHE.clear()
    before = SKLinear.from_linear(lin, 1, 4, seed=0, init="svd")
    if change == "in_place":
        with torch.no_grad():
            lin.weight.mul_(-2.0)  # bumps the version counter
    elif change == "data_bypass":
        lin.weight.data.normal_()  # .data does not bump the version: the fingerprint catches it
    else:
        lin.weight.data = torch.randn(48, 64)
    after = SKLinear.from_linear(lin, 1, 4, seed=0, init="svd")
    assert _SINGULAR_CACHE.hits == 0 and _SINGULAR_CACHE.misses == 2
    _SINGULAR_CACHE.enabled = False
    try:
        fresh = SKLinear.from_linear(lin, 1, 4, seed=0, init="svd")
    finally:
        _SINGULAR_CACHE.enabled = True
    torch.testing.assert_close(after.S1, fresh.S1, rtol=0, atol=0)
    torch.testing.assert_close(after.S2, fresh.S2, rtol=0, atol=0)
    assert not torch.allclose(after.S2, before.S2)


def test_svd_cache_entries_die_with_the_weight_and_are_bounded():
    import gc

    from panther.nn.linear import _SINGULAR_CACHE

    _SINGULAR_CACHE.clear()
    lin = nn.Linear(40, 30)
    for k in range(1, _SINGULAR_CACHE.per_weight + 3):
        SKLinear.from_linear(lin, 1, k, seed=0, init="svd")
    assert len(_SINGULAR_CACHE._entries[lin.weight]) == _SINGULAR_CACHE.per_weight
    assert len(_SINGULAR_CACHE._entries) == 1
    del lin
    gc.collect()
    assert len(_SINGULAR_CACHE._entries) == 0


def test_non_finite_weight_is_rejected_with_a_clear_error():
    lin = nn.Linear(8, 6)
    with torch.no_grad():
        lin.weight[2, 3] = float("nan")
    for init in ("random", "svd"):
        with pytest.raises(ValueError, match="NaN or infinite"):
            SKLinear.from_linear(lin, 1, 2, init=init)
