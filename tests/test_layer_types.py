"""Built-in layer types (and the Conv1d plugin's): building, auto spaces, cost models."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.nn import RandMultiHeadAttention, SKConv2d, SKLinear
from panther.tuner.layers import (
    AttentionLayerType,
    Conv2dLayerType,
    Cost,
    LayerType,
    LinearLayerType,
    LowRankLayerType,
    low_rank_space,
    saves_work,
)
from panther.tuner.plugins import get_layer_type, layer_type_for

LINEAR = LinearLayerType()
CONV = Conv2dLayerType()
ATTN = AttentionLayerType()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


# --------------------------------------------------------------------------- Linear


def test_linear_build_copies_weights_and_keeps_dtype_mode():
    lin = nn.Linear(16, 8).double().eval()
    x = torch.randn(5, 16, dtype=torch.float64)
    # 2*L*k >= min(in, out): the data-aware sketch reproduces the layer exactly.
    sk = LINEAR.build(lin, {"num_terms": 1, "low_rank": 4, "init": "svd", "seed": 11})
    assert isinstance(sk, SKLinear) and sk.seed == 11 and LINEAR.sketch_seed(sk) == 11
    assert sk.S1.dtype == torch.float64 and sk.S1.device == lin.weight.device
    assert not sk.training
    assert rel_err(sk(x), lin(x)) < 1e-8
    # copy_weights=False ignores the trained weight.
    fresh = LINEAR.build(lin, {"num_terms": 1, "low_rank": 4, "seed": 11}, copy_weights=False)
    assert rel_err(fresh(x), lin(x)) > 0.1
    assert isinstance(fresh, SKLinear) and fresh.S1.dtype == torch.float64
    lin.train()
    assert LINEAR.build(lin, {"num_terms": 2, "low_rank": 2}).training


def test_linear_seed_rebuilds_exactly_and_defaults_fill_missing_params():
    lin = nn.Linear(64, 48)
    a = LINEAR.build(lin, {"num_terms": 2, "low_rank": 4, "init": "random", "seed": 5})
    b = LINEAR.build(lin, {"num_terms": 2, "low_rank": 4, "init": "random", "seed": 5})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    partial = LINEAR.build(lin, {"num_terms": 2})  # tutorial spaces may tune one parameter only
    assert partial.num_terms == 2 and partial.low_rank in LINEAR.auto_space(lin)["low_rank"].choices
    assert isinstance(partial.seed, int)


def test_linear_validation_names_the_problem():
    lin = nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['rank'\].*low_rank"):
        LINEAR.validate_params(lin, {"rank": 3})
    with pytest.raises(ValueError, match="'low_rank' must be >= 1"):
        LINEAR.build(lin, {"num_terms": 1, "low_rank": 0})
    with pytest.raises(TypeError, match="'num_terms' must be an int"):
        LINEAR.build(lin, {"num_terms": 1.5, "low_rank": 2})
    with pytest.raises(ValueError, match="'init' must be 'random' or 'svd'"):
        LINEAR.build(lin, {"init": "qr"})


def test_linear_cost_model_numbers():
    lin = nn.Linear(256, 128)
    assert LINEAR.cost(lin) == Cost(params=256 * 128 + 128, macs=256 * 128)
    cost = LINEAR.cost(lin, {"num_terms": 2, "low_rank": 8})
    assert cost == Cost(params=16 * 384 + 128, macs=2 * 16 * 384)
    built = LINEAR.build(lin, {"num_terms": 2, "low_rank": 8, "init": "random"})
    assert cost.params == n_params(built)  # the model counts exactly the learnable parameters
    no_bias = nn.Linear(10, 20, bias=False)
    assert LINEAR.cost(no_bias).params == 200


def test_linear_auto_space_saves_work():
    lin = nn.Linear(1024, 1024)
    space = LINEAR.auto_space(lin)
    assert space["num_terms"].choices == (1, 2, 3)
    assert space["low_rank"].choices == (4, 8, 16, 32, 64, 128)  # 256 would not save at L=1
    assert space["init"].choices == ("svd", "random")
    original = LINEAR.cost(lin).macs
    for k in space["low_rank"].choices:
        assert LINEAR.cost(lin, {"num_terms": 1, "low_rank": k}).macs < original


def test_tiny_layers_fall_back_to_small_ranks():
    assert low_rank_space(8, 8) == ([1], [1])  # 2*1*1*16 = 32 < 64; rank 2 would not save
    assert low_rank_space(4, 2) == ([1], [1])  # nothing saves: one term of rank 1
    assert low_rank_space(30, 30) == ([1], [4])  # 2*2*4*60 > 900: two terms never save
    assert low_rank_space(64, 64) == ([1, 2, 3], [4, 8])
    tiny = LINEAR.auto_space(nn.Linear(3, 3))
    assert tiny["low_rank"].choices == (1,) and tiny["num_terms"].choices == (1,)


@settings(max_examples=25, deadline=None)
@given(fan_in=st.integers(1, 4096), fan_out=st.integers(1, 4096))
def test_auto_space_property(fan_in, fan_out):
    terms, ranks = low_rank_space(fan_in, fan_out)
    assert ranks == sorted(ranks) and terms == sorted(terms)
    if any(saves_work(fan_in, fan_out, 1, k) for k in range(1, 5)):
        # Whenever a small rank can save work, every auto rank saves it at one term
        # and every auto num_terms has a rank that saves it.
        assert all(saves_work(fan_in, fan_out, 1, k) for k in ranks)
        assert all(any(saves_work(fan_in, fan_out, L, k) for k in ranks) for L in terms)
    big = [k for k in ranks if k >= 4]
    assert all(k & (k - 1) == 0 for k in big)  # powers of two from 4
    if saves_work(fan_in, fan_out, 1, 4):
        assert ranks[0] == 4 and not saves_work(fan_in, fan_out, 1, 2 * ranks[-1])


# --------------------------------------------------------------------------- Conv2d


def test_conv2d_build_keeps_geometry_dtype_mode():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1).double().eval()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    sk = CONV.build(conv, {"num_terms": 1, "low_rank": 3, "init": "svd", "seed": 2})
    assert isinstance(sk, SKConv2d) and sk.seed == 2 and not sk.training
    assert sk.S.dtype == torch.float64
    assert sk(x).shape == conv(x).shape
    assert rel_err(sk(x), conv(x)) < 1e-8  # 2*L*k = out: exact
    fresh = CONV.build(conv, {"num_terms": 1, "low_rank": 3}, copy_weights=False)
    assert fresh(x).shape == conv(x).shape and rel_err(fresh(x), conv(x)) > 0.1


def test_conv2d_handles_cost_and_auto():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    assert CONV.handles(conv)
    assert not CONV.handles(nn.Conv2d(16, 32, 3, groups=2))
    assert not CONV.handles(nn.Conv2d(16, 32, 3, padding_mode="reflect"))
    assert CONV.cost(conv) == Cost(params=16 * 9 * 32 + 32, macs=16 * 9 * 32)
    cost = CONV.cost(conv, {"num_terms": 1, "low_rank": 8})
    assert cost == Cost(params=16 * 16 * 9 + 32, macs=16 * (16 * 9 + 32))
    assert cost.params == n_params(CONV.build(conv, {"num_terms": 1, "low_rank": 8}))
    space = CONV.auto_space(conv)
    assert space["low_rank"].choices == (4, 8)
    for k in space["low_rank"].choices:
        assert CONV.cost(conv, {"num_terms": 1, "low_rank": k}).macs < CONV.cost(conv).macs
    with pytest.raises(ValueError, match="groups=1"):
        CONV.build(nn.Conv2d(4, 4, 3, groups=2), {"num_terms": 1, "low_rank": 1})


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_build_keeps_layout_dtype_mode(batch_first):
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first, dropout=0.0).eval()
    shape = (2, 10, 32) if batch_first else (10, 2, 32)
    x = torch.randn(*shape)
    attn = ATTN.build(mha, {"num_random_features": 16, "kernel_fn": "relu", "seed": 4})
    assert isinstance(attn, RandMultiHeadAttention)
    assert attn.batch_first == batch_first and attn.kernel_fn == "relu" and attn.seed == 4
    assert not attn.training
    assert torch.equal(attn.in_proj_weight, mha.in_proj_weight)
    out, _ = attn(x, x, x)
    assert out.shape == x.shape
    fresh = ATTN.build(mha, {"num_random_features": 8}, copy_weights=False)
    assert fresh.batch_first == batch_first and fresh.kernel_fn == "softmax"
    assert not torch.equal(fresh.in_proj_weight, mha.in_proj_weight)


def test_attention_float64_and_training_mode():
    mha = nn.MultiheadAttention(16, 2, batch_first=True).double().train()
    attn = ATTN.build(mha, {"num_random_features": 8})
    assert attn.training and attn.in_proj_weight.dtype == torch.float64
    assert attn.projection.dtype == torch.float64


def test_attention_auto_space_cost_and_validation():
    mha = nn.MultiheadAttention(256, 4)  # head_dim 64
    space = ATTN.auto_space(mha)
    assert space["num_random_features"].choices == (32, 64, 128, 256)
    assert space["kernel_fn"].choices == ("softmax", "relu")
    small = ATTN.auto_space(nn.MultiheadAttention(12, 2))  # head_dim 6
    assert small["num_random_features"].choices == (2, 4, 8, 16)
    mha = nn.MultiheadAttention(32, 4)
    E, n = 32, ATTN.seq_len
    assert ATTN.cost(mha) == Cost(params=n_params(mha), macs=4 * E * E + 2 * n * E)
    assert ATTN.cost(mha, {"num_random_features": 8}).macs == 4 * E * E + 4 * 8 * E
    assert ATTN.cost(mha, {"num_random_features": 8}).params == n_params(
        ATTN.build(mha, {"num_random_features": 8})
    )
    # m >= n/2 does no less work than exact attention at that length.
    short = AttentionLayerType(seq_len=16)
    assert short.cost(mha, {"num_random_features": 8}).macs >= short.cost(mha).macs
    with pytest.raises(ValueError, match="'kernel_fn' must be one of"):
        ATTN.build(mha, {"kernel_fn": "cosine"})
    with pytest.raises(ValueError, match="no parameter"):
        ATTN.validate_params(mha, {"low_rank": 8})
    # The assumed length is the layer type's (a per-config entry could not change the
    # dense cost it is compared with), so a seq_len entry is rejected, not ignored.
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['seq_len'\]"):
        ATTN.validate_params(mha, {"seq_len": 128})
    with pytest.raises(TypeError, match="'iscausal' must be True or False"):
        ATTN.validate_params(mha, {"iscausal": "yes"})
    assert ATTN.build(mha, {"num_random_features": 8, "iscausal": True}).iscausal
    for lt, module in ((ATTN, mha), (LINEAR, nn.Linear(4, 4)), (CONV, nn.Conv2d(2, 2, 1))):
        with pytest.raises(ValueError, match=f"{lt.name} 'seed' must be a non-negative int"):
            lt.validate_params(module, {"seed": -1})
    assert not ATTN.handles(nn.MultiheadAttention(32, 4, kdim=16, vdim=16))
    assert not ATTN.handles(nn.MultiheadAttention(32, 4, add_bias_kv=True))


def test_size_keys_group_equal_layers():
    assert LINEAR.size_key(nn.Linear(8, 4)) == LINEAR.size_key(nn.Linear(8, 4))
    assert LINEAR.size_key(nn.Linear(8, 4)) != LINEAR.size_key(nn.Linear(4, 8))
    assert LINEAR.size_key(nn.Linear(8, 4)) != LINEAR.size_key(nn.Linear(8, 4, bias=False))
    assert CONV.size_key(nn.Conv2d(3, 8, 3)) != CONV.size_key(nn.Conv2d(3, 8, 3, stride=2))
    a, b = nn.MultiheadAttention(16, 2), nn.MultiheadAttention(16, 2, batch_first=True)
    assert ATTN.size_key(a) != ATTN.size_key(b)


def test_default_size_key_uses_constructor_attributes_not_mode():
    class Plain(LayerType):
        name, module_types, sketched_type, param_names = "Plain", (nn.Linear,), nn.Linear, ()

        def build(self, original, params, copy_weights=True):
            return original

        def auto_space(self, original):
            return {}

        def cost(self, original, params=None):
            return Cost(0, 0)

    plain = Plain()
    assert plain.size_key(nn.Linear(8, 4).train()) == plain.size_key(nn.Linear(8, 4).eval())
    assert plain.size_key(nn.Linear(8, 4)) != plain.size_key(nn.Linear(8, 5))
    assert ("in_features", 8) in plain.size_key(nn.Linear(8, 4))


def test_registry_maps_modules_to_types():
    assert layer_type_for(nn.Linear(2, 2)).name == "Linear"
    assert layer_type_for(nn.Conv2d(2, 2, 1)).name == "Conv2d"
    assert layer_type_for(nn.MultiheadAttention(8, 2)).name == "MultiheadAttention"
    assert layer_type_for(nn.ReLU()) is None
    # The out-projection inside MultiheadAttention is a Linear subclass: not sketched on its own.
    assert layer_type_for(nn.MultiheadAttention(8, 2).out_proj) is None


# --------------------------------------------------------------------------- Conv1d plugin


def test_conv1d_plugin_layer_type():
    from panther_conv1d import SKConv1d

    conv1d = get_layer_type("Conv1d")
    conv = nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=1).double().eval()
    x = torch.randn(2, 4, 17, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # full rank is larger than dense, on purpose
        sk = conv1d.build(conv, {"num_terms": 3, "low_rank": 4, "init": "svd", "seed": 9})
    assert isinstance(sk, SKConv1d) and sk.seed == 9 and not sk.training
    assert sk(x).shape == conv(x).shape and rel_err(sk(x), conv(x)) < 1e-8
    assert sk(x[0]).shape == conv(x[0]).shape  # unbatched input
    big = nn.Conv1d(64, 128, 5, padding="same")
    space = conv1d.auto_space(big)
    assert space["low_rank"].choices == (4, 8, 16, 32)  # 2*k*(320+128) < 320*128 <=> k < 45.7
    assert conv1d.cost(big) == Cost(params=64 * 5 * 128 + 128, macs=64 * 5 * 128)
    cost = conv1d.cost(big, {"num_terms": 1, "low_rank": 16})
    assert cost == Cost(params=16 * (320 + 128) + 128, macs=2 * 16 * (320 + 128))
    built = conv1d.build(big, {"num_terms": 1, "low_rank": 16, "init": "random"})
    assert cost.params == n_params(built)
    y = torch.randn(2, 64, 30)
    assert built(y).shape == big(y).shape
    assert not conv1d.handles(nn.Conv1d(4, 4, 3, groups=2))


def test_attention_seq_len_is_changed_by_registering_a_layer_type_by_hand():
    from panther.tuner import plugins
    from panther.tuner.hookspecs import hookimpl

    class ShortSequences:
        @staticmethod
        @hookimpl
        def panther_layer_types():
            return [AttentionLayerType(seq_len=16)]

    mha = nn.MultiheadAttention(32, 4)
    name = plugins.register_plugin(ShortSequences(), name="short-attention")
    try:
        with pytest.warns(plugins.PluginWarning, match="overrides"):
            chosen = layer_type_for(mha)
        assert chosen.seq_len == 16
        assert chosen.cost(mha, {"num_random_features": 8}).macs >= chosen.cost(mha).macs
    finally:
        plugins.unregister_plugin(name)
    assert layer_type_for(mha).seq_len == 512


# --------------------------------------------------------------------------- public extension points


class _GPT2Conv1D(nn.Module):
    """A stand-in for transformers' Conv1D: a linear map whose weight is stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], self.nf
        )


