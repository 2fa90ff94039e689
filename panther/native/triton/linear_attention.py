"""Host side of the GPU random-feature attention: launches, autograd, the chunked torch form.

:func:`fused_random_feature_attention` runs the whole attention core (feature maps, stabiliser,
state products, normalisation) in a few Triton launches and no host synchronisation:

* non-causal: a key-max kernel (softmax only) whose per-block maxima are reduced on the device,
  then a kernel that forms ``sum phi(k) v^T`` and ``sum phi(k)`` with the key features computed
  in registers (one tensor-core GEMM per block), then a query kernel that forms ``phi(q)`` and
  multiplies it with the state (the second GEMM) and normalises;
* causal: the chunked-parallel form. Per-chunk states in parallel, an inclusive prefix sum over
  chunks on the device (``torch.cumsum``), then one program per chunk adds the product with
  the carried state to the masked chunk x chunk product. Nothing is ``n x n``; memory is
  ``O(n/chunk * m * d)``.

The backward pass recomputes the forward in float32 with the vectorised chunked torch form
(:func:`chunked_causal_linear_attention`, or the two einsums non-causally) and differentiates
that, so gradients equal the reference implementation's autograd.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "chunked_causal_linear_attention",
    "fused_random_feature_attention",
    "triton_available",
]

FeatureFn = Callable[[Tensor, Tensor, "Tensor | None"], tuple[Tensor, Tensor]]

_TRITON_OK: bool | None = None


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it is imported on first use only)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        _TRITON_OK = importlib.util.find_spec("triton") is not None
    return _TRITON_OK


def _kernels() -> Any:
    from panther.native.triton import kernels

    return kernels


def chunked_causal_linear_attention(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, eps: float, chunk: int = 64
) -> Tensor:
    """Causal linear attention in the chunked-parallel form, with torch ops only.

    ``q_feat``/``k_feat`` are ``(B, H, n, m)`` non-negative features, ``v`` is ``(B, H, n, d)``.
    Returns ``out[t] = q_t . sum_{s<=t} k_s v_s^T / (q_t . sum_{s<=t} k_s + eps)``. All chunks are
    processed at once (no Python loop over blocks): per-chunk states, an exclusive prefix sum
    over chunks, and a masked ``chunk x chunk`` product inside each chunk. Differentiable;
    memory ``O(n * (chunk + m * d / chunk))``.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    B, H, n, m = q_feat.shape
    d = v.shape[-1]
    if n == 0:
        return v.new_zeros(B, H, 0, d) + 0 * (q_feat.sum() + k_feat.sum() + v.sum())
    chunk = min(chunk, n)
    pad = (-n) % chunk
    if pad:
        # Zero features add nothing to any state, and padded queries are cut off below.
        q_feat, k_feat, v = (torch.nn.functional.pad(t, (0, 0, 0, pad))
                             for t in (q_feat, k_feat, v))
    c = (n + pad) // chunk
    qc = q_feat.reshape(B, H, c, chunk, m)
    kc = k_feat.reshape(B, H, c, chunk, m)
    vc = v.reshape(B, H, c, chunk, d)
    states = kc.transpose(-1, -2) @ vc  # (B, H, c, m, d)
    norms = kc.sum(dim=-2)  # (B, H, c, m)
    # Exclusive prefix sums: chunk i sees the states of chunks < i (no cancellation from
    # subtracting its own state back out).
    prev = torch.cat([torch.zeros_like(states[:, :, :1]), states[:, :, :-1]], dim=2).cumsum(2)
    prev_norm = torch.cat([torch.zeros_like(norms[:, :, :1]), norms[:, :, :-1]], dim=2).cumsum(2)
    scores = (qc @ kc.transpose(-1, -2)).tril()  # (B, H, c, chunk, chunk)
    num = qc @ prev + scores @ vc
    den = (qc * prev_norm.unsqueeze(-2)).sum(-1) + scores.sum(-1)
    out = num / (den.unsqueeze(-1) + eps)
    return out.reshape(B, H, c * chunk, d)[:, :, :n]


def _next_pow2(x: int, least: int = 16) -> int:
    return max(least, 1 << max(0, x - 1).bit_length())


