"""Command line for the compiled extension.

``python -m panther.native build [--verbose]``
    Build the extension (or find it in the cache), load it, run a tiny self-check against the
    reference ops and print what is loaded. Exits with status 1 if the CPU library is not loaded
    or the self-check fails.
``python -m panther.native status``
    Print what a fresh process would load (loads from the cache or builds, like ``build``) and
    the cache folder, exiting 0 either way.
``python -m panther.native clean``
    Delete cached builds of older source versions (the current one is kept).
"""

from __future__ import annotations

import argparse
import sys

import torch

from panther.native import _build, cache_dir, reference


def self_check() -> list[str]:
    """Run each native op once on small inputs; return a description of every mismatch."""
    ops = torch.ops.panther
    gen = torch.Generator().manual_seed(0)
    problems: list[str] = []

    def compare(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
            problems.append(f"{name}: native result differs from the reference")

    x = torch.randn(5, 16, generator=gen, dtype=torch.float64)
    compare("fwht", ops.fwht(x), reference.fwht(x))
    rows = torch.randint(0, 6, (16, 2), generator=gen)
    vals = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    compare("sparse_sketch_apply", ops.sparse_sketch_apply(x, rows, vals, 6),
            reference.sparse_sketch_apply(x, rows, vals, 6))
    S1, U2 = (torch.randn(16, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    U1, S2 = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    compare("sketched_linear", ops.sketched_linear(x, S1, U2, U1, S2, b, 2)[0],
            reference.sketched_linear(x, S1, U2, U1, S2, b, 2))
    q, k = (torch.rand(1, 2, 9, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, 9, 3, generator=gen, dtype=torch.float64)
    compare("causal_linear_attention", ops.causal_linear_attention(q, k, v, 1e-6)[0],
            reference.causal_linear_attention(q, k, v, 1e-6))
    return problems


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m panther.native``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m panther.native",
                                     description="Build and inspect panther's C++/CUDA extension.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) and load the extension")
    build.add_argument("--verbose", action="store_true", help="show the compiler output")
    sub.add_parser("status", help="report what loads in this environment")
    sub.add_parser("clean", help="delete cached builds of older source versions")
    args = parser.parse_args(argv)
    if args.command == "clean":
        removed = _build.prune_cache()
        print(f"removed {len(removed)} stale build folder(s) from {cache_dir()}")
        return 0

    st = _build.load(verbose=getattr(args, "verbose", False))
    print(f"cache folder: {cache_dir()}")
    print(f"CPU ops loaded:  {st.cpu_loaded}")
    print(f"CUDA ops loaded: {st.cuda_loaded}")
    print(f"details: {st.reason}")
    if args.command == "status":
        return 0
    if not st.cpu_loaded:
        print("panther.native build FAILED; panther will use the reference path.",
              file=sys.stderr)
        return 1
    problems = self_check()
    for p in problems:
        print(f"self-check: {p}", file=sys.stderr)
    if problems:
        return 1
    print("self-check against the reference ops: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