class _GPT2Conv1DType(LowRankLayerType):
    """Written from the documented hooks only: fans, sketch_copy, sketch_empty."""

    name = "Conv1D"
    module_types = (_GPT2Conv1D,)
    sketched_type = SKLinear

    def factory_signature_source(self):
        return SKLinear

    def fans(self, layer):
        # Also called with the sketched SKLinear, by sketched_cost() (the flops evaluator).
        if isinstance(layer, SKLinear):
            return layer.in_features, layer.out_features
        return layer.weight.shape[0], layer.weight.shape[1]

    def sketch_copy(self, original, num_terms, low_rank, **options):
        layer = SKLinear(*self.fans(original), num_terms, low_rank,
                         W_init=original.weight.detach().T, **options)
        with torch.no_grad():
            layer.bias.copy_(original.bias)
        return layer

    def sketch_empty(self, original, num_terms, low_rank, **options):
        return SKLinear(*self.fans(original), num_terms, low_rank, **options)


def test_low_rank_layer_type_public_hooks_build_a_third_party_layer():
    torch.manual_seed(0)
    original = _GPT2Conv1D(48, 32).eval()
    with torch.no_grad():  # rank 4, so a rank-8 sketch can be close
        original.weight.copy_(torch.randn(32, 4) @ torch.randn(4, 48) / 4)
    layer_type = _GPT2Conv1DType()
    assert layer_type.param_names == ("num_terms", "low_rank", "init")
    sketched = layer_type.build(original, {"num_terms": 1, "low_rank": 8, "init": "svd", "seed": 3})
    x = torch.randn(5, 32)
    assert isinstance(sketched, SKLinear) and not sketched.training and sketched.seed == 3
    err = (sketched(x) - original(x)).norm() / original(x).norm()
    assert err < 0.5
    # The inherited cost model uses fans(): SKLinear's formula.
    assert layer_type.cost(original) == Cost(params=32 * 48 + 48, macs=32 * 48)
    assert layer_type.cost(original, {"num_terms": 1, "low_rank": 4}) == Cost(
        params=4 * (32 + 48) + 48, macs=2 * 4 * (32 + 48)
    )
    # The sketched-cost contract: params read back from the sketched layer.
    assert layer_type.sketched_params(sketched)["low_rank"] == 8
    assert layer_type.sketched_cost(sketched) == layer_type.cost(
        sketched, {"num_terms": 1, "low_rank": 8, "init": "svd"}
    )
    empty = layer_type.build(original, {"num_terms": 1, "low_rank": 4}, copy_weights=False)
    assert empty(x).shape == (5, 48)


