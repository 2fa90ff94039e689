"""Triton kernels of random-feature attention (imported lazily: needs ``triton``).

Layout conventions: queries/keys/values are strided 4-D ``(B, H, n, d)`` tensors (views of the
projection output, no copies); the projection ``w`` is ``(H, m, d)`` already scaled by
``d**-0.25``; the output is written contiguous ``(B, L, H, d)`` so the caller's reshape to
``(B, L, E)`` is free. One program handles one (batch, head) pair and one block of tokens.

Feature maps (the same formulas as :meth:`panther.nn.RandMultiHeadAttention.feature_maps`):

* softmax: ``log phi(x)_j = x.w_j - |x|^2 / (2 sqrt(d)) - log(m) / 2``, stabilised by the
  row maximum for queries and by one constant per (batch, head) for keys (``kstab``, computed
  on the device by :func:`key_max_kernel`; no host sync). A key's padding bias is added to its
  logits, so ``-inf`` removes the key.
* relu: ``phi(x)_j = (relu(x.w_j) + 1e-3) / sqrt(m)``; a key's bias multiplies its features by
  ``exp(bias - kstab)``, ``kstab`` being the largest finite bias of the batch row.

The feature maps are computed in float32 from a tensor-core product in the inputs' precision;
the feature-by-value products run on tensor cores in the inputs' precision (bf16/fp16) or in
IEEE float32 for float32 inputs, always accumulating in float32. The carried states are float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

RELU_EPS = 1e-3  # must equal panther.nn.attention._RELU_KERNEL_EPS


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # Triton's CPU interpreter multiplies bfloat16 operands as raw bits; UPCAST (set only when
    # interpreting bf16) computes the same product in float32 there.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _program(H):
    """(batch x head index, batch, head) of this program; 64-bit, since batch x sequence x
    width offsets can exceed 2**31 elements."""
    pid_bh = tl.program_id(0).to(tl.int64)
    return pid_bh, pid_bh // H, pid_bh % H


@triton.jit
def _load_state(STATE, index, offs_m, offs_d, m_valid, d_valid, M, D):
    """Row ``index`` of a float32 ``(..., M, D)`` state (zeros where masked)."""
    return tl.load(STATE + index * M * D + offs_m[:, None] * D + offs_d[None, :],
                   mask=m_valid[:, None] & d_valid[None, :], other=0.0)


@triton.jit
def _store_out(OUT, out, b, h, offs_n, offs_d, n_valid, d_valid, H, L, D):
    # OUT is contiguous (B, L, H, D).
    ptr = OUT + ((b * L + offs_n[:, None]) * H + h) * D + offs_d[None, :]
    tl.store(ptr, out.to(OUT.dtype.element_ty), mask=n_valid[:, None] & d_valid[None, :])


@triton.jit
def _load_rows(ptr, stride_n, stride_d, offs_n, offs_d, n_valid, D):
    return tl.load(
        ptr + offs_n[:, None].to(tl.int64) * stride_n + offs_d[None, :] * stride_d,
        mask=n_valid[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )


@triton.jit
def _load_w(W, h, stride_wh, stride_wm, stride_wd, offs_m, offs_d, M, D):
    return tl.load(
        W + h * stride_wh + offs_m[:, None] * stride_wm + offs_d[None, :] * stride_wd,
        mask=(offs_m[:, None] < M) & (offs_d[None, :] < D),
        other=0.0,
    )


@triton.jit
def _load_bias(BIAS, b, stride_bb, stride_bs, offs_n, n_valid, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        return tl.load(BIAS + b * stride_bb + offs_n * stride_bs, mask=n_valid, other=0.0)
    else:
        return tl.zeros(offs_n.shape, dtype=tl.float32)


@triton.jit
def _query_features(x, w, m_valid, c_half, half_log_m, inv_sqrt_m, SOFTMAX: tl.constexpr,
                    UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    proj = _dot(x, tl.trans(w), UPCAST, PRECISION)
    if SOFTMAX:
        xf = x.to(tl.float32)
        logit = proj - c_half * tl.sum(xf * xf, axis=1)[:, None]
        logit = tl.where(m_valid[None, :], logit, float("-inf"))
        row_max = tl.max(logit, axis=1)
        feat = tl.exp(logit - row_max[:, None] - half_log_m)
    else:
        feat = (tl.maximum(proj, 0.0) + RELU_EPS) * inv_sqrt_m
        feat = tl.where(m_valid[None, :], feat, 0.0)
    return feat


@triton.jit
def _key_logits(x, w, bias, c_half, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    proj = _dot(x, tl.trans(w), UPCAST, PRECISION)
    xf = x.to(tl.float32)
    return proj - c_half * tl.sum(xf * xf, axis=1)[:, None] + bias[:, None]


@triton.jit
def _key_features(x, w, bias, kstab, n_valid, m_valid, c_half, half_log_m, inv_sqrt_m,
                  SOFTMAX: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if SOFTMAX:
        feat = tl.exp(_key_logits(x, w, bias, c_half, UPCAST, PRECISION) - kstab - half_log_m)
    else:
        proj = _dot(x, tl.trans(w), UPCAST, PRECISION)
        feat = (tl.maximum(proj, 0.0) + RELU_EPS) * inv_sqrt_m * tl.exp(bias - kstab)[:, None]
    return tl.where(n_valid[:, None] & m_valid[None, :], feat, 0.0)


@triton.jit
def key_max_kernel(
    K, W, BIAS, PART,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_wh, stride_wm, stride_wd,
    stride_bb, stride_bs,
    H, S, M, D, NUM_BLOCKS, c_half,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Largest softmax key logit of one block of keys, into ``PART[b * H + h, block]``."""
    pid_bh, b, h = _program(H)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < S
    k = _load_rows(K + b * stride_kb + h * stride_kh, stride_kn, stride_kd, offs_n, offs_d,
                   n_valid, D)
    w = _load_w(W, h, stride_wh, stride_wm, stride_wd, offs_m, offs_d, M, D)
    bias = _load_bias(BIAS, b, stride_bb, stride_bs, offs_n, n_valid, HAS_BIAS)
    logit = _key_logits(k, w, bias, c_half, UPCAST, PRECISION)
    logit = tl.where(n_valid[:, None] & (offs_m[None, :] < M), logit, float("-inf"))
    tl.store(PART + pid_bh * NUM_BLOCKS + pid_n, tl.max(tl.max(logit, axis=1), axis=0))


