"""RandMultiHeadAttention(approximation="landmark") and panther.nn.attention.landmark_attention."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.nn import RandMultiHeadAttention
from panther.nn.attention import landmark_attention, landmark_clusters
from panther.tuner.layers.attention import AttentionLayerType

F64 = torch.float64


# Tiny tensors: one torch thread (tests/conftest.py) avoids OpenMP spin-waits on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force(q, k, v, bias, m, causal, local, window, clusters):
    """The definition, one query at a time: exact window keys plus one landmark per cluster."""
    B, H, L, d = q.shape
    S = k.shape[2]
    g = math.ceil(S / m)
    out = torch.zeros(B, H, L, d, dtype=q.dtype)
    for b in range(B):
        fin = bias[b][torch.isfinite(bias[b])]
        top = fin.max() if fin.numel() else torch.tensor(0.0, dtype=q.dtype)
        alpha = torch.exp(bias[b] - top)
        for h in range(H):
            for t in range(L):
                i = t // g
                lo, hi = i - window, i + (0 if causal else window)
                logits, values = [], []
                if local:
                    for s in range(S):
                        if lo <= s // g <= hi and not (causal and s > t):
                            logits.append(q[b, h, t] @ k[b, h, s] / math.sqrt(d) + bias[b, s])
                            values.append(v[b, h, s])
                for c in range(m):
                    members = [s for s in range(S) if clusters[b, h, s] == c
                               and (not local or (s // g < lo if causal
                                                  else not lo <= s // g <= hi))]
                    w = alpha[members] if members else torch.zeros(0, dtype=q.dtype)
                    if w.sum() == 0:
                        continue
                    k_mean = (w @ k[b, h, members]) / w.sum()
                    v_mean = (w @ v[b, h, members]) / w.sum()
                    logits.append(q[b, h, t] @ k_mean / math.sqrt(d) + w.sum().log() + top)
                    values.append(v_mean)
                if logits and torch.isfinite(torch.stack(logits)).any():
                    out[b, h, t] = torch.softmax(torch.stack(logits), 0) @ torch.stack(values)
    return out


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(1, 13),
    m=st.integers(1, 6),
    causal=st.booleans(),
    masked=st.booleans(),
    cross=st.integers(0, 5),
    window=st.integers(0, 2),
    grouping=st.sampled_from(["segments", "random", "fitted"]),
    seed=st.integers(0, 999),
)
def test_property_matches_brute_force_definition(L, m, causal, masked, cross, window, grouping,
                                                 seed):
    gen = torch.Generator().manual_seed(seed)
    local = causal or cross == 0
    S = L if local else L + cross
    q = torch.randn(2, 2, L, 3, generator=gen, dtype=F64)
    k = torch.randn(2, 2, S, 3, generator=gen, dtype=F64)
    v = torch.randn(2, 2, S, 3, generator=gen, dtype=F64)
    bias = torch.zeros(2, S, dtype=F64)
    if masked:
        bias = bias.masked_fill(torch.rand(2, S, generator=gen) < 0.3, float("-inf"))
        bias[1] = bias[1] + torch.randn(S, generator=gen, dtype=F64)  # float biases too
    g = math.ceil(S / m)
    clusters = {
        "segments": torch.arange(S).div(g, rounding_mode="floor").expand(2, 2, S),
        "random": torch.randint(0, m, (2, 2, S), generator=gen),
        "fitted": landmark_clusters(k, bias, m, causal, torch.randn(2, m, 3, generator=gen,
                                                                    dtype=F64)),
    }[grouping]
    out = landmark_attention(q, k, v, bias, m, causal, eps=1e-12, local=local, window=window,
                             clusters=None if grouping == "segments" else clusters)
    ref = brute_force(q, k, v, bias, m, causal, local, window, clusters)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("batch_first", [False, True])
def test_noncausal_exact_when_every_cluster_holds_one_key(batch_first):
    # m >= S: k-means starts from one key per cluster and keeps it so.
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=batch_first, dtype=F64).eval()
    layer = RandMultiHeadAttention.from_attention(mha, 12, approximation="landmark")
    x = torch.randn(10, 3, 16, dtype=F64)
    if batch_first:
        x = x.transpose(0, 1)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[1, 1:4] = True
    mask[2, 7] = True
    ref = mha(x, x, x, key_padding_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(layer(x, x, x, key_padding_mask=mask)[0], ref)


def test_causal_exact_when_the_window_covers_the_sequence():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 11, 4, generator=gen, dtype=F64) for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) / 2 + torch.ones(11, 11, dtype=torch.bool).triu(1) * -1e9
    ref = scores.softmax(-1) @ v
    clusters = torch.randint(0, 4, (2, 2, 11), generator=gen)
    out = landmark_attention(q, k, v, None, 4, True, window=4, clusters=clusters)
    torch.testing.assert_close(out, ref)


def test_causal_clusters_do_not_depend_on_later_keys_and_kmeans_fits():
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(1, 2, 30, 4, generator=gen, dtype=F64)
    directions = torch.randn(2, 8, 4, generator=gen, dtype=F64)
    later = k.clone()
    later[:, :, 20:] = torch.randn(1, 2, 10, 4, generator=gen, dtype=F64)
    a = landmark_clusters(k, None, 8, True, directions)
    assert torch.equal(a[..., :20], landmark_clusters(later, None, 8, True, directions)[..., :20])
    # k-means recovers well-separated blobs (up to label order) and ignores removed keys.
    centers = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]], dtype=F64)
    labels = torch.arange(30) % 3
    blobs = (centers[labels] + 0.1 * torch.randn(30, 4, generator=gen, dtype=F64))[None, None]
    bias = torch.zeros(1, 30, dtype=F64)
    bias[0, 0] = float("-inf")
    fitted = landmark_clusters(blobs, bias, 3, False, directions)[0, 0]
    for c in range(3):
        assert fitted[labels == c][1:].unique().numel() == 1
    assert fitted[1:].unique().numel() == 3


def test_cross_attention_exact_with_enough_landmarks_and_close_with_fewer():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 2, batch_first=True, dtype=F64).eval()
    layer = RandMultiHeadAttention.from_attention(mha, 32, approximation="landmark")
    query, memory = torch.randn(2, 5, 16, dtype=F64), torch.randn(2, 20, 16, dtype=F64)
    ref = mha(query, memory, memory, need_weights=False)[0]
    torch.testing.assert_close(layer(query, memory, memory)[0], ref)


def test_more_accurate_than_random_features_on_smooth_sequences():
    # Neighbouring tokens similar (a random walk): segment means summarise well.
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(64, 4, batch_first=True, dtype=F64).eval()
    x = torch.randn(2, 256, 64, dtype=F64).cumsum(1) / 8
    for causal in (False, True):
        attn_mask = (nn.Transformer.generate_square_subsequent_mask(256, dtype=F64)
                     if causal else None)
        ref = mha(x, x, x, attn_mask=attn_mask, need_weights=False)[0]
        errs = {}
        for approx in ("landmark", "random_features"):
            layer = RandMultiHeadAttention.from_attention(mha, 16, iscausal=causal, seed=0,
                                                          approximation=approx)
            errs[approx] = ((layer(x, x, x)[0] - ref).norm() / ref.norm()).item()
        assert errs["landmark"] < 0.5 * errs["random_features"], errs


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_and_gradients(causal):
    torch.manual_seed(3)
    layer = RandMultiHeadAttention(8, 2, 3, iscausal=causal, batch_first=True,
                                   approximation="landmark", dtype=F64)
    x = torch.randn(2, 7, 8, dtype=F64, requires_grad=True)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1] = True
    out = layer(x, x, x, key_padding_mask=mask)[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], layer.out_proj.bias.expand(7, 8))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.autograd.gradcheck(
        lambda t: layer(t, t, t, key_padding_mask=mask)[0], (x.detach().requires_grad_(),))


def test_causal_output_ignores_future_tokens():
    torch.manual_seed(4)
    layer = RandMultiHeadAttention(8, 2, 4, iscausal=True, batch_first=True,
                                   approximation="landmark")
    x = torch.randn(1, 15, 8)
    y = x.clone()
    y[:, 9:] = torch.randn(1, 6, 8)
    torch.testing.assert_close(layer(x, x, x)[0][:, :9], layer(y, y, y)[0][:, :9])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    torch.manual_seed(5)
    layer = RandMultiHeadAttention(16, 2, 4, batch_first=True, approximation="landmark")
    x = torch.randn(2, 30, 16)
    ref = layer(x, x, x)[0]
    out = layer.to(dtype)(x.to(dtype), x.to(dtype), x.to(dtype))[0]
    assert out.dtype == dtype
    assert ((out.float() - ref).norm() / ref.norm()).item() < 3e-2


def test_validation_repr_and_pickle_compatibility():
    with pytest.raises(ValueError, match="approximation must be one of"):
        RandMultiHeadAttention(8, 2, 4, approximation="nystrom")  # type: ignore[arg-type]
    layer = RandMultiHeadAttention(8, 2, 4, approximation="landmark")
    assert "approximation='landmark'" in repr(layer)
    with pytest.raises(ValueError, match="num_landmarks must be positive"):
        landmark_attention(*(torch.zeros(1, 1, 2, 2) for _ in range(3)), None, 0, False)
    with pytest.raises(ValueError, match="window must be >= 0"):
        landmark_attention(*(torch.zeros(1, 1, 2, 2) for _ in range(3)), None, 1, False,
                           window=-1)
    with pytest.raises(ValueError, match="needs L == S"):
        landmark_attention(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 2),
                           torch.zeros(1, 1, 3, 2), None, 2, False)
    old = RandMultiHeadAttention(8, 2, 4)
    del old.__dict__["approximation"]  # as unpickled from before the option existed
    x = torch.randn(3, 1, 8)
    assert old(x, x, x)[0].shape == (3, 1, 8)


def test_layer_type_builds_costs_and_searches_the_option():
    lt = AttentionLayerType(seq_len=512)
    mha = nn.MultiheadAttention(256, 4)  # head_dim 64
    space = lt.auto_space(mha)
    assert space["approximation"].choices == ("random_features", "landmark")
    built = lt.build(mha, {"num_random_features": 64, "approximation": "landmark"})
    assert built.approximation == "landmark"
    fresh = lt.build(mha, {"approximation": "landmark"}, copy_weights=False)
    assert fresh.approximation == "landmark"
    E = 256
    # g = 8 tokens per segment, 64 landmarks (module docstring of the layer type).
    assert lt.cost(mha, {"num_random_features": 64, "approximation": "landmark"}).macs == (
        4 * E * E + (6 * 8 + 15 * 64) * E)
    assert lt.cost(mha, {"num_random_features": 64, "approximation": "landmark",
                         "iscausal": True}).macs == 4 * E * E + (4 * 8 + 5 * 64) * E
    assert lt.cost(mha, {"num_random_features": 64}).macs == 4 * E * E + 4 * 64 * E
    with pytest.raises(ValueError, match="'approximation' must be one of"):
        lt.build(mha, {"approximation": "nystrom"})


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 40), m=st.integers(1, 9), causal=st.booleans(), cross=st.integers(0, 4),
       window=st.integers(0, 2), seed=st.integers(0, 999))
def test_property_fused_sdpa_form_equals_explicit_form(L, m, causal, cross, window, seed):
    gen = torch.Generator().manual_seed(seed)
    local = causal or cross == 0
    S = L if local else L + cross
    q = torch.randn(2, 2, L, 5, generator=gen, dtype=F64)
    k = torch.randn(2, 2, S, 5, generator=gen, dtype=F64)
    v = torch.randn(2, 2, S, 5, generator=gen, dtype=F64)
    bias = torch.randn(2, S, generator=gen, dtype=F64)
    bias = bias.masked_fill(torch.rand(2, S, generator=gen) < 0.4, float("-inf"))
    bias[1] = float("-inf")  # a batch row with every key removed: zeros, not NaN
    clusters = landmark_clusters(k, bias, m, causal, torch.randn(2, m, 5, generator=gen,
                                                                 dtype=F64))
    args = (q, k, v, bias, m, causal)
    kwargs = {"local": local, "window": window, "clusters": clusters}
    fused = landmark_attention(*args, **kwargs, fused_dtype=F64)
    torch.testing.assert_close(fused, landmark_attention(*args, **kwargs))
    assert fused[1].abs().max() == 0


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_gpu_form_matches_cpu_form_with_gradients(causal, dtype):
    # gpu_backend="torch" forces the GPU form (fused SDPA softmax) on CPU tensors.
    torch.manual_seed(6)
    layer = RandMultiHeadAttention(16, 2, 4, iscausal=causal, batch_first=True,
                                   approximation="landmark").to(dtype)
    x = torch.randn(2, 30, 16).to(dtype)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[1, 3:9] = True
    results = {}
    for backend in ("off", "torch"):
        layer.zero_grad()
        layer.gpu_backend = backend
        xi = x.clone().requires_grad_()
        out = layer(xi, xi, xi, key_padding_mask=mask)[0]
        out.float().square().sum().backward()
        results[backend] = [out, xi.grad] + [p.grad for p in layer.parameters()]
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for got, want in zip(results["torch"], results["off"]):
        assert got.dtype == want.dtype
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < tol
