"""Unit tests of SKAutoTuner's orchestration, with a toy layer type registered as a plugin.

The toy "sketch" is exact and cheap, and the evaluation functions read its
parameters directly, so every expected outcome (optimum, rejections, failures) is
known in advance.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.tuner import (
    Categorical,
    GridSearch,
    Int,
    LayerConfig,
    OptunaSearch,
    RandomSearch,
    SKAutoTuner,
    TuningConfigs,
    hookimpl,
    load_tuning_results,
    register_plugin,
    unregister_plugin,
)
from panther.tuner.combine import Option as _Option
from panther.tuner.combine import knapsack as _knapsack
from panther.tuner.config import ParamSpec
from panther.tuner.layers.base import Cost, LayerType
from panther.tuner.results import TuningResults
from panther.tuner.search.base import SearchAlgorithm
from panther.tuner.tuner import TuningWarning

N = 16


class Toy(nn.Module):
    """A dense toy layer: y = x W."""

    def __init__(self, n: int = N) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class ToySketch(nn.Module):
    """The toy's sketched form: keeps ``rank`` columns, remembers its params and seed."""

    def __init__(self, original: Toy, rank: int, terms: int, seed: int, copy_weights: bool) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = original.weight.detach().clone() if copy_weights else torch.randn(original.weight.shape)
        noise = torch.randn(w.shape, generator=gen) * 1e-3
        self.weight = nn.Parameter(w + noise)
        self.rank, self.terms, self.seed = rank, terms, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class ToyType(LayerType):
    name = "Toy"
    module_types = (Toy,)
    sketched_type = ToySketch
    param_names = ("rank", "terms")

    def build(self, original, params, copy_weights=True):
        self.validate_params(original, params)
        seed = params.get("seed")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return ToySketch(original, params.get("rank", 4), params.get("terms", 1), seed, copy_weights)

    def auto_space(self, original) -> dict[str, ParamSpec]:
        return {"rank": Categorical([1, 2, 4, 8]), "terms": Categorical([1, 2])}

    def cost(self, original, params=None) -> Cost:
        n = original.weight.shape[0]
        if params is None:
            return Cost(n * n, n * n)
        work = 2 * params.get("rank", 4) * params.get("terms", 1) * n
        return Cost(work, work)

    def size_key(self, module):
        return tuple(module.weight.shape)

    def validate_params(self, original, params):
        super().validate_params(original, params)
        if "rank" in params and params["rank"] < 1:
            raise ValueError("rank must be >= 1")


class ToyPlugin:
    @hookimpl
    def panther_layer_types(self):
        return [ToyType()]


class ToyNet(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Toy() for _ in range(layers)])
        self.head = nn.Linear(N, 2)  # not a Toy: must be left alone

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return self.head(x)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def toy_plugin():
    name = register_plugin(ToyPlugin(), name="toy-test-plugin")
    yield
    unregister_plugin(name)


def sketches(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, ToySketch)}


def toy_accuracy(model, loss_per_layer=None):
    """1 minus a known loss per sketched layer: low rank loses more."""
    loss_per_layer = loss_per_layer or {1: 0.2, 2: 0.08, 4: 0.03, 8: 0.0}
    loss = sum(loss_per_layer[m.rank] + (0.01 if m.terms == 1 else 0.0) for m in sketches(model).values())
    return 1.0 - loss


def toy_speed(model):
    """Higher for cheaper sketches (a deterministic stand-in for throughput)."""
    work = 3 * N * N
    for m in sketches(model).values():
        work += 2 * m.rank * m.terms * N - N * N
    return 1e6 / work


def make_tuner(model=None, **kwargs):
    model = model or ToyNet()
    kwargs.setdefault("configs", TuningConfigs([LayerConfig({"type": "Toy"}, "auto")]))
    kwargs.setdefault("accuracy_eval_func", toy_accuracy)
    kwargs.setdefault("search_algorithm", GridSearch())
    return SKAutoTuner(model, **kwargs)


def test_known_optimum_separate_grid():
    # Threshold 0.95 allows rank 4 with 2 terms (loss 0.03) or rank 8 (loss 0/0.01);
    # the cheapest feasible is rank 4, terms 1 (loss 0.04 -> acc 0.96).
    tuner = make_tuner(accuracy_threshold=0.95, optmization_eval_func=toy_speed, verify=False)
    best = tuner.tune()
    assert set(best) == {"blocks.0", "blocks.1", "blocks.2"}
    for entry in best.values():
        assert entry["params"] == {"rank": 4, "terms": 1}
        assert math.isfinite(entry["score"])
    df = tuner.get_results_dataframe()
    assert len(df) == 3 * 8
    assert {"layer_name", "rank", "terms", "score", "accuracy", "speed", "trial_number", "status",
            "error", "wall_time_s"} <= set(df.columns)
    rejected = df[df["status"] == "rejected"]
    assert len(rejected) == 3 * 4  # ranks 1 and 2 miss 0.95 with either number of terms
    skipped = df[df["status"] == "skipped"]
    assert len(skipped) == 3 * 3  # (4, 2), (8, 1), (8, 2) do no less work than the dense layer
    assert (rejected["score"] == -math.inf).all()
    assert rejected["speed"].isna().all()


