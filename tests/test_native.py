"""Tests of the compiled extension: native ops vs the reference, dispatch, loading and building."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import panther.native as native
from panther.native import _build, ops, reference
from panther.native.__main__ import main as native_main

STATUS = native.load()
needs_native = pytest.mark.skipif(not STATUS.cpu_loaded,
                                  reason=f"native extension not loaded: {STATUS.reason}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
HYP = settings(max_examples=15, deadline=None, derandomize=True)
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def test_extension_loaded_when_required():
    """`make test` sets PANTHER_REQUIRE_NATIVE=1: then a silently missing extension is a failure."""
    if os.environ.get("PANTHER_REQUIRE_NATIVE") != "1":
        pytest.skip("PANTHER_REQUIRE_NATIVE is not set")
    assert STATUS.cpu_loaded, f"native extension did not load: {STATUS.reason}"
    if torch.cuda.is_available():
        assert STATUS.cuda_loaded, f"CUDA kernels did not load: {STATUS.reason}"


def test_status_shape():
    st_ = native.status()
    cpu, cuda, reason = st_
    assert isinstance(cpu, bool) and isinstance(cuda, bool) and isinstance(reason, str)
    assert reason
    assert native.is_available("cpu") == cpu
    with pytest.raises(ValueError, match="device"):
        native.is_available("tpu")


# --- helpers -------------------------------------------------------------------------------------


def _maybe_strided(t: torch.Tensor, strided: bool) -> torch.Tensor:
    """Same values, but (when asked) held in a non-contiguous view of a bigger buffer."""
    if not strided:
        return t
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    big[..., ::2] = t
    return big[..., ::2]


def _run(fn, inputs: list[torch.Tensor], mode: str, grad_seed: int = 0):
    """Run `fn` on fresh leaves under `mode`; return (output, gradients of the float inputs)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with native.use_backend(mode):
        out = fn(*leaves)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(grad_seed))
    diff = [x for x in leaves if x.requires_grad]
    grads = torch.autograd.grad(out, diff, g.to(out.device), allow_unused=True)
    return out.detach().cpu(), [None if t is None else t.cpu() for t in grads]


def _both_paths(fn, inputs: list[torch.Tensor], grad_seed: int = 0):
    """Run `fn` natively and on the reference; return (outputs, input-gradients) for each path."""
    return [_run(fn, inputs, mode, grad_seed) for mode in ("native", "reference")]


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> None:
    # Absolute tolerance scaled by the magnitude: some gradients (e.g. dq with m = 1) are exact
    # cancellations of large terms, where float32 rounding shows up at the scale of those terms.
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale * 10)


def _assert_same(native_res, ref_res, dtype):
    (out_n, g_n), (out_r, g_r) = native_res, ref_res
    _close(out_n, out_r, dtype)
    for a, b in zip(g_n, g_r):
        if a is None or b is None:
            assert a is None and b is None
            continue
        _close(a, b, dtype)


dtypes = st.sampled_from([torch.float32, torch.float64])


# --- native == reference (forward and gradient) --------------------------------------------------


@needs_native
@HYP
@given(rows=st.integers(0, 9), log_n=st.integers(0, 9), dtype=dtypes, strided=st.booleans(),
       batch3=st.booleans())
def test_fwht_matches_reference(rows, log_n, dtype, strided, batch3):
    shape = (2, rows, 2**log_n) if batch3 else (rows, 2**log_n)
    x = _maybe_strided(torch.randn(*shape, dtype=dtype), strided)
    _assert_same(*_both_paths(ops.fwht, [x]), dtype)


@needs_native
@HYP
@given(batch=st.integers(0, 7), n=st.integers(1, 40), m=st.integers(1, 17), s=st.integers(1, 4),
       dtype=dtypes, strided=st.booleans(), values_grad=st.booleans())
