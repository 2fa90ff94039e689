"""Sparse sketches: count sketch and the sparse Johnson-Lindenstrauss transform (SJLT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from panther.native import ops
from panther.sketch._utils import (
    apply_along,
    check_input,
    check_positive_int,
    check_sketch_input,
    draw_device,
    normalize_dim,
    resolve_draw,
    value_dtype,
)

__all__ = ["SparseSketch", "make_count_sketch", "make_sjlt", "count_sketch", "sjlt"]


@dataclass(frozen=True, eq=False, repr=False)
class SparseSketch:
    """A drawn sparse ``(m, n)`` sketch with ``s`` non-zeros per column, reusable on many inputs.

    Column ``j`` has value ``values[j, t]`` at row ``rows[j, t]`` for ``t < s``. It is applied
    by scatter-add through :func:`panther.native.ops.sparse_sketch_apply`, in O(nnz) per fibre
    and without forming the dense matrix. Build one with :func:`make_count_sketch` or
    :func:`make_sjlt`.

    Attributes:
        rows: ``(n, s)`` int64 tensor of row indices in ``[0, m)``.
        values: ``(n, s)`` floating tensor of the non-zero values.
        m: sketch size (rows of the dense matrix).
        n: input dimension (columns of the dense matrix).
    """

    rows: Tensor
    values: Tensor
    m: int
    n: int

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise the sizes through object.__setattr__.
        object.__setattr__(self, "m", check_positive_int(self.m, "m"))
        object.__setattr__(self, "n", check_positive_int(self.n, "n"))
        if self.rows.dim() != 2 or self.rows.shape[0] != self.n or self.rows.shape[1] == 0:
            raise ValueError(
                f"rows must have shape ({self.n}, s) with s >= 1, got {tuple(self.rows.shape)}"
            )
        if self.values.shape != self.rows.shape:
            raise ValueError(
                f"values shape {tuple(self.values.shape)} must match rows shape "
                f"{tuple(self.rows.shape)}"
            )
        if self.rows.dtype != torch.int64:
            raise TypeError(f"rows must be int64, got {self.rows.dtype}")
        if not self.values.is_floating_point():
            raise TypeError(f"values must be floating, got {self.values.dtype}")
        # An out-of-range row would be a silent device-side assert on GPU; catch it here once.
        lo, hi = int(self.rows.min()), int(self.rows.max())
        if lo < 0 or hi >= self.m:
            raise ValueError(f"rows must lie in [0, {self.m}), got values in [{lo}, {hi}]")

    @property
    def s(self) -> int:
        """Non-zeros per column."""
        return self.rows.shape[1]

    def __repr__(self) -> str:
        # The tensors can be large; show the sizes and where they live instead.
        return (f"SparseSketch(m={self.m}, n={self.n}, s={self.s}, "
                f"device={self.rows.device})")

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``, the shape of the equivalent dense matrix."""
        return (self.m, self.n)

    def to(self, device: torch.device | str) -> SparseSketch:
        """Copy of this sketch with its tensors on ``device``."""
        return SparseSketch(self.rows.to(device), self.values.to(device), self.m, self.n)

    def apply(self, x: Tensor, dim: int = -1) -> Tensor:
        """Sketch ``x`` along ``dim``: that dimension goes from ``n`` to ``m``.

        Equivalent to ``(x.movedim(dim, -1) @ S.T).movedim(-1, dim)``. The result has ``x``'s
        dtype and device; gradients flow to ``x``.
        """
        x, dim = check_sketch_input(x, dim, self.n, "sketch")
        return apply_along(self._apply_last, x, dim)

    def _apply_last(self, y: Tensor) -> Tensor:
        rows = self.rows.to(y.device)
        values = self.values.to(device=y.device, dtype=y.dtype)
        return ops.sparse_sketch_apply(y, rows, values, self.m)

    def to_dense(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """The ``(m, n)`` matrix this sketch applies (for tests and small problems only)."""
        dtype = dtype if dtype is not None else self.values.dtype
        device = device if device is not None else self.values.device
        dense = torch.zeros(self.m, self.n, dtype=dtype, device=device)
        cols = torch.arange(self.n, device=device).unsqueeze(1).expand_as(self.rows)
        dense.index_put_(
            (self.rows.to(device), cols), self.values.to(device=device, dtype=dtype), accumulate=True
        )
        return dense


def _random_signs(shape: tuple[int, ...], gen: torch.Generator | None) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=gen, dtype=torch.int64, device=draw_device(gen))
    return (bits * 2 - 1).to(torch.float64)