def _strides4(t: Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def _bias_args(key_bias: Tensor | None, dummy: Tensor) -> tuple[Tensor, int, int]:
    if key_bias is None:
        return dummy, 0, 0
    return key_bias, key_bias.stride(0), key_bias.stride(1)


def _finite_or_zero(t: Tensor) -> Tensor:
    # A row whose keys are all masked has max -inf; any finite stabiliser works there. A
    # device-side select, never a host-side check.
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def _triton_forward(q: Tensor, k: Tensor, v: Tensor, w: Tensor, key_bias: Tensor | None,
                    softmax: bool, causal: bool, eps: float, block: int) -> Tensor:
    kern = _kernels()
    B, H, L, D = q.shape
    S = k.shape[2]
    M = w.shape[1]
    BM, BD = _next_pow2(M), _next_pow2(D)
    dev = q.device
    fp32 = q.dtype == torch.float32
    precision = "ieee" if fp32 else "tf32"
    # bf16 states keep float32's range, so their product runs in bf16 on tensor cores; fp16
    # states could overflow (sums over up to n tokens), so they stay float32.
    state_low = q.dtype == torch.bfloat16
    state_precision = "ieee" if fp32 else "tf32"
    upcast = q.dtype == torch.bfloat16 and _interpreting(kern)
    c_half = 0.5 * D**-0.5
    half_log_m = 0.5 * math.log(M)
    inv_sqrt_m = M**-0.5
    bias_t, sbb, sbs = _bias_args(key_bias, q)
    has_bias = key_bias is not None
    w_args = (w.stride(0), w.stride(1), w.stride(2))
    blocks = triton_cdiv(S, block)

    if softmax:
        part = torch.empty(B * H, blocks, dtype=torch.float32, device=dev)
        kern.key_max_kernel[(B * H, blocks)](
            k, w, bias_t, part, *_strides4(k), *w_args, sbb, sbs, H, S, M, D, blocks, c_half,
            HAS_BIAS=has_bias, PRECISION=precision, UPCAST=upcast, BLOCK_N=block, BLOCK_M=BM, BLOCK_D=BD)
        kstab = _finite_or_zero(part.amax(dim=1))
    elif has_bias:
        top = _finite_or_zero(key_bias.float().amax(dim=1))
        kstab = top.repeat_interleave(H)
    else:
        kstab = torch.zeros(B * H, dtype=torch.float32, device=dev)
    kstab = kstab.contiguous()

    out = torch.empty(B, L, H, D, dtype=q.dtype, device=dev)
    if causal:
        groups = blocks  # one state per chunk
    else:
        # Enough programs to fill the device, each summing several key blocks.
        groups = max(1, min(blocks, triton_cdiv(256, B * H)))
    states = torch.empty(B * H, groups, M, D, dtype=torch.float32, device=dev)
    norms = torch.empty(B * H, groups, M, dtype=torch.float32, device=dev)
    kern.key_state_kernel[(B * H, groups)](
        k, v, w, bias_t, kstab, states, norms, *_strides4(k), *_strides4(v), *w_args, sbb, sbs,
        H, S, M, D, c_half, half_log_m, inv_sqrt_m,
        SOFTMAX=softmax, HAS_BIAS=has_bias, PRECISION=precision, UPCAST=upcast,
        BLOCK_N=block, BLOCK_M=BM, BLOCK_D=BD)
    if causal:
        torch.cumsum(states, dim=1, out=states)
        torch.cumsum(norms, dim=1, out=norms)
        kern.causal_out_kernel[(B * H, blocks)](
            q, k, v, w, bias_t, kstab, states, norms, out,
            *_strides4(q), *_strides4(k), *_strides4(v), *w_args, sbb, sbs,
            H, L, M, D, blocks, c_half, half_log_m, inv_sqrt_m, eps,
            SOFTMAX=softmax, HAS_BIAS=has_bias, STATE_LOW=state_low, PRECISION=precision, UPCAST=upcast,
            STATE_PRECISION=state_precision, BLOCK_N=block, BLOCK_M=BM, BLOCK_D=BD)
    else:
        kv = states.sum(dim=1)
        z = norms.sum(dim=1)
        kern.query_out_kernel[(B * H, triton_cdiv(L, block))](
            q, w, kv, z, out, *_strides4(q), *w_args, H, L, M, D, c_half, half_log_m, inv_sqrt_m,
            eps, SOFTMAX=softmax, STATE_LOW=state_low, PRECISION=precision, UPCAST=upcast,
            STATE_PRECISION=state_precision, BLOCK_N=block, BLOCK_M=BM, BLOCK_D=BD)
    return out


def _interpreting(kern: Any) -> bool:
    # Kernels decorated while TRITON_INTERPRET=1 was set run in Triton's CPU interpreter.
    return type(kern.key_max_kernel).__name__ == "InterpretedFunction"


def triton_cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)


