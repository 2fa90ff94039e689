"""Half precision, compilation, CUDA-graph capture and per-call cost of the sketched layers.

CPU tests check float16/bfloat16 against a float32 run of the same layer (both the native and the
reference path) and compile whole layers with ``fullgraph=True``. Tests marked ``cuda`` cover
CUDA graphs, ``torch.compile(mode="reduce-overhead")``, the absence of host syncs in a forward
and tensor-core dtypes; they skip without a GPU.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import panther.native as native
from panther.native import ops, reference
from panther.nn import SKConv2d, SKLinear

ROOT = Path(__file__).resolve().parents[1]
STATUS = native.load()
needs_native = pytest.mark.skipif(not STATUS.cpu_loaded, reason="native extension not loaded")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
HALF = [torch.float16, torch.bfloat16]
# Relative to the output's largest entry: float16 keeps ~11 bits, bfloat16 ~8; the layers add a
# few roundings (inputs, factors, intermediate t, output) on top of float32 accumulation.
HALF_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}
MODES = ["native", "reference"]


def _assert_near(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype,
                 slack: float = 1.0) -> None:
    scale = want.abs().max().item() or 1.0
    err = (got.float() - want.float()).abs().max().item()
    assert err <= slack * HALF_TOL[dtype] * scale, f"max error {err:.3g} vs scale {scale:.3g}"


def _run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's panther."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


def _mode(mode: str):
    if mode == "native" and not STATUS.cpu_loaded:
        pytest.skip("native extension not loaded")
    return native.use_backend(mode)


# --- half precision on the CPU ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(3, 24, 40, 2, 4), (70, 96, 96, 1, 16)])
def test_sklinear_half_matches_float32(mode, dtype, shape):
    """Forward and gradients in half precision stay within its rounding of the float32 run."""
    rows, d_in, d_out, L, k = shape
    layer = SKLinear(d_in, d_out, L, k, seed=1)
    half = copy.deepcopy(layer).to(dtype)
    x = torch.randn(rows, d_in)
    with _mode(mode):
        want = layer(x)
        xh = x.to(dtype).requires_grad_()
        got = half(xh)
        assert got.dtype == dtype
        want.square().sum().backward()
        got.float().square().sum().backward()
    _assert_near(got.detach(), want.detach(), dtype)
    # Gradients pass through two more half-precision products each: a looser bound.
    for p32, ph in [(layer.S1, half.S1), (layer.S2, half.S2), (layer.bias, half.bias)]:
        assert ph.grad is not None and ph.grad.dtype == dtype
        _assert_near(ph.grad, p32.grad, dtype, slack=3.0)
    x32 = x.clone().requires_grad_()
    with _mode(mode):
        (gx32,) = torch.autograd.grad(layer(x32).square().sum(), x32)
    _assert_near(xh.grad, gx32, dtype, slack=3.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALF)
def test_sketch_ops_half_precision(mode, dtype):
    """fwht and the sparse sketch take half inputs and accumulate in float32."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 64, generator=gen)
    rows = torch.randint(0, 16, (64, 3), generator=gen)
    vals = torch.randn(64, 3, generator=gen)
    with _mode(mode):
        got_h = ops.fwht(x.to(dtype))
        got_s = ops.sparse_sketch_apply(x.to(dtype), rows, vals.to(dtype), 16)
    assert got_h.dtype == dtype and got_s.dtype == dtype
    _assert_near(got_h, reference.fwht(x), dtype)
    _assert_near(got_s, reference.sparse_sketch_apply(x.to(dtype).float(), rows,
                                                      vals.to(dtype).float(), 16), dtype)