@triton.jit
def key_state_kernel(
    K, V, W, BIAS, KSTAB, KV, Z,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_wh, stride_wm, stride_wd,
    stride_bb, stride_bs,
    H, S, M, D, c_half, half_log_m, inv_sqrt_m,
    SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """State of one group of key blocks: ``KV[pid] = sum phi(k) v^T`` and ``Z[pid] = sum phi(k)``.

    Program ``(bh, g)`` sums the key blocks ``g, g + G, g + 2G, ...`` (``G`` programs per
    (batch, head)) for the non-causal path, or exactly block ``g`` (``G`` = number of blocks)
    for the causal path's per-chunk states. ``KV`` is float32 ``(B*H, G, M, D)``, ``Z``
    ``(B*H, G, M)``.
    """
    pid_bh, b, h = _program(H)
    pid_g = tl.program_id(1)
    groups = tl.num_programs(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < M
    w = _load_w(W, h, stride_wh, stride_wm, stride_wd, offs_m, offs_d, M, D)
    kstab = tl.load(KSTAB + pid_bh)
    kv = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    z = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(pid_g * BLOCK_N, S, groups * BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_valid = offs_n < S
        k = _load_rows(K + b * stride_kb + h * stride_kh, stride_kn, stride_kd, offs_n, offs_d,
                       n_valid, D)
        v = _load_rows(V + b * stride_vb + h * stride_vh, stride_vn, stride_vd, offs_n, offs_d,
                       n_valid, D)
        bias = _load_bias(BIAS, b, stride_bb, stride_bs, offs_n, n_valid, HAS_BIAS)
        feat = _key_features(k, w, bias, kstab, n_valid, m_valid, c_half, half_log_m,
                             inv_sqrt_m, SOFTMAX, UPCAST, PRECISION)
        kv += _dot(tl.trans(feat.to(v.dtype)), v, UPCAST, PRECISION)
        z += tl.sum(feat, axis=0)
    out = pid_bh * groups + pid_g
    tl.store(KV + out * M * D + offs_m[:, None] * D + offs_d[None, :], kv,
             mask=m_valid[:, None] & (offs_d[None, :] < D))
    tl.store(Z + out * M + offs_m, z, mask=m_valid)


@triton.jit
def query_out_kernel(
    Q, W, KV, Z, OUT,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_wh, stride_wm, stride_wd,
    H, L, M, D, c_half, half_log_m, inv_sqrt_m, eps,
    SOFTMAX: tl.constexpr, STATE_LOW: tl.constexpr, PRECISION: tl.constexpr,
    STATE_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Non-causal output of one block of queries: ``phi(q) KV / (phi(q) . Z + eps)``."""
    pid_bh, b, h = _program(H)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < L
    m_valid = offs_m < M
    d_valid = offs_d < D
    q = _load_rows(Q + b * stride_qb + h * stride_qh, stride_qn, stride_qd, offs_n, offs_d,
                   n_valid, D)
    w = _load_w(W, h, stride_wh, stride_wm, stride_wd, offs_m, offs_d, M, D)
    feat = _query_features(q, w, m_valid, c_half, half_log_m, inv_sqrt_m, SOFTMAX, UPCAST,
                           PRECISION)
    kv = _load_state(KV, pid_bh, offs_m, offs_d, m_valid, d_valid, M, D)
    z = tl.load(Z + pid_bh * M + offs_m, mask=m_valid, other=0.0)
    if STATE_LOW:
        num = _dot(feat.to(q.dtype), kv.to(q.dtype), UPCAST, PRECISION)
    else:
        num = tl.dot(feat, kv, input_precision=STATE_PRECISION)
    den = tl.sum(feat * z[None, :], axis=1)
    out = num / (den[:, None] + eps)
    _store_out(OUT, out, b, h, offs_n, offs_d, n_valid, d_valid, H, L, D)


@triton.jit
def causal_out_kernel(
    Q, K, V, W, BIAS, KSTAB, STATE, ZSTATE, OUT,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_wh, stride_wm, stride_wd,
    stride_bb, stride_bs,
    H, L, M, D, NUM_CHUNKS, c_half, half_log_m, inv_sqrt_m, eps,
    SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, STATE_LOW: tl.constexpr,
    PRECISION: tl.constexpr, STATE_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Causal output of one chunk: the carried state of earlier chunks plus a masked chunk GEMM.

    ``STATE``/``ZSTATE`` hold the inclusive prefix sums of the per-chunk states (float32
    ``(B*H, C, M, D)`` / ``(B*H, C, M)``); chunk ``c`` reads entry ``c - 1``.
    """
    pid_bh, b, h = _program(H)
    pid_c = tl.program_id(1)
    offs_n = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < L
    m_valid = offs_m < M
    d_valid = offs_d < D
    w = _load_w(W, h, stride_wh, stride_wm, stride_wd, offs_m, offs_d, M, D)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, stride_qn, stride_qd, offs_n, offs_d,
                   n_valid, D)
    k = _load_rows(K + b * stride_kb + h * stride_kh, stride_kn, stride_kd, offs_n, offs_d,
                   n_valid, D)
    v = _load_rows(V + b * stride_vb + h * stride_vh, stride_vn, stride_vd, offs_n, offs_d,
                   n_valid, D)
    bias = _load_bias(BIAS, b, stride_bb, stride_bs, offs_n, n_valid, HAS_BIAS)
    kstab = tl.load(KSTAB + pid_bh)
    fq = _query_features(q, w, m_valid, c_half, half_log_m, inv_sqrt_m, SOFTMAX, UPCAST,
                         PRECISION)
    fk = _key_features(k, w, bias, kstab, n_valid, m_valid, c_half, half_log_m, inv_sqrt_m,
                       SOFTMAX, UPCAST, PRECISION)
    # Earlier chunks: one product with the carried state (zero for the first chunk).
    prev_ok = m_valid & ((offs_m * 0 + pid_c) > 0)
    prev = pid_bh * NUM_CHUNKS + pid_c - 1
    state = _load_state(STATE, prev, offs_m, offs_d, prev_ok, d_valid, M, D)
    zprev = tl.load(ZSTATE + prev * M + offs_m, mask=prev_ok, other=0.0)
    if STATE_LOW:
        num = _dot(fq.to(q.dtype), state.to(q.dtype), UPCAST, PRECISION)
    else:
        num = tl.dot(fq, state, input_precision=STATE_PRECISION)
    den = tl.sum(fq * zprev[None, :], axis=1)
    # This chunk: the masked (lower-triangular) chunk x chunk product.
    scores = _dot(fq.to(q.dtype), tl.trans(fk.to(q.dtype)), UPCAST, PRECISION)
    rows = tl.arange(0, BLOCK_N)
    scores = tl.where(rows[:, None] >= rows[None, :], scores, 0.0)
    num += _dot(scores.to(v.dtype), v, UPCAST, PRECISION)
    den += tl.sum(scores, axis=1)
    out = num / (den[:, None] + eps)
    _store_out(OUT, out, b, h, offs_n, offs_d, n_valid, d_valid, H, L, D)
