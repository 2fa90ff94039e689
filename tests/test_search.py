"""Search backends: toy objectives with known optima, determinism, exhaustion, Optuna persistence."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panther.tuner.config import Categorical, Float, Int
from panther.tuner.plugins import get_search_algorithm
from panther.tuner.search import (
    GridSearch,
    OptunaSearch,
    RandomSearch,
    SearchAlgorithm,
    SkoptSearch,
    finite_space_size,
    params_key,
)

REPO = Path(__file__).resolve().parents[1]

# A separable toy objective with a unique known optimum at a=3, b=25, c="y".
SPACE = {
    "a": Categorical(list(range(8))),
    "b": Int(0, 40, step=5),
    "c": Categorical(["x", "y"]),
}
OPTIMUM = {"a": 3, "b": 25, "c": "y"}


def objective(p: dict) -> float:
    return -((p["a"] - 3) ** 2) - ((p["b"] - 25) / 5) ** 2 - (0.0 if p["c"] == "y" else 2.0)


def drive(search: SearchAlgorithm, space: dict, f=objective, limit: int = 1000) -> list[dict]:
    """Run the tuner's loop: repeated suggestions reuse the recorded score and are told again."""
    search.initialize(space)
    seen: dict = {}
    proposed = []
    for _ in range(limit):
        params = search.get_next_params()
        if params is None:
            break
        proposed.append(params)
        key = params_key(params)
        if key not in seen:
            seen[key] = f(params)
        search.update(params, seen[key])
    else:
        pytest.fail(f"{type(search).__name__} did not finish within {limit} proposals")
    assert search.is_finished() and search.finished
    assert search.get_next_params() is None
    return proposed


def distinct(proposed: list[dict]) -> int:
    return len({params_key(p) for p in proposed})


# --------------------------------------------------------------------------- optimum


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: GridSearch(), id="grid"),
        pytest.param(lambda: RandomSearch(n_trials=144, seed=0), id="random"),
        pytest.param(lambda: OptunaSearch(n_trials=60, seed=0), id="optuna-tpe"),
        pytest.param(
            lambda: get_search_algorithm("halving", n_trials=60, seed=0), id="halving-plugin"
        ),
    ],
)
def test_backends_find_known_optimum(make):
    search = make()
    drive(search, SPACE)
    assert search.best_params == OPTIMUM
    assert search.best_score == pytest.approx(0.0)


def test_skopt_finds_known_optimum():
    # GP fitting is the slow part, so a smaller space and budget.
    space = {"a": Categorical([0, 1, 2, 3, 4]), "b": Int(0, 20, step=5)}
    search = SkoptSearch(n_trials=14, seed=0, n_initial_points=5)
    proposed = drive(search, space, lambda p: -abs(p["a"] - 3) - abs(p["b"] - 10) / 5)
    assert search.best_params == {"a": 3, "b": 10}
    assert len(proposed) == 14


def test_optuna_beats_random_budget_on_larger_space():
    # TPE must find the optimum of a 72-point space in far fewer than 72 distinct evaluations.
    search = OptunaSearch(n_trials=40, seed=1)
    proposed = drive(search, SPACE)
    assert distinct(proposed) < finite_space_size({k: v for k, v in SPACE.items()})
    assert search.best_params == OPTIMUM


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: RandomSearch(n_trials=15, seed=s), id="random"),
        pytest.param(lambda s: OptunaSearch(n_trials=15, seed=s), id="optuna"),
        pytest.param(lambda s: SkoptSearch(n_trials=7, seed=s, n_initial_points=4), id="skopt"),
        pytest.param(lambda s: get_search_algorithm("halving", n_trials=15, seed=s), id="halving"),
    ],
)
def test_same_seed_same_sequence(make):
    first = drive(make(7), SPACE)
    second = drive(make(7), SPACE)
    assert first == second
    other = drive(make(8), SPACE)
    assert other != first


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: RandomSearch(n_trials=10, seed=3), id="random"),
        pytest.param(lambda: SkoptSearch(n_trials=6, seed=3, n_initial_points=6), id="skopt"),
    ],
)
def test_spawned_groups_get_their_own_reproducible_streams(make):
    parent = make()
    standalone = drive(make(), SPACE)
    first = drive(parent.spawn("g1"), SPACE)
    # Each group key has its own stream, seeded from (seed, key): the same key restarts it,
    # another key explores differently, and a fresh parent gives the same streams again.
    assert drive(parent.spawn("g1"), SPACE) == first
    assert drive(make().spawn("g1"), SPACE) == first
    assert drive(parent.spawn("g2"), SPACE) != first
    assert first != standalone
    # Spawning leaves the user's object alone: standalone it still draws from `seed` itself.
    assert parent.group_key is None and drive(parent, SPACE) == standalone