def test_speed_not_called_for_rejected_and_score_is_accuracy_without_speed():
    calls = []

    def speed(model):
        calls.append({n: m.rank for n, m in sketches(model).items()})
        return toy_speed(model)

    tuner = make_tuner(accuracy_threshold=0.95, optmization_eval_func=speed, verify=False, remeasure_top=0)
    tuner.tune()
    assert all(r >= 4 for c in calls for r in c.values())
    plain = make_tuner(verify=False, skip_costlier=False)
    best = plain.tune()
    # Without a threshold or speed function the score is the accuracy: rank 8, 2 terms is best.
    assert best["blocks.0"]["params"] == {"rank": 8, "terms": 2}
    assert best["blocks.0"]["score"] == pytest.approx(1.0)


def test_joint_group_applies_params_to_every_layer():
    seen = []

    def acc(model):
        s = sketches(model)
        seen.append(sorted(s))
        assert len({(m.rank, m.terms) for m in s.values()}) == 1
        return toy_accuracy(model)

    cfg = LayerConfig(["blocks.0", "blocks.2"], {"rank": [2, 4, 8], "terms": [1]}, separate=False)
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=acc, verify=False,
                       skip_costlier=False)
    best = tuner.tune()
    assert all(s == ["blocks.0", "blocks.2"] for s in seen)
    assert best["blocks.0"] == best["blocks.2"]
    assert best["blocks.0"]["params"] == {"rank": 8, "terms": 1}
    df = tuner.get_results_dataframe()
    assert set(df["layer_name"]) == {"blocks.0+blocks.2"}


def test_auto_joint_groups_by_type_and_size():
    model = ToyNet()
    model.blocks.append(Toy(8))
    model.blocks[3].weight = nn.Parameter(torch.randn(8, 8))
    cfg = LayerConfig({"type": "Toy"}, "auto", separate=False)
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), toy_accuracy, search_algorithm=GridSearch())
    keys = sorted(g.key for g in tuner.groups)
    assert keys == ["blocks.0+blocks.1+blocks.2", "blocks.3"]


def test_construction_errors_are_clear():
    with pytest.raises(ValueError, match="no parameter"):
        make_tuner(configs=TuningConfigs([LayerConfig({"type": "Toy"}, {"rnak": [1, 2]})]))
    with pytest.raises(ValueError, match=r"Toy \(Toy\)"):
        # nn.Linear has no layer type in this registry only if no built-in handles it;
        # select the ModuleList instead, which no plugin sketches.
        make_tuner(configs=TuningConfigs([LayerConfig("blocks", {"rank": [1]})]))
    with pytest.raises(ValueError, match="not both"):
        make_tuner(optmization_eval_func=toy_speed, optimization_eval_func=toy_speed)
    with pytest.raises(ValueError, match="not both"):
        make_tuner(accuracy_threshold=0.9, accuracy_tolerance=0.01)
    with pytest.raises(ValueError, match="selected by configs"):
        make_tuner(configs=TuningConfigs([LayerConfig("blocks.0", {"rank": [1]}),
                                          LayerConfig({"type": "Toy"}, {"rank": [1]})]))
    with pytest.raises(ValueError, match="blocks"):
        make_tuner(configs=TuningConfigs([LayerConfig("blokcs.0", {"rank": [1]})]))
    with pytest.raises(ValueError, match="num_runs_per_param"):
        make_tuner(num_runs_per_param=0)
    with pytest.raises(TypeError, match="search_algorithm"):
        make_tuner(search_algorithm=object())
    with pytest.raises(ValueError, match="multi_objective"):
        make_tuner(multi_objective=True)


def test_optimization_eval_func_spelling_alias():
    tuner = make_tuner(optimization_eval_func=toy_speed)
    assert tuner.optimization_eval_func is toy_speed