def test_sparse_sketch_matches_reference(batch, n, m, s, dtype, strided, values_grad):
    gen = torch.Generator().manual_seed(n * 31 + m)
    rows = torch.randint(0, m, (n, s), generator=gen)
    values = torch.randn(n, s, dtype=dtype, generator=gen)
    x = _maybe_strided(torch.randn(3, batch, n, dtype=dtype, generator=gen), strided)
    if values_grad:
        res = _both_paths(lambda a, v: ops.sparse_sketch_apply(a, rows, v, m), [x, values])
    else:
        res = _both_paths(lambda a: ops.sparse_sketch_apply(a, rows, values, m), [x])
    _assert_same(*res, dtype)


@needs_native
@HYP
@given(batch=st.integers(0, 9), d_in=st.integers(1, 24), d_out=st.integers(1, 24),
       terms=st.integers(1, 3), k=st.integers(1, 5), bias=st.booleans(), dtype=dtypes,
       strided=st.booleans(), lead3=st.booleans())
def test_sketched_linear_matches_reference(batch, d_in, d_out, terms, k, bias, dtype, strided,
                                           lead3):
    gen = torch.Generator().manual_seed(batch * 7 + d_in)
    lk = terms * k
    shape = (2, batch, d_in) if lead3 else (batch, d_in)
    x = _maybe_strided(torch.randn(*shape, dtype=dtype, generator=gen), strided)
    S1, U2 = (torch.randn(d_in, lk, dtype=dtype, generator=gen) for _ in range(2))
    U1, S2 = (torch.randn(lk, d_out, dtype=dtype, generator=gen) for _ in range(2))
    S1 = _maybe_strided(S1, strided)
    inputs = [x, S1, U2, U1, S2]
    if bias:
        inputs.append(torch.randn(d_out, dtype=dtype, generator=gen))
        fn = lambda a, s1, u2, u1, s2, b: ops.sketched_linear(a, s1, u2, u1, s2, b, terms)  # noqa: E731
    else:
        fn = lambda a, s1, u2, u1, s2: ops.sketched_linear(a, s1, u2, u1, s2, None, terms)  # noqa: E731
    _assert_same(*_both_paths(fn, inputs), dtype)


@needs_native
def test_sketched_linear_only_some_gradients():
    """U1/U2 are buffers in SKLinear: the backward must skip them and still be right."""
    x = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    S1, U2 = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    U1, S2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    S1.requires_grad_()
    S2.requires_grad_()
    grads = {}
    for mode in ("native", "reference"):
        with native.use_backend(mode):
            y = ops.sketched_linear(x, S1, U2, U1, S2, None, 2)
        grads[mode] = torch.autograd.grad(y.square().sum(), (x, S1, S2))
    for a, b in zip(grads["native"], grads["reference"]):
        torch.testing.assert_close(a, b)


