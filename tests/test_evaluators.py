"""Tests for the built-in evaluators (panther.tuner.evaluators)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from panther.tuner import evaluators as ev
from panther.tuner import plugins
from panther.tuner.config import Int
from panther.tuner.layers.base import Cost, LayerType


def _mlp(hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 5))


class _Recorder(nn.Module):
    """Records the mode and autograd state seen by each forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.lin(x) * scale


# --- speed ----------------------------------------------------------------------------------------


def test_throughput_is_positive_and_restores_modes():
    model = _mlp()
    model.train()
    model[2].eval()  # a mixed-mode model: must come back exactly like this
    before = [m.training for m in model.modules()]
    speed = ev.throughput(torch.randn(32, 8), warmup=1, iters=2, repeats=2)
    value = speed(model)
    assert isinstance(value, float) and value > 0 and math.isfinite(value)
    assert [m.training for m in model.modules()] == before
    assert speed.higher_is_better


def test_throughput_calls_protocol_eval_and_no_grad():
    model = _Recorder().train()
    ev.throughput(torch.randn(6, 4), warmup=2, iters=3, repeats=4)(model)
    assert len(model.calls) == 2 + 3 * 4
    assert all(mode is False and grad is False for mode, grad in model.calls)
    assert model.training
    model.calls.clear()
    ev.throughput(torch.randn(6, 4), warmup=0, iters=1, repeats=1, inference_mode=False)(model)
    assert model.calls == [(False, False)]


def test_throughput_input_forms_and_batch_size():
    model = _Recorder()
    assert ev.throughput((torch.randn(5, 4), 2.0), iters=1, repeats=1)(model) > 0
    assert ev.throughput({"x": torch.randn(5, 4)}, iters=1, repeats=1)(model) > 0
    made = []

    def factory():
        made.append(1)
        return torch.randn(7, 4)

    assert ev.throughput(input_factory=factory, iters=1, repeats=1)(model) > 0
    assert len(made) == 1  # once per evaluation, outside the timed loop
    assert ev.throughput(input_shape=[3, 4], iters=1, repeats=1)(model) > 0
    with pytest.raises(ValueError, match="input_shape"):
        ev.throughput(input_shape=[3, 0])
    with pytest.raises(ValueError, match="not both"):
        ev.latency(torch.randn(3, 4), input_shape=[3, 4])


def test_throughput_scales_with_batch_size_argument(monkeypatch):
    # With a fixed fake clock the result is exactly batch_size / seconds-per-call.
    ticks = iter(range(0, 10_000))
    monkeypatch.setattr(ev.time, "perf_counter", lambda: float(next(ticks)))
    model = _Recorder()
    # each timed block reads the clock twice, one tick apart, for iters=1 call
    assert ev.throughput(torch.randn(6, 4), iters=1, repeats=3)(model) == pytest.approx(6.0)
    assert ev.throughput(torch.randn(6, 4), batch_size=12, iters=1, repeats=3)(model) == pytest.approx(12.0)
    assert ev.latency(torch.randn(6, 4), iters=1, repeats=3)(model) == pytest.approx(1.0)
    assert ev.latency(torch.randn(6, 4), iters=1, repeats=3, negate=True)(model) == pytest.approx(-1.0)


def test_bigger_model_sanity():
    small, big = _mlp(4), _mlp(512)
    x = torch.randn(64, 8)
    t_small = ev.latency(x, iters=2, repeats=2)(small)
    t_big = ev.latency(x, iters=2, repeats=2)(big)
    assert t_small > 0 and t_big > 0


def test_latency_direction_flags():
    x = torch.randn(4, 8)
    assert not ev.latency(x).higher_is_better
    assert ev.latency(x, negate=True).higher_is_better
    inv = ev.latency(x, inverse=True, iters=1, repeats=1)
    assert inv.higher_is_better and inv(_mlp()) > 0
    with pytest.raises(ValueError, match="at most one"):
        ev.latency(x, negate=True, inverse=True)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({}, ValueError),
        ({"example_input": torch.randn(2, 8), "input_factory": lambda: torch.randn(2, 8)}, ValueError),
        ({"example_input": torch.randn(2, 8), "iters": 0}, ValueError),
        ({"example_input": torch.randn(2, 8), "repeats": 1.5}, ValueError),
        ({"example_input": torch.randn(2, 8), "warmup": -1}, ValueError),
        ({"example_input": torch.tensor(3.0)}, ValueError),  # no batch dimension
        ({"input_factory": 3}, TypeError),
    ],
)
def test_throughput_rejects_bad_options(kwargs, exc):
    with pytest.raises(exc):
        ev.throughput(**kwargs)


def test_device_mismatch_is_explained():
    with pytest.raises(ValueError, match="move the model"):
        ev.throughput(torch.randn(2, 8), device="meta", iters=1, repeats=1)(_mlp())


