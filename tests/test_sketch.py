"""Tests for panther.sketch: dense, Hadamard-based and sparse sketch operators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import panther.native.ops as ops
from panther.sketch import (
    SparseSketch,
    SRHTSketch,
    count_sketch,
    fwht,
    gaussian_sketch,
    make_count_sketch,
    make_sjlt,
    make_srht,
    sign_sketch,
    sjlt,
    srht,
)

DTYPES = [torch.float32, torch.float64]


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dense Sylvester Hadamard matrix (test-only ground truth, never used by the library)."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


# Uniform access to every operator, as "draw with seed, apply x along dim".
def _apply_dense(kind):
    def run(x, m, dim=-1, seed=None, generator=None):
        n = x.shape[dim]
        s = kind(m, n, seed=seed, generator=generator, dtype=x.dtype)
        return (x.movedim(dim, -1) @ s.T).movedim(-1, dim)

    return run


OPERATORS = {
    "gaussian": _apply_dense(gaussian_sketch),
    "sign": _apply_dense(sign_sketch),
    "srht": lambda x, m, dim=-1, **kw: srht(x, m, dim, **kw),
    "count": lambda x, m, dim=-1, **kw: count_sketch(x, m, dim, **kw),
    "sjlt": lambda x, m, dim=-1, **kw: sjlt(x, m, 4, dim, **kw),
}

FACTORIES = {
    "srht": lambda m, n, **kw: make_srht(m, n, **kw),
    "count": lambda m, n, **kw: make_count_sketch(m, n, **kw),
    "sjlt": lambda m, n, **kw: make_sjlt(m, n, min(3, m), **kw),
}


# ----------------------------------------------------------------------------- dense sketches


@pytest.mark.parametrize("fn", [gaussian_sketch, sign_sketch])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_shape_dtype_device(fn, dtype):
    s = fn(7, 13, seed=0, dtype=dtype, device="cpu")
    assert s.shape == (7, 13)
    assert s.dtype == dtype
    assert s.device.type == "cpu"


@pytest.mark.parametrize("fn", [gaussian_sketch, sign_sketch])
def test_dense_default_dtype(fn):
    assert fn(3, 4, seed=0).dtype == torch.get_default_dtype()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert fn(3, 4, seed=0).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_sign_sketch_entries():
    m = 16
    s = sign_sketch(m, 500, seed=3, dtype=torch.float64)
    assert torch.all(s.abs() == 1 / math.sqrt(m))
    frac_pos = (s > 0).double().mean().item()
    assert 0.45 < frac_pos < 0.55


def test_gaussian_sketch_moments():
    m = 64
    s = gaussian_sketch(m, 1000, seed=5, dtype=torch.float64)
    assert abs(s.mean().item()) < 0.01
    assert s.var().item() == pytest.approx(1 / m, rel=0.03)


@pytest.mark.parametrize("fn", [gaussian_sketch, sign_sketch])
def test_dense_same_seed_across_dtypes(fn):
    a = fn(5, 9, seed=11, dtype=torch.float32)
    b = fn(5, 9, seed=11, dtype=torch.float64)
    torch.testing.assert_close(a, b.float())


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", list(OPERATORS))
def test_determinism_seed_and_generator(name):
    op = OPERATORS[name]
    x = torch.randn(4, 40, dtype=torch.float64)
    a = op(x, 16, seed=123)
    b = op(x, 16, seed=123)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    c = op(x, 16, generator=g1)
    d = op(x, 16, generator=g2)
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    # The generator advances, so a second draw from it is a new sketch.
    assert not torch.equal(op(x, 16, generator=g1), c)
    # A fresh generator seeded with s matches seed=s.
    torch.testing.assert_close(op(x, 16, generator=torch.Generator().manual_seed(123)), a)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_different_seeds_differ(name):
    op = OPERATORS[name]
    x = torch.randn(3, 40, dtype=torch.float64)
    assert not torch.allclose(op(x, 16, seed=1), op(x, 16, seed=2))


@pytest.mark.parametrize("name", list(OPERATORS))
def test_global_rng_used_without_seed(name):
    op = OPERATORS[name]
    x = torch.randn(3, 40, dtype=torch.float64)
    torch.manual_seed(99)
    a = op(x, 16)
    torch.manual_seed(99)
    b = op(x, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_seed_and_generator_together_rejected(name):
    x = torch.randn(40)
    with pytest.raises(ValueError, match="not both"):
        OPERATORS[name](x, 8, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("name", list(FACTORIES))
def test_factory_matches_functional(name):
    x = torch.randn(2, 30, dtype=torch.float64)
    sk = FACTORIES[name](8, 30, seed=4, dtype=torch.float64)
    if name == "sjlt":
        expected = sjlt(x, 8, 3, seed=4)
    else:
        expected = OPERATORS[name](x, 8, seed=4)
    torch.testing.assert_close(sk.apply(x), expected)


# ----------------------------------------------------------------------------- sparse sketches


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,s", [(16, 50, 1), (16, 50, 4), (10, 33, 3), (5, 7, 5), (64, 20, 2)])
def test_sparse_apply_matches_dense(m, n, s, dtype):
    sk = make_count_sketch(m, n, seed=2, dtype=dtype) if s == 1 else make_sjlt(
        m, n, s, seed=2, dtype=dtype
    )
    assert isinstance(sk, SparseSketch)
    assert sk.shape == (m, n) and sk.s == s
    x = torch.randn(3, 2, n, dtype=dtype)
    dense = sk.to_dense()
    assert dense.shape == (m, n) and dense.dtype == dtype
    y = sk.apply(x)
    assert y.shape == (3, 2, m) and y.dtype == dtype
    torch.testing.assert_close(y, x @ dense.T)


@pytest.mark.parametrize("m,s", [(16, 4), (10, 3), (7, 7), (9, 2)])
def test_sjlt_structure(m, s):
    n = 200
    sk = make_sjlt(m, n, s, seed=0, dtype=torch.float64)
    dense = sk.to_dense()
    nnz = (dense != 0).sum(0)
    assert torch.all(nnz == s), "each column must have s distinct non-zero rows"
    assert torch.allclose(dense[dense != 0].abs(), torch.full_like(dense[dense != 0], s**-0.5))
    assert torch.all((sk.rows >= 0) & (sk.rows < m))


def test_count_sketch_structure_and_balance():
    m, n = 8, 16000
    sk = make_count_sketch(m, n, seed=1, dtype=torch.float64)
    assert sk.rows.shape == (n, 1)
    assert torch.all(sk.values.abs() == 1)
    counts = torch.bincount(sk.rows[:, 0], minlength=m).double()
    assert torch.all((counts / (n / m) - 1).abs() < 0.1)
    assert abs((sk.values > 0).double().mean().item() - 0.5) < 0.02


def test_sparse_sketch_reuse_is_linear():
    sk = make_sjlt(12, 40, 3, seed=8, dtype=torch.float64)
    a, b = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    torch.testing.assert_close(sk.apply(2 * a - 3 * b), 2 * sk.apply(a) - 3 * sk.apply(b))


# ----------------------------------------------------------------------------- Hadamard / SRHT


@pytest.mark.parametrize("n", [1, 2, 8, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fwht_matches_dense_and_is_involution(n, dtype):
    x = torch.randn(3, n, dtype=dtype)
    y = fwht(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, x @ hadamard(n, dtype) / math.sqrt(n))
    torch.testing.assert_close(fwht(y), x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_fwht_along_other_dims():
    x = torch.randn(4, 8, 3, dtype=torch.float64)
    h = hadamard(8) / math.sqrt(8)
    torch.testing.assert_close(fwht(x, dim=1), torch.einsum("ij,bjc->bic", h, x))
    torch.testing.assert_close(fwht(x, dim=0), torch.einsum("ij,jbc->ibc", hadamard(4) / 2, x))
    torch.testing.assert_close(fwht(fwht(x, dim=-3), dim=0), x)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two.*zero-pad to 8"):
        fwht(torch.randn(2, 6))
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.randn(6, 4), dim=0)


@pytest.mark.parametrize("n,m", [(8, 8), (8, 3), (5, 4), (12, 16), (12, 5), (1, 1), (33, 20)])
def test_srht_matches_dense_hadamard_construction(n, m):
    sk = make_srht(m, n, seed=3, dtype=torch.float64)
    assert isinstance(sk, SRHTSketch)
    p = 1 << (n - 1).bit_length()
    assert sk.padded_n == p and sk.shape == (m, n)
    assert len(set(sk.indices.tolist())) == m, "coordinates are sampled without replacement"
    assert torch.all((sk.indices >= 0) & (sk.indices < p))
    assert set(sk.signs.abs().tolist()) == {1.0}
    # S = sqrt(p/m) * P H_p D, with D padded by zero columns that are then dropped.
    h = hadamard(p) / math.sqrt(p)
    dense = math.sqrt(p / m) * h[sk.indices][:, :n] * sk.signs
    x = torch.randn(4, n, dtype=torch.float64)
    torch.testing.assert_close(sk.apply(x), x @ dense.T)
    torch.testing.assert_close(sk.to_dense(), dense)


def test_srht_full_size_is_orthogonal():
    sk = make_srht(16, 16, seed=0, dtype=torch.float64)
    d = sk.to_dense()
    torch.testing.assert_close(d @ d.T, torch.eye(16, dtype=torch.float64))


@pytest.mark.parametrize("n", [5, 12, 100])
def test_srht_spike_norm_is_exact_after_padding(n):
    # H D spreads a spike evenly over all p coordinates, so any m kept ones preserve its norm.
    x = torch.zeros(n, dtype=torch.float64)
    x[n // 2] = 3.0
    for seed in range(5):
        y = srht(x, 4, seed=seed)
        assert y.shape == (4,)
        assert y.norm().item() == pytest.approx(3.0, rel=1e-12)


# ----------------------------------------------------------------------------- dims and dtypes


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtype_follows_input(name, dtype):
    x = torch.randn(2, 20, dtype=dtype)
    y = OPERATORS[name](x, 8, seed=0)
    assert y.dtype == dtype and y.shape == (2, 8) and y.device.type == "cpu"


@pytest.mark.parametrize("name", list(FACTORIES))
def test_apply_along_dim0_and_dim1(name):
    sk = FACTORIES[name](6, 10, seed=1, dtype=torch.float64)
    dense = sk.to_dense()
    x0 = torch.randn(10, 7, dtype=torch.float64)
    torch.testing.assert_close(sk.apply(x0, dim=0), dense @ x0)
    x1 = torch.randn(7, 10, dtype=torch.float64)
    torch.testing.assert_close(sk.apply(x1, dim=1), x1 @ dense.T)
    torch.testing.assert_close(sk.apply(x1, dim=-1), x1 @ dense.T)


@pytest.mark.parametrize("name", ["srht", "count", "sjlt"])
def test_functional_dim0_equals_transposed_dim1(name):
    op = OPERATORS[name]
    x = torch.randn(24, 5, dtype=torch.float64)
    torch.testing.assert_close(op(x, 8, dim=0, seed=6), op(x.T, 8, dim=1, seed=6).T)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_gradients_are_transpose(name):
    sk = FACTORIES[name](5, 9, seed=2, dtype=torch.float64)
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: sk.apply(t, dim=1), (x,))
    g = torch.randn(3, 5, dtype=torch.float64)
    (sk.apply(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g @ sk.to_dense())


def test_operators_dispatch_through_native_ops(monkeypatch):
    calls = {"fwht": 0, "sparse": 0}
    real_fwht, real_sparse = ops.fwht, ops.sparse_sketch_apply

    def counting_fwht(x):
        calls["fwht"] += 1
        return real_fwht(x)

    def counting_sparse(x, rows, values, m):
        calls["sparse"] += 1
        return real_sparse(x, rows, values, m)

    monkeypatch.setattr(ops, "fwht", counting_fwht)
    monkeypatch.setattr(ops, "sparse_sketch_apply", counting_sparse)
    x = torch.randn(3, 20)
    srht(x, 8, seed=0)
    fwht(torch.randn(4, 8), dim=0)
    count_sketch(x, 8, seed=0)
    sjlt(x, 8, seed=0)
    assert calls == {"fwht": 2, "sparse": 2}


# ----------------------------------------------------------------------------- JL property


@pytest.mark.parametrize("name", list(OPERATORS))
def test_jl_norm_preservation_over_seeds(name):
    op = OPERATORS[name]
    n, m, trials = 512, 256, 100
    x = torch.randn(n, generator=torch.Generator().manual_seed(2024), dtype=torch.float64)
    sq = x.pow(2).sum()
    ratios = torch.stack([op(x, m, seed=seed).pow(2).sum() / sq for seed in range(trials)])
    # Unbiased: the mean of ||Sx||^2/||x||^2 over seeds is close to 1 (std of the mean ~0.9%).
    assert abs(ratios.mean().item() - 1) < 0.03, ratios.mean()
    # Each draw is accurate too: relative std ~ sqrt(2/m) ~ 0.09, so 0.45 is a ~5 sigma band.
    assert (ratios - 1).abs().max().item() < 0.45, (ratios.min(), ratios.max())
    # And not degenerate: the draws actually vary (except where a sketch would be exact).
    assert ratios.std().item() > 1e-3


@pytest.mark.parametrize("name", list(OPERATORS))
def test_jl_on_batch_of_vectors(name):
    # Many different vectors through one draw: every norm is kept within the JL tolerance.
    x = torch.randn(50, 1024, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = OPERATORS[name](x, 512, seed=17)
    ratios = y.pow(2).sum(-1) / x.pow(2).sum(-1)
    assert (ratios - 1).abs().max().item() < 0.3


# ----------------------------------------------------------------------------- property tests


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    data=st.data(),
    name=st.sampled_from(["srht", "count", "sjlt"]),
    m=st.integers(1, 8),
    seed=st.integers(0, 2**31),
)
def test_property_shapes_and_dims(shape, data, name, m, seed):
    ndim = len(shape)
    dim = data.draw(st.integers(-ndim, ndim - 1), label="dim")
    n = shape[dim]
    if name == "srht":
        m = min(m, 1 << (n - 1).bit_length())
    x = torch.randn(*shape, dtype=torch.float64)
    sk = FACTORIES[name](m, n, seed=seed, dtype=torch.float64)
    y = sk.apply(x, dim=dim)
    expected_shape = list(shape)
    expected_shape[dim] = m
    assert list(y.shape) == expected_shape
    expected = (x.movedim(dim, -1) @ sk.to_dense().T).movedim(-1, dim)
    torch.testing.assert_close(y, expected)
    # The functional form draws the same sketch for the same seed.
    if name == "sjlt":
        y2 = sjlt(x, m, sk.s, dim, seed=seed)
    else:
        y2 = OPERATORS[name](x, m, dim, seed=seed)
    torch.testing.assert_close(y2, y)


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    fn=st.sampled_from([gaussian_sketch, sign_sketch]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_property_dense_shapes(m, n, fn, dtype, seed):
    s = fn(m, n, seed=seed, dtype=dtype)
    assert s.shape == (m, n) and s.dtype == dtype
    torch.testing.assert_close(s, fn(m, n, seed=seed, dtype=dtype), rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 7), batch=st.integers(1, 4), dim=st.sampled_from([0, -1]))
def test_property_fwht_involution(n, batch, dim):
    x = torch.randn(1 << n, batch, dtype=torch.float64)
    if dim == -1:
        x = x.T
    torch.testing.assert_close(fwht(fwht(x, dim=dim), dim=dim), x)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("fn", [gaussian_sketch, sign_sketch, make_count_sketch, make_srht])
def test_bad_sizes(fn):
    with pytest.raises(ValueError, match="m must be a positive int"):
        fn(0, 4)
    with pytest.raises(ValueError, match="n must be a positive int"):
        fn(4, -2)
    with pytest.raises(TypeError, match="m must be a positive int"):
        fn(2.5, 4)
    with pytest.raises(TypeError, match="n must be a positive int"):
        fn(2, True)


def test_bad_sjlt_params():
    with pytest.raises(ValueError, match="s <= m"):
        make_sjlt(3, 10, 4)
    with pytest.raises(ValueError, match="s must be a positive int"):
        make_sjlt(3, 10, 0)
    with pytest.raises(ValueError, match="s <= m"):
        sjlt(torch.randn(10), 2, s=3)


def test_srht_m_too_large_names_fix():
    with pytest.raises(ValueError, match="use m <= 8"):
        make_srht(9, 5)
    with pytest.raises(ValueError, match="use m <= 16"):
        srht(torch.randn(2, 12), 17)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_bad_apply_inputs(name):
    sk = FACTORIES[name](4, 10, seed=0)
    with pytest.raises(ValueError, match="expects n=10"):
        sk.apply(torch.randn(3, 11))
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        sk.apply(torch.randn(3, 10), dim=2)
    with pytest.raises(TypeError, match="floating"):
        sk.apply(torch.ones(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="0-d"):
        sk.apply(torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        sk.apply([1.0] * 10)
    with pytest.raises(TypeError, match="dim must be an int"):
        sk.apply(torch.randn(10), dim=0.0)


@pytest.mark.parametrize("name", ["srht", "count", "sjlt"])
def test_functional_bad_dim(name):
    with pytest.raises(ValueError, match="out of range"):
        OPERATORS[name](torch.randn(4, 10), 4, dim=-3)


def test_bad_seed_generator_dtype():
    with pytest.raises(TypeError, match="seed must be an int"):
        gaussian_sketch(2, 3, seed=1.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sign_sketch(2, 3, generator=42)
    with pytest.raises(ValueError, match="64-bit"):
        make_sjlt(4, 3, 2, seed=2**70)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        gaussian_sketch(2, 3, dtype=torch.int32)


def test_bad_sketch_construction():
    rows = torch.zeros(5, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="values shape"):
        SparseSketch(rows, torch.ones(5, 3), m=4, n=5)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 4\)"):
        SparseSketch(rows + 4, torch.ones(5, 2), m=4, n=5)
    with pytest.raises(TypeError, match="int64"):
        SparseSketch(rows.int(), torch.ones(5, 2), m=4, n=5)
    with pytest.raises(ValueError, match="use m <= 4"):
        SRHTSketch(torch.ones(3), torch.arange(5), m=5, n=3)
    with pytest.raises(ValueError, match="indices must lie"):
        SRHTSketch(torch.ones(3), torch.tensor([0, 4]), m=2, n=3)


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("name", list(FACTORIES))
def test_sketch_to_device_keeps_randomness(name):
    sk = FACTORIES[name](4, 10, seed=0, dtype=torch.float64)
    moved = sk.to("cpu")
    assert type(moved) is type(sk)
    x = torch.randn(2, 10, dtype=torch.float64)
    torch.testing.assert_close(moved.apply(x), sk.apply(x), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(OPERATORS))
def test_same_seed_same_result_on_cuda(name):
    # Randomness is drawn on the CPU, so only floating-point rounding may differ.
    x = torch.randn(3, 40, dtype=torch.float64)
    op = OPERATORS[name]
    if name in ("gaussian", "sign"):
        fn = gaussian_sketch if name == "gaussian" else sign_sketch
        s_gpu = fn(16, 40, seed=5, device="cuda", dtype=torch.float64)
        assert s_gpu.device.type == "cuda"
        torch.testing.assert_close(s_gpu.cpu(), fn(16, 40, seed=5, dtype=torch.float64))
    else:
        y_gpu = op(x.cuda(), 16, seed=5)
        assert y_gpu.device.type == "cuda"
        torch.testing.assert_close(y_gpu.cpu(), op(x, 16, seed=5))