def test_missing_hook_names_itself_and_legacy_private_hooks_still_work():
    class Unfinished(LowRankLayerType):
        name = "Unfinished"
        module_types = (nn.Linear,)

        def factory_signature_source(self):
            return SKLinear

    with pytest.raises(NotImplementedError, match="Unfinished must implement fans"):
        Unfinished().auto_space(nn.Linear(8, 8))

    class Legacy(Unfinished):
        def _fans(self, original):
            return original.in_features, original.out_features

    with pytest.warns(DeprecationWarning, match="rename it to the public fans"):
        assert Legacy().auto_space(nn.Linear(64, 64))["low_rank"].values()


def test_flops_costs_sketched_layers_through_sketched_cost():
    from panther.tuner import plugins
    from panther.tuner.evaluators import flops
    from panther.tuner.hookspecs import hookimpl

    class Wrapped(nn.Module):
        """A sketched layer that keeps its configuration in a dict, not as attributes."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = {"num_terms": inner.num_terms, "low_rank": inner.low_rank}

        def forward(self, x):
            return self.inner(x)

    class WrappedType(_GPT2Conv1DType):
        name = "WrappedConv1D"
        sketched_type = Wrapped

        def sketch_copy(self, original, num_terms, low_rank, **options):
            return Wrapped(super().sketch_copy(original, num_terms, low_rank, **options))

        def sketched_params(self, sketched):
            return dict(sketched.config)

        def sketched_cost(self, sketched):
            n_in, n_out = sketched.inner.in_features, sketched.inner.out_features
            lk = sketched.config["num_terms"] * sketched.config["low_rank"]
            return Cost(params=lk * (n_in + n_out), macs=2 * lk * (n_in + n_out))

    class Plugin:
        @hookimpl
        def panther_layer_types(self):
            return [WrappedType()]

    name = plugins.register_plugin(Plugin(), name="wrapped-conv1d")
    try:
        original = _GPT2Conv1D(64, 64)
        sketched = WrappedType().build(original, {"num_terms": 1, "low_rank": 4})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the old read-attributes path warned and fell back
            assert flops()(nn.Sequential(sketched)) == 2 * 4 * 128
            assert flops()(nn.Sequential(original)) == 64 * 64
    finally:
        plugins.unregister_plugin(name)