def default_block(num_features: int, head_dim: int) -> int:
    """Tokens per program: 64, smaller when the feature tile is wide (register pressure)."""
    width = _next_pow2(num_features) * _next_pow2(head_dim)
    if width <= 64 * 64:
        return 64
    if width <= 128 * 128:
        return 32
    return 16


def _torch_attention(q_feat: Tensor, k_feat: Tensor, v: Tensor, causal: bool, eps: float,
                     block: int) -> Tensor:
    if causal:
        return chunked_causal_linear_attention(q_feat, k_feat, v, eps, chunk=block)
    kv = k_feat.transpose(-1, -2) @ v
    num = q_feat @ kv
    den = q_feat @ k_feat.sum(dim=-2).unsqueeze(-1)
    return num / (den + eps)


class _FusedAttention(torch.autograd.Function):
    """Triton forward; backward by differentiating the float32 chunked torch recomputation."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, w: Tensor,
                key_bias: Tensor | None, features: FeatureFn, softmax: bool, causal: bool,
                eps: float, block: int, use_triton: bool) -> Tensor:
        if use_triton:
            out = _triton_forward(q, k, v, w, key_bias, softmax, causal, eps, block)
        else:
            out = _recompute(q, k, v, key_bias, features, causal, eps, block).to(q.dtype)
            out = out.transpose(1, 2).contiguous()
        ctx.save_for_backward(q, k, v)
        ctx.key_bias = key_bias
        ctx.features = features
        ctx.causal, ctx.eps, ctx.block = causal, eps, block
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().float().requires_grad_(t.requires_grad) for t in (q, k, v)]
            out = _recompute(*leaves, ctx.key_bias, ctx.features, ctx.causal, ctx.eps, ctx.block)
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out.float().transpose(1, 2)))
        result = [next(grads).to(t.dtype) if t.requires_grad else None for t in leaves]
        return (*result, None, None, None, None, None, None, None, None)


def _recompute(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None, features: FeatureFn,
               causal: bool, eps: float, block: int) -> Tensor:
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(work), k.to(work), v.to(work)
    bias = None if key_bias is None else key_bias.to(work)
    q_feat, k_feat = features(q, k, bias)
    return _torch_attention(q_feat, k_feat, v, causal, eps, block)


def fused_random_feature_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    key_bias: Tensor | None,
    features: FeatureFn,
    *,
    softmax: bool,
    causal: bool,
    eps: float,
    use_triton: bool = True,
    block: int | None = None,
) -> Tensor:
    """Random-feature attention core for the GPU; returns contiguous ``(B, L, H, d)``.

    Args:
        q, k, v: ``(B, H, n, d)`` per-head projections (any strides), one floating dtype.
        w: ``(H, m, d)`` feature projection, already scaled by ``d**-0.25``.
        key_bias: ``(B, S)`` float32 additive per-key bias (``-inf`` removes a key) or None.
        features: the layer's reference feature maps ``(q, k, key_bias) -> (phi(q), phi(k))``,
            used by the backward pass and by the torch form.
        softmax: softmax (positive random) features if True, else ReLU features.
        causal: token ``t`` attends to tokens ``<= t`` (needs ``L == S``).
        eps: added to the normaliser.
        use_triton: run the Triton kernels (else the vectorised chunked torch form).
        block: tokens per program / causal chunk (default :func:`default_block`).
    """
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs equal lengths, got {q.shape[2]} and {k.shape[2]}")
    if block is None:
        block = default_block(w.shape[1], q.shape[-1])
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16 (Triton tiles), got {block}")
    w = w.to(q.dtype)
    if key_bias is not None:
        key_bias = key_bias.float()
    return _FusedAttention.apply(q, k, v, w, key_bias, features, softmax, causal, float(eps),
                                 block, use_triton)
