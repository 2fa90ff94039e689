"""Global allocation: pruning, the greedy path and the verified search, on synthetic accuracy models."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panther.tuner.allocation import (
    Candidate,
    GuidedSearch,
    greedy_path,
    pareto_prune,
    proxy_error,
    total_gain,
)


def cand(group: str, gain: float, error: float, **params) -> Candidate:
    return Candidate(group=group, params={"gain": gain, **params}, gain=gain, error=error)


def test_pareto_prune_keeps_the_front_sorted_by_gain():
    cs = [cand("a", 1, 0.1), cand("a", 2, 0.05), cand("a", 3, 0.3), cand("a", 3, 0.2),
          cand("a", 0, 0.0), cand("a", 5, math.inf), cand("a", 2, 0.05, dup=True)]
    kept = pareto_prune(cs)
    assert [(c.gain, c.error) for c in kept] == [(2, 0.05), (3, 0.2)]
    assert "dup" not in kept[0].params  # of equal candidates the first is kept


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.floats(0, 1)), min_size=1, max_size=12))
def test_pareto_prune_property(points):
    cs = [cand("g", g, e) for g, e in points]
    kept = pareto_prune(cs)
    assert kept, "the candidate with the highest gain and lowest error among them survives"
    for k in kept:  # nothing kept is dominated
        assert not any((c.gain >= k.gain and c.error < k.error) or (c.gain > k.gain and c.error <= k.error)
                       for c in cs)
    for c in cs:  # everything dropped is dominated by (or equal to) a kept one
        assert any(k.gain >= c.gain and k.error <= c.error for k in kept)
    assert [k.gain for k in kept] == sorted(k.gain for k in kept)


def test_greedy_path_goes_from_original_to_full_compression():
    options = {"a": pareto_prune([cand("a", 1, 0.01), cand("a", 4, 0.5)]),
               "b": pareto_prune([cand("b", 2, 0.1), cand("b", 3, 0.12)])}
    path = greedy_path(options)
    assert path[0] == {"a": None, "b": None}
    assert path[-1]["a"].gain == 4 and path[-1]["b"].gain == 3
    gains = [total_gain(p) for p in path]
    assert gains == sorted(gains) and len(set(gains)) == len(gains)
    # The cheapest error per gain first: a's first step (1 / 0.0001) beats b's (2 / 0.01).
    assert path[1]["a"] is not None and path[1]["b"] is None


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.sampled_from("abc"),
                       st.lists(st.tuples(st.integers(1, 30), st.floats(0, 1)), min_size=1, max_size=6),
                       min_size=1))
def test_greedy_path_property(spec):
    options = {k: pareto_prune([cand(k, g, e) for g, e in v]) for k, v in spec.items()}
    path = greedy_path(options)
    assert all(c is None for c in path[0].values())
    for before, after in zip(path, path[1:]):
        changed = [k for k in options if before[k] is not after[k]]
        assert len(changed) == 1  # one group moves per step, always to more gain
        k = changed[0]
        assert (0 if before[k] is None else before[k].gain) < after[k].gain
    for k, cands in options.items():
        assert path[-1][k] is max(cands, key=lambda c: c.gain)


def additive_world(options, drops):
    """accuracy = 1 - sum of each chosen candidate's drop; counts the evaluations."""
    calls = {"full": 0, "screen": 0}

    def evaluate(choice, fidelity):
        calls["full" if fidelity >= 1 else "screen"] += 1
        acc = 1.0 - sum(drops[id(c)] for c in choice.values() if c is not None)
        return acc, (1.0 + total_gain(choice) if fidelity >= 1 else None), None

    return evaluate, calls


def make_world(seed: int, groups: int = 3, per_group: int = 6):
    import random

    rng = random.Random(seed)
    options, drops = {}, {}
    for g in range(groups):
        key = f"g{g}"
        sens = rng.uniform(0.5, 3.0)
        cs = []
        for i in range(1, per_group + 1):
            err = 0.02 * i ** 1.5 * rng.uniform(0.8, 1.2)
            c = cand(key, float(i * 10 + g), err, i=i)
            drops[id(c)] = sens * err ** 2  # the proxy ranks well; the scale is unknown
            cs.append(c)
        options[key] = cs
    return options, drops


