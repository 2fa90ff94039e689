"""Dense random sketching matrices: Gaussian and scaled sign (Rademacher)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from panther.sketch._utils import draw_device, resolve_draw

__all__ = ["gaussian_sketch", "sign_sketch"]


def gaussian_sketch(
    m: int,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Dense Gaussian sketch of shape ``(m, n)`` with i.i.d. entries ``N(0, 1/m)``.

    The scaling makes ``E ||S x||^2 = ||x||^2`` for every ``x`` of length ``n``.

    Args:
        m: number of rows (sketch size).
        n: number of columns (dimension being sketched).
        seed: makes the draw reproducible (a fresh CPU generator is seeded with it).
        generator: an existing ``torch.Generator`` to draw from instead; not with ``seed``.
            With neither, torch's global RNG is used.
        device: where the result lives (default: torch's default device).
        dtype: floating dtype of the result (default: ``torch.get_default_dtype()``).

    The numbers are drawn in float64 on the generator's device (CPU unless a device
    generator is given) and then converted, so one seed yields the same sketch for
    every ``device`` and ``dtype``, up to rounding.
    """
    m, n, dtype, device, gen = resolve_draw(m, n, seed, generator, device, dtype)
    raw = torch.randn((m, n), generator=gen, dtype=torch.float64, device=draw_device(gen))
    raw = raw * (1.0 / math.sqrt(m))
    return raw.to(device=device, dtype=dtype)


def sign_sketch(
    m: int,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Dense scaled sign sketch of shape ``(m, n)``: i.i.d. entries ``+-1/sqrt(m)``, equally likely.

    Same norm-preserving scaling (``E ||S x||^2 = ||x||^2``) and the same ``seed``/``generator``/
    ``device``/``dtype`` semantics as :func:`gaussian_sketch`.
    """
    m, n, dtype, device, gen = resolve_draw(m, n, seed, generator, device, dtype)
    bits = torch.randint(0, 2, (m, n), generator=gen, dtype=torch.int64, device=draw_device(gen))
    signs = (bits * 2 - 1).to(torch.float64) * (1.0 / math.sqrt(m))
    return signs.to(device=device, dtype=dtype)
