"""Accuracy of sketched layers built from existing weights (issue 6, section 4).

For each weight and each (num_terms L, low_rank k) it measures the relative output error
``||f(X) - X W^T|| / ||X W^T||`` (bias excluded) of

* ``random``:  ``SKLinear(init="random")``, mean over a few seeds;
* ``svd``:     ``SKLinear(init="svd")`` (data-aware: the two halves take successive
  singular blocks, so the layer is the rank-``2Lk`` truncated SVD);
* ``svd_same_block``: the alternative data-aware layout where every term and both halves
  use the top-``k`` block (the layer is then the rank-``k`` truncation), kept to show
  which layout is better at equal cost;
* ``tsvd_Lk``: truncated SVD with as many numbers as the sketch's learnable factors,
  ``L*k*(in+out)`` (rank ``L*k``);
* ``tsvd_2Lk``: truncated SVD with as many numbers as the sketch stores in total
  (factors + sketch buffers, ``2*L*k*(in+out)``, rank ``2Lk``). The figures quoted in the
  issue (0.94 on a random 1024x1024 weight and 0.035 on the 0.9^i spectrum at
  (L, k) = (1, 16)) are this one, so the target is checked against it:
  ``svd <= 1.5 * tsvd_2Lk``.

Weights: a Gaussian 1024x1024 ("random weight"), a 1024x1024 with spectrum 0.9^i, a
1024x1024 "trained-like" weight (Kaiming bulk plus a power-law low-rank update, the
shape of a fine-tuned layer's spectrum) and the hidden layer of a small MLP actually
trained here, evaluated on its real input activations. A short SKConv2d section compares
random and svd init on conv kernels. Computed in float64 by default so the table shows
approximation error rather than float32 rounding (``--dtype float32`` to change).

Run: ``python benchmarks/bench_sketch_accuracy.py [--quick] [--dtype float32]``; results go to
``benchmarks/results/sketch_accuracy[_quick][_float32].json``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

try:
    from _common import print_table, setup, write_json
except ImportError:  # run as ``python -m benchmarks.bench_sketch_accuracy``
    from benchmarks._common import print_table, setup, write_json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panther.nn import SKConv2d, SKLinear

TARGET_RATIO = 1.5


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _orthogonal(n: int, gen: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q


def gaussian_weight(n: int, gen: torch.Generator) -> Tensor:
    return torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)


def spectrum_weight(n: int, decay: float, gen: torch.Generator) -> Tensor:
    s = decay ** torch.arange(n, dtype=torch.float64)
    return _orthogonal(n, gen) @ torch.diag(s) @ _orthogonal(n, gen).T


def trained_like_weight(n: int, gen: torch.Generator) -> Tensor:
    """Kaiming-uniform bulk plus a rank-128 update with power-law singular values."""
    bound = 1.0 / math.sqrt(n)
    bulk = (torch.rand(n, n, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    r = 128
    s = 3.0 * torch.arange(1, r + 1, dtype=torch.float64) ** -0.8
    A, B = _orthogonal(n, gen)[:, :r], _orthogonal(n, gen)[:, :r]
    return bulk + A @ torch.diag(s) @ B.T


def trained_mlp_layer(steps: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Train a 256-512-512-10 MLP on a teacher task; return (hidden weight, its inputs)."""
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, 10))
    model = nn.Sequential(
        nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        x = torch.randn(256, 256)
        with torch.no_grad():
            target = teacher(x).argmax(-1)
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acts = model[1](model[0](torch.randn(2048, 256)))
    return model[2].weight.detach().double(), acts.double()


def _truncated(svd: tuple[Tensor, Tensor, Tensor], rank: int) -> Tensor:
    U, s, Vh = svd
    return U[:, :rank] @ torch.diag(s[:rank]) @ Vh[:rank]


def _same_block_layer(
    W: Tensor, svd: tuple[Tensor, Tensor, Tensor], L: int, k: int, dtype: torch.dtype
) -> SKLinear:
    """SKLinear whose 2L halves all use the top-k singular block (the rejected layout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layer = SKLinear(W.shape[1], W.shape[0], L, k, W_init=W.to(dtype), bias=False,
                         dtype=dtype, seed=0)
    Wt = W.T  # (in, out) = V s U^T for W = U s V^T
    Vh, U = svd[0].T, svd[2].T
    with torch.no_grad():
        layer.U1.copy_(Vh[:k].repeat(L, 1))
        layer.U2.copy_(U[:, :k].repeat(1, L))
        layer.S1.copy_(Wt @ layer.U1.double().T)
        layer.S2.copy_(layer.U2.double().T @ Wt)
    return layer


def linear_rows(
    case: str, W: Tensor, X: Tensor, grid: list[tuple[int, int]], seeds: int, dtype: torch.dtype
) -> list[dict]:
    out_f, in_f = W.shape
    Xd = X.to(dtype)
    Y = X @ W.T
    svd = torch.linalg.svd(W, full_matrices=False)  # once per weight: the reference factors
    rows = []
    for L, k in grid:
        t0 = time.perf_counter()
        errs = []
        for seed in range(seeds):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                layer = SKLinear(in_f, out_f, L, k, W_init=W.to(dtype), bias=False, dtype=dtype,
                                 seed=seed)
                errs.append(_rel(layer(Xd).double(), Y))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t1 = time.perf_counter()
            svd_layer = SKLinear(in_f, out_f, L, k, W_init=W.to(dtype), bias=False, dtype=dtype,
                                 seed=0, init="svd")
            svd_build_s = time.perf_counter() - t1
            err_svd = _rel(svd_layer(Xd).double(), Y)
            err_same = _rel(_same_block_layer(W, svd, L, k, dtype)(Xd).double(), Y)
        err_t1 = _rel(X @ _truncated(svd, L * k).T, Y)
        err_t2 = _rel(X @ _truncated(svd, 2 * L * k).T, Y)
        rows.append({
            "case": case, "in": in_f, "out": out_f, "L": L, "k": k,
            "params": L * k * (in_f + out_f),
            "random": sum(errs) / len(errs),
            "svd": err_svd,
            "svd_same_block": err_same,
            "tsvd_Lk": err_t1,
            "tsvd_2Lk": err_t2,
            "svd/tsvd_Lk": err_svd / max(err_t1, 1e-300),
            "svd/tsvd_2Lk": err_svd / max(err_t2, 1e-300),
            "meets_target": err_svd <= TARGET_RATIO * err_t2,
            "svd_build_s": svd_build_s,
            "total_s": time.perf_counter() - t0,
        })
    return rows


def conv_rows(grid: list[tuple[int, int]], dtype: torch.dtype) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    out_c, in_c = 128, 64
    D = in_c * 9
    kernels = {
        "conv_kaiming": None,
        "conv_spectrum_0.9": (_orthogonal(out_c, gen) @ torch.diag(0.9 ** torch.arange(
            out_c, dtype=torch.float64)) @ _orthogonal(D, gen)[:, :out_c].T),
    }
    x = torch.randn(4, in_c, 16, 16, generator=gen, dtype=torch.float64)
    rows = []
    for case, Wm in kernels.items():
        conv = nn.Conv2d(in_c, out_c, 3, padding=1, bias=False, dtype=torch.float64)
        if Wm is not None:
            with torch.no_grad():
                conv.weight.copy_(Wm.reshape(out_c, in_c, 3, 3))
        Wm = conv.weight.detach().reshape(out_c, -1)
        with torch.no_grad():
            target = conv(x)
        conv = conv.to(dtype)
        U, s, Vh = torch.linalg.svd(Wm, full_matrices=False)
        for L, k in grid:
            with torch.no_grad():
                e_rand = _rel(SKConv2d.from_conv2d(conv, L, k, seed=0)(x.to(dtype)).double(),
                              target)
                e_svd = _rel(SKConv2d.from_conv2d(conv, L, k, seed=0, init="svd")(
                    x.to(dtype)).double(), target)
                r = 2 * L * k
                Wr = (U[:, :r] @ torch.diag(s[:r]) @ Vh[:r]).reshape(conv.weight.shape)
                e_trunc = _rel(F.conv2d(x, Wr, None, 1, 1), target)
            rows.append({
                "case": case, "in": in_c, "out": out_c, "L": L, "k": k,
                "random": e_rand, "svd": e_svd, "trunc_out_mode_2Lk": e_trunc,
                "svd/trunc": e_svd / max(e_trunc, 1e-300),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, one seed, short training")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args()
    env = setup(2)
    dtype = getattr(torch, args.dtype)

    grid = [(1, 16), (1, 64)] if args.quick else [
        (1, 8), (1, 16), (1, 32), (1, 64), (2, 16), (2, 32), (4, 16), (2, 64)
    ]
    seeds = 1 if args.quick else 3
    n = 1024
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2048, n, generator=gen, dtype=torch.float64)
    weights = {
        "gaussian_1024": gaussian_weight(n, gen),
        "spectrum_0.9^i_1024": spectrum_weight(n, 0.9, gen),
        "trained_like_1024": trained_like_weight(n, gen),
    }
    rows: list[dict] = []
    for case, W in weights.items():
        rows += linear_rows(case, W, X, grid, seeds, dtype)
    W_mlp, acts = trained_mlp_layer(steps=100 if args.quick else 400)
    rows += linear_rows("trained_mlp_512", W_mlp, acts, grid, seeds, dtype)

    columns = ["case", "L", "k", "params", "random", "svd", "svd_same_block", "tsvd_Lk",
               "tsvd_2Lk", "svd/tsvd_Lk", "svd/tsvd_2Lk", "meets_target", "svd_build_s"]
    print_table(rows, columns, title=f"SKLinear relative output error ({args.dtype})")

    conv_grid = [(1, 8)] if args.quick else [(1, 4), (1, 8), (1, 16), (2, 16)]
    crows = conv_rows(conv_grid, dtype)
    print_table(crows, title=f"SKConv2d relative output error ({args.dtype})")

    all_met = all(r["meets_target"] for r in rows)
    print(f"\ndata-aware within {TARGET_RATIO}x of the same-storage truncated SVD everywhere: "
          f"{all_met}")
    name = "sketch_accuracy" + ("_quick" if args.quick else "")
    name += "" if args.dtype == "float64" else f"_{args.dtype}"
    path = write_json(name, {
        "quick": args.quick, "dtype": args.dtype, "target_ratio": TARGET_RATIO,
        "all_targets_met": all_met, "linear": rows, "conv": crows, "environment": env,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
