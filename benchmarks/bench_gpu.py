"""Sketched layers against their dense counterparts on a GPU (issue 11), timed with CUDA events.

Sections (each a table, all written to ``benchmarks/results/gpu.json``):

* ``linear``: ``SKLinear.from_linear`` vs ``nn.Linear`` at (in, out, rows, L, k) =
  (4096,4096,4096,1,64), (8192,8192,4096,1,64), (8192,8192,16384,1,128),
  (4096,16384,8192,2,128), (4096,4096,256,1,64) and rows 1 and 32 of the last one; float32 and
  bfloat16; forward (inference mode) and forward+backward. ``speedup`` is dense time / sketched
  time, ``eff`` the speed-up over the FLOP ratio ``in*out / (2*L*k*(in+out))``. Targets: eff >=
  0.8 (fp32) and 0.7 (bf16) at the four large shapes; faster than dense at rows 256.
* ``conv``: ``SKConv2d`` vs ``nn.Conv2d`` (cuDNN), 64->128 channels, 3x3, batch 64, 56x56, L=1,
  k=8; float32 (NCHW) and bfloat16 channels_last. Target: eff >= 0.6 in bf16 channels_last.
* ``overhead``: a 64x64 layer on 4 rows (L=1, k=8), forward in inference mode and with autograd
  on: sketched time / dense time (target <= 1.3). Host-bound by design: it measures per-call cost.
* ``attention``: rows from ``benchmarks/bench_gpu_attention.py`` (``attention_rows``) when that
  module exists; the section is skipped with a note otherwise.

Timing: a median over ``--repeats`` calls after warm-up, the dense and sketched layers measured
round-robin. On CUDA each call is bracketed by CUDA events; on CPU (``--device cpu``) by
``time.perf_counter``. ``--quick`` shrinks every shape (and the repeats) so the script itself can
be tested on a CPU in seconds: ``python benchmarks/bench_gpu.py --device cpu --quick``.
``--profile`` adds torch.profiler's top kernels of each layer at (4096,4096,256,1,64) and the host
vs device time per call. Without CUDA, ``--device cuda`` (the default) exits with status 2 and says
so.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import print_table, setup, write_json  # noqa: E402
from torch import nn  # noqa: E402

LINEAR_SHAPES = [  # (in, out, rows, L, k)
    (4096, 4096, 4096, 1, 64),
    (8192, 8192, 4096, 1, 64),
    (8192, 8192, 16384, 1, 128),
    (4096, 16384, 8192, 2, 128),
    (4096, 4096, 256, 1, 64),
    (4096, 4096, 32, 1, 64),
    (4096, 4096, 1, 1, 64),
]
QUICK_LINEAR_SHAPES = [(256, 256, 64, 1, 16), (256, 256, 1, 1, 16)]
LARGE_ROWS = 4096
EFF_TARGET = {"float32": 0.8, "bfloat16": 0.7}
CONV = dict(cin=64, cout=128, k=3, batch=64, hw=56, L=1, rank=8)
QUICK_CONV = dict(cin=8, cout=16, k=3, batch=2, hw=8, L=1, rank=2)
CONV_TARGET = 0.6
OVERHEAD = dict(features=64, rows=4, L=1, k=8)
OVERHEAD_TARGET = 1.3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Timer:
    """Median milliseconds per call of several functions, measured round-robin."""

    def __init__(self, device: torch.device, warmup: int, repeats: int) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def median(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        for fn in fns.values():
            for _ in range(self.warmup):
                fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(self.repeats):
            for name, fn in fns.items():
                times[name].append(self._once(fn))
        return {name: statistics.median(ts) for name, ts in times.items()}


def _forward(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return layer(x)
    return run


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        layer(x).sum().backward()
    return run


def _linear_pair(shape: tuple[int, int, int, int, int], device: torch.device,
                 dtype: torch.dtype) -> tuple[nn.Linear, nn.Module, torch.Tensor]:
    """A seeded nn.Linear, its SKLinear.from_linear and an input of ``rows`` rows."""
    from panther.nn import SKLinear

    d_in, d_out, rows, L, k = shape
    torch.manual_seed(0)
    dense = nn.Linear(d_in, d_out, device=device, dtype=dtype)
    sk = SKLinear.from_linear(dense, L, k, seed=0)
    return dense, sk, torch.randn(rows, d_in, device=device, dtype=dtype)


def linear_flop_ratio(d_in: int, d_out: int, L: int, k: int) -> float:
    """Dense multiply-adds over sketched ones per row."""
    return d_in * d_out / (2 * L * k * (d_in + d_out))


def bench_linear(device: torch.device, dtypes: list[str], timer: Timer,
                 shapes: list[tuple[int, int, int, int, int]]) -> list[dict]:
    """SKLinear vs nn.Linear at each shape and dtype, forward and forward+backward."""
    rows_out = []
    for shape in shapes:
        d_in, d_out, rows, L, k = shape
        for name in dtypes:
            dense, sk, x = _linear_pair(shape, device, DTYPES[name])
            fwd = timer.median({"dense": _forward(dense, x), "sk": _forward(sk, x)})
            both = timer.median({"dense": _forward_backward(dense, x),
                                 "sk": _forward_backward(sk, x)})
            ratio = linear_flop_ratio(d_in, d_out, L, k)
            row = {"shape": f"({d_in},{d_out},{rows},{L},{k})", "dtype": name,
                   "flop_ratio": ratio,
                   "dense_fwd_ms": fwd["dense"], "sk_fwd_ms": fwd["sk"],
                   "fwd_speedup": fwd["dense"] / fwd["sk"],
                   "dense_fb_ms": both["dense"], "sk_fb_ms": both["sk"],
                   "fb_speedup": both["dense"] / both["sk"]}
            row["fwd_eff"] = row["fwd_speedup"] / ratio
            row["fb_eff"] = row["fb_speedup"] / ratio
            if rows >= LARGE_ROWS:
                row["target"] = f"eff>={EFF_TARGET[name]}"
                row["ok"] = row["fwd_eff"] >= EFF_TARGET[name]
            elif rows == 256:
                row["target"] = "speedup>1"
                row["ok"] = row["fwd_speedup"] > 1 and row["fb_speedup"] > 1
            rows_out.append(row)
            del dense, sk, x
    return rows_out


def conv_flop_ratio(cin: int, cout: int, k: int, m: int) -> float:
    """Dense conv multiply-adds over the sketched conv plus its 1x1 back-projection."""
    return cin * cout * k * k / (m * cin * k * k + cout * m)


def bench_conv(device: torch.device, dtypes: list[str], timer: Timer, cfg: dict) -> list[dict]:
    """SKConv2d vs nn.Conv2d; bfloat16 in channels_last, float32 in NCHW."""
    from panther.nn import SKConv2d

    out = []
    for name in dtypes:
        dtype = DTYPES[name]
        fmt = torch.channels_last if dtype != torch.float32 else torch.contiguous_format
        torch.manual_seed(0)
        dense = nn.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], padding=cfg["k"] // 2,
                          device=device, dtype=dtype).to(memory_format=fmt)
        sk = SKConv2d.from_conv2d(dense, cfg["L"], cfg["rank"], seed=0).to(memory_format=fmt)
        x = torch.randn(cfg["batch"], cfg["cin"], cfg["hw"], cfg["hw"], device=device,
                        dtype=dtype).contiguous(memory_format=fmt)
        fwd = timer.median({"dense": _forward(dense, x), "sk": _forward(sk, x)})
        both = timer.median({"dense": _forward_backward(dense, x), "sk": _forward_backward(sk, x)})
        ratio = conv_flop_ratio(cfg["cin"], cfg["cout"], cfg["k"], 2 * cfg["L"] * cfg["rank"])
        row = {"shape": f"{cfg['cin']}->{cfg['cout']} k{cfg['k']} b{cfg['batch']} "
                        f"{cfg['hw']}x{cfg['hw']}", "dtype": name,
               "format": "channels_last" if fmt == torch.channels_last else "NCHW",
               "flop_ratio": ratio, "dense_fwd_ms": fwd["dense"], "sk_fwd_ms": fwd["sk"],
               "fwd_speedup": fwd["dense"] / fwd["sk"], "dense_fb_ms": both["dense"],
               "sk_fb_ms": both["sk"], "fb_speedup": both["dense"] / both["sk"]}
        row["fwd_eff"] = row["fwd_speedup"] / ratio
        if name == "bfloat16":
            row["target"] = f"eff>={CONV_TARGET}"
            row["ok"] = row["fwd_eff"] >= CONV_TARGET
        out.append(row)
    return out


def bench_overhead(device: torch.device, timer: Timer) -> list[dict]:
    """Per-call cost at a tiny shape, where the host work dominates."""
    from panther.nn import SKLinear

    f, rows = OVERHEAD["features"], OVERHEAD["rows"]
    torch.manual_seed(0)
    dense = nn.Linear(f, f, device=device)
    sk = SKLinear.from_linear(dense, OVERHEAD["L"], OVERHEAD["k"], seed=0)
    x = torch.randn(rows, f, device=device)
    xg = x.clone().requires_grad_()
    out = []
    # Many calls per timed block: one call is a few microseconds, below the timers' resolution.
    calls = 200

    def block(layer: nn.Module, inp: torch.Tensor, inference: bool) -> Callable[[], None]:
        def run() -> None:
            if inference:
                with torch.inference_mode():
                    for _ in range(calls):
                        layer(inp)
            else:
                for _ in range(calls):
                    layer(inp)
        return run

    for mode, inp, inference in (("inference", x, True), ("autograd", xg, False)):
        t = timer.median({"dense": block(dense, inp, inference), "sk": block(sk, inp, inference)})
        ratio = t["sk"] / t["dense"]
        out.append({"shape": f"({f},{f}) rows {rows}", "mode": mode,
                    "dense_us": t["dense"] * 1e3 / calls, "sk_us": t["sk"] * 1e3 / calls,
                    "ratio": ratio, "target": f"<={OVERHEAD_TARGET}",
                    "ok": ratio <= OVERHEAD_TARGET})
    return out


def attention_section(device: str, dtypes: list[str], quick: bool) -> tuple[list[dict], str]:
    """Rows of the attention helper's benchmark, or a note saying why there are none."""
    try:
        module = importlib.import_module("bench_gpu_attention")
    except ModuleNotFoundError as exc:
        if exc.name != "bench_gpu_attention":
            raise
        return [], "attention section skipped: benchmarks/bench_gpu_attention.py is not present"
    rows = module.attention_rows(device, [DTYPES[d] for d in dtypes], quick)
    return list(rows), ""