@needs_native
@pytest.mark.parametrize("with_bias", [True, False])
def test_sketched_linear_large_output_path(with_bias):
    """Outputs over 8 MiB take the concatenated-right-factor (single output pass) path in C++."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1100, 24, dtype=torch.float64, generator=gen)
    S1, U2 = (torch.randn(24, 6, dtype=torch.float64, generator=gen) for _ in range(2))
    U1, S2 = (torch.randn(6, 1024, dtype=torch.float64, generator=gen) for _ in range(2))  # 9 MB y
    b = torch.randn(1024, dtype=torch.float64, generator=gen) if with_bias else None

    def fn(x, S1, U2, U1, S2, *bias):
        return ops.sketched_linear(x, S1, U2, U1, S2, bias[0] if bias else None, 3)

    inputs = [x, S1, U2, U1, S2] + ([b] if with_bias else [])
    _assert_same(*_both_paths(fn, inputs), torch.float64)


@needs_native
def test_fwht_long_rows():
    x = torch.randn(3, 2**15, dtype=torch.float64)
    _assert_same(*_both_paths(ops.fwht, [x]), torch.float64)


@needs_native
@HYP
@given(B=st.integers(1, 2), H=st.integers(1, 3), n=st.integers(0, 40), m=st.integers(1, 20),
       d=st.integers(1, 40), dtype=dtypes, strided=st.booleans())
def test_causal_attention_matches_reference(B, H, n, m, d, dtype, strided):
    gen = torch.Generator().manual_seed(n * 13 + m * 7 + d)
    q = torch.rand(B, H, n, m, dtype=dtype, generator=gen) + 0.05
    k = torch.rand(B, H, n, m, dtype=dtype, generator=gen) + 0.05
    v = _maybe_strided(torch.randn(B, H, n, d, dtype=dtype, generator=gen), strided)
    if strided:
        q = q.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous head stride
    _assert_same(*_both_paths(ops.causal_linear_attention, [q, k, v]), dtype)


@needs_native
def test_causal_attention_cache_blocked_shapes():
    """m*d beyond the L1 block size: the column-blocked scans must still agree."""
    gen = torch.Generator().manual_seed(3)
    q = torch.rand(1, 1, 30, 130, dtype=torch.float64, generator=gen)
    k = torch.rand(1, 1, 30, 130, dtype=torch.float64, generator=gen)
    v = torch.randn(1, 1, 30, 70, dtype=torch.float64, generator=gen)
    _assert_same(*_both_paths(ops.causal_linear_attention, [q, k, v]), torch.float64)


def _stateful_inputs(B, H, n, m, d, dtype, seed, strided=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(B, H, n, m, dtype=dtype, generator=gen) + 0.05
    k = torch.rand(B, H, n, m, dtype=dtype, generator=gen) + 0.05
    v = _maybe_strided(torch.randn(B, H, n, d, dtype=dtype, generator=gen), strided)
    kv0 = _maybe_strided(torch.randn(B, H, m, d, dtype=dtype, generator=gen), strided)
    z0 = torch.rand(B, H, m, dtype=dtype, generator=gen) * 3 + 0.1
    if strided:
        q = q.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous head stride
        z0 = z0.transpose(0, 1).contiguous().transpose(0, 1)
    return q, k, v, kv0, z0


def _stateful_both(inputs, eps=1e-6):
    with native.use_backend("native"):
        got = ops.causal_linear_attention_stateful(*inputs, eps)
    with native.use_backend("reference"):
        want = ops.causal_linear_attention_stateful(*inputs, eps)
    return got, want


@needs_native
@HYP
@given(B=st.integers(1, 2), H=st.integers(1, 3), n=st.integers(0, 40), m=st.integers(1, 20),
       d=st.integers(1, 40), dtype=dtypes, strided=st.booleans())
def test_causal_stateful_matches_reference(B, H, n, m, d, dtype, strided):
    inputs = _stateful_inputs(B, H, n, m, d, dtype, n * 13 + m * 7 + d, strided)
    if strided and H > 1 and n > 1 and d > 1:
        assert not inputs[0].is_contiguous() and not inputs[3].is_contiguous()
    got, want = _stateful_both(inputs)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == dtype
        _close(a, b, dtype)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_causal_stateful_definition_and_blocked_shapes(dtype):
    """Direct O(n^2) formula, with m*d beyond the L1 block so the state is split in columns."""
    q, k, v, kv0, z0 = _stateful_inputs(1, 2, 23, 130, 70, dtype, 5)
    eps = 1e-3
    with native.use_backend("native"):
        out, kv1, z1 = ops.causal_linear_attention_stateful(q, k, v, kv0, z0, eps)
    kv_t = kv0.unsqueeze(2) + torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)
    z_t = z0.unsqueeze(2) + k.cumsum(2)
    num = torch.einsum("bhtm,bhtmd->bhtd", q, kv_t)
    den = (q * z_t).sum(-1, keepdim=True) + eps
    _close(out, num / den, dtype)
    _close(kv1, kv_t[:, :, -1], dtype)
    _close(z1, z_t[:, :, -1], dtype)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_causal_stateful_zero_state_and_split(dtype):
    """Zero state is the plain op; two blocks carrying the state equal one pass."""
    q, k, v, _, _ = _stateful_inputs(2, 3, 37, 9, 11, dtype, 8)
    kv0 = torch.zeros(2, 3, 9, 11, dtype=dtype)
    z0 = torch.zeros(2, 3, 9, dtype=dtype)
    with native.use_backend("native"):
        whole = ops.causal_linear_attention(q, k, v)
        out, kv1, z1 = ops.causal_linear_attention_stateful(q, k, v, kv0, z0)
        a, kv_a, z_a = ops.causal_linear_attention_stateful(q[:, :, :15], k[:, :, :15],
                                                            v[:, :, :15], kv0, z0)
        b, kv_b, z_b = ops.causal_linear_attention_stateful(q[:, :, 15:], k[:, :, 15:],
                                                            v[:, :, 15:], kv_a, z_a)
    _close(out, whole, dtype)
    _close(torch.cat([a, b], dim=2), whole, dtype)
    _close(kv_b, kv1, dtype)
    _close(z_b, z1, dtype)
    _close(z1, k.sum(2), dtype)


@needs_native
def test_causal_stateful_grad_and_bad_inputs():
    """Inputs needing grad take the differentiable reference; bad state shapes raise."""
    q, k, v, kv0, z0 = _stateful_inputs(1, 2, 6, 3, 4, torch.float64, 9)
    q.requires_grad_()
    with native.use_backend("native"):
        out, kv1, z1 = ops.causal_linear_attention_stateful(q, k, v, kv0, z0)
        assert out.requires_grad
        out.sum().backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
        with torch.no_grad():
            out2, _, _ = ops.causal_linear_attention_stateful(q, k, v, kv0, z0)
    _close(out2, out.detach(), torch.float64)
    with pytest.raises(ValueError, match="kv0"):
        ops.causal_linear_attention_stateful(q, k, v, kv0[..., :2], z0)
    with pytest.raises(ValueError, match="z0"):
        ops.causal_linear_attention_stateful(q, k, v, kv0, z0[..., :2])
    with pytest.raises(ValueError, match="q_feat"):
        ops.causal_linear_attention_stateful(q[0], k, v, kv0, z0)
    with pytest.raises((ValueError, TypeError), match="kv0"):
        torch.ops.panther.causal_linear_attention_stateful(q.detach(), k, v, kv0.float(), z0,
                                                           1e-6)


@needs_native
def test_gradcheck_float64():
    """Finite-difference check of every hand-written backward (the scans especially)."""
    f64 = dict(dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    q = (torch.rand(1, 2, 9, 4, generator=gen, **f64) + 0.1).requires_grad_()
    k = (torch.rand(1, 2, 9, 4, generator=gen, **f64) + 0.1).requires_grad_()
    v = torch.randn(1, 2, 9, 3, generator=gen, **f64).requires_grad_()
    x = torch.randn(3, 8, generator=gen, **f64).requires_grad_()
    rows = torch.randint(0, 5, (8, 2), generator=gen)
    vals = torch.randn(8, 2, generator=gen, **f64).requires_grad_()
    S1, U2 = (torch.randn(8, 4, generator=gen, **f64).requires_grad_() for _ in range(2))
    U1, S2 = (torch.randn(4, 3, generator=gen, **f64).requires_grad_() for _ in range(2))
    b = torch.randn(3, generator=gen, **f64).requires_grad_()
    with native.use_backend("native"):
        assert torch.autograd.gradcheck(ops.causal_linear_attention, (q, k, v))
        assert torch.autograd.gradcheck(ops.fwht, (x,))
        assert torch.autograd.gradcheck(lambda a, w: ops.sparse_sketch_apply(a, rows, w, 5),
                                        (x, vals))
        assert torch.autograd.gradcheck(
            lambda *a: ops.sketched_linear(*a, 2), (x, S1, U2, U1, S2, b))
        # fwht's backward is fwht itself, so it is twice differentiable; the other ops
        # differentiate their gradients through the reference under create_graph=True.
        assert torch.autograd.gradgradcheck(ops.fwht, (x,))
        assert torch.autograd.gradgradcheck(ops.causal_linear_attention, (q, k, v))
        assert torch.autograd.gradgradcheck(lambda a, w: ops.sparse_sketch_apply(a, rows, w, 5),
                                            (x, vals))
        assert torch.autograd.gradgradcheck(
            lambda *a: ops.sketched_linear(*a, 2), (x, S1, U2, U1, S2, b))


@needs_native
def test_opcheck_registrations():
    """Schemas, fake kernels and autograd registrations are consistent (torch.library.opcheck)."""
    P = torch.ops.panther
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8, generator=gen, requires_grad=True)
    rows = torch.randint(0, 3, (8, 2), generator=gen)
    vals = torch.randn(8, 2, generator=gen)
    S1, U2 = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    U1, S2 = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    q, k = torch.rand(1, 2, 6, 3, generator=gen), torch.rand(1, 2, 6, 3, generator=gen)
    v = torch.randn(1, 2, 6, 4, generator=gen)
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(P.fwht, (x,), test_utils=tests)
    torch.library.opcheck(P.sparse_sketch_apply, (x, rows, vals, 3), test_utils=tests)
    torch.library.opcheck(P.sketched_linear, (x, S1, U2, U1, S2, None, 1), test_utils=tests)
    torch.library.opcheck(P.causal_linear_attention, (q.requires_grad_(), k, v, 1e-6),
                          test_utils=tests)
    kv0, z0 = torch.randn(1, 2, 3, 4, generator=gen), torch.rand(1, 2, 3, generator=gen)
    torch.library.opcheck(P.causal_linear_attention_stateful, (q.detach(), k, v, kv0, z0, 1e-6),
                          test_utils=("test_schema", "test_faketensor"))


@needs_native
def test_torch_compile_uses_ops():
    """A function built from the ops compiles (graph breaks allowed) and matches eager."""
    S1, U2 = torch.randn(16, 4), torch.randn(16, 4)
    U1, S2 = torch.randn(4, 8), torch.randn(4, 8)

    def f(x):
        return ops.fwht(ops.sketched_linear(x, S1, U2, U1, S2, None, 2)).sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=False)
    x = torch.randn(5, 16, requires_grad=True)
    out = compiled(x)
    torch.testing.assert_close(out, f(x))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_layers_compile_without_graph_breaks():
    """Dispatch reads the load state lock-free, so whole layers compile as one graph."""
    from panther.nn import RandMultiHeadAttention, SKLinear

    torch._dynamo.reset()
    layer = SKLinear(16, 12, 2, 3, seed=0)
    x = torch.randn(5, 16)
    layer(x)  # an eager call loads the extension first, as in real use
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))
    attn = RandMultiHeadAttention(16, 2, 8, iscausal=True, batch_first=True, seed=0)
    xa = torch.randn(2, 10, 16)
    compiled_attn = torch.compile(attn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled_attn(xa, xa, xa)[0], attn(xa, xa, xa)[0])


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "reference"])
def test_bad_inputs_raise_value_error(mode):
    if mode == "native" and not STATUS.cpu_loaded:
        pytest.skip("native extension not loaded")
    with native.use_backend(mode):
        with pytest.raises(ValueError, match="power-of-two"):
            ops.fwht(torch.randn(3, 12))
        with pytest.raises(ValueError, match="features"):
            ops.sparse_sketch_apply(torch.randn(2, 5), torch.zeros(4, 1, dtype=torch.long),
                                    torch.ones(4, 1), 3)
        with pytest.raises(ValueError, match="shape"):
            ops.sketched_linear(torch.randn(2, 5), torch.randn(4, 2), torch.randn(4, 2),
                                torch.randn(2, 3), torch.randn(2, 3), None, 1)
        with pytest.raises(ValueError, match="num_terms"):
            ops.sketched_linear(torch.randn(2, 4), torch.randn(4, 2), torch.randn(4, 2),
                                torch.randn(2, 3), torch.randn(2, 3), None, 0)
        with pytest.raises(ValueError, match=r"\(B, H, n, m\)"):
            ops.causal_linear_attention(torch.rand(2, 3, 4), torch.rand(2, 3, 4),
                                        torch.rand(2, 3, 4))


@needs_native
def test_native_rejects_out_of_range_rows():
    with native.use_backend("native"), pytest.raises(ValueError, match="indices"):
        ops.sparse_sketch_apply(torch.randn(2, 4), torch.tensor([[0], [1], [5], [2]]),
                                torch.ones(4, 1), 3)


# --- dispatch and switching ------------------------------------------------------------------------


class _Spy:
    """Stands in for torch.ops.panther and records which ops were called."""

    def __init__(self):
        self.calls: list[str] = []

    def __getattr__(self, name):
        real = getattr(torch.ops.panther, name)

        def call(*args):
            self.calls.append(name)
            return real(*args)

        return call


@needs_native
def test_env_var_switches_path(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(ops, "_ops", lambda: spy)
    x = torch.randn(3, 8)
    monkeypatch.setenv("PANTHER_NATIVE", "0")
    ops.fwht(x)
    assert spy.calls == []
    monkeypatch.setenv("PANTHER_NATIVE", "1")
    ops.fwht(x)
    assert spy.calls == ["fwht"]
    monkeypatch.delenv("PANTHER_NATIVE")
    ops.fwht(x)
    assert spy.calls == ["fwht", "fwht"]
    with native.use_backend("reference"):
        ops.fwht(x)
    assert spy.calls == ["fwht", "fwht"]
    assert native.backend() == "auto"


def test_bad_env_value(monkeypatch):
    monkeypatch.setenv("PANTHER_NATIVE", "maybe")
    with pytest.raises(ValueError, match="PANTHER_NATIVE"):
        ops.fwht(torch.randn(2, 4))


@needs_native
def test_unsupported_inputs_fall_back_or_raise(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(ops, "_ops", lambda: spy)
    # The causal scan takes float32/float64 only: in auto mode bf16 takes the reference.
    q = torch.rand(1, 2, 5, 4, dtype=torch.bfloat16)
    v = torch.randn(1, 2, 5, 3, dtype=torch.bfloat16)
    torch.testing.assert_close(ops.causal_linear_attention(q, q, v),
                               reference.causal_linear_attention(q, q, v))
    assert spy.calls == []
    with native.use_backend("native"), pytest.raises(RuntimeError, match="bfloat16"):
        ops.causal_linear_attention(q, q, v)
    # fwht takes half precision natively, accumulating in float32.
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(ops.fwht(x), reference.fwht(x.float()).to(torch.bfloat16))
    assert spy.calls == ["fwht"]
    xi = torch.randn(2, 4, dtype=torch.float64)
    w = torch.randn(4, 2, dtype=torch.float32)  # mixed dtypes: reference handles promotion rules
    with pytest.raises(RuntimeError):
        with native.use_backend("native"):
            ops.sketched_linear(xi, w, w, w.T.contiguous(), w.T.contiguous(), None, 1)


def test_failed_extension_warns_once_and_uses_reference(monkeypatch):
    monkeypatch.setattr(_build, "_STATE", _build._State(attempted=True,
                                                        reason="simulated build failure"))
    x = torch.randn(3, 8)
    with pytest.warns(RuntimeWarning, match="simulated build failure"):
        y = ops.fwht(x)
    torch.testing.assert_close(y, reference.fwht(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.fwht(x)  # no second warning
    assert native.status() == (False, False, "simulated build failure")
    with native.use_backend("native"), pytest.raises(RuntimeError, match="simulated"):
        ops.fwht(x)


def test_broken_source_reports_reason(monkeypatch, tmp_path):
    """A compile error leaves panther on the reference path with the compiler's reason."""
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "broken.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(_build, "CSRC", src)
    monkeypatch.setattr(_build, "_STATE", _build._State())
    monkeypatch.setenv("PANTHER_EXTENSION_DIR", str(tmp_path / "cache"))
    st_ = _build.load()
    assert not st_.cpu_loaded and not st_.cuda_loaded
    assert "failed to build" in st_.reason