def test_group_seed_is_stable_and_keeps_none():
    from panther.tuner.search.common import group_seed

    assert group_seed(None, "g1") is None and group_seed(5, None) == 5
    # A stable hash (not Python's salted hash()): fixed across processes and releases.
    assert group_seed(0, "fc1") == group_seed(0, "fc1") != group_seed(0, "fc2")
    assert 0 <= group_seed(123, "x" * 1000) < 2**32
    out = subprocess.run(
        [sys.executable, "-c", "from panther.tuner.search.common import group_seed;"
         "print(group_seed(0, 'fc1'))"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert int(out.stdout) == group_seed(0, "fc1")


# --------------------------------------------------------------------------- exhaustion


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: GridSearch(), id="grid"),
        pytest.param(lambda: RandomSearch(n_trials=50, seed=0), id="random"),
        pytest.param(lambda: OptunaSearch(n_trials=50, seed=0), id="optuna-tpe"),
        pytest.param(lambda: OptunaSearch(n_trials=50, sampler="grid", seed=0), id="optuna-grid"),
        pytest.param(
            lambda: OptunaSearch(n_trials=50, sampler="bruteforce", seed=0), id="optuna-brute"
        ),
        pytest.param(lambda: SkoptSearch(n_trials=50, seed=0, n_initial_points=10), id="skopt"),
        pytest.param(lambda: get_search_algorithm("halving", n_trials=50, seed=0), id="halving"),
    ],
)
def test_exhausted_finite_space_finishes(make):
    space = {"x": Categorical(["p", "q", "r"])}
    search = make()
    proposed = drive(search, space, lambda p: {"p": 1.0, "q": 3.0, "r": 2.0}[p["x"]], limit=60)
    assert len(proposed) < 50, "the search must stop once the space is exhausted"
    assert search.best_params == {"x": "q"}
    if not type(search).__name__.startswith("Halving"):
        assert distinct(proposed) == 3


def test_single_point_space():
    for search in (
        GridSearch(),
        RandomSearch(5, seed=0),
        OptunaSearch(5, seed=0),
        SkoptSearch(5, seed=0),
    ):
        proposed = drive(search, {"k": Categorical([4])}, lambda p: 1.0)
        assert proposed[0] == {"k": 4}
        assert distinct(proposed) == 1


# --------------------------------------------------------------------------- grid / random


def test_grid_enumerates_in_order_with_stepped_spaces():
    search = GridSearch()
    proposed = drive(search, {"a": [1, 2], "f": Float(0.0, 0.5, step=0.25)}, lambda p: p["f"])
    assert proposed == [
        {"a": 1, "f": 0.0},
        {"a": 1, "f": 0.25},
        {"a": 1, "f": 0.5},
        {"a": 2, "f": 0.0},
        {"a": 2, "f": 0.25},
        {"a": 2, "f": 0.5},
    ]
    assert search.total == 6


def test_grid_rejects_continuous_float_with_fix():
    with pytest.raises(ValueError, match=r"'lr'.*continuous.*step"):
        GridSearch().initialize({"a": [1, 2], "lr": Float(0.1, 1.0)})
    with pytest.raises(RuntimeError, match="initialize"):
        GridSearch().get_next_params()


