"""Fast Walsh-Hadamard transform and the subsampled randomized Hadamard transform (SRHT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from panther.native import ops
from panther.sketch._utils import (
    apply_along,
    check_input,
    check_positive_int,
    check_sketch_input,
    draw_device,
    next_power_of_two,
    normalize_dim,
    resolve_draw,
    value_dtype,
)

__all__ = ["fwht", "SRHTSketch", "make_srht", "srht"]


def fwht(x: Tensor, dim: int = -1) -> Tensor:
    """Orthonormal fast Walsh-Hadamard transform of ``x`` along ``dim``.

    Computes ``H x / sqrt(n)`` for the Sylvester Hadamard matrix ``H`` in O(n log n) per
    fibre, via :func:`panther.native.ops.fwht`. The transform is symmetric and orthogonal,
    so applying it twice returns ``x``. ``x.shape[dim]`` must be a power of two; zero-pad
    first (or use :func:`srht`, which pads for you) otherwise.
    """
    x = check_input(x)
    dim = normalize_dim(dim, x.dim())
    n = x.shape[dim]
    if n == 0 or n & (n - 1):
        raise ValueError(
            f"fwht needs a power-of-two length along dim {dim}, got {n}; "
            f"zero-pad to {next_power_of_two(max(n, 1))} first"
        )
    return apply_along(ops.fwht, x, dim)


@dataclass(frozen=True, eq=False, repr=False)
class SRHTSketch:
    """A drawn SRHT ``S = sqrt(p/m) * P H D`` of shape ``(m, n)``, reusable on many inputs.

    ``D`` is ``diag(signs)`` (random +-1, length ``n``), ``H`` the orthonormal Hadamard
    transform of size ``p`` (``n`` zero-padded to the next power of two), and ``P`` keeps
    the ``m`` coordinates in ``indices`` (distinct, sorted). The ``sqrt(p/m)`` factor makes
    ``E ||S x||^2 = ||x||^2``. Build one with :func:`make_srht`.

    Attributes:
        signs: ``(n,)`` tensor of +-1.
        indices: ``(m,)`` int64 tensor of distinct kept coordinates in ``[0, p)``.
        m: sketch size.
        n: input dimension.
    """

    signs: Tensor
    indices: Tensor
    m: int
    n: int

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise the sizes through object.__setattr__.
        object.__setattr__(self, "m", check_positive_int(self.m, "m"))
        object.__setattr__(self, "n", check_positive_int(self.n, "n"))
        if self.signs.shape != (self.n,):
            raise ValueError(f"signs must have shape ({self.n},), got {tuple(self.signs.shape)}")
        if self.indices.shape != (self.m,):
            raise ValueError(f"indices must have shape ({self.m},), got {tuple(self.indices.shape)}")
        if self.indices.dtype != torch.int64:
            raise TypeError(f"indices must be int64, got {self.indices.dtype}")
        if self.m > self.padded_n:
            raise ValueError(
                f"SRHT sketch size m={self.m} exceeds the padded length {self.padded_n}; "
                f"use m <= {self.padded_n}"
            )
        lo, hi = int(self.indices.min()), int(self.indices.max())
        if lo < 0 or hi >= self.padded_n:
            raise ValueError(f"indices must lie in [0, {self.padded_n}), got values in [{lo}, {hi}]")

    @property
    def padded_n(self) -> int:
        """Length after zero-padding ``n`` to a power of two."""
        return next_power_of_two(self.n)

    def __repr__(self) -> str:
        # The tensors can be large; show the sizes and where they live instead.
        return (f"SRHTSketch(m={self.m}, n={self.n}, padded_n={self.padded_n}, "
                f"device={self.signs.device})")

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``, the shape of the equivalent dense matrix."""
        return (self.m, self.n)

    def to(self, device: torch.device | str) -> SRHTSketch:
        """Copy of this sketch with its tensors on ``device``."""
        return SRHTSketch(self.signs.to(device), self.indices.to(device), self.m, self.n)

    def apply(self, x: Tensor, dim: int = -1) -> Tensor:
        """Sketch ``x`` along ``dim``: that dimension goes from ``n`` to ``m``.

        Equivalent to ``(x.movedim(dim, -1) @ S.T).movedim(-1, dim)`` but costs
        O(p log p) per fibre. The result has ``x``'s dtype and device; gradients flow to ``x``.
        """
        x, dim = check_sketch_input(x, dim, self.n, "SRHT")
        return apply_along(self._apply_last, x, dim)

    def _apply_last(self, y: Tensor) -> Tensor:
        y = y * self.signs.to(device=y.device, dtype=y.dtype)
        pad = self.padded_n - self.n
        if pad:
            y = F.pad(y, (0, pad))
        y = ops.fwht(y)
        y = y.index_select(-1, self.indices.to(y.device))
        return y * math.sqrt(self.padded_n / self.m)

    def to_dense(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """The ``(m, n)`` matrix this sketch applies (for tests and small problems only)."""
        dtype = dtype if dtype is not None else self.signs.dtype
        device = device if device is not None else self.signs.device
        eye = torch.eye(self.n, dtype=dtype, device=device)
        # Row j of apply(eye) is S e_j, i.e. column j of S.
        return self.apply(eye, dim=-1).T.contiguous()


def make_srht(
    m: int,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SRHTSketch:
    """Draw an :class:`SRHTSketch` mapping length-``n`` vectors to length ``m``.

    ``m`` may be at most the padded length ``p = next_power_of_two(n)``. The random signs
    and the kept coordinates (sampled without replacement) are drawn on the generator's
    device (CPU for ``seed`` or the global RNG) and then moved to ``device``; ``signs`` get
    ``dtype`` (default ``torch.get_default_dtype()``; :meth:`SRHTSketch.apply` casts them to
    the input's dtype).
    """
    m, n, dtype, device, gen = resolve_draw(m, n, seed, generator, device, dtype)
    p = next_power_of_two(n)
    if m > p:
        raise ValueError(
            f"SRHT cannot keep m={m} coordinates of a length-{n} input padded to {p}; "
            f"use m <= {p}, or a gaussian_sketch/sjlt for m > {p}"
        )
    where = draw_device(gen)
    bits = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64, device=where)
    signs = (bits * 2 - 1).to(torch.float64)
    # Sorted so the gather after the transform walks memory in order.
    indices = torch.randperm(p, generator=gen, device=where)[:m].sort().values
    return SRHTSketch(signs.to(device=device, dtype=dtype), indices.to(device), m, n)


def srht(
    x: Tensor,
    m: int,
    dim: int = -1,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply a freshly drawn SRHT to ``x`` along ``dim`` (size ``n`` there becomes ``m``).

    ``x.shape[dim]`` is zero-padded to the next power of two ``p``; ``m <= p`` is required.
    Never forms a dense Hadamard matrix. To reuse the same randomness on several tensors,
    draw once with :func:`make_srht` and call :meth:`SRHTSketch.apply`.
    """
    x = check_input(x)
    d = normalize_dim(dim, x.dim())
    sketch = make_srht(
        m, x.shape[d], seed=seed, generator=generator, device=x.device, dtype=value_dtype(x)
    )
    return sketch.apply(x, dim=d)
