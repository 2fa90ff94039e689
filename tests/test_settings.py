"""TunerSettings, AccuracyConstraint and the shared timing helpers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from panther.tuner.settings import (
    DEFAULT_N_TRIALS,
    AccuracyConstraint,
    TunerSettings,
    meets_threshold,
)
from panther.tuner.timing import eval_mode, restore_modes, save_modes, time_calls, time_interleaved


def acc(model):
    return 1.0


@pytest.mark.parametrize("kind, amount, baseline, expected", [
    ("absolute", 0.7, None, 0.7),
    ("absolute", 0.7, 0.9, 0.7),
    ("drop", 0.05, 0.9, 0.85),
    ("relative", 0.1, 0.8, 0.72),
    ("relative", 0.1, -2.0, -2.2),  # |baseline| keeps the threshold below a negative score
])
def test_constraint_resolves(kind, amount, baseline, expected):
    assert AccuracyConstraint(kind, amount).resolve(baseline) == pytest.approx(expected)


def test_constraint_from_kwargs_maps_the_tuner_spellings():
    assert AccuracyConstraint.from_kwargs() is None
    assert AccuracyConstraint.from_kwargs(accuracy_threshold=0.5) == AccuracyConstraint("absolute", 0.5)
    assert AccuracyConstraint.from_kwargs(accuracy_tolerance=0.1) == AccuracyConstraint("drop", 0.1)
    assert AccuracyConstraint.from_kwargs(accuracy_tolerance=0.1, tolerance_mode="relative") \
        == AccuracyConstraint("relative", 0.1)
    with pytest.raises(ValueError, match="not both"):
        AccuracyConstraint.from_kwargs(accuracy_threshold=0.5, accuracy_tolerance=0.1)
    with pytest.raises(ValueError, match="tolerance_mode"):
        AccuracyConstraint.from_kwargs(accuracy_tolerance=0.1, tolerance_mode="drop")
    with pytest.raises(ValueError, match="NaN"):
        AccuracyConstraint.from_kwargs(accuracy_threshold=math.nan)
    with pytest.raises(ValueError, match=">= 0"):
        AccuracyConstraint.from_kwargs(accuracy_tolerance=-1)


def test_constraint_from_config_matches_the_toml_forms():
    assert AccuracyConstraint.from_config(0.9) == AccuracyConstraint("absolute", 0.9)
    assert AccuracyConstraint.from_config({"drop": 0.02}) == AccuracyConstraint("drop", 0.02)
    assert AccuracyConstraint.from_config({"relative": 0.01}) == AccuracyConstraint("relative", 0.01)
    for bad, error in ((math.inf, ValueError), (math.nan, ValueError), ({"relative": 1.5}, ValueError),
                       ({"drop": 1, "relative": 1}, ValueError), ({"drop": "x"}, TypeError),
                       ("0.9", TypeError), (True, TypeError), ({"absolute": 1}, ValueError)):
        with pytest.raises(error):
            AccuracyConstraint.from_config(bad)
    with pytest.raises(ValueError, match="original model"):
        AccuracyConstraint("drop", 0.1).resolve(None)


@given(st.floats(-1e6, 1e6), st.floats(0, 1e3), st.sampled_from(["drop", "relative"]))
def test_a_loss_never_raises_the_threshold_above_the_baseline(baseline, amount, kind):
    assert AccuracyConstraint(kind, amount).resolve(baseline) <= baseline


def test_meets_threshold():
    assert meets_threshold(None, None) and meets_threshold(0.5, 0.5)
    assert not meets_threshold(None, 0.1) and not meets_threshold(0.4, 0.5)


def test_settings_are_checked_and_frozen():
    s = TunerSettings.from_kwargs(acc, accuracy_tolerance=0.1, max_trials=3)
    assert s.constraint == AccuracyConstraint("drop", 0.1) and s.max_trials == 3 and s.needs_baseline
    with pytest.raises(AttributeError):
        s.max_trials = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="not both"):
        TunerSettings.from_kwargs(acc, optmization_eval_func=acc, optimization_eval_func=acc)
    with pytest.raises(ValueError, match="max_trials"):
        TunerSettings.from_kwargs(acc, max_trials=-1)
    with pytest.raises(ValueError, match="time_budget_s"):
        TunerSettings.from_kwargs(acc, time_budget_s=0)
    with pytest.raises(ValueError, match="multi_objective"):
        TunerSettings.from_kwargs(acc, multi_objective=True)
    assert isinstance(DEFAULT_N_TRIALS, int) and DEFAULT_N_TRIALS > 0


def test_time_calls_reads_the_clock_around_each_block():
    ticks = iter(range(100))
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=2, iters=4, repeats=3,
                       clock=lambda: float(next(ticks)))
    assert times == [0.25, 0.25, 0.25] and len(calls) == 2 + 12


def test_time_interleaved_alternates_the_order():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    out = time_interleaved(fns, rounds=2, iters=1, alternate=True)
    assert order == ["a", "b", "b", "a"] and set(out) == {"a", "b"}


def test_mode_helpers_keep_mixed_modes():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    modes = save_modes(model)
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert save_modes(model) == modes
    model.eval()
    restore_modes(model, modes)
    assert model.training and model[0].training and not model[1].training


def test_demo_throughput_restores_each_modules_mode():
    # Before the shared helper the demo left the model in eval mode (and flattened mixed modes).
    from panther.demo import compare_throughput, measure_throughput

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout())
    model.train()
    model[1].eval()
    modes = save_modes(model)
    x = torch.randn(3, 4)
    assert measure_throughput(model, x, iterations=1, repeats=1, warmup=0) > 0
    assert save_modes(model) == modes
    compare_throughput({"m": model}, x, iterations=1, repeats=1, warmup=0)
    assert save_modes(model) == modes