def test_optuna_grid_sampler_rejects_continuous_float():
    with pytest.raises(ValueError, match=r"'lr'.*continuous.*step"):
        OptunaSearch(sampler="grid").initialize({"lr": Float(0.1, 1.0)})


def test_random_search_is_without_replacement_and_log_uniform():
    proposed = drive(RandomSearch(n_trials=72, seed=5), SPACE)
    assert distinct(proposed) == 72 == len(proposed)
    # log=True spaces are sampled log-uniformly: most draws land in the lower decades.
    search = RandomSearch(n_trials=300, seed=0)
    search.initialize({"n": Int(1, 10_000, log=True), "f": Float(1e-4, 1.0, log=True)})
    draws = [search.get_next_params() for _ in range(300)]
    assert sum(d["n"] < 100 for d in draws) > 100
    assert sum(d["f"] < 1e-2 for d in draws) > 100
    assert all(1 <= d["n"] <= 10_000 and 1e-4 <= d["f"] <= 1.0 for d in draws)


@settings(max_examples=20, deadline=None)
@given(
    choices=st.lists(st.integers(-50, 50), min_size=1, max_size=5, unique=True),
    low=st.integers(0, 20),
    span=st.integers(0, 30),
    step=st.integers(1, 7),
    seed=st.integers(0, 10_000),
)
def test_proposals_lie_in_the_space(choices, low, span, step, seed):
    space = {"c": Categorical(choices), "i": Int(low, low + span, step=step)}
    size = finite_space_size(space)
    f = lambda p: float(p["c"] + p["i"])  # noqa: E731
    grid = drive(GridSearch(), space, f)
    assert len(grid) == size == distinct(grid)
    rand = drive(RandomSearch(n_trials=size + 3, seed=seed), space, f)
    assert distinct(rand) == len(rand) == size
    for p in grid + rand:
        assert all(space[k].contains(v) for k, v in p.items())


# --------------------------------------------------------------------------- optuna specifics


@pytest.mark.parametrize(
    "name", ["tpe", "cmaes", "random", "grid", "qmc", "nsga2", "gp", "bruteforce"]
)
def test_every_named_sampler_runs(name):
    space = {"a": Categorical([1, 2, 3]), "b": Int(0, 6, step=2)}
    search = OptunaSearch(n_trials=5, sampler=name, seed=0)
    proposed = drive(search, space, lambda p: float(p["a"] + p["b"]))
    assert 1 <= len(proposed) <= 5
    assert all(space["a"].contains(p["a"]) and space["b"].contains(p["b"]) for p in proposed)
    assert (
        type(search.study.sampler)
        .__name__.lower()
        .startswith({"nsga2": "nsgaii", "bruteforce": "bruteforce", "gp": "gp"}.get(name, name))
    )


def test_optuna_sampler_instances_and_bad_samplers():
    sampler = optuna.samplers.RandomSampler(seed=0)
    search = OptunaSearch(n_trials=3, sampler=sampler)
    drive(search, SPACE)
    assert search.study.sampler is sampler
    with pytest.raises(ValueError, match="unknown Optuna sampler 'nope'.*tpe"):
        OptunaSearch(sampler="nope").initialize(SPACE)
    with pytest.raises(TypeError, match="sampler"):
        OptunaSearch(sampler=42)
    with pytest.raises(ValueError, match="n_trials"):
        OptunaSearch(n_trials=0)
    with pytest.raises(ValueError, match="direction"):
        OptunaSearch(direction="up")


