"""Multi-fidelity pruning in the classic strategy (issue 16): Optuna pruners, pruned trials, budget."""

from __future__ import annotations

import math
from collections import Counter

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_outcome import Net, agreement_with, configs, macs_speed

from panther.tuner import Int, OptunaSearch, SKAutoTuner, load_tuning_results
from panther.tuner.fidelity import check_ladder, screen_rejects
from panther.tuner.search.base import SearchAlgorithm
from panther.tuner.search.random import RandomSearch

THRESHOLD = 0.97


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def recording(model, calls):
    """The fidelity-aware agreement accuracy, recording ``(fidelity)`` per call."""
    return agreement_with(model, calls)


def run(pruner, fidelities=(0.25,), n_trials=12):
    model = Net()
    calls: list[float] = []
    search = OptunaSearch(n_trials=n_trials, seed=0, pruner=pruner, fidelities=fidelities)
    tuner = SKAutoTuner(model, configs(), recording(model, calls), accuracy_threshold=THRESHOLD,
                        optimization_eval_func=macs_speed, strategy="classic",
                        search_algorithm=search)
    tuner.tune()
    return tuner, calls


# ---- end to end -----------------------------------------------------------------------------
def test_pruning_saves_full_evaluations_and_never_accepts_a_pruned_trial():
    pruned_tuner, pruned_calls = run("auto")
    full_tuner, full_calls = run("none")
    n_pruned_full = Counter(pruned_calls)[1.0]
    n_full = Counter(full_calls)[1.0]
    assert 0.25 not in full_calls  # pruner="none": no screens at all
    assert n_pruned_full < n_full  # fewer full evaluations with pruning
    df = pruned_tuner.get_results_dataframe()
    pruned = df[df["status"] == "pruned"]
    assert len(pruned) > 0
    assert pruned["accuracy"].isna().all()
    rows = [r for r in pruned_tuner.results.trials if r["status"] == "pruned"]
    assert all(r["pruned_at"] == 0.25 and r["intermediate"][0][0] == 0.25 for r in rows)
    # Pruned trials are never chosen; the winner was accepted at full fidelity.
    for key, summary in pruned_tuner.results.groups.items():
        best = summary["best_trial"]
        if best is not None:
            row = df[(df["layer_name"] == key) & (df["trial_number"] == best)].iloc[0]
            assert row["status"] == "ok" and row["accuracy"] >= THRESHOLD
    tuned = pruned_tuner.apply_best_params()
    assert recording(Net(), [])(tuned) >= THRESHOLD
    # The budget: pruned trials count as evaluations, at a fraction of the cost.
    for key, stats in pruned_tuner.report["pruning"].items():
        summary = pruned_tuner.results.groups[key]
        assert stats["pruned"] + stats["full_evaluations"] == summary["n_evaluated"] <= 12
        assert stats["evaluation_cost"] == pytest.approx(
            0.25 * stats["pruned"] + 1.25 * stats["full_evaluations"])
    # Optuna recorded them as PRUNED, with the screen reported at step 25.
    for study in pruned_tuner.search_algorithm.studies.values():
        pruned_trials = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
        for t in pruned_trials:
            assert list(t.intermediate_values) == [25]
    assert sum(len([t for t in s.trials if t.state.name == "PRUNED"])
               for s in pruned_tuner.search_algorithm.studies.values()) == len(pruned)


def test_pruned_rows_survive_a_results_round_trip(tmp_path):
    tuner, _ = run("auto", n_trials=6)
    path = tmp_path / "r.json"
    tuner.save_tuning_results(str(path))
    loaded = load_tuning_results(path)
    rows = [r for r in loaded.trials if r["status"] == "pruned"]
    assert rows and all(r["pruned_at"] == 0.25 and len(r["intermediate"]) == 1 for r in rows)
    assert loaded.info["pruning"] == tuner.report["pruning"]


def test_screens_come_in_increasing_fidelity_before_the_full_evaluation():
    tuner, calls = run("auto", fidelities=(0.25, 0.5), n_trials=6)
    # The original model first (full, then its screens); then each trial's calls are
    # 0.25, [0.5, [1.0]]; the trailing full calls verify the chosen model.
    assert calls[:3] == [1.0, 0.25, 0.5]
    trial_calls = calls[3:]
    while trial_calls and trial_calls[-1] == 1.0 and trial_calls[-2:-1] != [0.5]:
        trial_calls.pop()
    groups, current = [], []
    for f in trial_calls:
        if f == 0.25 and current:
            groups.append(current)
            current = []
        current.append(f)
    groups.append(current)
    assert all(g in ([0.25], [0.25, 0.5], [0.25, 0.5, 1.0]) for g in groups), groups
    assert [0.25, 0.5, 1.0] in groups
    for r in tuner.results.trials:
        if r["status"] in ("ok", "rejected"):
            assert [f for f, _ in r["intermediate"]] == [0.25, 0.5]
        elif r["status"] == "pruned":
            assert [f for f, _ in r["intermediate"]][-1] == r["pruned_at"]


def test_nothing_is_accepted_at_low_fidelity():
    """An evaluator that looks perfect on every screen but fails at full fidelity accepts nothing."""
    model = Net()
    honest = agreement_with(model)
    base_params = {id(p) for p in model.parameters()}

    def deceptive(m, fidelity: float = 1.0) -> float:
        if fidelity < 1.0:
            return 1.0
        # Full fidelity: the original model is perfect, any sketched model fails.
        return 1.0 if {id(p) for p in m.parameters()} <= base_params else 0.5 * honest(m)

    tuner = SKAutoTuner(model, configs(), deceptive, accuracy_threshold=THRESHOLD,
                        optimization_eval_func=macs_speed, strategy="classic",
                        search_algorithm=OptunaSearch(n_trials=6, seed=0))
    best = tuner.tune()
    statuses = set(tuner.get_results_dataframe()["status"])
    assert "ok" not in statuses and "pruned" not in statuses
    assert all(v["params"] is None for v in best.values())


