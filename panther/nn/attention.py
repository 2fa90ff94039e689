"""Random-feature (Performer-style) multi-head attention.

:class:`RandMultiHeadAttention` is a drop-in replacement for :class:`torch.nn.MultiheadAttention`
whose cost is linear in the sequence length. The softmax kernel ``exp(q.k / sqrt(d))`` is
replaced by an inner product of random feature maps ``phi(q).phi(k)`` (FAVOR+, Choromanski et
al., "Rethinking Attention with Performers", 2021), so attention becomes

    out_t = phi(q_t) (sum_s phi(k_s) v_s^T) / (phi(q_t) . sum_s phi(k_s))

which costs O(n * m * d) for n tokens, m random features and head size d, and never forms the
n x n attention matrix. Causal attention uses prefix sums of the same quantities
(:func:`panther.native.ops.causal_linear_attention`).

``approximation="landmark"`` is a more accurate option at the same ``m``: every query attends
exactly to the keys of its own segment of ``ceil(S/m)`` tokens and to one landmark per other
segment (the segment's mean key and value, weighted by the segment's size), see
:func:`landmark_attention`. On CUDA the random-feature core runs in the Triton kernels of
:mod:`panther.native.triton`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from panther.native import ops

__all__ = [
    "RandMultiHeadAttention",
    "landmark_attention",
    "landmark_clusters",
    "orthogonal_gaussian_projection",
]

KernelName = Literal["softmax", "relu"]
_KERNELS = ("softmax", "relu")
ApproximationName = Literal["random_features", "landmark"]
_APPROXIMATIONS = ("random_features", "landmark")
_GPU_BACKENDS = ("auto", "triton", "torch", "off")

# Added to the ReLU features (before the 1/sqrt(m) scaling) so that the attention denominator
# stays positive even when every projection of a query or key is negative.
_RELU_KERNEL_EPS = 1e-3

# Guards 0/0 in the attention normaliser (e.g. a query whose keys are all padding). Tiny on
# purpose: the denominator is a sum of positive terms, and any larger constant would bias the
# ratio whenever the stabilised features are small.
_DEFAULT_EPS = 1e-12


_thread_controller: Any = None


def _single_threaded() -> contextlib.AbstractContextManager[Any]:
    """A context running OpenMP/BLAS on one thread (a no-op without ``threadpoolctl``).

    The projection is a batch of tiny QR factorisations. Spreading them over torch's
    OpenMP pool gains nothing, and on a busy machine the pool's barriers make the draw
    hundreds of times slower (measured: 7 s instead of 0.03 s for 8 heads x 256
    features on 2 oversubscribed cores).
    """
    global _thread_controller
    try:
        from threadpoolctl import ThreadpoolController  # ships with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    if _thread_controller is None:
        _thread_controller = ThreadpoolController()
    return _thread_controller.limit(limits=1)


def orthogonal_gaussian_projection(
    num_heads: int,
    num_features: int,
    head_dim: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Draw ``(num_heads, num_features, head_dim)`` block-orthogonal Gaussian projections.

    For every head the rows come in blocks of ``head_dim`` mutually orthogonal directions
    (the Q factor of a QR decomposition of a square Gaussian matrix), and each row is then
    rescaled to an independent chi(``head_dim``)-distributed norm, so that marginally every
    row is exactly ``N(0, I)`` while rows within a block are orthogonal. Orthogonality lowers
    the variance of the random-feature kernel estimate (FAVOR+).

    The draw happens on the CPU in float64 from ``generator`` so the result depends only on
    the generator's seed, not on the device the layer lives on.
    """
    if num_heads <= 0 or num_features <= 0 or head_dim <= 0:
        raise ValueError(
            "orthogonal_gaussian_projection needs positive sizes, got "
            f"num_heads={num_heads}, num_features={num_features}, head_dim={head_dim}"
        )
    num_blocks = math.ceil(num_features / head_dim)
    gauss = torch.randn(
        num_heads, num_blocks, head_dim, head_dim, generator=generator, dtype=torch.float64
    )
    with _single_threaded():
        q, r = torch.linalg.qr(gauss)
    # Fix the sign ambiguity of QR so Q is Haar-distributed rather than biased by LAPACK's
    # sign convention.
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    q = q * signs.unsqueeze(-2)
    # Rows of Q^T are orthonormal directions; stack the blocks and keep the first m rows.
    rows = q.transpose(-1, -2).reshape(num_heads, num_blocks * head_dim, head_dim)
    rows = rows[:, :num_features]
    norms = torch.randn(
        num_heads, num_features, head_dim, generator=generator, dtype=torch.float64
    ).norm(dim=-1, keepdim=True)
    return (rows * norms).to(dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # exp() of the softmax features and the long sums in the normaliser lose too much in half
    # precision; compute those in float32 and cast the result back.
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _finite_or_zero(t: Tensor) -> Tensor:
    # A batch row whose keys are all masked has max -inf; any finite stabiliser works there.
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def _relu_bias_top(key_bias: Tensor | None) -> Tensor | None:
    if key_bias is None:
        return None
    return _finite_or_zero(key_bias.amax(dim=-1, keepdim=True))


def landmark_clusters(
    k: Tensor,
    key_bias: Tensor | None,
    num_landmarks: int,
    causal: bool,
    directions: Tensor,
    iterations: int = 5,
) -> Tensor:
    """Group the keys ``(B, H, S, d)`` into ``num_landmarks`` clusters; returns ids ``(B, H, S)``.

    Non-causal: Lloyd's k-means on each (batch row, head)'s own keys, started from the means of
    ``num_landmarks`` contiguous segments (deterministic), ``iterations`` rounds, removed keys
    (``key_bias`` ``-inf``) carrying no weight. Causal: a key's cluster must not depend on
    later keys, so it is the random direction of ``directions`` (``(H, >= num_landmarks, d)``,
    the layer's Gaussian projection) with the largest projection (cross-polytope style
    locality-sensitive hashing): similar keys share a cluster whatever comes after them.
    No gradient flows through the (discrete) grouping.
    """
    k = k.detach()
    B, H, S, d = k.shape
    if causal:
        return torch.einsum("bhsd,hmd->bhsm", k, directions[:, :num_landmarks].to(k.dtype)).argmax(-1)
    m = min(num_landmarks, S)
    weight = _key_weights(key_bias, B, S, k)[0][:, None, :, None]  # (B, 1, S, 1)
    segment = torch.arange(S, device=k.device) * m // S
    member = _one_hot(segment, m, k.dtype) * weight  # (B, 1, S, m)
    centroids = _weighted_means(member.expand(B, H, S, m), k)[0]
    for _ in range(iterations + 1):
        # argmin |k - c|^2 = argmax 2 k.c - |c|^2; an empty cluster keeps its old centroid.
        score = 2 * (k @ centroids.transpose(-1, -2)) - (centroids * centroids).sum(-1)[:, :, None]
        assign = score.argmax(-1)
        if _ == iterations:
            break
        member = _one_hot(assign, m, k.dtype) * weight
        means, mass = _weighted_means(member, k)
        centroids = torch.where(mass.unsqueeze(-1) > 0, means, centroids)
    return assign


def _one_hot(ids: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    # F.one_hot validates the ids' range on the host (a device sync on CUDA); a scatter does
    # not. The ids come from argmax/arange here, so they are in range by construction.
    out = torch.zeros(*ids.shape, m, dtype=dtype, device=ids.device)
    return out.scatter_(-1, ids.unsqueeze(-1), 1.0)


def _key_weights(key_bias: Tensor | None, B: int, S: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-key weights ``exp(bias - top)`` ``(B, S)`` (0 for removed keys) and ``top`` ``(B, 1)``."""
    if key_bias is None:
        return like.new_ones(B, S), like.new_zeros(B, 1)
    bias = key_bias.to(like.dtype)
    top = _finite_or_zero(bias.amax(dim=-1, keepdim=True))
    return torch.exp(bias - top), top


def _weighted_means(member: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Means ``(..., m, d)`` of rows of ``x`` ``(..., S, d)`` weighted by ``member`` ``(..., S, m)``,
    and the weights' totals ``(..., m)`` (means of empty groups are 0)."""
    mass = member.sum(dim=-2)
    sums = member.transpose(-1, -2) @ x
    return sums / torch.where(mass > 0, mass, torch.ones_like(mass)).unsqueeze(-1), mass


def landmark_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_bias: Tensor | None,
    num_landmarks: int,
    causal: bool,
    eps: float = _DEFAULT_EPS,
    local: bool = True,
    window: int = 1,
    clusters: Tensor | None = None,
    fused_dtype: torch.dtype | None = None,
) -> Tensor:
    """Softmax attention with the keys outside a local window compressed into landmarks.

    ``q`` is ``(B, H, L, d)``, ``k``/``v`` are ``(B, H, S, d)``; ``key_bias`` (``(B, S)``, finite
    or ``-inf``) is an additive per-key logit bias. ``clusters`` (``(B, H, S)`` ids in
    ``[0, num_landmarks)``, e.g. from :func:`landmark_clusters`) groups the keys; None groups
    them into contiguous segments. The sequence is cut into segments of
    ``g = ceil(S / num_landmarks)`` tokens. Query ``t`` of segment ``i`` attends exactly to the
    keys of segments ``i - window .. i + window`` (``i - window .. i``, and only keys ``<= t``,
    if ``causal``), and to one landmark per cluster summarising that cluster's *other* keys (in
    causal mode only keys of segments before ``i - window``: nothing summarises a later key).
    A landmark is the bias-weighted mean key and value of its keys, with logit bias ``log`` of
    their total weight, so it stands for that many copies of its mean key (Nystrom-style
    column sampling of the attention matrix by clustering). Without ``local`` every query
    attends to all landmarks (cross-attention). The sums outside the window are prefix and
    suffix sums over segments, never differences, so empty landmarks stay exactly empty.

    Exact when every cluster holds one key. Costs ``O(L * ((2 * window + 1) * g + m) * d)``
    for ``m = num_landmarks`` landmarks, with no ``L x S`` matrix; a query whose keys are all
    removed gets a zero output. Returns ``(B, H, L, d)``. Differentiable (given the clusters);
    vectorised torch on any device.

    ``fused_dtype`` (e.g. the inputs' bf16 on a GPU) runs the final softmax-and-sum in
    :func:`torch.nn.functional.scaled_dot_product_attention` in that dtype (fused
    flash/memory-efficient kernels: the scores are never stored), with the per-key biases
    folded into an extra head dimension and a lower-right causal mask; None computes the
    scores explicitly in the inputs' dtype.
    """
    if num_landmarks <= 0:
        raise ValueError(f"num_landmarks must be positive, got {num_landmarks}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    B, H, L, d = q.shape
    S = k.shape[2]
    if local and L != S:
        raise ValueError(f"local landmark attention needs L == S, got L={L}, S={S}")
    if causal and not local:
        raise ValueError("causal landmark attention needs local=True")
    neg_inf = float("-inf")
    g = -(-S // num_landmarks)
    segs = -(-S // g)
    pad = segs * g - S
    m = num_landmarks
    alpha, top = _key_weights(key_bias, B, S, k)
    bias = k.new_zeros(B, S) if key_bias is None else key_bias.to(k.dtype)
    if clusters is None:
        clusters = (torch.arange(S, device=k.device) // g).expand(B, H, S)
    if pad:
        k, v = (F.pad(t, (0, 0, 0, pad)) for t in (k, v))
        bias = F.pad(bias, (0, pad), value=neg_inf)
        alpha = F.pad(alpha, (0, pad))
        clusters = F.pad(clusters, (0, pad))
    ks = k.reshape(B, H, segs, g, d)
    vs = v.reshape(B, H, segs, g, d)
    bs = bias.reshape(B, segs, g)
    # Per segment and cluster: total weight and weighted sums of keys and values.
    member = _one_hot(clusters, m, k.dtype) * alpha[:, None, :, None]
    member = member.reshape(B, H, segs, g, m).transpose(-1, -2)  # (B, H, segs, m, g)
    seg_mass = member.sum(-1)  # (B, H, segs, m)
    seg_k = member @ ks  # (B, H, segs, m, d)
    seg_v = member @ vs
    scale = d**-0.5

    def landmarks(mass: Tensor, ksum: Tensor, vsum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        safe = torch.where(mass > 0, mass, torch.ones_like(mass)).unsqueeze(-1)
        log_mass = torch.where(mass > 0, mass, torch.zeros_like(mass)).log()  # -inf if empty
        return ksum / safe, vsum / safe, log_mass + top.view(B, *[1] * (mass.dim() - 1))

    if not local:
        k_land, v_land, l_bias = landmarks(seg_mass.sum(2), seg_k.sum(2), seg_v.sum(2))
        if fused_dtype is not None:
            return _sdpa_apply(q, k_land, v_land, l_bias, 0, fused_dtype).to(q.dtype)
        scores = (q @ k_land.transpose(-1, -2)) * scale + l_bias.unsqueeze(-2)
        return _stable_softmax_apply([(scores, v_land)], eps)

    def outside(t: Tensor) -> Tensor:
        # Sum over segments j < i - window (and j > i + window unless causal), per segment i.
        front = (0, 0) * (t.dim() - 3) + (window + 1, 0)  # pads the segment axis in front
        before = F.pad(t, front).cumsum(2)[:, :, :segs]
        if causal:
            return before
        after = F.pad(t.flip(2), front).cumsum(2)[:, :, :segs].flip(2)
        return before + after

    k_land, v_land, l_bias = landmarks(outside(seg_mass), outside(seg_k), outside(seg_v))
    qs = F.pad(q, (0, 0, 0, pad)).reshape(B, H, segs, g, d)
    # Exact keys: the own segment and `window` neighbours on each side (only earlier ones if
    # causal), gathered by shifting the segment axis; out-of-range neighbours are all padding.
    offsets = range(-window, 1 if causal else window + 1)
    ks_pad = F.pad(ks, (0, 0, 0, 0, window, window))
    vs_pad = F.pad(vs, (0, 0, 0, 0, window, window))
    bs_pad = F.pad(bs, (0, 0, window, window), value=neg_inf)
    near_k = torch.cat([ks_pad[:, :, window + o: window + o + segs] for o in offsets], dim=3)
    near_v = torch.cat([vs_pad[:, :, window + o: window + o + segs] for o in offsets], dim=3)
    near_b = torch.cat([bs_pad[:, window + o: window + o + segs] for o in offsets], dim=2)
    if fused_dtype is not None:
        # Keys per segment: the landmarks, then the window (own segment last, so a lower-right
        # causal mask hides exactly the own segment's later keys).
        keys = torch.cat([k_land, near_k], dim=3)
        values = torch.cat([v_land, near_v], dim=3)
        key_bias_all = torch.cat([l_bias, near_b[:, None].expand(B, H, segs, -1)], dim=-1)
        out = _sdpa_apply(qs, keys, values, key_bias_all, g if causal else 0, fused_dtype)
        return out.to(q.dtype).reshape(B, H, segs * g, d)[:, :, :L]
    local_scores = (qs @ near_k.transpose(-1, -2)) * scale + near_b[:, None, :, None, :]
    if causal:
        # Within the own segment (the last g exact keys) only keys <= the query.
        future = torch.zeros(g, len(offsets) * g, dtype=torch.bool, device=q.device)
        future[:, -g:] = torch.ones(g, g, dtype=torch.bool, device=q.device).triu(1)
        local_scores = local_scores.masked_fill(future, neg_inf)
    land_scores = (qs @ k_land.transpose(-1, -2)) * scale + l_bias.unsqueeze(-2)
    out = _stable_softmax_apply([(local_scores, near_v), (land_scores, v_land)], eps)
    return out.reshape(B, H, segs * g, d)[:, :, :L]


# A removed key's logit inside the fused kernel: exp() of it underflows to 0 next to any real
# logit, and it fits fp16 (the bias rides in an extra head dimension, multiplied by sqrt(d)).
_MASKED_LOGIT = -1e4


def _sdpa_apply(q: Tensor, keys: Tensor, values: Tensor, key_bias: Tensor, own: int,
                dtype: torch.dtype) -> Tensor:
    """``softmax(q keys^T / sqrt(d) + key_bias) values`` by fused scaled-dot-product attention.

    ``q`` is ``(B, ..., Lq, d)``, ``keys``/``values`` ``(B, ..., K, d)``, ``key_bias``
    ``(B, ..., K)`` (``-inf`` removes a key). The bias is folded into an extra dimension
    (``q`` gets ``sqrt(d)``, a key its bias) so no ``Lq x K`` mask is materialised. With
    ``own > 0`` the last ``own == Lq`` keys are the queries' own tokens and only those up to
    each query count (lower-right causal). Rows with no key left are 0.
    """
    from torch.nn.attention.bias import causal_lower_right

    d = q.shape[-1]
    lq, k_len = q.shape[-2], keys.shape[-2]
    dead = torch.isneginf(key_bias)
    folded = torch.where(dead, torch.full_like(key_bias, _MASKED_LOGIT), key_bias)
    width = -(-(d + 1) // 8) * 8  # fused kernels want head sizes in multiples of 8
    qa = torch.cat([q, q.new_full((*q.shape[:-1], 1), math.sqrt(d))], dim=-1)
    ka = torch.cat([keys, folded.unsqueeze(-1)], dim=-1)
    qa = F.pad(qa, (0, width - d - 1)).to(dtype)
    ka = F.pad(ka, (0, width - d - 1)).to(dtype)
    va = F.pad(values, (0, width - d)).to(dtype)
    batch = q.shape[0]
    # Fused kernels take 4-D (N, heads, L, E): fold every middle axis into the heads.
    qa, ka, va = (t.reshape(batch, -1, t.shape[-2], width) for t in (qa, ka, va))
    mask = causal_lower_right(lq, k_len) if own else None
    out = F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, scale=d**-0.5)
    out = out[..., :d].reshape(*q.shape)
    alive = ~dead
    if own:
        valid = alive[..., :-own].any(-1, keepdim=True) | (alive[..., -own:].cumsum(-1) > 0)
    else:
        valid = alive.any(-1, keepdim=True)
    return torch.where(valid.unsqueeze(-1), out, torch.zeros_like(out))


def _stable_softmax_apply(parts: list[tuple[Tensor, Tensor]], eps: float) -> Tensor:
    """Softmax over all key groups of ``parts`` = [(group scores, group values)], applied.

    The row maximum is taken over all groups together; a row with no finite score (every key
    removed) gets 0 instead of NaN, and without a host sync.
    """
    maxima = [group.amax(dim=-1, keepdim=True) for group, _ in parts]
    row_max = maxima[0]
    for other in maxima[1:]:
        row_max = torch.maximum(row_max, other)
    row_max = _finite_or_zero(row_max.detach())
    num = None
    den = None
    for group, values in parts:
        p = torch.exp(group - row_max)
        term = p @ values
        num = term if num is None else num + term
        mass = p.sum(dim=-1, keepdim=True)
        den = mass if den is None else den + mass
    assert num is not None and den is not None
    return num / (den + eps)


class RandMultiHeadAttention(nn.Module):
    """Multi-head attention with random-feature (Performer / FAVOR+) kernels.

    Replaces :class:`torch.nn.MultiheadAttention` at linear cost in the sequence length.
    The q/k/v projections are stored packed in ``in_proj_weight`` (``(3E, E)``) and
    ``in_proj_bias`` exactly like ``nn.MultiheadAttention``, and the output projection is
    ``out_proj``; only the attention kernel differs.

    Args:
        embed_dim: model dimension ``E``; must be divisible by ``num_heads``.
        num_heads: number of attention heads.
        num_random_features: ``m``, random features per head. Larger ``m`` approximates
            softmax attention better (error ~ 1/sqrt(m)) at linear extra cost.
        dropout: dropout probability applied to the attention *output* of each head
            (before ``out_proj``), since no attention-weight matrix exists to drop from.
        bias: whether the in/out projections have biases.
        kernel_fn: ``"softmax"`` for positive orthogonal random features that approximate
            ``exp(q.k / sqrt(d))`` without bias, or ``"relu"`` for ``ReLU(w.x)`` features
            (a different, lower-variance kernel; not an approximation of softmax).
        iscausal: if True, token t attends only to tokens ``<= t`` in every call.
        batch_first: if True, inputs are ``(N, L, E)``; otherwise ``(L, N, E)`` like
            ``nn.MultiheadAttention``. Unbatched ``(L, E)`` inputs are accepted either way.
        device, dtype: where and in what precision parameters and buffers live.
        seed: seed of the random projections; drawn from torch's global RNG when None and
            stored in ``self.seed`` so the layer can be rebuilt exactly.
        approximation: ``"random_features"`` (default; the kernels above) or ``"landmark"``:
            exact softmax attention within segments of ``ceil(S/m)`` tokens plus one landmark
            (mean key and value) per other segment, ``m`` = ``num_random_features``
            (:func:`landmark_attention`). Much more accurate at the same ``m`` on trained
            models (``benchmarks/bench_attention_accuracy.py``); cost grows like
            ``n * (n/m + m)`` instead of ``n * m``. ``kernel_fn`` does not apply to it.

    The random projections are the persistent buffer ``projection`` of shape
    ``(num_heads, m, head_dim)`` (saved in ``state_dict``). ``eps`` (default 1e-12) is added to
    the attention normaliser to keep fully-masked queries at zero instead of NaN.

    Numerics: features are stabilised in log space (per-query max for queries, one max over
    all keys and features per batch row and head for keys), which leaves the attention ratio
    unchanged. In causal mode a key whose features are ~exp(-87) below the largest key's
    (float32) underflows to zero weight; this only matters for extreme activations.

    On a CPU, inference (no autograd needed, dropout inactive) on long sequences runs
    blockwise so the working set stays in cache: non-causal attention in two passes
    (keys/values, then queries), causal attention in one pass carrying the prefix state. The
    key stabiliser is then the running maximum, with the accumulated state rescaled as it
    grows; results match the unchunked computation up to rounding. Training keeps the
    unchunked graph.

    On CUDA tensors (see :attr:`gpu_backend`) the random-feature core runs in the Triton
    kernels of :mod:`panther.native.triton` (fused feature maps and stabiliser, tensor-core
    state products, the chunked-parallel causal form; half precision kept, no host sync),
    and landmark attention finishes in fused ``scaled_dot_product_attention``. Both give the
    CPU paths' results up to rounding, gradients included.
    """

    # PyTorch's fused TransformerEncoderLayer / TransformerEncoder fast path reads
    # ``in_proj_weight`` directly and computes *exact* softmax attention, bypassing
    # ``forward``. Those fast-path checks test this flag, so declaring it False makes the
    # modules call this layer's ``forward`` instead. The projections are still packed.
    _qkv_same_embed_dim: bool = False

    # Tokens per block in the chunked inference path of non-causal attention (None disables
    # it). Processing the sequence in blocks keeps the working set (projections and feature
    # maps of one block) in cache, so time grows linearly with the sequence length instead of
    # slowing down once the full-sequence intermediates spill out of L2/L3.
    # 1024 measured best among 256..2048 (embed 512, 8 heads, m = 64, two cores).
    _inference_chunk_size: int | None = 1024
    # Causal attention is chunked only for sequences longer than this (None never chunks it).
    # Each block continues the native scan from the carried prefix state
    # (ops.causal_linear_attention_stateful), so chunking costs nothing extra per token; it pays
    # off once the full-sequence projections and feature maps (~48 MB at n = 4096) spill out of
    # L3. bench_layers.py (embed 512, 8 heads, m = 64, two cores, two runs): n = 8192 116/103 ms
    # chunked vs 131 ms unchunked, growth 2048->4096 2.12/2.07x (2.23x unchunked) and
    # 4096->8192 1.99/1.99x (2.24x). At n <= 2048 the two paths measured within noise
    # (2048: 27.8 vs 29.4 ms median, 26.8 vs 25.6 ms best), so short sequences stay unchunked.
    _causal_chunk_min_len: int | None = 2048

    #: Which implementation runs the attention core. ``"auto"`` (default): on CUDA tensors the
    #: Triton kernels of :mod:`panther.native.triton` (the vectorised chunked torch form when
    #: ``triton`` is not installed), on other devices the CPU paths above. ``"triton"`` and
    #: ``"torch"`` force that GPU path on any device (Triton on CPU tensors needs
    #: ``TRITON_INTERPRET=1``); ``"off"`` always takes the CPU-oriented paths (never the CPU's
    #: token blocking on a GPU, though). Set it on an instance or on the class.
    gpu_backend: Literal["auto", "triton", "torch", "off"] = "auto"
    # Tokens per Triton program / causal chunk (None: chosen from m and head_dim by
    # panther.native.triton.linear_attention.default_block). Tests shrink it to cross chunks.
    _gpu_block: int | None = None
    # Class-level default so layers pickled before the option existed still load.
    approximation: ApproximationName = "random_features"

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_random_features: int,
        dropout: float = 0.0,
        bias: bool = True,
        kernel_fn: KernelName = "softmax",
        iscausal: bool = False,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
        approximation: ApproximationName = "random_features",
    ) -> None:
        super().__init__()
        for name, value in (
            ("embed_dim", embed_dim),
            ("num_heads", num_heads),
            ("num_random_features", num_random_features),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}); "
                "choose a num_heads that divides embed_dim"
            )
        if kernel_fn not in _KERNELS:
            raise ValueError(f"kernel_fn must be one of {_KERNELS}, got {kernel_fn!r}")
        if approximation not in _APPROXIMATIONS:
            raise ValueError(
                f"approximation must be one of {_APPROXIMATIONS}, got {approximation!r}")
        if not isinstance(dropout, int | float) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")

        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = embed_dim
        self.vdim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.num_random_features = num_random_features
        self.dropout = float(dropout)
        self.kernel_fn: KernelName = kernel_fn
        self.approximation: ApproximationName = approximation
        self.iscausal = bool(iscausal)
        self.batch_first = bool(batch_first)
        self.eps = _DEFAULT_EPS
        # Attributes nn.MultiheadAttention users and PyTorch internals read.
        self.bias_k = None
        self.bias_v = None
        self.add_zero_attn = False

        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        self.register_parameter("q_proj_weight", None)
        self.register_parameter("k_proj_weight", None)
        self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **factory)

        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = int(seed)
        proj_dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.register_buffer(
            "projection",
            torch.empty(num_heads, num_random_features, self.head_dim, device=device,
                        dtype=proj_dtype),
        )
        self._draw_projection()
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up

    def reset_parameters(self) -> None:
        """Re-initialise the projections as ``nn.MultiheadAttention`` does.

        Xavier-uniform packed in-projection, zero biases, default ``nn.Linear`` out-projection
        weight. The random features are not touched; use :meth:`redraw_features` for them.
        """
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj.reset_parameters()
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def _draw_projection(self) -> None:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed)
        proj = orthogonal_gaussian_projection(
            self.num_heads, self.num_random_features, self.head_dim, gen
        )
        with torch.no_grad():
            self.projection.copy_(proj.to(self.projection.dtype))

    def redraw_features(self, seed: int | None = None) -> None:
        """Draw new random projections (in place) from ``seed``.

        With ``seed=None`` a fresh seed is drawn from torch's global RNG. The new seed is
        stored in ``self.seed``. Redrawing periodically during training is a known way to
        keep the approximation from being overfitted to one draw.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = int(seed)
        self._draw_projection()

    @classmethod
    def from_attention(
        cls,
        mha: nn.MultiheadAttention,
        num_random_features: int,
        kernel_fn: KernelName = "softmax",
        iscausal: bool = False,
        seed: int | None = None,
        approximation: ApproximationName = "random_features",
    ) -> RandMultiHeadAttention:
        """Build a random-feature layer carrying over an ``nn.MultiheadAttention``'s weights.

        Copies the q/k/v and output projection weights and biases and keeps the original's
        device, dtype, ``batch_first``, dropout probability and train/eval mode.
        ``approximation`` chooses random features (default) or landmark attention (see the
        class arguments).
        Only ``kdim == vdim == embed_dim`` without ``add_bias_kv``/``add_zero_attn`` is
        supported.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(
                f"from_attention expects an nn.MultiheadAttention, got {type(mha).__name__}"
            )
        if mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim:
            raise ValueError(
                "RandMultiHeadAttention.from_attention supports only kdim == vdim == embed_dim; "
                f"got embed_dim={mha.embed_dim}, kdim={mha.kdim}, vdim={mha.vdim}"
            )
        if mha.bias_k is not None or mha.bias_v is not None:
            raise ValueError(
                "RandMultiHeadAttention.from_attention does not support add_bias_kv=True "
                "(the learned extra key/value row)"
            )
        if mha.add_zero_attn:
            raise ValueError(
                "RandMultiHeadAttention.from_attention does not support add_zero_attn=True"
            )
        weight = mha.in_proj_weight
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            num_random_features,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kernel_fn=kernel_fn,
            iscausal=iscausal,
            batch_first=mha.batch_first,
            device=weight.device,
            dtype=weight.dtype,
            seed=seed,
            approximation=approximation,
        )
        with torch.no_grad():
            layer.in_proj_weight.copy_(weight)
            if mha.in_proj_bias is not None:
                layer.in_proj_bias.copy_(mha.in_proj_bias)
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and layer.out_proj.bias is not None:
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        layer.train(mha.training)
        return layer

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_random_features={self.num_random_features}, kernel_fn={self.kernel_fn!r}, "
            f"approximation={self.approximation!r}, "
            f"iscausal={self.iscausal}, dropout={self.dropout}, "
            f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}, "
            f"seed={self.seed}"
        )

    # ------------------------------------------------------------------ kernels

    def feature_maps(
        self, q: Tensor, k: Tensor, key_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Random feature maps of per-head queries and keys.

        ``q`` is ``(B, H, L, d)`` and ``k`` is ``(B, H, S, d)`` (already projected and split
        into heads). Returns non-negative ``(B, H, L, m)`` and ``(B, H, S, m)`` features with
        ``phi(q).phi(k)`` approximating ``exp(q.k / sqrt(d))`` up to a positive factor per
        query and per (batch, head), which cancels in the attention ratio.

        ``key_bias`` (``(B, S)``, finite values or ``-inf``) is an additive logit bias per key;
        ``-inf`` removes the key (its features become zero).
        """
        w = self._feature_weights(q.dtype)
        q_feat = self._query_features(q, w)
        if self.kernel_fn == "softmax":
            k_log = self._key_logits(k, w, key_bias)
            k_stab = _finite_or_zero(k_log.amax(dim=(-2, -1), keepdim=True).detach())
            k_feat = self._key_features_from_logits(k_log, k_stab)
        else:
            k_feat = self._relu_key_features(k, w, key_bias, _relu_bias_top(key_bias))
        return q_feat, k_feat

    # The feature maps are split in per-query and per-key pieces so that the chunked
    # inference path (:meth:`_chunked_attention`) computes exactly the same numbers per token.

    def _feature_weights(self, dtype: torch.dtype) -> Tensor:
        # Fold the d^(-1/4) input scaling into the (small) projection instead of the inputs.
        return self.projection.to(dtype) * self.head_dim**-0.25

    def _query_features(self, q: Tensor, w: Tensor) -> Tensor:
        m = w.shape[1]
        q_proj = torch.einsum("bhld,hmd->bhlm", q, w)
        if self.kernel_fn != "softmax":
            return (F.relu(q_proj) + _RELU_KERNEL_EPS) * m**-0.5
        half_sq = 0.5 * self.head_dim**-0.5
        q_log = q_proj - half_sq * (q * q).sum(-1, keepdim=True)
        # Any constant per query cancels in num/den; subtracting the maximum keeps exp() from
        # overflowing. The 1/sqrt(m) normalisation rides along in the exponent to save a pass
        # over the features.
        q_stab = q_log.amax(dim=-1, keepdim=True).detach() + 0.5 * math.log(m)
        return torch.exp(q_log - q_stab)

    def _key_logits(self, k: Tensor, w: Tensor, key_bias: Tensor | None) -> Tensor:
        """Log of the softmax key features before stabilisation, ``(B, H, S, m)``."""
        half_sq = 0.5 * self.head_dim**-0.5
        k_log = torch.einsum("bhsd,hmd->bhsm", k, w) - half_sq * (k * k).sum(-1, keepdim=True)
        if key_bias is not None:
            k_log = k_log + key_bias[:, None, :, None]
        return k_log

    @staticmethod
    def _key_features_from_logits(k_log: Tensor, k_stab: Tensor) -> Tensor:
        # One constant per (batch, head) for all keys cancels in num/den, like the per-query
        # one; it must be shared by every key, so it is passed in.
        return torch.exp(k_log - (k_stab + 0.5 * math.log(k_log.shape[-1])))

    def _relu_key_features(
        self, k: Tensor, w: Tensor, key_bias: Tensor | None, top: Tensor | None
    ) -> Tensor:
        m = w.shape[1]
        k_feat = (F.relu(torch.einsum("bhsd,hmd->bhsm", k, w)) + _RELU_KERNEL_EPS) * m**-0.5
        if key_bias is not None:
            assert top is not None
            k_feat = k_feat * torch.exp(key_bias - top)[:, None, :, None]
        return k_feat

    def _attend(self, q_feat: Tensor, k_feat: Tensor, v: Tensor, causal: bool) -> Tensor:
        if causal:
            return ops.causal_linear_attention(q_feat, k_feat, v, self.eps)
        kv = torch.einsum("bhsm,bhsd->bhmd", k_feat, v)
        num = torch.einsum("bhlm,bhmd->bhld", q_feat, kv)
        den = torch.einsum("bhlm,bhm->bhl", q_feat, k_feat.sum(dim=-2))
        return num / (den.unsqueeze(-1) + self.eps)

    # ------------------------------------------------------------------ masks

    def _resolve_causal(
        self, mask: Tensor | None, is_causal: bool, tgt_len: int, src_len: int
    ) -> bool:
        if self.iscausal or is_causal:
            # Like nn.MultiheadAttention, is_causal=True asserts that any mask given is the
            # causal mask, so it is not inspected.
            return True
        if mask is None:
            return False
        if mask.dim() not in (2, 3) or tuple(mask.shape[-2:]) != (tgt_len, src_len):
            raise ValueError(
                f"attn_mask must have shape (L, S) = ({tgt_len}, {src_len}) or "
                f"(N * num_heads, L, S), got {tuple(mask.shape)}; a per-key (N, S) padding mask "
                "goes in key_padding_mask="
            )
        if mask.dtype == torch.bool:
            blocked = mask
        elif mask.is_floating_point():
            blocked = mask == float("-inf")
            if bool(((mask != 0) & ~blocked).any()):
                raise NotImplementedError(
                    "RandMultiHeadAttention supports only 0/-inf attention masks: arbitrary "
                    "additive attn_mask biases cannot be applied without the n x n attention "
                    "matrix"
                )
        else:
            raise TypeError(f"attn_mask must be bool or floating point, got {mask.dtype}")
        if not bool(blocked.any()):
            return False
        causal_pattern = torch.ones(
            tgt_len, src_len, dtype=torch.bool, device=blocked.device
        ).triu(diagonal=1)
        if bool((blocked == causal_pattern).all()):
            return True
        raise NotImplementedError(
            "RandMultiHeadAttention supports only causal attention masks (upper-triangular "
            "-inf/True, or is_causal=True) and key_padding_mask: an arbitrary attn_mask "
            "cannot be applied to random-feature attention without the n x n matrix"
        )

    @staticmethod
    def _key_bias(
        key_padding_mask: Tensor | None, batch: int, src_len: int, dtype: torch.dtype
    ) -> Tensor | None:
        if key_padding_mask is None:
            return None
        if tuple(key_padding_mask.shape) != (batch, src_len):
            raise ValueError(
                f"key_padding_mask must have shape (N, S) = ({batch}, {src_len}) (or (S,) for "
                f"unbatched input), got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.dtype == torch.bool:
            bias = torch.zeros(key_padding_mask.shape, dtype=dtype,
                               device=key_padding_mask.device)
            return bias.masked_fill(key_padding_mask, float("-inf"))
        if key_padding_mask.is_floating_point():
            # Additive per-key bias exp(q.k + b) = exp(b) exp(q.k) is exact in feature space.
            return key_padding_mask.to(dtype)
        raise TypeError(
            f"key_padding_mask must be bool (True = ignore) or floating point, got "
            f"{key_padding_mask.dtype}"
        )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """Random-feature attention with ``nn.MultiheadAttention``'s calling convention.

        ``query`` is ``(L, N, E)`` (``(N, L, E)`` if ``batch_first``) or unbatched ``(L, E)``;
        ``key``/``value`` likewise with source length ``S``. Returns ``(output, None)`` with
        ``output`` shaped like ``query``; attention weights are never formed.

        ``attention_mask`` is an alias of ``attn_mask``. Supported masks: a causal
        ``(L, S)``/``(N*H, L, S)`` mask (upper-triangular ``True``/``-inf``) or
        ``is_causal=True`` switch to causal attention; an all-False/zero mask is a no-op; any
        other ``attn_mask`` raises ``NotImplementedError``. ``key_padding_mask`` (``(N, S)``,
        ``True`` = ignore, or a float additive per-key bias) removes keys. A query whose keys
        are all removed gets a zero output (``nn.MultiheadAttention`` gives NaN).
        ``need_weights=True`` warns and still returns ``None`` weights;
        ``average_attn_weights`` is accepted for compatibility and ignored.
        """
        if attention_mask is not None and attn_mask is not None and attention_mask is not attn_mask:
            raise ValueError("pass the attention mask as attn_mask= or attention_mask=, not both")
        mask = attn_mask if attn_mask is not None else attention_mask
        if need_weights:
            warnings.warn(
                "RandMultiHeadAttention never forms attention weights; need_weights=True "
                "returns None weights (pass need_weights=False to silence this)",
                stacklevel=2,
            )
        del average_attn_weights

        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if query.is_nested:
            return self._forward_nested(query, key, value, mask, is_causal), None

        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() not in (2, 3):
                raise ValueError(
                    f"{name} must be (L, N, E), (N, L, E) with batch_first, or unbatched (L, E); "
                    f"got shape {tuple(t.shape)}"
                )
            if t.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"{name} has {t.shape[-1]} features on its last dimension, expected "
                    f"embed_dim={self.embed_dim}"
                )
        if not (query.dim() == key.dim() == value.dim()):
            raise ValueError(
                "query, key and value must all be batched (3-D) or all unbatched (2-D); got "
                f"{query.dim()}-D, {key.dim()}-D, {value.dim()}-D"
            )

        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))

        batch, tgt_len, _ = query.shape
        src_len = key.shape[1]
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(
                f"key and value must share batch and sequence sizes, got {tuple(key.shape)} "
                f"and {tuple(value.shape)} (in (N, S, E) order)"
            )
        if key.shape[0] != batch:
            raise ValueError(f"query batch size {batch} differs from key batch size {key.shape[0]}")

        causal = self._resolve_causal(mask, is_causal, tgt_len, src_len)
        if causal and tgt_len != src_len:
            raise ValueError(
                f"causal attention needs equal query and key lengths, got L={tgt_len}, S={src_len}"
            )

        out = self._attention(query, key, value, key_padding_mask, causal)
        if unbatched:
            return out.squeeze(0), None
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
    ) -> Tensor:
        """Core attention on batch-first ``(N, L, E)`` / ``(N, S, E)`` tensors."""
        batch, tgt_len, _ = query.shape
        src_len = key.shape[1]
        if tgt_len == 0 or src_len == 0:
            # Nothing to attend to: the attention output is 0, as for a fully masked row.
            return self.out_proj(query.new_zeros(batch, tgt_len, self.embed_dim))
        if self.approximation == "landmark":
            return self._landmark_attention(query, key, value, key_padding_mask, causal)
        fused = self._fused_backend_for(query, key_padding_mask)
        if fused is not None:
            return self._fused_attention(query, key, value, key_padding_mask, causal, fused)
        chunk = self._inference_chunk_size
        # Causal blocks carry the prefix state; that only pays off on long sequences (see
        # _causal_chunk_min_len). The blocking is sized for a CPU's caches: never on a GPU.
        min_len = self._causal_chunk_min_len if causal else chunk
        if (
            not query.is_cuda
            and chunk is not None
            and min_len is not None
            and max(tgt_len, src_len) > max(chunk, min_len)
            and not (self.training and self.dropout > 0.0)
            and not self._needs_grad(query, key, value)
        ):
            if causal:
                return self._chunked_causal_attention(query, key, value, key_padding_mask, chunk)
            return self._chunked_attention(query, key, value, key_padding_mask, chunk)
        q, k, v, key_bias, out_dtype = self._project_to_work(query, key, value, key_padding_mask)
        q_feat, k_feat = self.feature_maps(q, k, key_bias)
        attn = self._attend(q_feat, k_feat, v, causal).to(out_dtype)  # (B, H, L, d)

        return self._heads_out(attn.transpose(1, 2))

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head projections ``(B, H, n, d)`` (strided views of the projection output)."""
        q, k, v = self._in_projection(query, key, value)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _project_to_work(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, torch.dtype]:
        """Per-head q/k/v and the key bias in the working dtype, and the output dtype."""
        q, k, v = self._project(query, key, value)
        out_dtype = q.dtype
        work = _compute_dtype(out_dtype)
        q, k, v = q.to(work), k.to(work), v.to(work)
        return q, k, v, self._key_bias(key_padding_mask, query.shape[0], key.shape[1], work), out_dtype

    def _in_projection(
        self, query: Tensor | None, key: Tensor | None, value: Tensor | None
    ) -> tuple[Any, Any, Any]:
        """The q/k/v input projections ``(B, n, E)`` of the given inputs (``None`` gives ``None``).

        One GEMM with the packed rows beats several thin ones, so inputs that are one tensor
        share it: all three in self-attention, and keys with values when only those two are
        projected (the chunked path's key pass). Every path projects through here.
        """
        e, weight, bias = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if query is not None and key is query and value is query:
            return tuple(F.linear(query, weight, bias).chunk(3, dim=-1))
        if query is None and key is not None and key is value:
            kv = F.linear(key, weight[e:], None if bias is None else bias[e:])
            return None, kv[..., :e], kv[..., e:]
        return tuple(
            None if x is None
            else F.linear(x, weight[i * e : (i + 1) * e],
                          None if bias is None else bias[i * e : (i + 1) * e])
            for i, x in enumerate((query, key, value))
        )

    def _split_heads(self, t: Tensor) -> Tensor:
        """``(B, n, E)`` -> ``(B, H, n, d)`` (a strided view)."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _heads_out(self, attn: Tensor) -> Tensor:
        """Merge per-head outputs ``(B, L, H, d)``, apply dropout and the output projection."""
        attn = attn.reshape(attn.shape[0], attn.shape[1], self.embed_dim)
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        return self.out_proj(attn)

    def _fused_backend_for(self, query: Tensor, key_padding_mask: Tensor | None) -> str | None:
        """``"triton"``, ``"torch"`` or None (the CPU paths) for this call; see ``gpu_backend``."""
        backend = self.gpu_backend
        if backend not in _GPU_BACKENDS:
            raise ValueError(
                f"gpu_backend must be one of {_GPU_BACKENDS}, got {backend!r}")
        if backend == "off" or (backend == "auto" and not query.is_cuda):
            return None
        if key_padding_mask is not None and key_padding_mask.requires_grad:
            # The fused path treats a float padding bias as a constant.
            return None
        if backend == "auto":
            from panther.native.triton import triton_available

            return "triton" if triton_available() else "torch"
        return backend

    def _fused_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
        backend: str,
    ) -> Tensor:
        """The GPU path: Triton kernels (or the chunked torch form), no host synchronisation.

        Half-precision projections stay in half precision; the kernels compute features and
        carried states in float32. No Python loop over blocks and nothing ``n x n``.
        """
        from panther.native.triton import fused_random_feature_attention

        batch, tgt_len, _ = query.shape
        q, k, v = self._project(query, key, value)
        key_bias = self._key_bias(key_padding_mask, batch, key.shape[1], torch.float32)
        attn = fused_random_feature_attention(
            q, k, v, self._feature_weights(torch.float32), key_bias, self.feature_maps,
            softmax=self.kernel_fn == "softmax", causal=causal, eps=self.eps,
            use_triton=backend == "triton", block=self._gpu_block)
        return self._heads_out(attn)

    def _landmark_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        causal: bool,
    ) -> Tensor:
        """``approximation="landmark"``: :func:`landmark_attention` on every device."""
        tgt_len, src_len = query.shape[1], key.shape[1]
        q, k, v, key_bias, out_dtype = self._project_to_work(query, key, value, key_padding_mask)
        m = self.num_random_features
        clusters = landmark_clusters(k, key_bias, m, causal, self.projection)
        # On a GPU the softmax runs fused (scaled_dot_product_attention) in the inputs' dtype.
        fused = self._fused_backend_for(query, key_padding_mask) is not None
        attn = landmark_attention(q, k, v, key_bias, m, causal, self.eps,
                                  local=tgt_len == src_len, clusters=clusters,
                                  fused_dtype=out_dtype if fused else None)
        return self._heads_out(attn.to(out_dtype).transpose(1, 2))

    def _needs_grad(self, *inputs: Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in (*inputs, *self.parameters()))

    def _chunked_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        chunk: int,
    ) -> Tensor:
        """Non-causal attention in blocks of ``chunk`` tokens, for inference only.

        Pass 1 projects one block of keys/values at a time and accumulates
        ``kv = sum_s phi(k_s) v_s^T`` and ``k_sum = sum_s phi(k_s)``; pass 2 projects one block
        of queries at a time, attends and applies ``out_proj``. Equals :meth:`_attention`'s
        unchunked computation up to rounding. The softmax key stabiliser must be one constant
        per (batch, head) for all keys: it is the running maximum of the key logits, and the
        accumulators are rescaled whenever it grows, so no extra pass over the keys is needed.
        """
        batch, tgt_len, _ = query.shape
        src_len = key.shape[1]
        e = self.embed_dim
        out_dtype, work, w_feat, key_bias, relu_top, kv, k_sum, run_max = self._chunk_start(
            query, key_padding_mask, src_len)

        for s0 in range(0, src_len, chunk):
            s1 = min(s0 + chunk, src_len)
            # Keys and values are the same tensor in self-attention: pass one block object
            # for both so they share one GEMM with the packed k/v rows.
            k_in = key[:, s0:s1]
            _, k_c, v_c = self._in_projection(None, k_in, k_in if key is value else value[:, s0:s1])
            k_c, v_c = self._split_heads(k_c).to(work), self._split_heads(v_c).to(work)
            bias_c = None if key_bias is None else key_bias[:, s0:s1]
            k_feat, run_max = self._block_key_features(
                k_c, w_feat, bias_c, relu_top, run_max, kv, k_sum)
            kv.add_(torch.einsum("bhsm,bhsd->bhmd", k_feat, v_c))
            k_sum.add_(k_feat.sum(dim=-2))

        out = torch.empty(batch, tgt_len, e, dtype=out_dtype, device=query.device)
        for l0 in range(0, tgt_len, chunk):
            l1 = min(l0 + chunk, tgt_len)
            n = l1 - l0
            q_c = self._split_heads(self._in_projection(query[:, l0:l1], None, None)[0]).to(work)
            q_feat = self._query_features(q_c, w_feat)
            num = torch.einsum("bhlm,bhmd->bhld", q_feat, kv)
            den = torch.einsum("bhlm,bhm->bhl", q_feat, k_sum)
            attn = (num / (den.unsqueeze(-1) + self.eps)).to(out_dtype)
            attn = attn.transpose(1, 2).reshape(batch, n, e)
            out[:, l0:l1] = self.out_proj(attn)
        return out

    def _chunk_start(
        self, query: Tensor, key_padding_mask: Tensor | None, src_len: int
    ) -> tuple[torch.dtype, torch.dtype, Tensor, Tensor | None, Tensor | None, Tensor, Tensor,
               Tensor]:
        """What both chunked paths start from.

        Returns the output and working dtypes, the feature weights, the key bias, the ReLU
        kernel's bias bound (``None`` for softmax) and the empty carried state: ``kv``
        ``(B, H, m, d)``, ``k_sum`` ``(B, H, m)`` and the running key stabiliser ``(B, H, 1, 1)``.
        """
        batch, h, dev = query.shape[0], self.num_heads, query.device
        out_dtype = torch.result_type(query, self.in_proj_weight)
        work = _compute_dtype(out_dtype)
        w_feat = self._feature_weights(work)
        m = w_feat.shape[1]
        key_bias = self._key_bias(key_padding_mask, batch, src_len, work)
        relu_top = None if self.kernel_fn == "softmax" else _relu_bias_top(key_bias)
        kv = torch.zeros(batch, h, m, self.head_dim, dtype=work, device=dev)
        k_sum = torch.zeros(batch, h, m, dtype=work, device=dev)
        run_max = torch.full((batch, h, 1, 1), float("-inf"), dtype=work, device=dev)
        return out_dtype, work, w_feat, key_bias, relu_top, kv, k_sum, run_max

    def _block_key_features(
        self,
        k_c: Tensor,
        w_feat: Tensor,
        bias_c: Tensor | None,
        relu_top: Tensor | None,
        run_max: Tensor,
        kv: Tensor,
        k_sum: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Key features of one block of the chunked paths, and the new running stabiliser.

        The softmax stabiliser is the running maximum of the key logits seen so far; when a
        block raises it, the carried ``kv``/``k_sum`` are rescaled in place so every block
        shares one stabiliser. The ReLU kernel needs none and returns ``run_max`` unchanged.
        """
        if self.kernel_fn != "softmax":
            return self._relu_key_features(k_c, w_feat, bias_c, relu_top), run_max
        k_log = self._key_logits(k_c, w_feat, bias_c)
        new_max = torch.maximum(run_max, k_log.amax(dim=(-2, -1), keepdim=True))
        # The accumulators are still empty while the running max is -inf (every key so far
        # masked); the factor is then irrelevant but must not be inf * 0 = NaN.
        grow = torch.where(
            torch.isinf(run_max),
            torch.zeros_like(run_max),
            torch.exp(_finite_or_zero(run_max) - _finite_or_zero(new_max)),
        )
        kv.mul_(grow)
        k_sum.mul_(grow.squeeze(-1))
        return self._key_features_from_logits(k_log, _finite_or_zero(new_max)), new_max

    def _chunked_causal_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        chunk: int,
    ) -> Tensor:
        """Causal attention in blocks of ``chunk`` tokens, for inference only.

        Block ``c`` attends to the earlier blocks through the carried state
        ``kv = sum_s phi(k_s) v_s^T`` and ``k_sum = sum_s phi(k_s)`` of all keys before it, and
        to itself in one scan of :func:`panther.native.ops.causal_linear_attention_stateful`,
        which starts from the carried state and returns the state after the block. The softmax
        key stabiliser is the running maximum of the key logits; the carried state is rescaled
        whenever it grows.
        """
        batch, seq, _ = query.shape
        e = self.embed_dim
        out_dtype, work, w_feat, key_bias, relu_top, kv, k_sum, run_max = self._chunk_start(
            query, key_padding_mask, seq)
        packed = key is query and value is query
        out = torch.empty(batch, seq, e, dtype=out_dtype, device=query.device)
        for s0 in range(0, seq, chunk):
            s1 = min(s0 + chunk, seq)
            n = s1 - s0
            # Self-attention passes one block object three times: one packed GEMM.
            q_in = query[:, s0:s1]
            k_in, v_in = (q_in, q_in) if packed else (key[:, s0:s1], value[:, s0:s1])
            q_c, k_c, v_c = (self._split_heads(t).to(work)
                             for t in self._in_projection(q_in, k_in, v_in))
            q_feat = self._query_features(q_c, w_feat)
            bias_c = None if key_bias is None else key_bias[:, s0:s1]
            k_feat, run_max = self._block_key_features(
                k_c, w_feat, bias_c, relu_top, run_max, kv, k_sum)
            attn, kv, k_sum = ops.causal_linear_attention_stateful(
                q_feat, k_feat, v_c, kv, k_sum, self.eps)
            attn = attn.to(out_dtype).transpose(1, 2).reshape(batch, n, e)
            out[:, s0:s1] = self.out_proj(attn)
        return out

    def _forward_nested(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, is_causal: bool
    ) -> Tensor:
        # nn.TransformerEncoder turns padded batches into nested tensors in eval mode; run on
        # the padded form with a key padding mask and hand a nested tensor back.
        if not (key is query and value is query):
            raise NotImplementedError(
                "RandMultiHeadAttention supports nested-tensor input only for self-attention "
                "(query is key is value)"
            )
        lengths = [t.shape[0] for t in query.unbind()]
        padded = query.to_padded_tensor(0.0)  # (N, L_max, E): nested tensors are batch-first
        batch, max_len, _ = padded.shape
        positions = torch.arange(max_len, device=padded.device)
        lengths_t = torch.tensor(lengths, device=padded.device)
        padding = positions.unsqueeze(0) >= lengths_t.unsqueeze(1)
        causal = self._resolve_causal(mask, is_causal, max_len, max_len)
        out = self._attention(padded, padded, padded, padding, causal)
        return torch.nested.as_nested_tensor([out[i, :n] for i, n in enumerate(lengths)])