def test_optuna_param_types_round_trip():
    space = {
        "pair": Categorical([(1, 2), (3, 4)]),
        "opt": Categorical([None, "a"]),
        "n": Int(2, 64, log=True),
        "s": Int(0, 10, step=3),  # grid 0,3,6,9
        "lr": Float(1e-3, 1.0, log=True),
        "f": Float(0.0, 1.0, step=0.1),
    }
    search = OptunaSearch(n_trials=12, seed=0, sampler="random")
    proposed = drive(search, space, lambda p: p["n"] + p["s"] + p["f"])
    for p in proposed:
        assert p["pair"] in [(1, 2), (3, 4)] and isinstance(p["n"], int)
        assert all(space[k].contains(v) for k, v in p.items()), p
        assert p["f"] in space["f"].values()  # snapped to the exact grid value
    study_params = search.study.trials[0].params
    assert study_params["pair"] in ("(1, 2)", "(3, 4)")  # stored by repr
    assert search.study.trials[0].distributions["s"].high == 9


def test_optuna_constraints_and_best_feasible():
    space = {"a": Categorical(list(range(6)))}
    search = OptunaSearch(n_trials=20, seed=0)
    search.initialize(space)
    while (p := search.get_next_params()) is not None:
        # Larger a scores higher but a >= 4 violates the constraint.
        violation = float(p["a"] - 3) if p["a"] >= 4 else -1.0
        search.update(
            p, float(p["a"]) if violation <= 0 else -10.0 - violation, constraint=violation
        )
    assert search.best_params == {"a": 3}
    trials = search.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert any(t.constraints and max(t.constraints.values()) > 0 for t in trials)
    assert search.study.best_trial.params["a"] == 3  # Optuna agrees: infeasible trials never best


def test_optuna_multi_objective_pareto_front():
    space = {"a": Categorical(list(range(5)))}
    search = OptunaSearch(n_trials=12, seed=0, directions=["maximize", "maximize"])
    search.initialize(space)
    while (p := search.get_next_params()) is not None:
        acc, speed = 1.0 - 0.1 * p["a"], float(p["a"])
        search.update(p, speed, values=(acc, speed))
    front = search.pareto_front()
    assert {p["a"] for p, _ in front} == {p["a"] for p, _ in search.history}
    assert all(len(v) == 2 for _, v in front)
    with pytest.raises(ValueError, match="values"):
        search2 = OptunaSearch(n_trials=3, directions=["maximize", "maximize"])
        search2.initialize(space)
        search2.update(search2.get_next_params(), 1.0)