def profile_layers(device: torch.device, dtypes: list[str], quick: bool,
                   shape: tuple[int, int, int, int, int]) -> list[dict]:
    """Top device kernels and host vs device time per call of each layer's forward."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    calls = 3 if quick else 20
    out = []
    for name in dtypes:
        dense, sk, x = _linear_pair(shape, device, DTYPES[name])
        for label, layer in (("nn.Linear", dense), ("SKLinear", sk)):
            for passes, fn in (("fwd", _forward(layer, x)), ("fwd+bwd", _forward_backward(layer, x))):
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                with profile(activities=activities) as prof:
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    host_ms = (time.perf_counter() - t0) * 1e3 / calls
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                events = prof.key_averages()
                kernels = [e for e in events if getattr(e, "self_device_time_total", 0) > 0]
                device_us = sum(e.self_device_time_total for e in kernels) / calls
                top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:4]
                if not top:  # CPU: the top ATen ops by self time stand in for kernels
                    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:4]
                out.append({"layer": label, "dtype": name, "pass": passes,
                            "host_ms_per_call": host_ms,
                            "device_ms_per_call": device_us / 1e3,
                            "top_kernels": "; ".join(
                                f"{e.key[:60]} x{e.count // calls or 1}" for e in top)})
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (missed targets are reported), 2 without the device."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="where to run (default cuda; cpu runs the same code paths)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few repeats: a smoke test of the script")
    parser.add_argument("--profile", action="store_true",
                        help="also print top kernels and host vs device time per call")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated subset of float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device is available (torch.cuda.is_available() is False). "
              "Run it on a GPU machine, or use `--device cpu --quick` to exercise the script.",
              file=sys.stderr)
        return 2
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        parser.error(f"--dtypes takes a subset of {sorted(DTYPES)}, got {args.dtypes!r}")
    env = setup(args.threads)
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 30)
    timer = Timer(device, warmup=1 if args.quick else 5, repeats=repeats)
    import panther.native as native

    st = native.load()
    print(f"device: {env.get('cuda') or 'cpu'}; native: cpu={st.cpu_loaded} "
          f"cuda={st.cuda_loaded}; tf32 matmul: {torch.backends.cuda.matmul.allow_tf32}")
    t_start = time.perf_counter()
    shapes = QUICK_LINEAR_SHAPES if args.quick else LINEAR_SHAPES
    linear = bench_linear(device, dtypes, timer, shapes)
    print_table(linear, ["shape", "dtype", "flop_ratio", "dense_fwd_ms", "sk_fwd_ms",
                         "fwd_speedup", "fwd_eff", "dense_fb_ms", "sk_fb_ms", "fb_speedup",
                         "fb_eff", "target", "ok"],
                title=f"SKLinear vs nn.Linear on {device.type} (median of {repeats})")
    conv = bench_conv(device, dtypes, timer, QUICK_CONV if args.quick else CONV)
    print_table(conv, ["shape", "dtype", "format", "flop_ratio", "dense_fwd_ms", "sk_fwd_ms",
                       "fwd_speedup", "fwd_eff", "dense_fb_ms", "sk_fb_ms", "fb_speedup",
                       "target", "ok"], title="SKConv2d vs nn.Conv2d")
    overhead = bench_overhead(device, Timer(device, warmup=2, repeats=repeats))
    print_table(overhead, title="per-call overhead at a tiny shape (sketched / dense)")
    attention, note = attention_section(device.type, dtypes, args.quick)
    if attention:
        print_table(attention, title="attention")
    else:
        print(f"\n{note}")
    profile_rows: list[dict] = []
    if args.profile:
        shape = QUICK_LINEAR_SHAPES[0] if args.quick else (4096, 4096, 256, 1, 64)
        profile_rows = profile_layers(device, dtypes, args.quick, shape)
        print_table(profile_rows, title=f"profile at {shape}: host vs device time per call")
    elapsed = time.perf_counter() - t_start
    checked = [r for r in linear + conv + overhead if "ok" in r]
    all_ok = all(r["ok"] for r in checked)
    print(f"\ntargets met: {sum(r['ok'] for r in checked)}/{len(checked)}; "
          f"elapsed {elapsed:.1f} s")
    path = write_json("gpu_quick" if args.quick else f"gpu_{device.type}", {
        "device": device.type, "quick": args.quick, "dtypes": dtypes, "repeats": repeats,
        "targets": {"linear_eff": EFF_TARGET, "conv_eff_bf16": CONV_TARGET,
                    "overhead_ratio": OVERHEAD_TARGET},
        "linear": linear, "conv": conv, "overhead": overhead, "attention": attention,
        "attention_note": note, "profile": profile_rows, "all_targets_met": all_ok,
        "elapsed_s": elapsed, "native_status": st._asdict(),
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