def test_num_runs_best_of_n_not_mean():
    values = iter([0.5, 0.9, 0.7] * 100)

    def noisy(model):
        return next(values) if sketches(model) else 1.0

    cfg = LayerConfig("blocks.0", {"rank": [4]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=noisy, num_runs_per_param=3,
                       verify=False)
    best = tuner.tune()
    assert best["blocks.0"]["score"] == pytest.approx(0.9)
    row = tuner.results.trials[0]
    # The winning run's seed is the one recorded, so the winner can be rebuilt.
    assert isinstance(row["seeds"]["blocks.0"], int)


def test_failures_are_recorded_and_model_restored_bit_for_bit():
    model = ToyNet()
    before = copy.deepcopy(model.state_dict())

    def flaky(model):
        s = sketches(model)
        if any(m.rank == 2 for m in s.values()):
            raise RuntimeError("boom at rank 2")
        if any(m.rank == 1 for m in s.values()):
            return float("nan")
        if any(m.rank == 4 and m.terms == 2 for m in s.values()):
            return None
        return toy_accuracy(model)

    tuner = make_tuner(model=model, accuracy_eval_func=flaky, verify=False, skip_costlier=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    failed = df[df["status"] == "failed"]
    assert len(failed) == 3 * 5
    assert failed["error"].str.contains("boom at rank 2").any()
    assert failed["error"].str.contains("nan").any()
    assert failed["error"].str.contains("None").any()
    assert (df[df["status"] == "ok"]["rank"] >= 4).all()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not sketches(model)


def test_keyboard_interrupt_restores_model_keeps_results_and_propagates():
    model = ToyNet()
    model.train()
    before = copy.deepcopy(model.state_dict())
    count = {"n": 0}

    def interrupting(m):
        count["n"] += 1
        m.eval()
        if count["n"] == 4:
            raise KeyboardInterrupt
        return toy_accuracy(m)

    tuner = make_tuner(model=model, accuracy_eval_func=interrupting, verify=False)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not sketches(model)
    assert all(m.training for m in model.modules())  # train/eval state is back
    df = tuner.get_results_dataframe()
    assert len(df) == 3  # three trials finished before the interrupt
    assert (df["layer_name"] == "blocks.0").all()
    best = tuner.get_best_params()
    assert best["blocks.0"]["params"] is not None
    with pytest.warns(TuningWarning, match="interrupted"):
        tuned = tuner.apply_best_params()
    assert set(sketches(tuned)) == {"blocks.0"}


def test_keyboard_interrupt_during_verification_keeps_every_trial():
    model = ToyNet()
    before = copy.deepcopy(model.state_dict())

    def acc(m):
        if len(sketches(m)) == 3:  # the combined model: only the verification step builds it
            raise KeyboardInterrupt
        return toy_accuracy(m)

    tuner = make_tuner(model=model, accuracy_eval_func=acc, accuracy_threshold=0.9,
                       optmization_eval_func=toy_speed)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not sketches(model)
    assert len(tuner.get_results_dataframe()) == 3 * 8  # every search finished and is kept
    assert tuner.report["interrupted"] and not tuner.report["verified"]
    assert set(tuner.selected_params) == {"blocks.0", "blocks.1", "blocks.2"}  # unverified winners


def test_train_mode_and_dtype_preserved():
    model = ToyNet().double()
    model.train()
    tuner = make_tuner(model=model, accuracy_eval_func=lambda m: (m.eval(), toy_accuracy(m))[1])
    tuner.tune()
    assert all(m.training for m in model.modules())
    tuned = tuner.apply_best_params()
    for m in sketches(tuned).values():
        assert m.weight.dtype == torch.float64


def test_duplicates_are_cached_and_finite_space_ends_search():
    calls = {"n": 0}

    def acc(model):
        calls["n"] += 1
        return toy_accuracy(model)

    cfg = LayerConfig("blocks.1", {"rank": [2, 4, 8], "terms": [1]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=acc,
                       search_algorithm=OptunaSearch(n_trials=40, seed=1), verify=False,
                       skip_costlier=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    assert len(df) == 3 and calls["n"] == 3  # the 3-point space is exhausted long before 40 trials
    calls["n"] = 0
    search = RecordingSearch([{"rank": 4, "terms": 1}, {"rank": 4, "terms": 1}, {"rank": 2, "terms": 1},
                              {"rank": 4, "terms": 1}])
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=acc, search_algorithm=search,
                       verify=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    assert df["status"].tolist() == ["ok", "cached", "ok", "cached"]
    assert calls["n"] == 2
    assert df["score"][1] == df["score"][3] == df["score"][0]
    told = search.child.told
    assert len(told) == 4 and told[1][1] == told[0][1]  # a repeat is still told to the backend


def test_costlier_configs_are_skipped_unless_opted_out():
    calls = {"n": 0}

    def acc(model):
        calls["n"] += 1
        return toy_accuracy(model)

    # rank 8 with 2 terms costs 2*8*2*16 = 512 MACs >= 256 dense: skipped.
    cfg = LayerConfig("blocks.0", {"rank": [4, 8], "terms": [1, 2]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=acc, verify=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    skipped = df[df["status"] == "skipped"]
    assert len(skipped) == 3  # (8, 1) at 256 MACs is no saving either
    assert skipped["error"].str.contains("cost model").all()
    assert skipped["accuracy"].isna().all()
    assert calls["n"] == 1
    calls["n"] = 0
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=acc, verify=False,
                       skip_costlier=False)
    tuner.tune()
    assert calls["n"] == 4


class RecordingSearch(SearchAlgorithm):
    """Proposes a fixed list of points and records what it is told."""

    def __init__(self, points, n_trials=None):
        super().__init__()
        self.points = list(points)
        self.told: list[tuple[dict, float, float | None]] = []
        self.evaluated: list[bool] = []
        self._i = 0
        if n_trials is not None:
            self.n_trials = n_trials

    def initialize(self, param_space):
        self.param_space = param_space
        self._i = 0

    def get_next_params(self):
        if self._i >= len(self.points):
            return None
        self._i += 1
        self._count_proposal()
        return dict(self.points[self._i - 1])

    def update(self, params, score, constraint=None, *, evaluated=True):
        super().update(params, score, constraint, evaluated=evaluated)
        self.told.append((params, score, constraint))
        self.evaluated.append(evaluated)

    def is_finished(self):
        return self._i >= len(self.points) or self._budget_spent()

    def spawn(self, key):
        self.child = type(self)(self.points, getattr(self, "n_trials", None))
        return self.child


class LegacySearch(RecordingSearch):
    """A third-party backend written before ``update`` had ``evaluated``/``values``/``attrs``."""

    def update(self, params, score, constraint=None):
        super().update(params, score, constraint)


FREE = ("skipped", "cached")


def test_skipped_and_cached_proposals_are_told_but_do_not_use_the_budget():
    points = [{"rank": 8, "terms": 2}, {"rank": 4, "terms": 1}, {"rank": 4, "terms": 1},
              {"rank": 8, "terms": 1}, {"rank": 2, "terms": 1}, {"rank": 1, "terms": 1}]
    search = RecordingSearch(points, n_trials=2)
    cfg = LayerConfig("blocks.0", {"rank": [1, 2, 4, 8], "terms": [1, 2]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), search_algorithm=search, verify=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    # Two evaluations were asked for; the costlier and the repeated proposals came free.
    assert df["status"].tolist() == ["skipped", "ok", "cached", "skipped", "ok"]
    assert [p for p, _, _ in search.child.told] == points[:5]  # the backend heard every one
    assert search.child.evaluated == [False, True, False, False, True]
    assert search.child.n_trials == 2  # the backend's limit is left alone: it counts evaluations
    assert search.child.n_evaluated == 2 and search.child.n_proposed == 5
    assert search.child.best_params in (points[1], points[4])  # never a skipped point
    assert tuner.results.groups["blocks.0"]["n_evaluated"] == 2


def test_backend_without_the_evaluated_keyword_still_runs():
    # An older plugin's update(params, score, constraint) is called without the new keywords.
    points = [{"rank": 8, "terms": 2}, {"rank": 4, "terms": 1}, {"rank": 2, "terms": 1}]
    search = LegacySearch(points, n_trials=2)
    cfg = LayerConfig("blocks.0", {"rank": [1, 2, 4, 8], "terms": [1, 2]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), search_algorithm=search, verify=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    # It counts the skipped proposal toward its n_trials=2, so it stops one evaluation
    # early: fewer evaluations than asked for, but nothing breaks.
    assert df["status"].tolist() == ["skipped", "ok"]
    assert search.child.evaluated == [True, True]  # the keyword was never passed
    assert search.child.n_evaluated == 2


def test_proposal_cap_ends_a_search_that_only_proposes_skipped_points():
    points = [{"rank": r, "terms": 2} for r in range(8, 200)]  # all costlier than the dense layer
    search = RecordingSearch(points, n_trials=3)
    cfg = LayerConfig("blocks.0", {"rank": Int(1, 200), "terms": [1, 2]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), search_algorithm=search, verify=False)
    with pytest.warns(TuningWarning, match="0 of 3 evaluations.*skipped.*Narrow"):
        tuner.tune()
    df = tuner.get_results_dataframe()
    assert len(df) == 30 and (df["status"] == "skipped").all()


class CappedSearch(RecordingSearch):
    """A backend whose own proposal cap (3 x n_trials) is below the tuner's (10 x)."""

    PROPOSAL_CAP_FACTOR = 3


def test_backend_that_stops_at_its_own_proposal_cap_gets_the_same_warning():
    points = [{"rank": r, "terms": 2} for r in range(8, 200)]  # all costlier than the dense layer
    search = CappedSearch(points, n_trials=3)
    cfg = LayerConfig("blocks.0", {"rank": Int(1, 200), "terms": [1, 2]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), search_algorithm=search, verify=False)
    with pytest.warns(TuningWarning, match="0 of 3 evaluations.*skipped.*Narrow"):
        tuner.tune()
    df = tuner.get_results_dataframe()
    assert len(df) == 9 and (df["status"] == "skipped").all()
    assert search.child.evaluated == [False] * 9


def test_optuna_n_trials_counts_evaluations_on_a_mostly_costlier_space():
    # Like the tutorial's wide Int(32, 256, step=32) on a 256-wide layer: only 13 of the
    # 128 points are cheaper than the dense layer (rank * terms < 8).
    cfg = LayerConfig("blocks.0", {"rank": Int(1, 32), "terms": Categorical([1, 2, 3, 4])})
    search = OptunaSearch(n_trials=8, seed=0)
    tuner = make_tuner(configs=TuningConfigs([cfg]), search_algorithm=search, verify=False,
                       accuracy_eval_func=lambda m: 1 - sum(0.01 / s.rank for s in sketches(m).values()))
    tuner.tune()
    df = tuner.get_results_dataframe()
    assert (~df["status"].isin(FREE)).sum() == 8
    assert (df["status"] == "skipped").sum() > 0
    import optuna

    study = search.studies["blocks.0"]
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == len(df)  # skipped proposals were told, so TPE learns to avoid them


def test_backend_gets_finite_graded_penalties_and_constraints():
    points = [{"rank": r, "terms": 1} for r in (8, 1, 2, 4)]
    search = RecordingSearch(points)
    cfg = LayerConfig("blocks.0", {"rank": [1, 2, 4, 8], "terms": [1]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), search_algorithm=search, accuracy_threshold=0.95,
                       optmization_eval_func=toy_speed, verify=False, skip_costlier=False)
    tuner.tune()
    told = {p["rank"]: (s, c) for p, s, c in search.child.told}
    assert all(math.isfinite(s) for s, _ in told.values())
    feasible = [told[8][0], told[4][0]]
    assert told[1][0] < told[2][0] < min(feasible)  # graded by shortfall (rank 1 misses by more)
    assert told[1][1] > told[2][1] > 0 >= told[8][1]
    df = tuner.get_results_dataframe()
    assert (df[df["rank"] <= 2]["score"] == -math.inf).all()


def test_tpe_converges_when_most_configs_are_infeasible():
    # 1 Toy layer, rank 1..32: only rank >= 28 is feasible; speed prefers low rank, so
    # the optimum is rank 28. A sampler fed -inf would lose the gradient toward it.
    def acc(model):
        s = sketches(model)
        return 1.0 if not s else min(1.0, 0.6 + 0.0143 * next(iter(s.values())).rank)

    def speed(model):
        s = sketches(model)
        return 100.0 / (1 + (next(iter(s.values())).rank if s else 64))

    model = nn.Sequential(Toy(64))
    cfg = LayerConfig("0", {"rank": Int(1, 32), "terms": [1]})
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, accuracy_threshold=0.999,
                        optmization_eval_func=speed, verify=False, remeasure_top=0,
                        search_algorithm=OptunaSearch(n_trials=40, seed=3))
    best = tuner.tune()
    df = tuner.get_results_dataframe()
    assert (df["status"] == "ok").sum() >= 3
    assert best["0"]["params"]["rank"] == 28


def test_budgets_max_trials_and_time():
    tuner = make_tuner(max_trials=2, verify=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    assert df.groupby("layer_name").size().tolist() == [2, 2, 2]

    def slow(model):
        import time as _t

        _t.sleep(0.05)
        return toy_accuracy(model)

    tuner = make_tuner(accuracy_eval_func=slow, time_budget_s=0.3, verify=False)
    with pytest.warns(TuningWarning, match="time_budget_s"):
        tuner.tune()
    df = tuner.get_results_dataframe()
    assert 1 <= len(df) < 24
    assert tuner.get_best_params()  # what was found is kept


def _additive_model():
    # Each layer alone may lose 0.04; two together lose 0.08 and miss the 0.95 bar.
    return ToyNet()


def test_combined_verification_backs_off_when_winners_fail_together():
    loss = {1: 0.2, 2: 0.04, 4: 0.03, 8: 0.0}

    def acc(model):
        return toy_accuracy(model, loss)

    cfg = LayerConfig({"type": "Toy"}, {"rank": [2, 4, 8], "terms": [2]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_eval_func=acc, accuracy_threshold=0.95,
                       optmization_eval_func=toy_speed)
    best = tuner.tune()
    # Per layer, rank 2 (acc 0.96) is the fastest feasible choice ...
    assert all(v["params"]["rank"] == 2 for v in best.values())
    # ... but all three together lose 0.12; the verified choice must meet the bar.
    report = tuner.report
    assert report["verification"][0]["passed"] is False
    assert report["final_accuracy"] >= 0.95
    tuned = tuner.apply_best_params()
    assert acc(tuned) >= 0.95
    assert len(sketches(tuned)) >= 1
    assert acc(tuner.model) == 1.0  # the tuner's model stays original


def test_nothing_qualifies_returns_original_with_warning():
    cfg = LayerConfig({"type": "Toy"}, {"rank": [1, 2], "terms": [1]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), accuracy_threshold=0.99)
    with pytest.warns(TuningWarning, match="original model"):
        tuner.tune()
    assert tuner.selected_params == {}
    assert not sketches(tuner.apply_best_params())


def test_relative_tolerance_is_measured_on_original():
    def acc(model):
        return 0.8 * toy_accuracy(model)

    tuner = make_tuner(accuracy_eval_func=acc, accuracy_tolerance=0.05, tolerance_mode="relative",
                       verify=False)
    tuner.tune()
    assert tuner.report["effective_threshold"] == pytest.approx(0.8 * 0.95)
    tuner = make_tuner(accuracy_eval_func=acc, accuracy_tolerance=0.05, tolerance_mode="absolute",
                       verify=False)
    tuner.tune()
    assert tuner.report["effective_threshold"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="tolerance_mode"):
        make_tuner(accuracy_tolerance=0.05, tolerance_mode="percent")


@pytest.mark.parametrize("suffix", [".pkl", ".json", ""])
def test_save_load_round_trip_rebuilds_exactly(tmp_path, suffix):
    torch.manual_seed(5)
    model = ToyNet()
    fresh = copy.deepcopy(model)  # same architecture and original weights
    tuner = make_tuner(model=model, accuracy_threshold=0.9, optmization_eval_func=toy_speed)
    tuner.tune()
    tuned = tuner.apply_best_params()
    path = tmp_path / f"results{suffix}"
    tuner.save_tuning_results(str(path))
    json.loads(path.read_text())  # plain JSON whatever the suffix
    loaded = load_tuning_results(str(path))
    assert isinstance(loaded, TuningResults)
    rebuilt = loaded.apply(fresh)
    x = torch.randn(4, N)
    assert torch.equal(tuned(x), rebuilt(x))
    assert loaded.to_dataframe().equals(tuner.get_results_dataframe())
    manifest = json.loads(path.read_text())
    for choice in manifest["selection"].values():
        assert choice["layer_type"] == "Toy" and isinstance(choice["seed"], int)


def test_load_refuses_pickle_and_garbage(tmp_path):
    import pickle

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="pickle"):
        load_tuning_results(str(p))
    q = tmp_path / "x.json"
    q.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a panther"):
        load_tuning_results(str(q))


def test_apply_checks_architecture(tmp_path):
    tuner = make_tuner(accuracy_threshold=0.9)
    tuner.tune()
    other = nn.Sequential()
    with pytest.raises(ValueError):
        tuner.results.apply(other)


def test_lifecycle_hooks_are_emitted():
    events = []

    class Listener:
        @hookimpl
        def panther_trial_finished(self, layer_name, trial):
            events.append(("trial", layer_name, trial["status"]))

        @hookimpl
        def panther_layer_finished(self, layer_name, best_params, best_score):
            events.append(("layer", layer_name, best_params))

        @hookimpl
        def panther_tuning_finished(self, results):
            events.append(("done", type(results).__name__))

    name = register_plugin(Listener(), name="listener")
    try:
        make_tuner(max_trials=2, verify=False).tune()
    finally:
        unregister_plugin(name)
    assert [e[0] for e in events].count("trial") == 6
    assert [e[0] for e in events].count("layer") == 3
    assert events[-1] == ("done", "TuningResults")


def test_replace_without_tuning_uses_first_values():
    cfg = LayerConfig({"type": "Toy"}, {"rank": Int(2, 8, step=2), "terms": [2, 1]})
    tuner = make_tuner(configs=TuningConfigs([cfg]))
    model = tuner.replace_without_tuning()
    assert {(m.rank, m.terms) for m in sketches(model).values()} == {(2, 2)}
    assert not sketches(tuner.model)


def test_multi_objective_pareto_front():
    tuner = make_tuner(multi_objective=True, optmization_eval_func=toy_speed,
                       search_algorithm=OptunaSearch(n_trials=12, seed=0,
                                                     directions=["maximize", "maximize"]),
                       configs=TuningConfigs([LayerConfig("blocks.0", "auto")]))
    tuner.tune()
    front = tuner.pareto_front()
    assert len(front) >= 2
    ok = tuner.get_results_dataframe().query("status == 'ok'")
    for _, p in front.iterrows():
        dominated = ((ok["accuracy"] >= p["accuracy"]) & (ok["speed"] >= p["speed"])
                     & ((ok["accuracy"] > p["accuracy"]) | (ok["speed"] > p["speed"])))
        assert not dominated.any()
    fig = tuner.plot_pareto_front()
    assert fig.axes


def test_resume_after_interrupt_with_sqlite(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tuning.db'}"
    cfg = TuningConfigs([LayerConfig(["blocks.0", "blocks.1"], {"rank": Int(1, 12), "terms": [1, 2]})])
    loss = {r: 0.01 * (12 - r) for r in range(1, 13)}
    seen_b1 = {"n": 0}

    def acc_interrupting(model):
        if "blocks.1" in sketches(model):
            seen_b1["n"] += 1
            if seen_b1["n"] == 3:  # killed during the third evaluation of the second layer
                raise KeyboardInterrupt
        return toy_accuracy(model, loss)

    def make(acc):
        search = OptunaSearch(n_trials=6, study_name="resume", storage=storage, load_if_exists=True, seed=0)
        return SKAutoTuner(ToyNet(), cfg, acc, search_algorithm=search, verify=False, skip_costlier=False)

    def evaluated(df):  # cached repeats are free: n_trials counts evaluations
        return df[~df["status"].isin(["skipped", "cached"])]

    first = make(acc_interrupting)
    with pytest.raises(KeyboardInterrupt):
        first.tune()
    before = first.get_results_dataframe()
    assert (evaluated(before)["layer_name"] == "blocks.0").sum() == 6
    assert (evaluated(before)["layer_name"] == "blocks.1").sum() == 2
    second = make(lambda m: toy_accuracy(m, loss))
    second.tune()
    df = second.get_results_dataframe()
    assert evaluated(df).groupby("layer_name").size().to_dict() == {"blocks.0": 6, "blocks.1": 6}
    # The trials recorded before the kill are part of the resumed results, with their accuracy.
    b0 = df[df["layer_name"] == "blocks.0"].reset_index(drop=True)
    first_b0 = before[before["layer_name"] == "blocks.0"].reset_index(drop=True)
    assert b0["accuracy"].tolist() == first_b0["accuracy"].tolist()
    assert b0["rank"].tolist() == first_b0["rank"].tolist()
    import optuna

    for key, study in second.search_algorithm.studies.items():
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == (df["layer_name"] == key).sum()  # every proposal is told
        statuses = [t.user_attrs["panther_attrs"]["panther_row"]["status"] for t in done]
        assert sum(s not in ("skipped", "cached") for s in statuses) == 6
    assert set(second.search_algorithm.studies) == {"blocks.0", "blocks.1"}
    assert second.get_best_params()["blocks.0"]["params"] is not None


def test_knapsack_picks_best_combination_under_budget():
    groups = [type("G", (), {"key": k})() for k in ("a", "b", "c")]
    opts = {
        "a": [_Option({}, {}, None, None, 0, 0, gain=5, drop=0.03), _Option({}, {}, None, None, 0, 1, gain=2, drop=0.01)],
        "b": [_Option({}, {}, None, None, 0, 0, gain=4, drop=0.02)],
        "c": [_Option({}, {}, None, None, 0, 0, gain=1, drop=0.0)],
    }
    choice = _knapsack(groups, opts, budget=0.035)
    # a(5, .03) alone + c = 6; a(2, .01) + b(4, .02) + c = 7 within .03
    assert choice["a"].gain == 2 and choice["b"] is not None and choice["c"] is not None


@settings(max_examples=20, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(0, 0.1), st.floats(0.1, 10)), min_size=1, max_size=3),
                min_size=1, max_size=4),
       st.floats(0.01, 0.2))
def test_knapsack_respects_budget(option_lists, budget):
    groups = [type("G", (), {"key": str(i)})() for i in range(len(option_lists))]
    opts = {str(i): [_Option({}, {}, None, None, 0, j, gain=g, drop=d) for j, (d, g) in enumerate(lst)]
            for i, lst in enumerate(option_lists)}
    choice = _knapsack(groups, opts, budget)
    used = sum(o.drop for o in choice.values() if o is not None)
    assert used <= budget * (1 + 1e-6)  # weights round drops up, so the budget is never exceeded
    # Greedy sanity: the single best affordable option is never beaten by the empty choice.
    affordable = [o.gain for lst in opts.values() for o in lst if o.drop <= budget]
    total = sum(o.gain for o in choice.values() if o is not None)
    if affordable:
        assert total >= max(affordable) - 1e-9


def test_random_search_backend_and_search_algorithm_by_name():
    tuner = make_tuner(search_algorithm=RandomSearch(n_trials=5, seed=0), verify=False)
    tuner.tune()
    df = tuner.get_results_dataframe()
    # 5 evaluations per layer; the 3 costlier points of each 8-point space are skipped for free.
    assert (df["status"] != "skipped").sum() == 15 and len(df) == 24
    by_name = make_tuner(search_algorithm="grid", verify=False)
    assert isinstance(by_name.search_algorithm, GridSearch)


def test_no_results_yet_errors():
    tuner = make_tuner()
    with pytest.raises(RuntimeError, match="tune"):
        tuner.apply_best_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuner.get_results_dataframe()  # empty is fine


def test_top_candidates_are_remeasured_and_median_decides():
    # rank 2 gets one lucky first measurement (100) but is really slow (1); rank 4 is steady (10).
    draws = {2: iter([100.0, 1.0, 1.0]), 4: iter([10.0, 10.0, 10.0])}

    def speed(model):
        s = sketches(model)
        return next(draws[next(iter(s.values())).rank]) if s else 1.0

    cfg = LayerConfig("blocks.0", {"rank": [2, 4], "terms": [1]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), optmization_eval_func=speed, remeasure_top=2,
                       remeasure_runs=2, verify=False)
    best = tuner.tune()
    assert best["blocks.0"]["params"]["rank"] == 4
    assert best["blocks.0"]["score"] == 10.0
    df = tuner.get_results_dataframe()
    assert df.set_index("rank")["speed_median"].to_dict() == {2: 1.0, 4: 10.0}


class FakeClock:
    """A clock that only moves when a fake layer 'runs', scaled by the machine's load."""

    def __init__(self, load=lambda t: 1.0):
        self.now = 0.0
        self.load = load
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def run(self, label: str, cost: float) -> None:
        self.calls.append(label)
        self.now += cost * self.load(self.now)


def _fake_layer(clock, label, cost):
    class Timed(nn.Module):
        def forward(self, x):
            clock.run(label, cost)
            return x

    return Timed()


def test_time_pair_alternates_and_keeps_each_minimum():
    from panther.tuner.trials import time_pair as _time_pair

    # The machine turns 10x slower early in the run and stays so. Had the dense layer been
    # timed before (quiet) and the sketch now (busy), the sketch would look 5x slower; timed
    # in the same rounds, each keeps its quiet-round minimum.
    clock = FakeClock(load=lambda t: 10.0 if 5.0 <= t < 200.0 else 1.0)
    dense, sketched = _fake_layer(clock, "d", 1.0), _fake_layer(clock, "s", 0.5)
    d, s = _time_pair(dense, sketched, (torch.zeros(1),), {}, rounds=6, iters=2, timer=clock)
    assert s < d
    assert d == pytest.approx(1.0) and s == pytest.approx(0.5)  # the quiet rounds win
    timed = clock.calls[2:]  # after one warm-up call each
    rounds = [timed[i:i + 4] for i in range(0, len(timed), 4)]
    # Alternating rounds, and the order within a round flips every round.
    assert rounds[0] == ["d", "d", "s", "s"] and rounds[1] == ["s", "s", "d", "d"]
    assert timed.count("d") == timed.count("s") == 12


@pytest.mark.parametrize("sketch_cost, skipped", [(0.25, False), (4.0, True)])
def test_speed_precheck_skips_layers_that_are_not_faster(monkeypatch, sketch_cost, skipped):
    import panther.tuner.trials as tuner_module

    clock = FakeClock()
    monkeypatch.setattr(tuner_module, "_clock", clock)
    monkeypatch.setattr(Toy, "forward", lambda self, x: (clock.run("d", 1.0), x @ self.weight)[1])
    monkeypatch.setattr(ToySketch, "forward",
                        lambda self, x: (clock.run("s", sketch_cost), x @ self.weight)[1])
    calls = {"n": 0}

    def acc(m):
        calls["n"] += 1
        m(torch.randn(2, N))  # the baseline run captures the layer's inputs
        return toy_accuracy(m)

    cfg = LayerConfig("blocks.0", {"rank": [2], "terms": [1]})
    tuner = make_tuner(configs=TuningConfigs([cfg]), speed_precheck=True, verify=False,
                       accuracy_eval_func=acc)
    tuner.tune()
    row = tuner.get_results_dataframe().iloc[0]
    assert (row["status"] == "skipped") is skipped
    assert ("speed pre-check" in row["error"]) is skipped
    assert calls["n"] == (1 if skipped else 2)  # a skipped layer never reaches the model's evaluation


def test_invalid_value_in_space_is_reported_at_construction():
    with pytest.raises(ValueError, match=r"rank.*0.*blocks\.0"):
        make_tuner(configs=TuningConfigs([LayerConfig({"type": "Toy"}, {"rank": [4, 0]})]))


def test_progress_bar_and_verbose_output(capsys):
    make_tuner(max_trials=1, progress=True, verify=False).tune()
    err = capsys.readouterr().err
    assert "tuning" in err and "3/" in err
    make_tuner(max_trials=1, verbose=True, verify=False).tune()
    out_err = capsys.readouterr()
    assert "[blocks.0] trial 0" in out_err.out + out_err.err


def test_feasible_but_slower_than_original_stays_original():
    # Only rank 8 with 2 terms reaches 0.999, and it does more work than the dense layer.
    tuner = make_tuner(configs=TuningConfigs([LayerConfig("blocks.0", "auto")]), skip_costlier=False,
                       accuracy_threshold=0.999, optmization_eval_func=toy_speed)
    with pytest.warns(TuningWarning, match="faster than the original"):
        best = tuner.tune()
    assert best["blocks.0"]["params"] == {"rank": 8, "terms": 2}  # the search winner is still reported
    assert tuner.selected_params == {}
    assert tuner.report["kept_original"] == ["blocks.0"]


_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none())


@settings(max_examples=20, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "layer_name": st.sampled_from(["a", "b.c", "a+b"]),
    "params": st.dictionaries(st.sampled_from(["num_terms", "low_rank", "init"]),
                              st.one_of(st.integers(-5, 5000), st.sampled_from(["svd", "random"]),
                                        st.floats(0, 1))),
    "score": st.floats(allow_nan=False), "accuracy": _floats, "speed": _floats,
    "status": st.sampled_from(["ok", "rejected", "failed", "skipped", "cached"]),
    "error": st.text(max_size=20), "trial_number": st.integers(0, 100),
}), max_size=6))
def test_manifest_round_trip_is_lossless(tmp_path_factory, trials):
    results = TuningResults(trials=trials, info={"baseline_accuracy": 0.5, "x": float("-inf")})
    path = tmp_path_factory.mktemp("m") / "r.pkl"
    results.save(path)
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    json.loads(path.read_text(), parse_constant=reject)  # strict JSON: no NaN/Infinity tokens
    back = TuningResults.load(path)

    def same(a, b):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            return math.isnan(b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    assert len(back.trials) == len(trials)
    assert all(same(x, y) for x, y in zip(trials, back.trials))
    assert back.info["x"] == float("-inf")