def test_clean_removes_only_stale_builds(monkeypatch, tmp_path):
    monkeypatch.setenv("PANTHER_EXTENSION_DIR", str(tmp_path))
    current = _build.current_build_dirs()[0]
    stale = tmp_path / "cpu-0123456789abcdef"
    other = tmp_path / "notes"
    for folder in (current, stale, other):
        folder.mkdir()
    assert native_main(["clean"]) == 0
    assert current.exists() and other.exists() and not stale.exists()


def test_command_line_status(capsys):
    assert native_main(["status"]) == 0
    assert "CPU ops loaded" in capsys.readouterr().out


@needs_native
def test_command_line_build_self_check(capsys):
    assert native_main(["build"]) == 0
    assert "self-check against the reference ops: ok" in capsys.readouterr().out


# --- CUDA -----------------------------------------------------------------------------------------


@needs_cuda
@needs_native
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_ops_match_reference(dtype):
    assert STATUS.cuda_loaded, STATUS.reason
    gen = torch.Generator().manual_seed(0)
    cpu = dict(dtype=dtype)
    x = torch.randn(33, 256, generator=gen, **cpu)
    rows = torch.randint(0, 17, (256, 3), generator=gen)
    vals = torch.randn(256, 3, generator=gen, **cpu)
    q = torch.rand(2, 3, 70, 24, generator=gen, **cpu)
    k = torch.rand(2, 3, 70, 24, generator=gen, **cpu)
    v = torch.randn(2, 3, 70, 40, generator=gen, **cpu)
    S1, U2 = (torch.randn(256, 6, generator=gen, **cpu) for _ in range(2))
    U1, S2 = (torch.randn(6, 9, generator=gen, **cpu) for _ in range(2))
    long_rows = torch.randn(3, 2**14, generator=gen, **cpu)  # beyond shared memory: staged FWHT

    def sparse(device):
        r = rows.to(device)
        return lambda a, w: ops.sparse_sketch_apply(a, r, w, 17)

    cases = [
        (lambda device: ops.fwht, [x]),
        (lambda device: ops.fwht, [long_rows]),
        (sparse, [x, vals]),
        (lambda device: ops.causal_linear_attention, [q, k, v]),
        (lambda device: lambda *a: ops.sketched_linear(*a, None, 3), [x, S1, U2, U1, S2]),
    ]
    for make, inputs in cases:
        want = _run(make("cpu"), inputs, "reference")
        got = _run(make("cuda"), [t.cuda() for t in inputs], "native")
        _assert_same(got, want, dtype)