def make_count_sketch(
    m: int,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SparseSketch:
    """Draw a count sketch: each column has one ``+-1`` at a uniformly random row.

    ``E ||S x||^2 = ||x||^2``. Randomness is drawn on the generator's device (CPU for ``seed``
    or the global RNG) and moved to ``device``; ``values`` get ``dtype`` (default
    ``torch.get_default_dtype()``; :meth:`SparseSketch.apply` casts them to the input's dtype).
    """
    m, n, dtype, device, gen = resolve_draw(m, n, seed, generator, device, dtype)
    rows = torch.randint(0, m, (n, 1), generator=gen, dtype=torch.int64, device=draw_device(gen))
    values = _random_signs((n, 1), gen)
    return SparseSketch(rows.to(device), values.to(device=device, dtype=dtype), m, n)


def make_sjlt(
    m: int,
    n: int,
    s: int = 4,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SparseSketch:
    """Draw a sparse JL transform with ``s`` non-zeros ``+-1/sqrt(s)`` per column.

    Block construction: rows are split into ``s`` contiguous blocks of (nearly) equal size
    and each column gets one uniformly random row in every block, so the ``s`` rows of a
    column are always distinct and drawing costs O(n s), never O(n m). The signs are
    independent, so ``E ||S x||^2 = ||x||^2`` for any block sizes. Requires ``s <= m``;
    ``s = 1`` is a count sketch. Seed/device/dtype behave as in :func:`make_count_sketch`.
    """
    m, n, dtype, device, gen = resolve_draw(m, n, seed, generator, device, dtype)
    s = check_positive_int(s, "s")
    if s > m:
        raise ValueError(f"SJLT needs s <= m (s distinct rows per column), got s={s}, m={m}; "
                         f"lower s or raise m")
    where = draw_device(gen)
    bounds = [(t * m) // s for t in range(s + 1)]  # every block has >= 1 row because s <= m
    blocks = [
        bounds[t]
        + torch.randint(0, bounds[t + 1] - bounds[t], (n,), generator=gen, dtype=torch.int64,
                        device=where)
        for t in range(s)
    ]
    rows = torch.stack(blocks, dim=1)
    values = _random_signs((n, s), gen) * (1.0 / math.sqrt(s))
    return SparseSketch(rows.to(device), values.to(device=device, dtype=dtype), m, n)


def count_sketch(
    x: Tensor,
    m: int,
    dim: int = -1,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply a freshly drawn count sketch to ``x`` along ``dim`` (size ``n`` there becomes ``m``).

    To reuse the same randomness, draw once with :func:`make_count_sketch` and call
    :meth:`SparseSketch.apply`.
    """
    x = check_input(x)
    d = normalize_dim(dim, x.dim())
    sketch = make_count_sketch(
        m, x.shape[d], seed=seed, generator=generator, device=x.device, dtype=value_dtype(x)
    )
    return sketch.apply(x, dim=d)


def sjlt(
    x: Tensor,
    m: int,
    s: int = 4,
    dim: int = -1,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply a freshly drawn SJLT (``s`` non-zeros per column) to ``x`` along ``dim``.

    To reuse the same randomness, draw once with :func:`make_sjlt` and call
    :meth:`SparseSketch.apply`.
    """
    x = check_input(x)
    d = normalize_dim(dim, x.dim())
    sketch = make_sjlt(
        m, x.shape[d], s, seed=seed, generator=generator, device=x.device, dtype=value_dtype(x)
    )
    return sketch.apply(x, dim=d)
