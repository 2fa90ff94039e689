"""Dense ``nn.MultiheadAttention`` vs ``RandMultiHeadAttention`` on a GPU (the attention section).

Embed 512, 8 heads, m = 64, batch 1, layers built with ``from_attention``. For n = 1024 ...
65536, causal and not, each dtype (fp32, bf16 by default) and both modes (``fwd``: inference
under ``no_grad``; ``fwd+bwd``: forward and backward of ``out.sum()`` in training mode), it
times the dense layer (``need_weights=False``, so PyTorch's fused scaled-dot-product kernels;
``is_causal`` with the causal mask) and the random-feature layer with both approximations
(``random_features`` on the Triton path; ``landmark``). CUDA events, median of the repeats;
peak memory from ``torch.cuda.max_memory_allocated`` above the inputs. A layer that runs out
of memory is recorded as ``"oom"``.

Import :func:`attention_rows` (``benchmarks/bench_gpu.py`` does), or run it:
``python benchmarks/bench_gpu_attention.py [--device cuda] [--quick] [--dtypes fp32,bf16]``;
it prints a table and writes ``benchmarks/results/gpu_attention.json``. ``--device cpu
--quick`` is a smoke run of the same code (tiny sizes; timings mean nothing there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import print_table, setup, write_json  # noqa: E402
from torch import nn  # noqa: E402

from panther.nn import RandMultiHeadAttention  # noqa: E402

EMBED, HEADS, FEATURES = 512, 8, 64
FULL_SEQS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
QUICK_SEQS = {"cuda": [1024, 4096], "cpu": [64]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYERS = ("dense", "random_features", "landmark")


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, the wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _call(layer: nn.Module, x: torch.Tensor, causal: bool, train: bool) -> Callable[[], Any]:
    n = x.shape[1]
    kwargs: dict[str, Any] = {}
    if isinstance(layer, nn.MultiheadAttention):
        kwargs["need_weights"] = False
        if causal:
            kwargs["attn_mask"] = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            kwargs["is_causal"] = True

    if not train:
        def run() -> None:
            with torch.no_grad():
                layer(x, x, x, **kwargs)
        return run

    xg = x.detach().clone().requires_grad_()

    def run_train() -> None:
        layer(xg, xg, xg, **kwargs)[0].sum().backward()
        xg.grad = None
        layer.zero_grad(set_to_none=True)
    return run_train


def _measure(layer: nn.Module, x: torch.Tensor, causal: bool, train: bool,
             device: torch.device, warmup: int, repeats: int) -> tuple[float | str, float | None]:
    """(median ms or ``"oom"``, peak MB above the baseline or None off CUDA)."""
    layer.train(train)
    fn = _call(layer, x, causal, train)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    try:
        ms = _time(fn, device, warmup, repeats)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "oom", None
    if device.type != "cuda":
        return ms, None
    return ms, (torch.cuda.max_memory_allocated(device) - base) / 2**20


def attention_rows(device: str, dtypes: list[torch.dtype], quick: bool) -> list[dict]:
    """Benchmark rows for ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``).

    One row per (dtype, causal, n, mode) with ``<layer>_ms`` and ``<layer>_peak_mb`` for
    ``dense``, ``random_features`` and ``landmark``, and ``speedup_x`` / ``landmark_speedup_x``
    (dense time over each approximation's). ``quick`` runs two short lengths and fewer repeats.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("attention_rows: CUDA was requested but torch.cuda.is_available() is "
                           "False; pass device='cpu' for a smoke run")
    seqs = QUICK_SEQS["cuda" if dev.type == "cuda" else "cpu"] if quick else FULL_SEQS
    warmup, repeats = (1, 2) if quick else (2, 5)
    rows = []
    for dtype in dtypes:
        for causal in (False, True):
            torch.manual_seed(0)
            dense = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, device=dev, dtype=dtype)
            layers: dict[str, nn.Module] = {"dense": dense}
            for approx in ("random_features", "landmark"):
                layers[approx] = RandMultiHeadAttention.from_attention(
                    dense, FEATURES, iscausal=causal, seed=0, approximation=approx)
            for n in seqs:
                x = torch.randn(1, n, EMBED, device=dev, dtype=dtype)
                for mode in ("fwd", "fwd+bwd"):
                    row: dict[str, Any] = {"device": str(dev), "dtype": str(dtype).split(".")[-1],
                                           "causal": causal, "seq": n, "mode": mode}
                    for name, layer in layers.items():
                        ms, peak = _measure(layer, x, causal, mode == "fwd+bwd", dev, warmup,
                                            repeats)
                        row[f"{name}_ms"] = ms
                        row[f"{name}_peak_mb"] = peak
                    for name, key in (("random_features", "speedup_x"),
                                      ("landmark", "landmark_speedup_x")):
                        ok = all(isinstance(row[f"{k}_ms"], float) for k in ("dense", name))
                        row[key] = row["dense_ms"] / row[f"{name}_ms"] if ok else None
                    rows.append(row)
                    print(f"  {row['dtype']} causal={causal} n={n} {mode}: "
                          f"dense {row['dense_ms']} ms, random features {row['random_features_ms']}"
                          f" ms, landmark {row['landmark_ms']} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="two short lengths, few repeats")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help=f"comma-separated, from {sorted(DTYPES)}")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    env = setup(args.threads)
    try:
        dtypes = [DTYPES[name.strip()] for name in args.dtypes.split(",") if name.strip()]
    except KeyError as exc:
        parser.error(f"unknown dtype {exc}; choose from {sorted(DTYPES)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_attention: no CUDA device is available (torch.cuda.is_available() is "
              "False). Run it on a GPU machine, or use --device cpu --quick for a smoke run.")
        return 1
    import panther.native.triton as gpu

    print(f"device={args.device}; triton available: {gpu.triton_available()}")
    rows = attention_rows(args.device, dtypes, args.quick)
    print_table(rows, ["dtype", "causal", "seq", "mode", "dense_ms", "random_features_ms",
                       "landmark_ms", "speedup_x", "landmark_speedup_x", "dense_peak_mb",
                       "random_features_peak_mb", "landmark_peak_mb"],
                title=f"nn.MultiheadAttention vs RandMultiHeadAttention (embed {EMBED}, "
                      f"{HEADS} heads, m = {FEATURES}, batch 1)")
    path = write_json("gpu_attention", {"device": args.device, "quick": args.quick,
                                        "triton": gpu.triton_available(), "rows": rows,
                                        "environment": env})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