# --- FLOP counting -------------------------------------------------------------------------------


@needs_native
def test_flop_counter_counts_native_ops_like_their_reference():
    """FlopCounterMode sees the custom ops (registered formulas) and agrees with the GEMMs."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    rows, in_f, out_f, L, k = 5, 12, 10, 2, 3
    n = L * k
    x = torch.randn(rows, in_f, generator=g, requires_grad=True)
    S1, U2 = (torch.randn(in_f, n, generator=g, requires_grad=True) for _ in range(2))
    U1, S2 = (torch.randn(n, out_f, generator=g, requires_grad=True) for _ in range(2))
    bias = torch.randn(out_f, generator=g, requires_grad=True)

    def count(mode: str) -> tuple[int, dict]:
        with native.use_backend(mode), FlopCounterMode(display=False) as counter:
            ops.sketched_linear(x, S1, U2, U1, S2, bias, L).sum().backward()
        per_op = {str(op): c for op, c in counter.get_flop_counts()["Global"].items()}
        return counter.get_total_flops(), per_op

    native_total, native_ops = count("native")
    reference_total, _ = count("reference")
    forward = 2 * rows * in_f * 2 * n + 2 * rows * 2 * n * out_f
    assert native_ops["panther.sketched_linear"] == forward
    assert "panther.sketched_linear_backward" in native_ops
    # The reference path is the same two GEMMs forward and the same products backward.
    assert native_total == reference_total

    h = torch.randn(3, 64, generator=g)
    with FlopCounterMode(display=False) as counter:
        ops.fwht(h)
    assert counter.get_total_flops() == 3 * 64 * 6

    q = torch.rand(1, 2, 7, 4, generator=g)
    v = torch.randn(1, 2, 7, 5, generator=g)
    with FlopCounterMode(display=False) as counter:
        ops.causal_linear_attention(q, q, v)
    assert counter.get_total_flops() == 2 * 7 * (4 * 4 * 5 + 3 * 4)
