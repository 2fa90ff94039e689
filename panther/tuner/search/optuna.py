"""Optuna-backed search (built-in plugin ``"optuna"``) and the named Optuna samplers.

:class:`OptunaSearch` drives an Optuna study through its ask/tell interface, so
every Optuna sampler works, studies can live in a persistent storage and be
resumed, and ``optuna.visualization`` works on :attr:`OptunaSearch.study`.

Samplers are chosen by instance or by a name registered through the
``panther_optuna_samplers`` hook, the Optuna backend's own extension point
(:mod:`panther.tuner.search.optuna_samplers`, declared below in
``PANTHER_HOOKSPECS``); this module registers ``"tpe"``, ``"cmaes"``,
``"random"``, ``"grid"``, ``"qmc"``, ``"nsga2"``, ``"gp"`` and ``"bruteforce"``.
A sampler factory is called as ``factory(seed=seed, **kw)`` where ``kw`` holds
only the keywords the factory declares by name among:

* ``constraints_func`` -- (Optuna < 5 only) reads the constraint the tuner
  reported for a trial (``<= 0`` is feasible), for samplers that model
  constraints (TPE, NSGA-II, GP). Optuna >= 5 takes constraints per trial
  (``Trial.set_constraint``), which :meth:`OptunaSearch.update` does directly;
* ``search_space`` -- ``{name: [values]}`` for samplers that enumerate (grid).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from panther.tuner.config import Categorical, Int, ParamSpec, normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search import optuna_samplers
from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key
from panther.tuner.search.codec import ParamCodec
from panther.tuner.settings import DEFAULT_N_TRIALS

if TYPE_CHECKING:
    import optuna

__all__ = ["OptunaSearch", "SAMPLER_NAMES", "PRUNER_NAMES", "fidelity_step"]

#: The sampler hook spec this backend adds to the plugin manager when it is registered.
PANTHER_HOOKSPECS = (optuna_samplers,)

SAMPLER_NAMES = ("tpe", "cmaes", "random", "grid", "qmc", "nsga2", "gp", "bruteforce")
#: Pruners by name (``"auto"`` is ``"halving"``; ``"none"`` turns pruning off).
PRUNER_NAMES = ("auto", "halving", "hyperband", "median", "none")
#: The default intermediate fidelities: one screen on a quarter of the validation data.
DEFAULT_FIDELITIES = (0.25,)

# User attributes panther stores on each trial, so a resumed study can be read back.
SCORE_ATTR = "panther_score"
CONSTRAINT_ATTR = "panther_constraint"
ERROR_ATTR = "panther_error"
EXTRA_ATTR = "panther_attrs"
# Set to False on trials told with ``evaluated=False`` (not counted toward n_trials).
EVALUATED_ATTR = "panther_evaluated"
# Statuses of tuner rows (``attrs["panther_row"]["status"]``) that ran no evaluation.
_UNEVALUATED_STATUSES = ("skipped", "cached")

_OPTUNA_PRIMITIVES = (type(None), bool, int, float, str)
_DIRECTIONS = ("maximize", "minimize")


_OPTUNA: Any = None


def _optuna() -> Any:
    """The ``optuna`` module, imported once, atomically.

    Optuna is imported on first use (it takes a while, and plain ``import panther``
    should not pay for it). An interrupt (Ctrl-C) or error in the middle of that import
    would leave half-initialised ``optuna`` modules in ``sys.modules``, and every later
    use would fail with an ``AttributeError``; so a failed import removes every optuna
    module it left behind, and the next call imports afresh.
    """
    global _OPTUNA
    if _OPTUNA is not None:
        return _OPTUNA
    import sys

    before = set(sys.modules)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Touch what this module uses, so a partly imported package fails here, not later.
        optuna.samplers, optuna.pruners, optuna.storages, optuna.trial, optuna.distributions  # noqa: B018
    except BaseException:
        for name in set(sys.modules) - before:
            if name == "optuna" or name.startswith("optuna."):
                del sys.modules[name]
        raise
    _OPTUNA = optuna
    return optuna


def _per_trial_constraints() -> bool:
    """Whether this Optuna records constraints per trial (``Trial.set_constraint``, Optuna >= 5)."""
    return hasattr(_optuna().trial.Trial, "set_constraint")


# Storage engines shared by every search on one storage (never stored on the user's
# search object, which spawning leaves unchanged). Keyed by the working directory too:
# a relative SQLite URL ("sqlite:///tuning.db") names a different file in another folder.
_STORAGES: dict[tuple[str, str], Any] = {}


def _storage_for(storage: Any) -> Any:
    if not isinstance(storage, str):
        return storage
    import os

    # Per working directory too: a relative SQLite path or journal file names another file
    # after a chdir.
    key = (storage, os.getcwd())
    if key not in _STORAGES:
        from panther.tuner.storage import open_storage

        _STORAGES[key] = open_storage(_checked(storage))
    return _STORAGES[key]


def _heartbeat_on(storage: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


# Storage URLs already checked (by URL and working directory), so spawning a search per
# group checks once.
_CHECKED: dict[tuple[str, str], Any] = {}


def _exists(storage: Any, study_name: str | None) -> bool:
    """Whether ``storage`` (a storage object; ``None``: in memory) holds ``study_name``."""
    if storage is None or study_name is None:
        return False
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


def _checked(url: str) -> Any:
    """:func:`panther.tuner.storage.check_storage` once per URL (errors are not cached)."""
    import os

    key = (url, os.getcwd())
    if key not in _CHECKED:
        from panther.tuner.storage import check_storage

        _CHECKED[key] = check_storage(url)
    return _CHECKED[key]


CONSTRAINT_KEY = "accuracy"


def _was_evaluated(user_attrs: dict[str, Any]) -> bool:
    """Whether a stored trial ran an evaluation (``False`` for skipped/cached proposals).

    Reads the explicit marker :meth:`OptunaSearch.update` stores, and, for studies
    written before it existed, the status of the tuner row kept in the trial's attrs.
    """
    if user_attrs.get(EVALUATED_ATTR) is False:
        return False
    extra = user_attrs.get(EXTRA_ATTR)
    row = extra.get("panther_row") if isinstance(extra, dict) else None
    return not (isinstance(row, dict) and row.get("status") in _UNEVALUATED_STATUSES)


def fidelity_step(fidelity: float) -> int:
    """The Optuna step a screen at ``fidelity`` is reported at: the percentage, ``round(100 * f)``.

    A pruner passed as an object sees these steps (full fidelity would be step 100).
    """
    return round(100 * fidelity)


def _read_constraint(trial: optuna.trial.FrozenTrial) -> tuple[float]:
    """Optuna ``constraints_func``: the constraint the tuner reported (0 = feasible if none)."""
    return (float(trial.user_attrs.get(CONSTRAINT_ATTR, 0.0)),)


class _Codec(ParamCodec):
    """A :class:`ParamCodec` with its Optuna distribution (and choices Optuna can store)."""

    def __init__(self, name: str, spec: ParamSpec) -> None:
        super().__init__(name, spec, "OptunaSearch")
        dists = _optuna().distributions
        self._decode_map: dict[Any, Any] | None = None
        if isinstance(spec, Categorical):
            choices = list(spec.choices)
            if all(isinstance(c, _OPTUNA_PRIMITIVES) for c in choices):
                self.encoded: list[Any] | None = choices
            else:
                # Optuna stores only None/bool/int/float/str; other choices go by their repr.
                self.encoded = [repr(c) for c in choices]
                self._decode_map = dict(zip(self.encoded, choices))
            self.distribution = dists.CategoricalDistribution(self.encoded)
        elif isinstance(spec, Int):
            self.distribution = dists.IntDistribution(self.low, self.high, log=spec.log, step=spec.step)
        elif spec.step is not None:
            self.distribution = dists.FloatDistribution(self.low, self.high, step=spec.step)
        else:
            self.distribution = dists.FloatDistribution(spec.low, spec.high, log=spec.log)

    def decode(self, value: Any) -> Any:
        """A value Optuna stored, as a value of the space (snapped onto a grid exactly)."""
        if self._decode_map is not None:
            return self._decode_map[value]
        if self.kind == "categorical":
            return value
        return self.snap(value)

    def encode(self, value: Any) -> Any:
        """A value of the space as Optuna stores it."""
        if self._decode_map is not None:
            return repr(value)
        return value

    def sampler_values(self) -> list[Any]:
        """Every value as Optuna stores it, for samplers that enumerate (grid)."""
        if self.kind == "categorical":
            return list(self.encoded or [])
        return self.grid_points()


class OptunaSearch(SearchAlgorithm):
    """Search with an Optuna study (TPE by default), driven through ask/tell.

    Args:
        n_trials: evaluations to reach: completed trials told with ``evaluated=True`` and
            failures. Trials told with ``evaluated=False`` (skipped or cached by the
            tuner) are added to the study so the sampler learns from them but do not
            count, up to the proposal cap of ``PROPOSAL_CAP_FACTOR * n_trials`` trials
            asked. Evaluated trials already completed in a resumed study count towards it.
        sampler: an ``optuna.samplers.BaseSampler`` instance, or a registered name
            (``"tpe"``, ``"cmaes"``, ``"random"``, ``"grid"``, ``"qmc"``, ``"nsga2"``,
            ``"gp"``, ``"bruteforce"`` or one added by a plugin). Default: seeded TPE.
        direction: direction of the single objective. The tuner reports
            higher-is-better scores, so keep ``"maximize"`` there; best-score
            tracking follows this direction.
        study_name: the study's name (also the prefix of per-group studies, see :meth:`spawn`).
        storage: a storage URL (``"sqlite:///tuning.db"``, ``"postgresql://..."`` or
            ``"journal:///path/run.log"``, see :mod:`panther.tuner.storage`), checked here so
            a bad one fails before any evaluation; or an Optuna storage object; ``None``
            keeps the study in memory.
        load_if_exists: resume a study of the same name found in ``storage``. Trials
            left RUNNING by a process that died are marked FAIL and enqueued again; trials
            of live processes are left alone. A single-process run holds a lease on the
            storage (see :mod:`panther.tuner.storage`): a second live process driving
            the same studies is refused with an error saying who holds them.
        seed: seed of a sampler chosen by name (and of the default TPE).
        directions: e.g. ``["maximize", "maximize"]`` for a multi-objective study;
            then :meth:`update` needs ``values`` and :meth:`pareto_front` gives the front.
        pruner: multi-fidelity pruning, used when the accuracy function takes a
            ``fidelity`` (:mod:`panther.tuner.fidelity`; others are never screened).
            ``"auto"`` (default) or ``"halving"``: Optuna's ``SuccessiveHalvingPruner``;
            ``"hyperband"``, ``"median"``; ``"none"`` or ``None`` turns it off; or an
            ``optuna.pruners.BasePruner`` instance, which sees step ``round(100 * f)`` for a
            screen at fidelity ``f`` (:func:`fidelity_step`). Multi-objective studies never
            prune (Optuna cannot).
        fidelities: the increasing fractions of the validation data each trial is screened
            on before its full evaluation (default ``(0.25,)``). A trial the pruner stops
            is recorded as ``pruned``; it counts as one of ``n_trials`` but costs only its
            screens, and is never accepted or chosen.

    Finishing: :meth:`get_next_params` returns ``None`` once ``n_trials`` evaluations
    have completed (failures reported in this session count too, so a broken evaluator
    cannot loop forever), at the proposal cap, or once every point of a finite space
    has been told.
    Samplers may propose a point again; telling its score again is fine.
    """

    def __init__(
        self,
        n_trials: int = DEFAULT_N_TRIALS,
        sampler: optuna.samplers.BaseSampler | str | None = None,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: str | Any | None = None,
        load_if_exists: bool = False,
        seed: int | None = None,
        directions: Sequence[str] | None = None,
        pruner: optuna.pruners.BasePruner | str | None = "auto",
        fidelities: Sequence[float] = DEFAULT_FIDELITIES,
    ) -> None:
        super().__init__()
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        if directions is not None:
            directions = list(directions)
            if not directions or any(d not in _DIRECTIONS for d in directions):
                raise ValueError(
                    f"directions must be a non-empty list of 'maximize'/'minimize', got {directions!r}"
                )
            if len(directions) == 1:  # one objective given as a list: a plain single-objective study
                direction, directions = directions[0], None
        if sampler is not None and not isinstance(sampler, str):
            optuna = _optuna()
            if not isinstance(sampler, optuna.samplers.BaseSampler):
                raise TypeError(
                    "sampler must be an optuna sampler instance or a registered name such as "
                    f"'tpe'; got {type(sampler).__name__}"
                )
        if pruner is None:
            pruner = "none"
        if isinstance(pruner, str):
            if pruner not in PRUNER_NAMES:
                raise ValueError(f"unknown pruner {pruner!r}; use one of {list(PRUNER_NAMES)} or "
                                 "an optuna.pruners.BasePruner instance")
        elif not isinstance(pruner, _optuna().pruners.BasePruner):
            raise TypeError("pruner must be an optuna pruner instance or one of "
                            f"{list(PRUNER_NAMES)}; got {type(pruner).__name__}")
        from panther.tuner.fidelity import check_ladder

        self.pruner = pruner
        self.fidelities = check_ladder(fidelities)
        self.n_trials = self.checked_n_trials(n_trials)
        self.sampler = sampler
        self.direction = direction
        self.directions = directions
        self.study_name = study_name
        self.storage = storage
        self.load_if_exists = bool(load_if_exists)
        self.seed = seed
        if isinstance(storage, str):
            # A malformed URL or an unwritable file fails now, before any evaluation runs.
            _checked(storage)
        #: Fingerprint of the run (see :mod:`panther.tuner.fingerprint`), set by the tuner;
        #: a resumed study made for another model or config is refused.
        self.fingerprint: dict[str, Any] | None = None
        self._lease: Any = None
        self._own_lease = False
        self._tag_trials = True
        self._parent: OptunaSearch | None = None
        # The group searches spawned from this one (read by ``studies``/``study``).
        self._children: dict[str, OptunaSearch] = {}
        self._init_state()

    def _init_state(self) -> None:
        self._study: optuna.Study | None = None
        self._codecs: dict[str, _Codec] = {}
        self._pending: list[tuple[Any, dict[str, Any]]] = []
        self._seen: set[Any] = set()
        self._space_size: int | None = None
        #: Trials found COMPLETE in storage when the study was resumed: dicts with
        #: ``number``, ``params``, ``score``, ``constraint``, ``values``, ``attrs`` and
        #: ``evaluated`` (False for trials told with ``evaluated=False``).
        self.resumed_trials: list[dict[str, Any]] = []
        #: Numbers of trials of dead processes failed (and enqueued again) on resume.
        self.reaped: list[int] = []

    # ------------------------------------------------------------------ set-up

    @property
    def multi_objective(self) -> bool:
        """Whether the study has several objectives (``directions`` was given)."""
        return self.directions is not None and len(self.directions) > 1

    def _resolved_storage(self) -> Any:
        return _storage_for(self.storage)

    @property
    def run_name(self) -> str:
        """The run's bookkeeping study (leases): named after the study prefix of :meth:`spawn`."""
        from panther.tuner.storage import run_study_name

        return run_study_name((self._parent or self).study_name)

    def _persistent(self) -> bool:
        storage = self._resolved_storage()
        return storage is not None and not isinstance(storage, _optuna().storages.InMemoryStorage)

    def use_lease(self, lease: Any, tag_trials: bool = True) -> None:
        """Drive this search (and the groups it spawns) under ``lease``, a worker's
        :class:`~panther.tuner.storage.Lease`, instead of a single-process one.
        ``tag_trials=False``: the caller tags the trials it evaluates itself."""
        root = self._parent or self
        root._lease, root._own_lease, root._tag_trials = lease, False, bool(tag_trials)

    def _ensure_lease(self) -> Any:
        """The lease this process holds on the run (acquired on first use of a storage)."""
        root = self._parent or self
        if root._lease is None and self._persistent():
            from panther.tuner.storage import Lease, check_no_conflict

            lease = Lease(self._resolved_storage(), root.run_name, role="tune").acquire()
            try:
                check_no_conflict(lease, repr(root.storage))
            except BaseException:
                lease.release()
                raise
            root._lease, root._own_lease = lease, True
        return root._lease

    def open_run(self) -> None:
        """Take this process's lease on a persistent storage now (the tuner calls it at the
        start of ``tune()``); raises :class:`~panther.tuner.storage.ConcurrentRunError` when
        another live process drives the same run."""
        self._ensure_lease()

    def close(self) -> None:
        """Release the single-process lease on the storage (the tuner calls it when
        ``tune()`` ends); a later search acquires a new one."""
        root = self._parent or self
        if root._lease is not None and root._own_lease:
            root._lease.release()
        root._lease, root._own_lease = None, False

    def _build_sampler(self) -> Any:
        sampler = self.sampler
        if sampler is None:
            sampler = "tpe"
        if not isinstance(sampler, str):
            return sampler
        factory = optuna_samplers.sampler_factory(sampler)
        try:
            accepted = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepted = {}
        kwargs: dict[str, Any] = {}
        if "constraints_func" in accepted and not _per_trial_constraints():
            kwargs["constraints_func"] = _read_constraint
        if "search_space" in accepted:
            space = {}
            for name, codec in self._codecs.items():
                try:
                    space[name] = codec.sampler_values()
                except ValueError as exc:
                    raise ValueError(f"the {sampler!r} sampler enumerates the space: {exc}") from exc
            kwargs["search_space"] = space
        return factory(seed=self.seed, **kwargs)

    def _prunes(self) -> bool:
        return self.pruner != "none" and bool(self.fidelities) and not self.multi_objective

    def _build_pruner(self) -> Any:
        """The study's pruner: the named one, set to this search's fidelity steps."""
        pruners = _optuna().pruners
        if not self._prunes():
            return pruners.NopPruner()
        if not isinstance(self.pruner, str):
            return self.pruner
        first = fidelity_step(self.fidelities[0])
        if self.pruner == "hyperband":
            return pruners.HyperbandPruner(min_resource=first, max_resource=fidelity_step(1.0),
                                           reduction_factor=3)
        if self.pruner == "median":
            return pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
        # Successive halving: a rung at every screen; a trial goes on while its value is among
        # the best third of the trials screened at that rung so far.
        return pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)

    def intermediate_fidelities(self) -> tuple[float, ...]:
        """The screens each trial gets (``fidelities``), or ``()`` when pruning is off."""
        return self.fidelities if self._prunes() else ()

    def _pending_trial(self, params: dict[str, Any]) -> Any | None:
        key = params_key(params)
        return next((trial for trial, p in self._pending if params_key(p) == key), None)

    def report_intermediate(self, params: dict[str, Any], value: float, fidelity: float) -> bool:
        """``trial.report(value, step)`` (step :func:`fidelity_step`), then ``trial.should_prune()``."""
        trial = self._pending_trial(params)
        if trial is None or not self._prunes():
            return False  # not asked from this study (told directly): nothing to prune
        trial.report(float(value), fidelity_step(fidelity))
        return bool(trial.should_prune())

    def tell_pruned(self, params: dict[str, Any], *, attrs: dict[str, Any] | None = None) -> None:
        """End the trial of ``params`` as PRUNED (it never becomes the best)."""
        if self._study is None:
            raise RuntimeError("call initialize(param_space) before prune()")
        trial = self._pop_pending(params)
        if trial is not None:
            if attrs:
                trial.set_user_attr(EXTRA_ATTR, dict(attrs))
            self._tell(trial, state=_optuna().trial.TrialState.PRUNED)
        self._seen.add(params_key(params))

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Create (or load, when resuming) the study for ``param_space``."""
        optuna = _optuna()
        children = self._children
        self.reset()
        self._children = children  # initialising this search does not forget its groups
        space = normalize_param_space(param_space)
        self.param_space = space
        self._codecs = {name: _Codec(name, spec) for name, spec in space.items()}
        self._space_size = finite_space_size(space)
        kwargs: dict[str, Any] = (
            {"directions": self.directions} if self.directions else {"direction": self.direction}
        )
        lease = self._ensure_lease()
        try:
            with warnings.catch_warnings():
                # Experimental-feature warnings (brute force, GP) are noise here.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = self._build_sampler()
                storage = self._resolved_storage()
                if self.load_if_exists and _exists(storage, self.study_name):
                    # Joining or resuming: load it. (Creating it first, as create_study
                    # does, costs a failed insert, which waits while another process's
                    # creation of the same name is still open.)
                    self._study = optuna.load_study(
                        study_name=self.study_name, storage=storage, sampler=sampler,
                        pruner=self._build_pruner())
                else:
                    self._study = optuna.create_study(
                        storage=storage,
                        sampler=sampler,
                        pruner=self._build_pruner(),
                        study_name=self.study_name,
                        load_if_exists=self.load_if_exists,
                        **kwargs,
                    )
        except optuna.exceptions.DuplicatedStudyError as exc:
            raise ValueError(
                f"a study named {self.study_name!r} already exists in {self.storage!r}; pass "
                "load_if_exists=True to resume it, or choose another study_name"
            ) from exc
        self._check_fingerprint()
        if self.load_if_exists:
            self._resume(lease)

    def _check_fingerprint(self) -> None:
        from panther.tuner.fingerprint import FINGERPRINT_ATTR, check_fingerprint
        from panther.tuner.storage_view import study_attr_once

        if self.fingerprint is None:
            return
        study = self._study
        where = f"study {study.study_name!r} in storage {self.storage!r}"
        # The first process to record one decides for all (two may start at once).
        check_fingerprint(study_attr_once(study, FINGERPRINT_ATTR, self.fingerprint),
                          self.fingerprint, where)

    def _resume(self, lease: Any = None) -> None:
        optuna = _optuna()
        state = optuna.trial.TrialState
        study = self._study
        if self._persistent():
            from panther.tuner.storage import reap_stale_trials

            # Trials left RUNNING by dead processes are failed and enqueued again (they never
            # produced a score); live processes' trials are theirs.
            self.reaped = reap_stale_trials(study, self.run_name, retry=True,
                                            mine=None if lease is None else lease.id)
        else:
            for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
                self._tell(trial.number, state=state.FAIL)  # in memory: nobody else runs them
        from panther.tuner.storage_view import last_read

        # The reap has just read the study; when it changed nothing, that read will do.
        with last_read(study._storage) if self._persistent() and not self.reaped \
                else contextlib.nullcontext():
            finished = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED))
        for trial in finished:
            try:
                stored = trial.params
                params = {name: self._codecs[name].decode(stored[name]) for name in self._codecs}
            except KeyError as exc:
                raise ValueError(
                    f"study {study.study_name!r} holds trials over different parameters "
                    f"({sorted(trial.params)}) than the space {sorted(self._codecs)}; use "
                    "another study_name for a different space"
                ) from exc
            score = trial.user_attrs.get(SCORE_ATTR)
            if trial.state == state.PRUNED:
                score = -math.inf  # stopped at a low fidelity: an evaluation with no score
            elif score is None:
                score = trial.value if not self.multi_objective else trial.values[0]
            constraint = trial.user_attrs.get(CONSTRAINT_ATTR)
            evaluated = _was_evaluated(trial.user_attrs)
            super().tell(params, float(score), constraint=constraint, evaluated=evaluated)
            self._seen.add(params_key(params))
            # Every stored trial was a proposal (for the cap); only evaluations use n_trials.
            self.count_resumed(evaluated)
            self.resumed_trials.append(
                {
                    "number": trial.number,
                    "params": params,
                    "score": float(score),
                    "constraint": constraint,
                    "values": tuple(trial.values or ()),
                    "attrs": dict(trial.user_attrs.get(EXTRA_ATTR, {})),
                    "evaluated": evaluated,
                }
            )

    # ------------------------------------------------------------------ ask / tell

    def ask(self) -> dict[str, Any] | None:
        """Ask the study for a trial (the budget is the caller's: see :meth:`get_next_params`)."""
        if self._study is None:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        from panther.tuner.storage import OWNER_ATTR, quiet_optuna

        with quiet_optuna():
            trial = self._study.ask({n: c.distribution for n, c in self._codecs.items()})
        root = self._parent or self
        lease = root._lease
        if lease is not None and root._tag_trials and not _heartbeat_on(trial.storage):
            # Says which process evaluates it, so others can tell a live trial from a dead
            # one (with Optuna's heartbeat on, the heartbeat says it: one write less).
            trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, lease.id)
        asked = trial.params  # a fresh copy on every access: read it once
        params = {name: codec.decode(asked[name]) for name, codec in self._codecs.items()}
        self._pending.append((trial, params))
        return params

    def _pop_pending(self, params: dict[str, Any]) -> Any | None:
        trial = self._pending_trial(params)
        if trial is not None:
            self._pending = [(t, p) for t, p in self._pending if t is not trial]
        return trial

    def _tell(self, trial: Any, **kwargs: Any) -> None:
        try:
            self._study.tell(trial, **kwargs)
        except RuntimeError as exc:
            # Grid/brute-force samplers call study.stop() when exhausted, which
            # Optuna only allows inside optimize(); the trial is already recorded.
            if "Study.stop" not in str(exc):
                raise

    def tell(
        self,
        params: dict[str, Any],
        score: float,
        *,
        constraint: float | None = None,
        evaluated: bool = True,
        values: Sequence[float] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """Tell the study the result of ``params``.

        Args:
            params: as returned by :meth:`ask` (or any point of the space:
                unasked points are added to the study as completed trials).
            score: the finite score (higher is better with ``direction="maximize"``).
                A non-finite score is recorded as a failed trial.
            constraint: accuracy shortfall, ``<= 0`` when feasible; constraint-aware
                samplers (TPE, NSGA-II, GP chosen by name) learn from it.
            evaluated: ``False`` when the tuner did not run the user's functions for
                ``params`` (skipped or cached): the trial is completed in the study (the
                sampler learns from it) and marked ``panther_evaluated=False``, but does
                not count toward ``n_trials`` and never becomes the best.
            values: the objective values of a multi-objective study.
            attrs: JSON-serialisable extras stored on the trial (read back in
                :attr:`resumed_trials` after a resume).
        """
        if self._study is None:
            raise RuntimeError("call initialize(param_space) before update()/tell()")
        optuna = _optuna()
        if self.multi_objective:
            if values is None or len(values) != len(self.directions):
                raise ValueError(
                    f"this study has {len(self.directions)} objectives {self.directions}; "
                    f"pass values=(...) with one number each, got {values!r}"
                )
            told: list[float] = [float(v) for v in values]
        else:
            told = [float(score)]
        trial = self._pop_pending(params)
        if not all(math.isfinite(v) for v in told) or not math.isfinite(float(score)):
            self._mark_failed(trial, f"non-finite score {score!r} / values {values!r}", evaluated)
            return
        user_attrs: dict[str, Any] = {SCORE_ATTR: float(score)}
        if not evaluated:
            user_attrs[EVALUATED_ATTR] = False
        if constraint is not None:
            user_attrs[CONSTRAINT_ATTR] = float(constraint)
        if attrs:
            user_attrs[EXTRA_ATTR] = dict(attrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if trial is not None:
                from panther.tuner.storage_view import write_batch

                # The result's attributes and its end in one transaction (on a database).
                with write_batch(trial.storage):
                    for k, v in user_attrs.items():
                        trial.set_user_attr(k, v)
                    if constraint is not None and _per_trial_constraints():
                        trial.set_constraint(CONSTRAINT_KEY, float(constraint))
                    self._tell(trial, values=told)
            else:
                self._add_completed(params, told, user_attrs, constraint)
        super().tell(params, float(score), constraint=constraint, evaluated=evaluated)
        self._seen.add(params_key(params))

    def _add_completed(
        self,
        params: dict[str, Any],
        told: list[float],
        user_attrs: dict[str, Any],
        constraint: float | None,
    ) -> None:
        optuna = _optuna()
        system_attrs = {}
        if constraint is not None:
            # add_trial skips the sampler's after_trial; store the constraint the way
            # this Optuna reads it (per-key attribute in >= 5, a tuple before).
            if _per_trial_constraints():
                system_attrs[f"constraints:{CONSTRAINT_KEY}"] = float(constraint)
            else:
                system_attrs["constraints"] = (float(constraint),)
        for name, codec in self._codecs.items():
            if name not in params or not codec.spec.contains(params[name]):
                raise ValueError(
                    f"cannot record params {params!r}: {name!r} is missing or outside {codec.spec!r}"
                )
        self._study.add_trial(
            optuna.trial.create_trial(
                params={n: c.encode(params[n]) for n, c in self._codecs.items()},
                distributions={n: c.distribution for n, c in self._codecs.items()},
                values=told,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
            )
        )

    def is_better(self, score: float, best: float) -> bool:
        """Higher is better, or lower for a minimising study."""
        return score < best if self.direction == "minimize" else score > best

    def report_failure(self, params: dict[str, Any], error: str | None = None) -> None:
        """Record that evaluating ``params`` failed: its trial is marked FAIL.

        Failures count towards ``n_trials`` within this session.
        """
        if self._study is None:
            raise RuntimeError("call initialize(param_space) before report_failure()")
        self._mark_failed(self._pop_pending(params), error)
        super().report_failure(params, error)

    def _mark_failed(self, trial: Any, error: str | None, evaluated: bool = True) -> None:
        state = _optuna().trial.TrialState
        if trial is not None:
            from panther.tuner.storage_view import write_batch

            with write_batch(trial.storage):
                if error:
                    trial.set_user_attr(ERROR_ATTR, str(error)[:1000])
                if not evaluated:
                    trial.set_user_attr(EVALUATED_ATTR, False)
                self._tell(trial, state=state.FAIL)

    def exhausted(self) -> bool:
        """Whether every point of a finite space has been told."""
        if self._study is None:
            return False
        return self._space_size is not None and len(self._seen) >= self._space_size

    def pareto_front(self) -> list[tuple[dict[str, Any], tuple[float, ...]]]:
        """The non-dominated trials as ``(params, values)`` (the best trial when single-objective)."""
        study = self.study
        if study is None:
            return []
        search = self if self._study is not None else self._latest_child()
        codecs = search._codecs if search is not None else {}
        front = []
        for trial in study.best_trials:
            stored = trial.params
            params = {n: c.decode(stored[n]) for n, c in codecs.items() if n in stored}
            front.append((params, tuple(trial.values)))
        return front

    # ------------------------------------------------------------------ studies

    def _latest_child(self) -> OptunaSearch | None:
        return next(reversed(self._children.values()), None)

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study: this search's own, or the one group's study it was spawned for.

        When several groups were tuned, each has its own study in :attr:`studies`;
        ``study`` then gives the latest group's with a warning naming ``studies``
        (kept so code written for one group keeps working).
        """
        if self._study is not None:
            return self._study
        if len(self._children) > 1:
            warnings.warn(
                f"this search ran {len(self._children)} layer groups, each with its own study; "
                f".study is the last group's ({next(reversed(self._children))!r}). Use "
                ".studies[group_name] for a given group", UserWarning, stacklevel=2)
        child = self._latest_child()
        return None if child is None else child.study

    @property
    def studies(self) -> dict[str, optuna.Study]:
        """``{group key: study}`` of every group search made by :meth:`spawn`."""
        return {k: c.study for k, c in self._children.items() if c.study is not None}

    def child_study_name(self, key: str) -> str:
        """The study name used for group ``key``: ``f"{study_name}/{key}"`` (default prefix ``"panther"``)."""
        return f"{self.study_name or 'panther'}/{key}"

    def spawn(self, key: str) -> OptunaSearch:
        """A fresh search for the layer group ``key`` with its own study in the same storage.

        Each group gets the study :meth:`child_study_name` so groups never pool their
        trials and a persistent storage never hits a duplicate-study error; with
        ``load_if_exists=True`` each group resumes its own study.
        """
        sampler = self.sampler
        if sampler is not None and not isinstance(sampler, str):
            sampler = copy.deepcopy(sampler)  # every group starts from the same sampler state
        pruner = self.pruner if isinstance(self.pruner, str) else copy.deepcopy(self.pruner)
        child = OptunaSearch(
            n_trials=self.n_trials,
            sampler=sampler,
            direction=self.direction,
            study_name=self.child_study_name(str(key)),
            storage=self.storage,
            load_if_exists=self.load_if_exists,
            seed=self.seed,
            directions=self.directions,
            pruner=pruner,
            fidelities=self.fidelities,
        )
        child._parent = self._parent or self
        if self.fingerprint is not None:
            from panther.tuner.fingerprint import group_fingerprint

            child.fingerprint = group_fingerprint(self.fingerprint, str(key))
        # Only the registry of groups changes (for ``studies``); the settings and any
        # study of this object stay as they were.
        self._children.pop(str(key), None)
        self._children[str(key)] = child
        return child

    def reset(self) -> None:
        """Forget results, the study object and spawned groups (stored studies stay in storage)."""
        super().reset()
        self._children = {}
        self._init_state()

    def __deepcopy__(self, memo: dict[int, Any]) -> OptunaSearch:
        # Studies and storage engines are not copyable; a copy is a fresh, unstarted search.
        sampler = (
            self.sampler
            if isinstance(self.sampler, str) or self.sampler is None
            else copy.deepcopy(self.sampler, memo)
        )
        pruner = self.pruner if isinstance(self.pruner, str) else copy.deepcopy(self.pruner, memo)
        return OptunaSearch(
            n_trials=self.n_trials,
            sampler=sampler,
            direction=self.direction,
            study_name=self.study_name,
            storage=self.storage,
            load_if_exists=self.load_if_exists,
            seed=self.seed,
            directions=self.directions,
            pruner=pruner,
            fidelities=self.fidelities,
        )


# ---------------------------------------------------------------------- samplers


def _tpe(
    seed: int | None = None, constraints_func: Callable[..., Any] | None = None, **kw: Any
) -> Any:
    return _optuna().samplers.TPESampler(seed=seed, constraints_func=constraints_func, **kw)


def _cmaes(seed: int | None = None, **kw: Any) -> Any:
    return _optuna().samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **kw)


def _random(seed: int | None = None, **kw: Any) -> Any:
    return _optuna().samplers.RandomSampler(seed=seed, **kw)


def _grid(
    seed: int | None = None, search_space: dict[str, list[Any]] | None = None, **kw: Any
) -> Any:
    if search_space is None:
        raise ValueError(
            "the grid sampler needs search_space={name: [values]}; OptunaSearch builds it "
            "from the parameter space"
        )
    return _optuna().samplers.GridSampler(search_space, seed=seed, **kw)


def _qmc(seed: int | None = None, **kw: Any) -> Any:
    return _optuna().samplers.QMCSampler(seed=seed, warn_independent_sampling=False, **kw)


def _nsga2(
    seed: int | None = None, constraints_func: Callable[..., Any] | None = None, **kw: Any
) -> Any:
    return _optuna().samplers.NSGAIISampler(seed=seed, constraints_func=constraints_func, **kw)


def _gp(
    seed: int | None = None, constraints_func: Callable[..., Any] | None = None, **kw: Any
) -> Any:
    return _optuna().samplers.GPSampler(seed=seed, constraints_func=constraints_func, **kw)


def _bruteforce(seed: int | None = None, **kw: Any) -> Any:
    return _optuna().samplers.BruteForceSampler(seed=seed, **kw)


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Register :class:`OptunaSearch` as ``"optuna"``."""
    return {"optuna": OptunaSearch}


@hookimpl
def panther_optuna_samplers() -> dict[str, Callable[..., Any]]:
    """Register Optuna's samplers by name."""
    return {
        "tpe": _tpe,
        "cmaes": _cmaes,
        "random": _random,
        "grid": _grid,
        "qmc": _qmc,
        "nsga2": _nsga2,
        "gp": _gp,
        "bruteforce": _bruteforce,
    }