@needs_native
def test_attention_ops_reject_half_natively_and_fall_back():
    q = torch.rand(1, 2, 5, 4, dtype=torch.bfloat16)
    v = torch.randn(1, 2, 5, 3, dtype=torch.bfloat16)
    with native.use_backend("native"), pytest.raises(RuntimeError, match="bfloat16"):
        ops.causal_linear_attention(q, q, v)
    out = ops.causal_linear_attention(q, q, v)  # auto: the reference handles it
    assert out.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.panther.causal_linear_attention(q, q, v, 1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("channels_last", [False, True])
def test_skconv2d_half_and_channels_last(mode, dtype, channels_last):
    conv = SKConv2d(6, 12, 3, num_terms=1, low_rank=3, seed=2)
    half = copy.deepcopy(conv).to(dtype)
    x = torch.randn(2, 6, 9, 9)
    xh = x.to(dtype)
    if channels_last:
        half = half.to(memory_format=torch.channels_last)
        xh = xh.contiguous(memory_format=torch.channels_last)
    with _mode(mode):
        want = conv(x)
        got = half(xh)
    assert got.dtype == dtype
    if channels_last:
        # Like nn.Conv2d: a channels_last input gives a channels_last output.
        assert got.is_contiguous(memory_format=torch.channels_last)
    _assert_near(got, want, dtype)


# --- compilation -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_layers_compile_fullgraph_with_backward(mode):
    """Whole layers compile as one graph, forward and backward (C++ autograd included)."""
    with _mode(mode):
        torch._dynamo.reset()
        lin = SKLinear(16, 12, 2, 3, seed=0)
        conv = SKConv2d(3, 8, 3, num_terms=1, low_rank=2, seed=0)
        model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8 * 5 * 5, 16), lin)
        x = torch.randn(2, 3, 5, 5)
        eager = model(x)
        eager.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        out = compiled(x)
        torch.testing.assert_close(out, eager)
        out.sum().backward()
        for p, g in zip(model.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@needs_native
def test_sklinear_double_backward_through_cpp_autograd():
    """create_graph=True records a second-order graph through the C++ autograd formula."""
    layer = SKLinear(6, 5, 1, 2, seed=0).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    with native.use_backend("native"):
        assert torch.autograd.gradgradcheck(lambda a: layer(a), (x,))
        (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        g.sum().backward()
    assert layer.S1.grad is not None and torch.isfinite(layer.S1.grad).all()


@needs_native
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
@pytest.mark.parametrize("rows_scale", [1, 40])  # tiny (fused loop) and GEMM paths
def test_native_op_takes_any_leading_shape(lead, rows_scale):
    layer = SKLinear(10, 7, 2, 2, seed=0).double()
    x = torch.randn(*lead, rows_scale, 10, dtype=torch.float64)
    with native.use_backend("native"):
        got = layer(x)
    with native.use_backend("reference"):
        want = layer(x)
    assert got.shape == (*lead, rows_scale, 7)
    torch.testing.assert_close(got, want)


# --- packaging on the GPU image ----------------------------------------------------------------


def test_layers_import_without_tuner_dependencies():
    """The GPU machine has no optuna/skopt/plotly: panther.nn and panther.native must not need them."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('optuna', 'skopt', 'plotly'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import panther.nn, panther.native, panther.native.ops, panther.sketch\n"
        "print('ok')\n"
    )
    proc = _run_python(code, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# --- the GPU benchmark script --------------------------------------------------------------------


def test_bench_gpu_runs_on_cpu_quick():
    """`bench_gpu.py --device cpu --quick` runs every section's code path and writes its JSON."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick",
         "--profile", "--repeats", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SKLinear vs nn.Linear" in proc.stdout and "SKConv2d vs nn.Conv2d" in proc.stdout
    data = json.loads((ROOT / "benchmarks" / "results" / "gpu_quick.json").read_text())
    assert len(data["linear"]) == 4 and len(data["conv"]) == 2
    assert {r["mode"] for r in data["overhead"]} == {"inference", "autograd"}
    assert data["profile"] and all(r["host_ms_per_call"] > 0 for r in data["profile"])
    assert data["attention"] or "skipped" in data["attention_note"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_gpu_without_cuda_says_so():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--device cpu" in proc.stderr


# --- CUDA: capture, compile, syncs, tensor cores ---------------------------------------------------


def _cuda_layers(dtype=torch.float32):
    torch.manual_seed(0)
    lin = SKLinear(64, 48, 1, 8, seed=0, device="cuda", dtype=dtype)
    conv = SKConv2d(8, 16, 3, num_terms=1, low_rank=4, seed=0, device="cuda", dtype=dtype)
    return lin, conv


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_capture_and_replay(dtype):
    lin, conv = _cuda_layers(dtype)
    xl = torch.randn(32, 64, device="cuda", dtype=dtype)
    xc = torch.randn(4, 8, 12, 12, device="cuda", dtype=dtype)
    rows = torch.randint(0, 16, (64, 2), device="cuda")
    vals = torch.randn(64, 2, device="cuda", dtype=dtype)

    def step():
        return lin(xl), conv(xc), ops.sparse_sketch_apply(xl, rows, vals, 16), ops.fwht(xl)

    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):  # warm-up outside capture, as torch's docs require
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = step()
        xl.copy_(torch.randn_like(xl))
        xc.copy_(torch.randn_like(xc))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(static, step()):
            torch.testing.assert_close(got, want)


@needs_cuda
@pytest.mark.cuda
def test_cuda_forward_has_no_host_sync():
    lin, conv = _cuda_layers()
    xl = torch.randn(16, 64, device="cuda")
    xc = torch.randn(2, 8, 10, 10, device="cuda")
    rows = torch.randint(0, 16, (64, 2), device="cuda")
    vals = torch.randn(64, 2, device="cuda")
    lin(xl), conv(xc), ops.sparse_sketch_apply(xl, rows, vals, 16)  # load and warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lin(xl), conv(xc), ops.sparse_sketch_apply(xl, rows, vals, 16)
        lin(xl.requires_grad_()).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("compile_mode", ["reduce-overhead", "default"])
def test_cuda_compile_fullgraph(compile_mode):
    lin, conv = _cuda_layers()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(16 * 10 * 10, 64), lin).cuda()
    x = torch.randn(4, 8, 10, 10, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(model, mode=compile_mode, fullgraph=True)
    with torch.inference_mode():
        want = model(x)
        for _ in range(3):  # reduce-overhead records its CUDA graph after warm-up calls
            got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.cuda
def test_cuda_out_of_range_rows_never_write_out_of_bounds():
    """Indices are checked on the device: the kernel skips them and a device assert fires."""
    code = (
        "import torch\nfrom panther.native import ops\nimport panther.native as n\n"
        "x = torch.randn(2, 4, device='cuda')\n"
        "r = torch.tensor([[0], [1], [5], [2]], device='cuda')\n"
        "try:\n"
        "    with n.use_backend('native'):\n"
        "        ops.sparse_sketch_apply(x, r, torch.ones(4, 1, device='cuda'), 3)\n"
        "    torch.cuda.synchronize()\n"
        "    print('no error')\n"
        "except Exception as e:\n"
        "    print('raised', type(e).__name__)\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "raised" in proc.stdout


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_half_matches_float32(dtype):
    lin, _ = _cuda_layers()
    half = copy.deepcopy(lin).to(dtype)
    x = torch.randn(64, 64, device="cuda")
    with torch.inference_mode():
        _assert_near(half(x.to(dtype)), lin(x), dtype)


@needs_cuda
@pytest.mark.cuda
def test_cuda_respects_allow_tf32_like_nn_linear():
    lin, _ = _cuda_layers()
    x = torch.randn(256, 64, device="cuda")
    exact = lin.double()(x.double())
    lin = lin.float()
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.inference_mode():
            strict = lin(x)
        torch.testing.assert_close(strict.double(), exact, rtol=1e-5, atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
