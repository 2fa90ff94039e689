"""Native (C++/CUDA) kernels vs the pure-PyTorch reference, in one run.

For every op and shape the reference and the native path are timed round-robin (so a busy machine
slows both alike) and the fastest repeat of each is kept. Columns:

* ``speedup`` = reference time / native time (target: >= 0.95 everywhere, >= 2 for the causal scan
  at n=4096, m=64, d=64 and for SRHT/FWHT of an 8192 x 256 matrix);
* for the sketched-linear forward, ``vs_floor`` = native time / time of its two GEMMs alone
  (``x @ [S1|U2]`` then ``t @ [U1;S2]`` on pre-concatenated factors; target <= 1.10).

Shapes for sketched linear are ``(in, out, rows, L, k)`` like ``bench_layers.py``.
``--quick`` uses fewer repeats (same shapes, so the targets are still checked); ``--profile`` adds a
torch.profiler breakdown of the SKLinear and causal attention layers on both paths. With a CUDA device
and the CUDA kernels loaded, a last section runs each op once on the GPU against the reference.
Results: ``benchmarks/results/native.json`` (``native_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import print_table, setup, time_fns, write_json  # noqa: E402

import panther.native as native  # noqa: E402
from panther.native import ops  # noqa: E402

SPEEDUP_FLOOR = 0.95
SCAN_TARGET = 2.0
SRHT_TARGET = 2.0
FLOOR_TARGET = 1.10


def _fwd_bwd(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor],
             grad_mask: list[bool]) -> Callable[[], None]:
    """A closure running forward and backward of ``fn`` with fresh leaves."""
    def run() -> None:
        leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, grad_mask)]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
    return run


def _in_mode(mode: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with native.use_backend(mode):
            return fn()
    return run


def compare(name: str, shape: str, passes: str, fn: Callable[[], object], warmup: int,
            repeats: int, target: float | None = None, extra: dict | None = None) -> dict:
    """Time ``fn`` on the reference and the native path (plus ``extra`` closures) round-robin."""
    fns = {"reference": _in_mode("reference", fn), "native": _in_mode("native", fn)}
    fns.update(extra or {})
    t = time_fns(fns, warmup=warmup, repeats=repeats, stat="min")
    speedup = t["reference"] / t["native"]
    need = max(SPEEDUP_FLOOR, target or 0.0)
    row = {
        "op": name, "shape": shape, "pass": passes,
        "ref_ms": t["reference"] * 1e3, "native_ms": t["native"] * 1e3,
        "speedup": speedup, "target": need, "ok": speedup >= need,
    }
    for key in extra or {}:
        row[f"{key}_ms"] = t[key] * 1e3
    return row


def bench_cpu(warmup: int, repeats: int) -> tuple[list[dict], list[dict]]:
    """All CPU comparisons; returns (op rows, sketched-linear floor rows)."""
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []

    # FWHT / SRHT ---------------------------------------------------------------------------
    x = torch.randn(8192, 256, generator=gen)
    rows.append(compare("fwht", "8192x256 (last dim)", "fwd", lambda: ops.fwht(x), warmup,
                        repeats, SRHT_TARGET))
    rows.append(compare("fwht", "8192x256 (last dim)", "fwd+bwd",
                        _fwd_bwd(ops.fwht, [x], [True]), warmup, repeats))
    try:
        from panther.sketch import make_srht
    except ImportError:  # the sketch package is optional for this benchmark
        make_srht = None
    if make_srht is not None:
        rows_sk = make_srht(512, 8192, seed=0)
        cols_sk = make_srht(64, 256, seed=0)
        rows.append(compare("srht", "8192x256 -> 512x256 (dim 0)", "fwd",
                            lambda: rows_sk.apply(x, dim=0), warmup, repeats, SRHT_TARGET))
        rows.append(compare("srht", "8192x256 -> 8192x64 (dim 1)", "fwd",
                            lambda: cols_sk.apply(x, dim=1), warmup, repeats, SRHT_TARGET))

    # sparse sketches -------------------------------------------------------------------------
    xs = torch.randn(4096, 1024, generator=gen)
    for s in (1, 4):
        r = torch.randint(0, 256, (1024, s), generator=gen)
        v = (torch.randint(0, 2, (1024, s), generator=gen) * 2 - 1).float() / s**0.5
        label = "count sketch" if s == 1 else f"sjlt s={s}"
        rows.append(compare(label, "4096x1024 -> 4096x256", "fwd",
                            lambda r=r, v=v: ops.sparse_sketch_apply(xs, r, v, 256), warmup,
                            repeats))
        rows.append(compare(label, "4096x1024 -> 4096x256", "fwd+bwd",
                            _fwd_bwd(lambda a, r=r, v=v: ops.sparse_sketch_apply(a, r, v, 256),
                                     [xs], [True]), warmup, repeats))

    # causal linear attention -------------------------------------------------------------------
    for B, H, n, m, d in [(1, 8, 4096, 64, 64), (2, 4, 1024, 128, 64), (1, 4, 1024, 256, 128)]:
        q = torch.rand(B, H, n, m, generator=gen)
        k = torch.rand(B, H, n, m, generator=gen)
        v = torch.randn(B, H, n, d, generator=gen)
        shape = f"B={B} H={H} n={n} m={m} d={d}"
        target = SCAN_TARGET if (n, m, d) == (4096, 64, 64) else None
        rows.append(compare("causal attention", shape, "fwd",
                            lambda q=q, k=k, v=v: ops.causal_linear_attention(q, k, v), warmup,
                            repeats, target))
        rows.append(compare("causal attention", shape, "fwd+bwd",
                            _fwd_bwd(ops.causal_linear_attention, [q, k, v], [True] * 3),
                            max(1, warmup // 2), max(2, repeats // 2)))

    # sketched linear -----------------------------------------------------------------------------
    floor_rows: list[dict] = []
    for in_f, out_f, n_rows, L, k in [(4096, 4096, 256, 1, 64), (4096, 256, 4096, 1, 64),
                                       (1024, 1024, 512, 2, 32)]:
        lk = L * k
        xl = torch.randn(n_rows, in_f, generator=gen)
        S1, U2 = (torch.randn(in_f, lk, generator=gen) / in_f**0.5 for _ in range(2))
        U1, S2 = (torch.randn(lk, out_f, generator=gen) / lk**0.5 for _ in range(2))
        b = torch.randn(out_f, generator=gen)
        left, right = torch.cat([S1, U2], 1), torch.cat([U1, S2], 0)
        shape = f"({in_f},{out_f},{n_rows},{L},{k})"
        row = compare("sketched linear", shape, "fwd",
                      lambda xl=xl, S1=S1, U2=U2, U1=U1, S2=S2, b=b, L=L:
                      ops.sketched_linear(xl, S1, U2, U1, S2, b, L),
                      warmup, repeats,
                      extra={"two_gemms": lambda xl=xl, left=left, right=right:
                             torch.mm(torch.mm(xl, left), right)})
        row["vs_floor"] = row["native_ms"] / row["two_gemms_ms"]
        row["floor_ok"] = row["vs_floor"] <= FLOOR_TARGET
        floor_rows.append(row)
        rows.append(compare("sketched linear", shape, "fwd+bwd",
                            _fwd_bwd(lambda a, s1, s2, S1=S1, U1=U1, U2=U2, L=L, b=b:
                                     ops.sketched_linear(a, s1, U2, U1, s2, b, L),
                                     [xl, S1, S2], [True, True, True]),
                            max(1, warmup // 2), max(2, repeats // 2)))
    return rows, floor_rows


def bench_cuda() -> list[dict]:
    """Each op once more on the GPU: error against the reference and time per call."""
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 256, generator=gen).to(dev)
    r = torch.randint(0, 256, (256, 4), generator=gen).to(dev)
    v = torch.randn(256, 4, generator=gen).to(dev)
    q = torch.rand(1, 8, 4096, 64, generator=gen).to(dev)
    k = torch.rand(1, 8, 4096, 64, generator=gen).to(dev)
    vv = torch.randn(1, 8, 4096, 64, generator=gen).to(dev)
    S1, U2 = (torch.randn(256, 64, generator=gen).to(dev) for _ in range(2))
    U1, S2 = (torch.randn(64, 512, generator=gen).to(dev) for _ in range(2))
    cases = {
        "fwht 8192x256": lambda: ops.fwht(x),
        "sjlt s=4 8192x256->256": lambda: ops.sparse_sketch_apply(x, r, v, 256),
        "causal B=1 H=8 n=4096 m=64 d=64": lambda: ops.causal_linear_attention(q, k, vv),
        "sketched linear (256,512,8192,1,64)": lambda: ops.sketched_linear(x, S1, U2, U1, S2,
                                                                           None, 1),
    }
    out = []
    for name, fn in cases.items():
        with native.use_backend("reference"):
            want = fn()
        with native.use_backend("native"):
            got = fn()
        t = time_fns({"reference": _in_mode("reference", fn), "native": _in_mode("native", fn)},
                     warmup=2, repeats=5, sync=sync, stat="min")
        out.append({"op": name, "max_abs_err": (got - want).abs().max().item(),
                    "ref_ms": t["reference"] * 1e3, "native_ms": t["native"] * 1e3,
                    "speedup": t["reference"] / t["native"]})
    return out


def profile_layers() -> list[dict]:
    """Top self-CPU ops of SKLinear and causal RandMultiHeadAttention forwards on each path."""
    from torch.profiler import ProfilerActivity, profile

    from panther.nn import RandMultiHeadAttention, SKLinear

    torch.manual_seed(0)
    att = RandMultiHeadAttention(512, 8, 64, iscausal=True, batch_first=True)
    lin = SKLinear(4096, 4096, 1, 64)
    xa, xl = torch.randn(1, 4096, 512), torch.randn(256, 4096)
    layers = {"attention (1,4096,512) H=8 m=64": lambda: att(xa, xa, xa),
              "SKLinear (4096,4096,256,1,64)": lambda: lin(xl)}
    out = []
    for mode in ("reference", "native"):
        for name, fn in layers.items():
            with native.use_backend(mode), torch.no_grad():
                fn()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        fn()
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total,
                            reverse=True)
            total = sum(e.self_cpu_time_total for e in events) or 1.0
            for e in events[:5]:
                out.append({"layer": name, "path": mode, "op": e.key,
                            "self_ms_per_call": e.self_cpu_time_total / 3e3,
                            "share": e.self_cpu_time_total / total})
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (targets missed are reported, not fatal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile SKLinear and causal attention layers on both paths")
    args = parser.parse_args(argv)
    env = setup(args.threads)
    st = native.load()
    print(f"native status: cpu={st.cpu_loaded} cuda={st.cuda_loaded} ({st.reason})")
    if not st.cpu_loaded:
        print("the native extension is not loaded; nothing to compare", file=sys.stderr)
        return 1
    warmup, repeats = (1, 5) if args.quick else (3, 20)
    rows, floor_rows = bench_cpu(warmup, repeats)
    print_table(rows, ["op", "shape", "pass", "ref_ms", "native_ms", "speedup", "target", "ok"],
                title=f"CPU, {args.threads} threads: native vs reference (min of {repeats})")
    print_table(floor_rows, ["shape", "ref_ms", "native_ms", "two_gemms_ms", "vs_floor",
                             "floor_ok"],
                title=f"sketched-linear forward vs its two GEMMs (target <= {FLOOR_TARGET})")
    cuda_rows: list[dict] = []
    if torch.cuda.is_available() and st.cuda_loaded:
        cuda_rows = bench_cuda()
        print_table(cuda_rows, title="CUDA: native vs reference")
    elif torch.cuda.is_available():
        print(f"\nCUDA device present but CUDA kernels not loaded: {st.reason}")
    profile_rows: list[dict] = []
    if args.profile:
        profile_rows = profile_layers()
        print_table(profile_rows, title="layer profile: top self-CPU ops per forward")
    all_ok = all(r["ok"] for r in rows + floor_rows) and all(r["floor_ok"] for r in floor_rows)
    print(f"\nall targets met: {all_ok}")
    path = write_json("native_quick" if args.quick else "native", {
        "targets": {"speedup_floor": SPEEDUP_FLOOR, "scan_speedup": SCAN_TARGET,
                    "srht_speedup": SRHT_TARGET, "linear_vs_two_gemms": FLOOR_TARGET},
        "cpu": rows, "sketched_linear_floor": floor_rows, "cuda": cuda_rows,
        "layer_profile": profile_rows,
        "all_targets_met": all_ok, "native_status": st._asdict(), "threads": env["torch_threads"],
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