def test_evaluator_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        ev.throughput(torch.randn(2, 8))(lambda x: x)


# --- agreement / output similarity ----------------------------------------------------------------


def test_agreement_same_model_is_one_and_perturbed_is_less():
    model = _mlp()
    x = torch.randn(200, 8)
    acc = ev.agreement(model, x)
    assert acc(model) == 1.0
    perturbed = _mlp()
    with torch.no_grad():
        perturbed[3].weight.add_(torch.randn_like(perturbed[3].weight))
    value = acc(perturbed)
    assert 0.0 <= value < 1.0


def test_agreement_reference_is_cached_so_model_may_be_mutated_in_place():
    model = _Recorder()
    x = torch.randn(50, 4)
    acc = ev.agreement(model, [x[:25], x[25:]])
    calls = len(model.calls)
    with torch.no_grad():
        model.lin.weight.neg_()  # every argmax moves to the old argmin
    assert acc(model) < 0.5
    # the evaluation ran the model (2 batches) but never recomputed the reference
    assert len(model.calls) == calls + 2


def test_agreement_with_shuffling_dataloader_of_pairs():
    model = _mlp()
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 5, (64,)))
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    acc = ev.agreement(model, loader)
    assert acc(model) == 1.0  # inputs were materialised once, so shuffling cannot misalign them
    assert acc.options["batches"] == 4


def test_agreement_counts_positions_for_sequence_outputs():
    class Seq(nn.Module):
        def __init__(self, flip: bool) -> None:
            super().__init__()
            self.flip = flip

        def forward(self, x):
            # logits (batch, seq, 2); flipping the second position changes half the argmaxes
            y = torch.stack([x, -x], dim=-1)
            if self.flip:
                y = y.clone()
                y[:, 1] = -y[:, 1]
            return y

    x = torch.randn(3, 2)
    assert ev.agreement(Seq(False), x)(Seq(True)) == pytest.approx(0.5)


def test_agreement_output_containers():
    class Tupled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.lin(x), "aux": torch.zeros(1)}

    m = Tupled()
    x = torch.randn(10, 4)
    assert ev.agreement(m, x)(m) == 1.0
    assert ev.agreement(m, x, output_fn=lambda out: out["aux"].expand(10, 1))(m) == 1.0


def test_agreement_bad_inputs():
    model = _mlp()
    with pytest.raises(ValueError, match="empty"):
        ev.agreement(model, [])
    with pytest.raises(TypeError, match="item 0"):
        ev.agreement(model, [{"x": torch.randn(2, 8)}])
    with pytest.raises(TypeError, match="inputs must be"):
        ev.agreement(model, 3)
    with pytest.raises(TypeError, match="reference_model"):
        ev.agreement("model", torch.randn(2, 8))


def _scaled(scale: float) -> nn.Module:
    torch.manual_seed(1)
    lin = nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        lin.weight.mul_(scale)
    return lin


def test_output_similarity_exact_values():
    x = torch.randn(30, 6)
    sim = ev.output_similarity(_scaled(1.0), [x[:10], (x[10:], torch.zeros(20))])
    assert sim(_scaled(1.0)) == pytest.approx(1.0)
    assert sim(_scaled(0.5)) == pytest.approx(0.5, abs=1e-6)  # relative error 0.5
    assert sim(_scaled(-1.0)) == 0.0  # relative error 2 -> clamped at the default floor 0
    assert ev.output_similarity(_scaled(1.0), x, floor=None)(_scaled(-1.0)) == pytest.approx(-1.0, abs=1e-6)


def test_output_similarity_zero_reference_is_an_error():
    with pytest.raises(ValueError, match="all zero"):
        ev.output_similarity(_scaled(0.0), torch.randn(4, 6))


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(0.0, 2.0), floor=st.sampled_from([0.0, -0.5, None]))
def test_output_similarity_of_scaled_model(scale, floor):
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    value = ev.output_similarity(_scaled(1.0), x, floor=floor)(_scaled(scale))
    expected = 1.0 - abs(1.0 - scale)
    if floor is not None:
        expected = max(floor, expected)
    assert value == pytest.approx(expected, abs=1e-5)


# --- size -----------------------------------------------------------------------------------------


def test_param_count_and_memory_exact():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert ev.param_count()(model) == 3 * 4 + 4 + 4 + 4
    # 24 float32 params + running_mean/var (8 float32) + num_batches_tracked (one int64)
    assert ev.memory()(model) == 24 * 4 + 8 * 4 + 8
    model[0].weight.requires_grad_(False)
    assert ev.param_count(trainable_only=True)(model) == 12
    assert ev.memory(negate=True)(model) == -136
    assert ev.param_count(inverse=True)(model) == pytest.approx(1 / 24)
    assert not ev.memory().higher_is_better and ev.memory(inverse=True).higher_is_better


