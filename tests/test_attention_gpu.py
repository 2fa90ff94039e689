"""The GPU path of RandMultiHeadAttention (panther.native.triton), tested without a GPU.

The Triton kernels run in Triton's CPU interpreter in a subprocess (tests/attention_triton_cases.py);
here: the chunked torch form, the dispatch, and (marked ``cuda``) the compiled kernels on a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panther.native import reference
from panther.native.triton import chunked_causal_linear_attention
from panther.nn import RandMultiHeadAttention

# Tiny tensors: one torch thread (tests/conftest.py) avoids OpenMP spin-waits on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(kernel_fn: str = "softmax", causal: bool = False, dtype=torch.float32,
           embed: int = 32, heads: int = 2, m: int = 24, batch_first: bool = True,
           seed: int = 3) -> RandMultiHeadAttention:
    torch.manual_seed(seed)
    layer = RandMultiHeadAttention(embed, heads, m, kernel_fn=kernel_fn, iscausal=causal,
                                   batch_first=batch_first, seed=seed)
    with torch.no_grad():
        layer.in_proj_bias.normal_(0, 0.1)
    return layer.to(dtype)


def _padding(batch: int, n: int) -> torch.Tensor:
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask[0, -3:] = True
    if batch > 1:
        mask[1, 2:5] = True
    return mask


def _both(layer: RandMultiHeadAttention, *args, **kwargs):
    # 16-token programs/chunks: the tiny test sequences then span several of them.
    layer._gpu_block = 16
    layer.gpu_backend = "off"
    ref = layer(*args, **kwargs)[0]
    layer.gpu_backend = "triton"
    out = layer(*args, **kwargs)[0]
    return out, ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.mark.slow
def test_triton_kernels_in_the_interpreter():
    """Run tests/attention_triton_cases.py in a fresh process under ``TRITON_INTERPRET=1``.

    Triton reads the variable when its own functions (``tl.sum``...) are decorated, i.e. at
    ``import triton``; a fresh process guarantees that, whatever this one imported already.
    """
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(root / "tests" / "attention_triton_cases.py")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 40), chunk=st.sampled_from([1, 3, 8, 16, 64]), seed=st.integers(0, 99))
def test_property_chunked_torch_form_equals_reference_scan(n, chunk, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(2, 1, n, 5, generator=gen, dtype=torch.float64)
    k = torch.rand(2, 1, n, 5, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 1, n, 3, generator=gen, dtype=torch.float64)
    out = chunked_causal_linear_attention(q, k, v, 1e-9, chunk=chunk)
    ref = reference.causal_linear_attention(q, k, v, 1e-9)
    torch.testing.assert_close(out, ref)


def test_chunked_torch_form_gradcheck_and_validation():
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.rand(1, 1, 7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    v = torch.randn(1, 1, 7, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: chunked_causal_linear_attention(a, b, c, 1e-6, chunk=3), (q, k, v))
    assert chunked_causal_linear_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], 1e-6).shape == (
        1, 1, 0, 2)
    with pytest.raises(ValueError, match="chunk must be positive"):
        chunked_causal_linear_attention(q, k, v, 1e-6, chunk=0)


@pytest.mark.parametrize("causal", [False, True])
def test_torch_backend_matches_and_never_runs_the_cpu_blocking(monkeypatch, causal):
    layer = _layer("softmax", causal)
    layer.eval()
    calls = []
    for name in ("_chunked_attention", "_chunked_causal_attention"):
        monkeypatch.setattr(layer, name, lambda *a, _n=name, **k: calls.append(_n))
    monkeypatch.setattr(layer, "_inference_chunk_size", 8)
    monkeypatch.setattr(layer, "_causal_chunk_min_len", 8)
    x = torch.randn(2, 30, 32)
    mask = _padding(2, 30)
    layer.gpu_backend = "torch"
    with torch.no_grad():
        out = layer(x, x, x, key_padding_mask=mask)[0]
    assert calls == []
    layer.gpu_backend = "off"
    monkeypatch.setattr(layer, "_inference_chunk_size", None)
    with torch.no_grad():
        ref = layer(x, x, x, key_padding_mask=mask)[0]
    assert _rel(out, ref) < 2e-5


def test_auto_backend_keeps_cpu_path_on_cpu(monkeypatch):
    layer = _layer()
    called = []
    monkeypatch.setattr(layer, "_fused_attention", lambda *a, **k: called.append(1))
    x = torch.randn(1, 5, 32)
    layer(x, x, x)
    assert called == []
    layer.gpu_backend = "bogus"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="gpu_backend must be one of"):
        layer(x, x, x)


def test_float_padding_bias_requiring_grad_takes_the_reference_path():
    layer = _layer()
    layer.gpu_backend = "torch"
    x = torch.randn(1, 6, 32)
    bias = torch.zeros(1, 6, requires_grad=True)
    layer(x, x, x, key_padding_mask=bias)[0].sum().backward()
    assert bias.grad is not None


# ------------------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_vs_reference_without_sync(layer: RandMultiHeadAttention, backend: str, dtype):
    """Outputs of ``layer`` on CUDA with ``backend`` (checked free of host syncs) and "off"."""
    x = torch.randn(2, 1000, 32, device="cuda", dtype=dtype)
    mask = _padding(2, 1000).cuda()
    with torch.no_grad():
        layer.gpu_backend = backend
        layer(x, x, x, key_padding_mask=mask)  # compile outside the sync check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = layer(x, x, x, key_padding_mask=mask)[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        layer.gpu_backend = "off"
        ref = layer(x, x, x, key_padding_mask=mask)[0]
    assert out.dtype == dtype and _rel(out, ref) < max(TOL[dtype], 1e-4)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_triton_matches_reference_without_host_sync(dtype, causal):
    pytest.importorskip("triton")
    _gpu_vs_reference_without_sync(_layer("softmax", causal).to("cuda", dtype).eval(),
                                   "triton", dtype)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_landmark_fused_form_matches_without_host_sync(dtype, causal):
    torch.manual_seed(0)
    layer = RandMultiHeadAttention(32, 2, 16, iscausal=causal, batch_first=True,
                                   approximation="landmark").to("cuda", dtype).eval()
    _gpu_vs_reference_without_sync(layer, "auto", dtype)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_gradients(causal):
    pytest.importorskip("triton")
    layer = _layer("softmax", causal).cuda()
    x = torch.randn(2, 300, 32, device="cuda")
    grads = {}
    for backend in ("off", "triton"):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        layer.gpu_backend = backend
        layer(xi, xi, xi)[0].square().sum().backward()
        grads[backend] = [xi.grad] + [p.grad.clone() for p in layer.parameters()]
    for got, want in zip(grads["triton"], grads["off"]):
        assert _rel(got, want) < 1e-3


# ---------------------------------------------------------------------------------- benchmark


def test_gpu_attention_benchmark_cpu_smoke_run(monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_gpu_attention as bench
    finally:
        sys.path.pop(0)
    written = {}
    monkeypatch.setattr(bench, "write_json",
                        lambda name, payload: written.update({name: payload}) or Path(name))
    assert bench.main(["--device", "cpu", "--quick", "--dtypes", "fp32", "--threads", "1"]) == 0
    rows = written["gpu_attention"]["rows"]
    assert len(rows) == 2 * 2  # causal x modes, one length
    assert {(r["causal"], r["mode"]) for r in rows} == {
        (c, m) for c in (False, True) for m in ("fwd", "fwd+bwd")}
    for r in rows:
        for name in bench.LAYERS:
            assert r[f"{name}_ms"] > 0 and r[f"{name}_peak_mb"] is None
        assert r["speedup_x"] == pytest.approx(r["dense_ms"] / r["random_features_ms"])
    assert "nn.MultiheadAttention vs RandMultiHeadAttention" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert bench.main(["--device", "cuda", "--quick"]) == 1
        assert "no CUDA device is available" in capsys.readouterr().out
        with pytest.raises(RuntimeError, match="CUDA was requested"):
            bench.attention_rows("cuda", [torch.float32], quick=True)