def test_evaluator_without_fidelity_is_never_screened():
    model = Net()
    plain = agreement_with(model)
    seen: list[int] = []

    def accuracy(m):  # the tutorial's kind of accuracy function: no fidelity
        seen.append(1)
        return plain(m)

    tuner = SKAutoTuner(model, configs(), accuracy, accuracy_threshold=THRESHOLD,
                        optimization_eval_func=macs_speed, strategy="classic",
                        search_algorithm=OptunaSearch(n_trials=5, seed=0))
    tuner.tune()
    assert "pruning" not in tuner.report
    assert "pruned" not in set(tuner.get_results_dataframe()["status"])


def test_a_backend_without_pruning_is_not_screened():
    model = Net()
    calls: list[float] = []
    tuner = SKAutoTuner(model, configs(), recording(model, calls), accuracy_threshold=THRESHOLD,
                        optimization_eval_func=macs_speed, strategy="classic",
                        search_algorithm=RandomSearch(n_trials=4, seed=0))
    tuner.tune()
    assert set(calls) == {1.0} and "pruning" not in tuner.report


def test_pruned_trials_resume_from_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    model = Net()
    first = SKAutoTuner(model, configs(), agreement_with(model), accuracy_threshold=THRESHOLD,
                        optimization_eval_func=macs_speed, strategy="classic",
                        search_algorithm=OptunaSearch(n_trials=8, seed=0, storage=url,
                                                      study_name="s"))
    first.tune()
    n_pruned = sum(r["status"] == "pruned" for r in first.results.trials)
    assert n_pruned > 0
    again = SKAutoTuner(model, configs(), agreement_with(model), accuracy_threshold=THRESHOLD,
                        optimization_eval_func=macs_speed, strategy="classic",
                        search_algorithm=OptunaSearch(n_trials=8, seed=0, storage=url,
                                                      study_name="s", load_if_exists=True))
    again.tune()
    resumed = [r for r in again.results.trials if r.get("resumed")]
    assert sum(r["status"] == "pruned" for r in resumed) == n_pruned
    # Resumed pruned trials count toward the budget: the finished run evaluates nothing new.
    assert len(again.results.trials) == len(resumed)


# ---- the backend contract -------------------------------------------------------------------
class _Plain(SearchAlgorithm):
    def initialize(self, param_space):
        self.param_space = param_space

    def ask(self):
        return {"x": 1}


def test_base_contract_defaults_do_not_prune_and_count_pruned_as_evaluations():
    s = _Plain()
    s.n_trials = 2
    s.initialize({"x": Int(0, 3)})
    assert s.intermediate_fidelities() == ()
    assert s.report_intermediate({"x": 1}, 0.5, 0.25) is False
    s.prune({"x": 1})
    assert s.n_evaluated == 1 and s.best_params is None


def test_optuna_search_prunes_with_its_pruner_and_never_makes_a_pruned_trial_best():
    search = OptunaSearch(n_trials=3, seed=0, pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    search.initialize({"x": Int(0, 9)})
    p = search.get_next_params()
    assert search.intermediate_fidelities() == (0.25,)
    assert search.report_intermediate(p, 0.1, 0.25) is True  # below the pruner's lower bound
    search.prune(p)
    q = search.get_next_params()
    assert search.report_intermediate(q, 0.9, 0.25) is False
    search.update(q, 0.9)
    states = [t.state for t in search.study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert search.study.trials[0].intermediate_values == {25: 0.1}
    assert search.n_evaluated == 2 and search.best_params == q


def test_optuna_pruner_options():
    assert OptunaSearch(pruner="none").intermediate_fidelities() == ()
    assert OptunaSearch(pruner=None).intermediate_fidelities() == ()
    assert OptunaSearch(fidelities=()).intermediate_fidelities() == ()
    assert OptunaSearch(directions=["maximize", "maximize"]).intermediate_fidelities() == ()
    for name, kind in (("halving", "SuccessiveHalvingPruner"), ("hyperband", "HyperbandPruner"),
                       ("median", "MedianPruner"), ("auto", "SuccessiveHalvingPruner")):
        s = OptunaSearch(pruner=name)
        s.initialize({"x": Int(0, 3)})
        assert type(s.study.pruner).__name__ == kind
        assert type(s.spawn("g").pruner) is str
    with pytest.raises(ValueError, match="unknown pruner"):
        OptunaSearch(pruner="sha")
    with pytest.raises(TypeError, match="pruner must be"):
        OptunaSearch(pruner=3)
    with pytest.raises(ValueError, match="below 1"):
        OptunaSearch(fidelities=(0.5, 1.0))
    with pytest.raises(ValueError, match="increase"):
        OptunaSearch(fidelities=(0.5, 0.25))
    with pytest.raises(ValueError, match="sequence"):
        check_ladder(0.25)


@given(base=st.floats(0.0, 1.0), allowed=st.floats(0.0, 0.5), drop=st.floats(-0.5, 1.0),
       fidelity=st.floats(0.01, 1.0))
def test_screen_never_rejects_a_drop_within_the_allowed_one(base, allowed, drop, fidelity):
    rejected = screen_rejects(base, base - drop, allowed, fidelity)
    if drop <= allowed:
        assert not rejected
    if rejected:
        assert drop > allowed and math.isfinite(drop)