def test_optuna_unasked_points_failures_and_non_finite_scores():
    space = {"a": Categorical([1, 2, 3, 4])}
    search = OptunaSearch(n_trials=4, seed=0)
    search.initialize(space)
    search.update({"a": 2}, 5.0, constraint=-0.5)  # told without being asked
    p = search.get_next_params()
    search.report_failure(p, "boom")
    q = search.get_next_params()
    search.update(q, -math.inf)  # non-finite -> a failed trial, not a crash
    states = [t.state for t in search.study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1
    assert states.count(optuna.trial.TrialState.FAIL) == 2
    assert search.study.trials[1].user_attrs["panther_error"] == "boom"
    assert search.best_params == {"a": 2}
    with pytest.raises(ValueError, match="outside"):
        search.update({"a": 7}, 1.0)


def test_spawn_gives_each_group_its_own_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'groups.db'}"
    parent = OptunaSearch(n_trials=4, seed=0, study_name="net", storage=storage)
    for key, shift in (("fc1", 0), ("fc2", 2)):
        drive(parent.spawn(key), SPACE, lambda p, s=shift: -abs(p["a"] - s))
    assert set(parent.studies) == {"fc1", "fc2"}
    assert parent.study is parent.studies["fc2"]
    # Besides the group studies, the run's bookkeeping study "net#run" holds process leases.
    names = optuna.get_all_study_names(storage)
    assert sorted(names) == ["net#run", "net/fc1", "net/fc2"]
    for name in ("net/fc1", "net/fc2"):
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4
    # A second run on the same storage: resuming works, a fresh start names the fix.
    again = OptunaSearch(n_trials=6, seed=0, study_name="net", storage=storage, load_if_exists=True)
    child = again.spawn("fc1")
    drive(child, SPACE)
    assert len(child.resumed_trials) == 4
    assert len(optuna.load_study(study_name="net/fc1", storage=storage).trials) == 6
    with pytest.raises(ValueError, match="load_if_exists=True"):
        OptunaSearch(n_trials=2, study_name="net", storage=storage).spawn("fc2").initialize(SPACE)
    # An in-memory parent used directly exposes its own study.
    direct = OptunaSearch(n_trials=2, seed=0)
    drive(direct, SPACE)
    assert direct.study is not None and direct.studies == {}


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    import optuna
    from panther.tuner.config import Categorical, Int
    from panther.tuner.search import OptunaSearch

    storage, kill_after = sys.argv[1], int(sys.argv[2])
    space = {"a": Categorical(list(range(8))), "b": Int(0, 40, step=5)}
    # A sampler instance (not the name "tpe") keeps the plugin host, and with it the
    # torch import of the built-in layer types, out of this short-lived process.
    search = OptunaSearch(n_trials=12, sampler=optuna.samplers.TPESampler(seed=0),
                          study_name="resume", storage=storage, load_if_exists=True)
    search.initialize(space)
    print("resumed", len(search.resumed_trials), flush=True)
    told = 0
    while (p := search.get_next_params()) is not None:
        if told == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # dies with this trial RUNNING
        search.update(p, -abs(p["a"] - 3) - abs(p["b"] - 25) / 5)
        told += 1
    print("told", told, flush=True)
    """
)


def test_optuna_resume_after_sigkill(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    env = {**os.environ, "PANTHER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    cmd = [sys.executable, str(script), storage]
    first = subprocess.run(
        [*cmd, "5", str(REPO)], capture_output=True, text=True, env=env, timeout=120
    )
    assert first.returncode == -9, first.stderr
    study = optuna.load_study(study_name="resume", storage=storage)
    state = optuna.trial.TrialState
    before = {t.number: t.params for t in study.trials if t.state == state.COMPLETE}
    assert len(before) == 5
    assert [t.state for t in study.trials].count(state.RUNNING) == 1

    second = subprocess.run(
        [*cmd, "-1", str(REPO)], capture_output=True, text=True, env=env, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert "resumed 5" in second.stdout and "told 7" in second.stdout
    study = optuna.load_study(study_name="resume", storage=storage)
    complete = [t for t in study.trials if t.state == state.COMPLETE]
    assert len(complete) == 12  # exactly n_trials, counting the 5 done before the kill
    assert [t.state for t in study.trials].count(state.FAIL) == 1  # the killed RUNNING trial
    assert not any(t.state == state.RUNNING for t in study.trials)
    after = {t.number: t.params for t in complete}
    assert all(after[n] == p for n, p in before.items())  # nothing lost or rewritten


def test_skopt_non_finite_scores_stay_finite_for_the_surrogate_and_never_win():
    space = {"a": Categorical([0, 1, 2, 3])}
    search = SkoptSearch(n_trials=4, seed=0, n_initial_points=4, estimator="RF")
    search.initialize(space)
    search.update({"a": 0}, 2.0)
    search.update({"a": 1}, 5.0)
    search.update({"a": 2}, -math.inf)
    search.update({"a": 3}, math.nan)
    losses = search._optimizer.yi
    assert all(math.isfinite(y) for y in losses)
    # Worse (a larger loss) than every real result, by their spread, not by 1e30.
    assert losses[2] == pytest.approx(-2.0 + 3.0) and losses[3] > losses[2]
    assert search.best_params == {"a": 1} and search.best_score == 5.0
    assert search.is_finished()
    with pytest.raises(ValueError, match="acq_func must be one of"):
        SkoptSearch(acq_func="EIps")


# --------------------------------------------------------------------------- evaluation budget

# Every backend with an evaluation budget, built with ``n_trials``.
BUDGETED = [
    pytest.param(lambda n: RandomSearch(n_trials=n, seed=0), id="random"),
    pytest.param(lambda n: OptunaSearch(n_trials=n, seed=0), id="optuna-tpe"),
    pytest.param(lambda n: OptunaSearch(n_trials=n, sampler="random", seed=0), id="optuna-random"),
    pytest.param(lambda n: SkoptSearch(n_trials=n, seed=0, n_initial_points=3), id="skopt"),
    pytest.param(lambda n: get_search_algorithm("halving", n_trials=n, seed=0), id="halving"),
]

# Large enough that no backend exhausts it within the budgets below.
WIDE = {"a": Int(0, 999), "b": Categorical(list(range(10)))}


def drive_flags(search: SearchAlgorithm, space: dict, evaluated, limit: int = 500):
    """Drive ``search``, telling each proposal with ``evaluated=evaluated(i, params)``.

    Returns ``(proposals, number told with evaluated=True)``.
    """
    search.initialize(space)
    proposed, n_eval = [], 0
    for i in range(limit):
        params = search.get_next_params()
        if params is None:
            break
        proposed.append(params)
        flag = bool(evaluated(i, params))
        n_eval += flag
        search.update(params, float(params.get("a", 0)), evaluated=flag)
    else:
        pytest.fail(f"{type(search).__name__} did not finish within {limit} proposals")
    assert search.is_finished() and search.get_next_params() is None
    return proposed, n_eval


@pytest.mark.parametrize("make", BUDGETED)
def test_unevaluated_results_do_not_use_up_n_trials(make):
    search = make(3)
    # Every other proposal is answered without an evaluation (skipped / cached by the tuner).
    proposed, n_eval = drive_flags(search, WIDE, lambda i, p: i % 2 == 1)
    assert n_eval == 3 == search.n_evaluated
    assert len(proposed) == 6 == search.n_proposed
    assert search.n_trials == 3  # the limit itself is never changed
    # The best result is an evaluated one, never a point that was not measured.
    evaluated_points = [p for i, p in enumerate(proposed) if i % 2 == 1]
    assert search.best_params in evaluated_points


@pytest.mark.parametrize("make", BUDGETED)
def test_proposal_cap_ends_a_search_of_unevaluated_points(make):
    n = 1 if isinstance(make(1), SkoptSearch) else 2  # skopt refits its surrogate per ask
    search = make(n)
    assert search.proposal_cap() == SearchAlgorithm.PROPOSAL_CAP_FACTOR * n
    # Wide enough that halving cannot narrow every parameter to one value within the cap.
    space = {"a": Int(0, 10**5), "b": Categorical(list(range(10)))}
    proposed, n_eval = drive_flags(search, space, lambda i, p: False)
    assert n_eval == 0 and search.n_evaluated == 0
    assert len(proposed) == search.proposal_cap() == search.n_proposed
    assert search.best_params is None and len(search.history) == len(proposed)


@pytest.mark.parametrize("make", BUDGETED)
def test_finite_space_exhausted_by_unevaluated_points_ends_the_search(make):
    search = make(50)
    space = {"x": Categorical(["p", "q", "r"])}
    seen: set = set()

    def tell(i, p):  # a repeat is a cached (free) answer, as in the tuner
        key = params_key(p)
        first = key not in seen
        seen.add(key)
        return first and p["x"] == "q"  # only "q" is evaluated; the rest are skipped

    proposed, n_eval = drive_flags(search, space, tell, limit=200)
    assert len(proposed) < search.proposal_cap()  # exhaustion, not the cap, ended it
    assert distinct(proposed) == 3 and n_eval <= 1
    assert search.best_params in (None, {"x": "q"})


def test_grid_ignores_evaluated_and_has_no_budget():
    search = GridSearch()
    proposed, n_eval = drive_flags(search, SPACE, lambda i, p: i % 3 == 0)
    assert len(proposed) == distinct(proposed) == finite_space_size(SPACE)
    assert search.n_trials is None and search.proposal_cap() is None
    assert search.n_evaluated == n_eval == finite_space_size(SPACE) // 3


def test_failures_count_as_evaluations():
    for search in (
        RandomSearch(n_trials=2, seed=0),
        SkoptSearch(n_trials=2, seed=0),
        OptunaSearch(n_trials=2, seed=0),
    ):
        search.initialize(WIDE)
        search.report_failure(search.get_next_params(), "boom")
        search.update(search.get_next_params(), 1.0)
        assert search.n_evaluated == 2 and search.is_finished()


@settings(max_examples=20, deadline=None)
@given(
    n_trials=st.integers(1, 6),
    flags=st.lists(st.booleans(), min_size=0, max_size=80),
    seed=st.integers(0, 1000),
    halving=st.booleans(),
)
def test_budget_and_cap_hold_for_any_evaluation_pattern(n_trials, flags, seed, halving):
    search = (
        get_search_algorithm("halving", n_trials=n_trials, seed=seed)
        if halving
        else RandomSearch(n_trials=n_trials, seed=seed)
    )
    space = {"a": Int(0, 30), "b": Categorical([1, 2, 3])}  # 93 points
    proposed, n_eval = drive_flags(search, space, lambda i, p: flags[i] if i < len(flags) else True)
    cap = SearchAlgorithm.PROPOSAL_CAP_FACTOR * n_trials
    assert n_eval <= n_trials and len(proposed) <= cap
    # It ends for a reason: the budget, the cap, or (halving) a fully narrowed product.
    assert n_eval == n_trials or len(proposed) == cap or (halving and search.is_finished())
    if not halving:
        assert distinct(proposed) == len(proposed)  # still without replacement


def test_optuna_marks_unevaluated_trials_and_resume_counts_only_evaluations():
    storage = optuna.storages.InMemoryStorage()

    def make():
        return OptunaSearch(
            n_trials=4, study_name="budget", storage=storage, load_if_exists=True, seed=0
        )

    first = make()
    first.initialize(WIDE)
    statuses = ["skipped", "ok", "cached", "skipped", "ok"]
    for status in statuses:
        p = first.get_next_params()
        row = {"status": status}
        first.update(p, 1.0, evaluated=status == "ok", attrs={"panther_row": row})
    assert first.n_evaluated == 2 and not first.is_finished()
    trials = first.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 5  # every result is in the study, so the sampler learns from it
    assert [t.user_attrs.get("panther_evaluated", True) for t in trials] == [
        s == "ok" for s in statuses
    ]
    # A trial written before the explicit marker: only its tuner row says it was cached.
    first.study.add_trial(
        optuna.trial.create_trial(
            params={"a": 5, "b": 1},
            distributions={n: c.distribution for n, c in first._codecs.items()},
            value=0.5,
            user_attrs={"panther_attrs": {"panther_row": {"status": "cached"}}},
        )
    )

    second = make()
    second.initialize(WIDE)
    assert [e["evaluated"] for e in second.resumed_trials] == [s == "ok" for s in statuses] + [
        False
    ]
    assert second.n_evaluated == 2 and second.n_proposed == 6
    told = 0
    while (p := second.get_next_params()) is not None:
        second.update(p, 2.0)
        told += 1
    assert told == 2  # the 2 evaluations left of n_trials=4, not 4 - 6 < 0


def test_tuner_groups_explore_independently_yet_reproducibly():
    """End to end: two identical layers tuned separately by one seeded RandomSearch."""
    import torch
    from torch import nn

    from panther.tuner import LayerConfig, SKAutoTuner

    def sequences(seed: int) -> dict[str, list[int]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
        tuner = SKAutoTuner(
            model, LayerConfig(["0", "2"], {"num_terms": Categorical([1]),
                                            "low_rank": Categorical(list(range(1, 13)))}),
            lambda m: 1.0, search_algorithm=RandomSearch(n_trials=4, seed=seed),
            verify=False, skip_costlier=False,
        )
        tuner.tune()
        df = tuner.get_results_dataframe()
        return {name: part["low_rank"].tolist() for name, part in df.groupby("layer_name")}

    first = sequences(0)
    assert set(first) == {"0", "2"}
    assert first["0"] != first["2"]  # before: both groups replayed one sequence
    assert sequences(0) == first
