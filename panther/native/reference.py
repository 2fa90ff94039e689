"""Pure-PyTorch reference implementations of panther's hot operations.

These are the ground truth the compiled kernels are tested against, and the path
panther takes whenever the extension is not loaded or does not support the inputs.
Every function here is differentiable through ordinary autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "sketched_linear",
    "fwht",
    "sparse_sketch_apply",
    "causal_linear_attention",
    "causal_linear_attention_stateful",
]


def sketched_linear(
    x: Tensor,
    S1: Tensor,
    U2: Tensor,
    U1: Tensor,
    S2: Tensor,
    bias: Tensor | None,
    num_terms: int,
) -> Tensor:
    """Sketched linear map ``y = ((x S1) U1 + (x U2) S2) / (2L) + b``.

    The L terms are stored stacked so that a forward is two GEMMs:
    ``S1``/``U2`` are ``(in, L*k)`` (column block i is term i) and
    ``U1``/``S2`` are ``(L*k, out)`` (row block i is term i).
    ``x`` is ``(..., in)``; the result is ``(..., out)``.
    """
    left = torch.cat([S1, U2], dim=1)  # (in, 2Lk)
    right = torch.cat([U1, S2], dim=0)  # (2Lk, out)
    scale = 1.0 / (2 * num_terms)
    lead = x.shape[:-1]
    t = x.reshape(math.prod(lead), x.shape[-1]) @ left
    # Scale and bias are fused into the second GEMM, so the (rows, out) output is written once
    # instead of once per step (GEMM, scale, bias).
    if bias is not None:
        y = torch.addmm(bias, t, right, alpha=scale)
    else:
        y = (t * scale) @ right
    return y.reshape(*lead, right.shape[1])


def fwht(x: Tensor) -> Tensor:
    """Orthonormal fast Walsh-Hadamard transform along the last dimension.

    The last dimension must be a power of two. Cost is O(n log n) per row;
    the result is ``x @ H / sqrt(n)`` for the Sylvester Hadamard matrix ``H``.
    """
    n = x.shape[-1]
    if n & (n - 1) != 0 or n == 0:
        raise ValueError(f"fwht needs a power-of-two length on the last dimension, got {n}")
    batch_shape = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        a = y[:, :, 0, :]
        b = y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    y = y.reshape(*batch_shape, n)
    return y * (n**-0.5)


def sparse_sketch_apply(x: Tensor, rows: Tensor, values: Tensor, m: int) -> Tensor:
    """Apply a sparse ``(m, n)`` sketch ``S`` to the last dimension of ``x``: ``x @ S.T``.

    Column ``j`` of ``S`` has ``s`` non-zeros at rows ``rows[j, :]`` with values
    ``values[j, :]`` (``rows``/``values`` are ``(n, s)``). Count sketch is ``s = 1``;
    SJLT uses ``s > 1`` with values ``+-1/sqrt(s)``. No dense ``m x n`` matrix is formed.
    """
    n, s = rows.shape
    if x.shape[-1] != n:
        raise ValueError(f"input has {x.shape[-1]} features on its last dimension, sketch expects {n}")
    batch_shape = x.shape[:-1]
    flat = x.reshape(-1, n)
    out = flat.new_zeros(flat.shape[0], m)
    for t in range(s):
        contrib = flat * values[:, t].to(flat.dtype)
        out = out.index_add(1, rows[:, t], contrib)
    return out.reshape(*batch_shape, m)


def causal_linear_attention(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, eps: float = 1e-6, chunk_size: int = 128
) -> Tensor:
    """Causal random-feature attention by chunked prefix sums.

    ``q_feat``/``k_feat`` are ``(B, H, n, m)`` non-negative feature maps, ``v`` is
    ``(B, H, n, d)``. Returns ``out[t] = (q_t . sum_{s<=t} k_s v_s^T) / (q_t . sum_{s<=t} k_s + eps)``.
    Memory is O(B*H*(m*d + chunk^2)); no ``n x n`` matrix is formed.
    """
    B, H, n, m = q_feat.shape
    d = v.shape[-1]
    if n == 0:
        return v[:, :, :0] + 0 * (q_feat.sum() + k_feat.sum())
    state = q_feat.new_zeros(B, H, m, d)
    norm = q_feat.new_zeros(B, H, m)
    out, _, _ = _causal_scan(q_feat, k_feat, v, state, norm, eps, chunk_size)
    return out


def causal_linear_attention_stateful(
    q_feat: Tensor,
    k_feat: Tensor,
    v: Tensor,
    kv0: Tensor,
    z0: Tensor,
    eps: float = 1e-6,
    chunk_size: int = 128,
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal random-feature attention continuing from a prefix state.

    ``kv0`` (``(B, H, m, d)``) and ``z0`` (``(B, H, m)``) are ``sum k_s v_s^T`` and
    ``sum k_s`` over the tokens before this block. Returns ``(out, kv1, z1)`` with
    ``out[t] = (q_t . (kv0 + sum_{s<=t} k_s v_s^T)) / (q_t . (z0 + sum_{s<=t} k_s) + eps)`` and
    the state after the block's last token, so a long sequence can be processed block by block.
    With zero state this is :func:`causal_linear_attention`.
    """
    return _causal_scan(q_feat, k_feat, v, kv0, z0, eps, chunk_size)


def _causal_scan(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, state: Tensor, norm: Tensor, eps: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    n = q_feat.shape[2]
    outs = []
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        q = q_feat[:, :, start:end]
        k = k_feat[:, :, start:end]
        vc = v[:, :, start:end]
        scores = torch.tril(q @ k.transpose(-1, -2))  # (B,H,c,c)
        num = q @ state + scores @ vc
        den = (q * norm.unsqueeze(-2)).sum(-1) + scores.sum(-1)
        outs.append(num / (den.unsqueeze(-1) + eps))
        state = state + k.transpose(-1, -2) @ vc
        norm = norm + k.sum(-2)
    out = torch.cat(outs, dim=2) if outs else v[:, :, :0].clone()
    return out, state, norm