def test_shared_parameters_count_once():
    a = nn.Linear(5, 5, bias=False)
    model = nn.Sequential(a, nn.ReLU(), a)
    assert ev.param_count()(model) == 25
    assert ev.memory()(model) == 100
    half = nn.Linear(5, 5, bias=False).to(torch.float16)
    assert ev.memory()(half) == 50


# --- flops through the layer-type cost models -----------------------------------------------------


class Dense(nn.Module):
    """A toy layer (y = x W) so the test does not depend on the built-in layer types."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return x @ self.weight


class LowRankDense(nn.Module):
    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = n_in, n_out, rank
        self.a = nn.Parameter(torch.randn(n_in, rank))
        self.b = nn.Parameter(torch.randn(rank, n_out))

    def forward(self, x):
        return x @ self.a @ self.b


class DenseType(LayerType):
    name = "ToyDense"
    module_types = (Dense,)
    sketched_type = LowRankDense
    param_names = ("rank",)

    def build(self, original, params, copy_weights=True):
        return LowRankDense(original.in_features, original.out_features, params["rank"])

    def auto_space(self, original):
        return {"rank": Int(1, 4)}

    def cost(self, original, params=None):
        n, m = original.in_features, original.out_features
        if params is None:
            return Cost(n * m, n * m)
        r = params["rank"]
        return Cost(r * (n + m), r * (n + m))


class _ToyPlugin:
    @staticmethod
    @plugins.hookspecs.hookimpl
    def panther_layer_types() -> list[Any]:
        return [DenseType()]


@pytest.fixture
def toy_layer_type():
    name = plugins.register_plugin(_ToyPlugin(), name="toy-dense-for-flops")
    yield
    plugins.unregister_plugin(name)


def test_flops_from_cost_models(toy_layer_type):
    model = nn.Sequential(Dense(8, 6), nn.ReLU(), LowRankDense(6, 4, rank=2))
    per_row = 8 * 6 + 2 * (6 + 4)
    assert ev.flops()(model) == per_row
    assert ev.flops(torch.randn(5, 8))(model) == 5 * per_row
    # rows of a 3-d input: every (batch, position) pair is one row
    assert ev.flops(torch.randn(2, 3, 8))(model) == 6 * per_row
    assert ev.flops(input_shape=[2, 3, 8])(model) == 6 * per_row
    assert ev.flops(negate=True)(model) == -per_row
    assert ev.flops(inverse=True)(model) == pytest.approx(1 / per_row)


def test_flops_counts_only_layers_that_ran_and_each_call(toy_layer_type):
    class TwoCalls(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = Dense(4, 4)
            self.unused = Dense(4, 100)

        def forward(self, x):
            return self.used(self.used(x))

    assert ev.flops(torch.randn(3, 4))(TwoCalls()) == 2 * 3 * 16


def test_flops_without_plugin_types_is_zero_for_unknown_layers(toy_layer_type):
    assert ev.flops(torch.randn(3, 4))(nn.Sequential(nn.ReLU(), nn.Tanh())) == 0


def test_flops_of_builtin_sketched_layer_uses_its_config_cost():
    from panther.nn import SKLinear

    original = nn.Linear(32, 24)
    lt = plugins.layer_type_for(original)
    assert lt is not None, "the built-in Linear layer type should be registered"
    params = {"num_terms": 2, "low_rank": 3}
    sketched = SKLinear.from_linear(original, seed=0, **params)
    dense_model = nn.Sequential(original, nn.ReLU())
    sketch_model = nn.Sequential(sketched, nn.ReLU())
    assert ev.flops()(dense_model) == lt.cost(original).macs == 32 * 24
    assert ev.flops()(sketch_model) == lt.cost(original, params).macs
    assert ev.flops()(sketch_model) < ev.flops()(dense_model)


def test_flops_counts_conv_output_positions_batched_and_unbatched():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    per_position = plugins.layer_type_for(conv).cost(conv).macs
    assert per_position == 3 * 9 * 5
    # 6x7 output positions per image; an unbatched (C, H, W) input is one image.
    assert ev.flops(torch.randn(2, 3, 6, 7))(conv) == 2 * 6 * 7 * per_position
    assert ev.flops(torch.randn(3, 6, 7))(conv) == 6 * 7 * per_position


# --- registration ---------------------------------------------------------------------------------


def test_hook_registers_every_factory():
    names = ev.panther_evaluators()
    assert set(names) == {
        "throughput", "latency", "agreement", "output_similarity", "param_count", "memory", "flops"
    }
    registered = plugins.evaluators()
    for name, factory in names.items():
        assert registered[name] is factory
    speed = plugins.get_evaluator("throughput", example_input=torch.randn(4, 8), iters=1, repeats=1)
    assert speed(_mlp()) > 0
    assert "throughput" in repr(speed)
