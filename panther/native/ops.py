"""Dispatching entry points for panther's hot operations.

Layers and sketch operators call these functions only. Each picks the compiled
kernel when the extension is loaded and supports the inputs, and the pure-PyTorch
reference in :mod:`panther.native.reference` otherwise.
"""

from __future__ import annotations

from torch import Tensor

from panther.native import reference

__all__ = ["sketched_linear", "fwht", "sparse_sketch_apply", "causal_linear_attention"]


def sketched_linear(x: Tensor, S1: Tensor, U2: Tensor, U1: Tensor, S2: Tensor,
                    bias: Tensor | None, num_terms: int) -> Tensor:
    """See :func:`panther.native.reference.sketched_linear`."""
    return reference.sketched_linear(x, S1, U2, U1, S2, bias, num_terms)


def fwht(x: Tensor) -> Tensor:
    """See :func:`panther.native.reference.fwht`."""
    return reference.fwht(x)


def sparse_sketch_apply(x: Tensor, rows: Tensor, values: Tensor, m: int) -> Tensor:
    """See :func:`panther.native.reference.sparse_sketch_apply`."""
    return reference.sparse_sketch_apply(x, rows, values, m)


def causal_linear_attention(q_feat: Tensor, k_feat: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """See :func:`panther.native.reference.causal_linear_attention`."""
    return reference.causal_linear_attention(q_feat, k_feat, v, eps)
