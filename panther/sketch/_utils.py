"""Argument checking and random-source handling shared by the sketch operators."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import Tensor

# torch.Generator.manual_seed accepts this range (signed or unsigned 64-bit).
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise."""
    if isinstance(value, bool) or not _is_integral(value):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    value = operator.index(value)  # type: ignore[arg-type]
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}; pass a value >= 1")
    return value


def _is_integral(value: object) -> bool:
    # Accept anything with __index__ (int, numpy ints, 0-d integer tensors) but not floats,
    # so that a silently truncated 3.7 -> 3 can never happen.
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def resolve_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """Turn the ``seed``/``generator`` pair into one generator (``None``: torch's global RNG).

    A seed creates a fresh CPU generator, so the same seed gives the same sketch on any
    device. Passing both is ambiguous and rejected.
    """
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; "
                "use seed=<int> to seed a fresh one"
            )
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not _is_integral(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    seed = operator.index(seed)
    if not _SEED_MIN <= seed <= _SEED_MAX:
        raise ValueError(f"seed {seed} is outside the 64-bit range torch accepts; reduce it")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def draw_device(generator: torch.Generator | None) -> torch.device:
    """Device the random numbers are drawn on: the generator's own device, else the CPU."""
    return generator.device if generator is not None else torch.device("cpu")


def resolve_float_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Default to torch's default dtype; reject non-floating dtypes."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def resolve_device(device: torch.device | str | None) -> torch.device:
    """Default to torch's default device, as torch factory functions do."""
    if device is None:
        return torch.get_default_device()
    return torch.device(device)


def check_input(x: object, name: str = "x") -> Tensor:
    """Ensure ``x`` is a floating or complex tensor with at least one dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"{name} has dtype {x.dtype}; sketches need a floating tensor, convert with {name}.float()"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} is a 0-d tensor; sketches act along a dimension, reshape it to (1,)")
    return x


def normalize_dim(dim: object, ndim: int) -> int:
    """Return ``dim`` as a non-negative axis index for a tensor with ``ndim`` dimensions."""
    if isinstance(dim, bool) or not _is_integral(dim):
        raise TypeError(f"dim must be an int, got {type(dim).__name__} {dim!r}")
    dim = operator.index(dim)  # type: ignore[arg-type]
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"dim {dim} is out of range for a {ndim}-d tensor; use a value in [{-ndim}, {ndim - 1}]"
        )
    return dim % ndim


def next_power_of_two(n: int) -> int:
    """Smallest power of two that is >= ``n`` (``n >= 1``)."""
    return 1 << (n - 1).bit_length()


def resolve_draw(
    m: object,
    n: object,
    seed: int | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> tuple[int, int, torch.dtype, torch.device, torch.Generator | None]:
    """Check and resolve the arguments every sketch factory takes.

    Returns ``(m, n, dtype, device, generator)`` with the sizes as ints, the defaults
    filled in and ``seed`` turned into a generator (see :func:`resolve_generator`).
    """
    m = check_positive_int(m, "m")
    n = check_positive_int(n, "n")
    return m, n, resolve_float_dtype(dtype), resolve_device(device), resolve_generator(seed, generator)


def check_sketch_input(x: object, dim: object, n: int, what: str) -> tuple[Tensor, int]:
    """Validate ``x`` for a drawn ``(m, n)`` sketch applied along ``dim``.

    Returns ``x`` and ``dim`` as a non-negative axis; raises if ``x.shape[dim] != n``.
    """
    x = check_input(x)
    dim = normalize_dim(dim, x.dim())
    if x.shape[dim] != n:
        raise ValueError(
            f"x has size {x.shape[dim]} along dim {dim} but this {what} expects n={n}; "
            "draw a sketch for that size or pick the right dim"
        )
    return x, dim


def apply_along(fn: Callable[[Tensor], Tensor], x: Tensor, dim: int) -> Tensor:
    """``fn`` acts on the last dimension; apply it along ``dim`` (non-negative) instead."""
    last = x.dim() - 1
    if dim == last:
        return fn(x)
    return fn(x.movedim(dim, last)).movedim(last, dim)


def value_dtype(x: Tensor) -> torch.dtype:
    """The real dtype for a sketch's values applied to ``x`` (complex inputs get real values)."""
    return x.real.dtype if x.is_complex() else x.dtype