def exhaustive_best(options, drops, threshold):
    best = 0.0
    for combo in itertools.product(*([None, *v] for v in options.values())):
        acc = 1.0 - sum(drops[id(c)] for c in combo if c is not None)
        if acc >= threshold:
            best = max(best, sum(c.gain for c in combo if c is not None))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_guided_search_finds_nearly_the_best_and_never_violates(seed):
    options, drops = make_world(seed)
    threshold = 0.97
    evaluate, calls = additive_world(options, drops)
    search = GuidedSearch(options, evaluate, threshold, 1.0, max_evaluations=16)
    best = search.run()
    assert best is not None and best.passed and best.accuracy >= threshold
    assert best.gain >= 0.85 * exhaustive_best(options, drops, threshold)
    assert calls["full"] == search.full_evaluations <= 16
    # Every verified state was evaluated at full fidelity, and the probes say what was predicted.
    assert best.fidelity == 1.0 and best.proxy == pytest.approx(proxy_error(best.choice))


def test_guided_search_stops_at_the_budget():
    options, drops = make_world(1)
    evaluate, calls = additive_world(options, drops)
    search = GuidedSearch(options, evaluate, 0.97, 1.0, max_evaluations=2)
    search.run()
    assert calls["full"] <= 2 and search.cost <= 2


def test_everything_feasible_takes_one_evaluation():
    options, drops = make_world(2)
    evaluate, calls = additive_world(options, drops)
    best = GuidedSearch(options, evaluate, -10.0, 1.0, max_evaluations=10).run()
    assert calls["full"] == 1 and best.gain == sum(max(c.gain for c in v) for v in options.values())


def test_nothing_feasible_returns_none():
    options, drops = make_world(3)

    def evaluate(choice, fidelity):
        return 0.0, None, None

    search = GuidedSearch(options, evaluate, 0.5, 1.0, max_evaluations=10)
    assert search.run() is None
    assert all(not p.passed for p in search.probes)


def test_failed_evaluations_count_as_infeasible():
    options, drops = make_world(4)

    def evaluate(choice, fidelity):
        if any(c is not None for c in choice.values()):
            return None, None, "boom"
        return 1.0, None, None

    search = GuidedSearch(options, evaluate, 0.5, 1.0, max_evaluations=5)
    assert search.run() is None
    assert all(p.error == "boom" for p in search.probes)


def test_screens_reject_hopeless_states_cheaply():
    options, drops = make_world(0)
    evaluate, calls = additive_world(options, drops)
    search = GuidedSearch(options, evaluate, 0.97, 1.0, max_evaluations=16, screen_fidelity=0.25)
    best = search.run()
    assert best is not None and best.accuracy >= 0.97
    assert calls["screen"] == search.screens >= 2 and search.screened_out >= 1
    assert search.cost == pytest.approx(search.full_evaluations + 0.25 * search.screens)
    # A screen never accepts a state by itself: every passing probe at fidelity < 1 is followed
    # by a full evaluation before it can be chosen.
    assert all(p.fidelity == 1.0 for p in search._passed)


def test_noisy_screens_never_break_the_threshold():
    options, drops = make_world(0)
    evaluate_true, _ = additive_world(options, drops)

    def evaluate(choice, fidelity):  # screens lie in both directions
        acc, speed, err = evaluate_true(choice, fidelity)
        return (acc + (0.05 if len(str(choice)) % 2 else -0.05) if fidelity < 1 else acc), speed, err

    best = GuidedSearch(options, evaluate, 0.97, 1.0, max_evaluations=16, screen_fidelity=0.5).run()
    assert best is None or evaluate_true(best.choice, 1.0)[0] >= 0.97


def test_argument_checks():
    with pytest.raises(ValueError, match="screen_fidelity"):
        GuidedSearch({}, lambda c, f: (1, None, None), 0.5, 1.0, 4, screen_fidelity=1.0)
    with pytest.raises(ValueError, match="max_evaluations"):
        GuidedSearch({}, lambda c, f: (1, None, None), 0.5, 1.0, 0)
    assert GuidedSearch({}, lambda c, f: (1, None, None), 0.5, 1.0, 4).run() is None
