"""Predicted sketch errors against the layers SKLinear/SKConv2d actually build, and the calibration probe."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.nn import SKConv2d, SKLinear
from panther.tuner.sensitivity import (
    CalibrationProbe,
    group_predicted_error,
    predicted_error,
    rank_correlation,
    relative_error,
    singular_values,
)


def decaying_linear(n_in: int, n_out: int, decay: float = 0.9, seed: int = 0) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    r = min(n_in, n_out)
    u = torch.linalg.qr(torch.randn(n_out, r, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(n_in, r, generator=gen))[0]
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(decay ** torch.arange(r, dtype=torch.float32)) @ v.T)
    return layer


def weight_error(original: torch.Tensor, sketched: nn.Module) -> float:
    w = sketched.dense_weight().detach().double()
    return float((w - original.detach().double()).norm() / original.detach().double().norm())


@pytest.mark.filterwarnings("ignore:SKLinear.*sketch parameters:UserWarning")
@settings(max_examples=15, deadline=None)
@given(n_in=st.integers(4, 40), n_out=st.integers(4, 40), terms=st.integers(1, 3),
       rank=st.integers(1, 12))
def test_svd_prediction_matches_the_built_linear_layer(n_in, n_out, terms, rank):
    # q = min(2*L*k, in, out) is what SKLinear's svd init keeps: the prediction is its tail energy.
    layer = decaying_linear(n_in, n_out)
    sk = SKLinear.from_linear(layer, terms, rank, init="svd", seed=1)
    pred = predicted_error(layer, {"num_terms": terms, "low_rank": rank, "init": "svd"})
    assert pred == pytest.approx(weight_error(layer.weight, sk), abs=2e-4)


def test_svd_prediction_with_the_randomized_range_finder():
    # Large layer, small rank: the build uses the randomized range finder, still within 1%.
    layer = decaying_linear(400, 300, decay=0.97)
    for terms, rank in ((1, 4), (2, 8), (3, 5)):
        sk = SKLinear.from_linear(layer, terms, rank, init="svd", seed=0)
        pred = predicted_error(layer, {"num_terms": terms, "low_rank": rank})
        assert pred == pytest.approx(weight_error(layer.weight, sk), rel=0.01)


@pytest.mark.parametrize("terms,rank", [(1, 2), (2, 3), (1, 8)])
def test_svd_prediction_matches_the_built_conv_layer(terms, rank):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 24, 3)
    sk = SKConv2d.from_conv2d(conv, terms, rank, init="svd", seed=0)
    pred = predicted_error(conv, {"num_terms": terms, "low_rank": rank, "init": "svd"})
    assert pred == pytest.approx(weight_error(conv.weight, sk), abs=1e-4)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_random_prediction_is_the_rms_error_over_seeds(kind):
    torch.manual_seed(0)
    layer = nn.Linear(30, 20) if kind == "linear" else nn.Conv2d(4, 16, 3)
    build = SKLinear.from_linear if kind == "linear" else SKConv2d.from_conv2d
    params = {"num_terms": 2, "low_rank": 3, "init": "random"}
    errs = [weight_error(layer.weight, build(layer, 2, 3, init="random", seed=s)) for s in range(60)]
    rms = math.sqrt(sum(e * e for e in errs) / len(errs))
    assert predicted_error(layer, params) == pytest.approx(rms, rel=0.1)


def test_prediction_edge_cases():
    layer = nn.Linear(8, 8)
    assert predicted_error(layer, {"low_rank": 2}) is None  # num_terms unknown
    assert predicted_error(layer, {"num_terms": 1, "low_rank": 2, "init": "other"}) is None
    assert predicted_error(nn.ReLU(), {"num_terms": 1, "low_rank": 2}) is None
    assert predicted_error(layer, {"num_terms": 1, "low_rank": 4}) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        layer.weight.zero_()
    assert predicted_error(layer, {"num_terms": 1, "low_rank": 1}) == 0.0
    assert singular_values(nn.ReLU()) is None


@settings(max_examples=20, deadline=None)
@given(rank=st.integers(1, 20))
def test_svd_prediction_is_monotone_in_rank(rank):
    layer = decaying_linear(24, 30, decay=0.8)
    s = singular_values(layer)
    a = predicted_error(layer, {"num_terms": 1, "low_rank": rank}, s)
    b = predicted_error(layer, {"num_terms": 1, "low_rank": rank + 1}, s)
    assert 0.0 <= b <= a <= 1.0


def test_group_prediction_is_energy_weighted():
    a, b = decaying_linear(16, 16, seed=1), decaying_linear(16, 16, decay=0.5, seed=2)
    params = {"num_terms": 1, "low_rank": 2}
    ea, eb = predicted_error(a, params), predicted_error(b, params)
    wa, wb = (float(m.weight.detach().double().square().sum()) for m in (a, b))
    expected = math.sqrt((ea ** 2 * wa + eb ** 2 * wb) / (wa + wb))
    assert group_predicted_error({"a": a, "b": b}, params) == pytest.approx(expected)
    assert group_predicted_error({"a": a}, params) == pytest.approx(ea)
    assert group_predicted_error({"r": nn.ReLU()}, params) is None


def test_relative_error_and_rank_correlation():
    x = torch.ones(3, 4)
    assert relative_error([(x, x)]) == 0.0
    assert relative_error([(2 * x, x)]) == pytest.approx(1.0)
    assert relative_error([(torch.zeros(2), torch.zeros(2))]) == 0.0
    assert relative_error([(torch.ones(2), torch.zeros(2))]) == math.inf
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2], [1, 2]) is None
    assert rank_correlation([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="equally long"):
        rank_correlation([1], [1, 2])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = decaying_linear(12, 32, seed=3)
        self.b = decaying_linear(32, 6, seed=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_probe_captures_batches_and_measures_errors():
    net = Net().eval()
    probe = CalibrationProbe(net, ["a", "b"], max_batches=2)
    data = [torch.randn(5, 12) for _ in range(4)]
    with probe.capture():
        for x in data:
            net(x)
    assert len(probe.model_inputs) == 2 and len(probe.layer_inputs["a"]) == 2
    assert not net._forward_pre_hooks and not net.a._forward_hooks  # hooks removed
    probe.finish()
    assert probe.has_model_inputs and probe.model_error() == 0.0
    exact = SKLinear.from_linear(net.a, 1, 6, init="svd")  # rank 12 = full rank of a 12x32 map
    assert probe.layer_error("a", exact) == pytest.approx(0.0, abs=1e-5)
    coarse = SKLinear.from_linear(net.a, 1, 1, init="svd")
    fine = SKLinear.from_linear(net.a, 1, 3, init="svd")
    assert probe.layer_error("a", coarse) > probe.layer_error("a", fine) > 0
    original = net.a
    net.a = coarse
    try:
        assert probe.model_error() > 0
    finally:
        net.a = original
    assert probe.layer_error("missing", coarse) is None
    # A layer that cannot run on the captured inputs gives no measure instead of an error.
    assert probe.layer_error("a", nn.Linear(3, 3)) is None


def test_probe_respects_max_rows_and_validates():
    net = Net()
    probe = CalibrationProbe(net, ["a"], max_batches=10, max_rows=8)
    with probe.capture():
        for _ in range(5):
            net(torch.randn(5, 12))
    assert len(probe.model_inputs) == 2  # 5 + 3 rows (the second batch cut) reach the 8-row cap
    assert [a[0].shape[0] for a, _ in probe.model_inputs] == [5, 3]
    assert [o.shape[0] for o in probe.layer_outputs["a"]] == [5, 3]
    with pytest.raises(ValueError, match="max_batches"):
        CalibrationProbe(net, ["a"], max_batches=0)


def test_probe_handles_dict_outputs_and_keyword_inputs():
    class KwNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, *, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
            logits = self.lin(x)
            return {"loss": logits.sum(), "logits": logits}

    net = KwNet()
    probe = CalibrationProbe(net, ["lin"])
    with probe.capture():
        net(x=torch.randn(2, 4))
    probe.finish()
    assert probe.reference[0].shape == (2, 3)  # the logits, not the scalar loss
    assert probe.model_error() == 0.0
