"""Tuning with many worker processes (on one machine or many) sharing one Optuna storage.

Every worker builds the same tuner (model, configs, evaluation functions) and calls
:func:`run_worker` (``SKAutoTuner.run_worker`` / ``panther-tune worker``); one process
then calls :func:`finalize` (``SKAutoTuner.finalize`` / ``panther-tune finalize``),
which gathers every trial from the storage and runs the same combined verification as
a single-process ``tune()``. :func:`run_status` reports progress. There is no
coordinator: workers share state only through the storage (see
:mod:`panther.tuner.storage`).

How workers share a run
-----------------------
* Each layer group has its own study (``f"{study_name}/{group}"``). A worker starts on
  group ``ordinal % n_groups`` (its ordinal is its lease number among the run's workers)
  and moves on when a group's budget is taken, so workers spread over the layers of a
  separate-mode run and share a study within a layer.
* **Budgets are global.** Before evaluating, a worker *claims* its trial (a user
  attribute) and ranks it by trial number among the group's evaluations and the lower-
  numbered trials still running; a claim past ``n_trials`` (``max_trials``) does not run.
  So N workers with ``n_trials = 100`` run 100 evaluations in all. A lower-numbered trial
  whose fate is unknown yet is waited for, never guessed.
* **Free proposals stay free.** A proposal whose configuration is already completed in the
  study (by any worker) is answered from it (``"cached"``), one the cost model skips is
  ``"skipped"``; neither claims budget. A configuration another worker is evaluating
  right now is given up (FAIL, not counted) and a new one proposed, since waiting would
  idle this worker for up to a whole evaluation while the other worker's result teaches
  the sampler anyway; after ``_REDRAWS`` such proposals in a row (a small space nearly
  used up) the worker waits for that result instead. A configuration recorded complete is
  never evaluated twice.
* **Crashes.** A killed worker's RUNNING trial is found stale (journal storage: its
  lease; RDB: Optuna's heartbeat) by the other workers, marked FAIL and enqueued again,
  so the next worker to ask evaluates it; its completed trials are kept. Restarting a
  worker continues the run.
* **Fingerprint.** The run records the model/space/evaluation fingerprint
  (:mod:`panther.tuner.fingerprint`); a worker or finalize built differently is refused.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from panther.tuner.shared_baseline import (
    MeasureBaselineFirst,
    publish_baseline,
    resolve_baseline,
)

__all__ = ["WorkerReport", "run_worker", "finalize", "run_status", "resolve_device",
           "DEVICE_ENV"]

#: Environment variable naming the device a worker evaluates on (``cuda:1``, ``cpu``...).
DEVICE_ENV = "PANTHER_DEVICE"
#: A worker claims a trial for evaluation by tagging it with its lease id (the storage's
#: ``OWNER_ATTR`` system attribute): one write says both "evaluated here" and "by whom".
#: Error text of a trial given up because other workers used the budget up.
_SURPLUS = "not evaluated: the group's evaluation budget was taken by other workers"
#: Proposals in a row a worker gives up because another worker is evaluating the same
#: configuration, before it waits for that result instead: a large space almost always
#: has something new to propose, a small one nearly used up may only repeat itself.
_REDRAWS = 2
#: How long after a trial should have ended a worker waiting for it looks (its result is
#: written a moment after the evaluation: a look just before would find it still running).
_WAKE_MARGIN_S = 0.005


@dataclass
class WorkerReport:
    """What one :func:`run_worker` call did.

    Attributes:
        worker: the worker's lease id (``host:pid:token``).
        ordinal: its number among the run's workers (0 for the first).
        evaluated: evaluations this worker ran (the user's functions were called).
        free: proposals it answered without evaluating (cached or skipped).
        surplus: claims it gave up because other workers had taken the budget.
        redrawn: proposals it gave up for new ones because another worker was evaluating
            the same configuration at that moment.
        retried: stale trials of dead workers it found, failed and re-enqueued.
        groups: per group key, this worker's evaluations there.
        wall_time_s: seconds the call took.
        storage_s: seconds spent in calls to the shared storage (reads and writes,
            Optuna's own included); ``None`` when the storage was not opened by panther.
        waiting_s: seconds spent waiting for other workers (their trials decide whether
            this one may run, or the rest of the budget is being evaluated elsewhere).
        baseline_measured: whether this worker evaluated the original model (a run's
            first worker does; the others take its published accuracy).
        startup_s: seconds from the call to this worker's first proposal (opening the
            storage, the lease, the checks, joining the studies); ``None`` if it never
            proposed.
        startup_storage_s: of ``storage_s``, the seconds spent before that first proposal
            (paid once per worker, however long the run).
    """

    worker: str
    ordinal: int
    evaluated: int = 0
    free: int = 0
    surplus: int = 0
    redrawn: int = 0
    retried: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    storage_s: float | None = None
    waiting_s: float = 0.0
    baseline_measured: bool = False
    startup_s: float | None = None
    startup_storage_s: float | None = None


def _claimed(trial: Any) -> bool:
    """Whether a RUNNING trial is claimed for evaluation (tagged with its worker's lease)."""
    from panther.tuner.storage import OWNER_ATTR, WAITING_SUFFIX

    owner = trial.system_attrs.get(OWNER_ATTR)
    return isinstance(owner, str) and not owner.endswith(WAITING_SUFFIX)


def _twin(trial: Any, key: Any, running: list[Any]) -> Any:
    """The running trial of ``trial``'s configuration (``key``) that ``trial`` must defer to.

    That is a claimed one (being evaluated), or a lower-numbered one still deciding: of two
    workers proposing a configuration at once, the later one defers. ``None`` if there is
    none.
    """
    from panther.tuner.search.base import params_key

    return next((t for t in running if params_key(t.params) == key
                 and (_claimed(t) or t.number < trial.number)), None)


# ---------------------------------------------------------------------- set-up helpers
def resolve_device(device: Any = None) -> Any:
    """The ``torch.device`` a worker evaluates on: ``device``, else ``$PANTHER_DEVICE``, else None.

    Raises:
        ValueError: for a malformed name, or a CUDA device this machine does not have.
    """
    import torch

    name = device if device is not None else os.environ.get(DEVICE_ENV) or None
    if name is None:
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {name!r} is not a torch device name (e.g. 'cpu', 'cuda:0')") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if dev.index is None else dev.index
        if index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s)"
                             + (f" (cuda:0 .. cuda:{count - 1})" if count else "")
                             + f"; pick one of them or unset {DEVICE_ENV}")
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    return dev


def _shared_storage(tuner: Any, storage: str | None) -> tuple[Any, Any]:
    """The tuner's Optuna search and the parsed storage URL workers share."""
    from panther.tuner.search.optuna import OptunaSearch
    from panther.tuner.storage import StorageError, check_storage

    search = tuner.search_algorithm
    if not isinstance(search, OptunaSearch):
        raise TypeError(
            "workers share a run through Optuna's storage: build the tuner with "
            f"search_algorithm=OptunaSearch(...) (got {type(search).__name__})")
    url = storage if storage is not None else search.storage
    if not isinstance(url, str):
        raise ValueError(
            "workers need a storage URL they all open: pass storage='journal:///path/run.log' "
            "(one machine) or 'postgresql://...' (many machines), or give OptunaSearch(storage=...)")
    # No test connection: open_storage() connects right after, and says the same when no
    # server answers (a new connection is a new server process: one less per worker).
    spec = check_storage(url, connect=False)
    if not spec.shared:
        raise StorageError(f"storage {spec.display!r} lives in this process's memory; workers "
                           "need a file or a database server (journal:///path/run.log, "
                           "sqlite:///path/run.db or postgresql://...)")
    return search, spec


def _clone_search(source: Any, spec: Any, storage_obj: Any, ordinal: int) -> Any:
    """A copy of the tuner's OptunaSearch on the shared storage, resuming its studies.

    Worker ``ordinal`` seeds a sampler given by name with ``seed + ordinal``, so workers
    propose different points (the first worker proposes what a single process would); a
    sampler given as an instance is copied and, past the first worker, reseeded.
    """
    from panther.tuner.search.optuna import OptunaSearch

    sampler = source.sampler
    if sampler is not None and not isinstance(sampler, str):
        sampler = copy.deepcopy(sampler)
        if ordinal:
            sampler.reseed_rng()
    seed = None if source.seed is None else source.seed + ordinal
    # The storage object (heartbeat on, for RDB) goes to the clone and the groups it spawns.
    return OptunaSearch(n_trials=source.n_trials, sampler=sampler, direction=source.direction,
                        study_name=source.study_name, storage=storage_obj, load_if_exists=True,
                        seed=seed, directions=source.directions)


def _run_study(storage_obj: Any, run_name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=run_name, storage=storage_obj)


def _check_run_fingerprint(run_study: Any, fingerprint: dict[str, Any], display: str,
                           run_name: str) -> None:
    """Refuse to join a run made for another model or config.

    The run's fingerprint of record is the one stored on its study; a fresh run has none
    yet, and takes the one on its first worker's lease (see
    :func:`~panther.tuner.storage.first_lease_fingerprint`), which every worker finds the
    same, however many start at once.
    """
    from panther.tuner.fingerprint import FINGERPRINT_ATTR, check_fingerprint
    from panther.tuner.storage import first_lease_fingerprint
    from panther.tuner.storage_view import last_read, study_attr_once

    where = f"tuning run {run_study.study_name!r} in storage {display!r}"
    with last_read(run_study._storage):  # the leases were read a moment ago
        first = first_lease_fingerprint(run_study._storage, run_name)
    stored = study_attr_once(run_study, FINGERPRINT_ATTR, first if first is not None
                             else fingerprint)
    check_fingerprint(stored, fingerprint, where)


def _recent_duration(trials: list[Any], last: int = 8) -> float | None:
    """The median time from creation to result of the last ``last`` evaluations among
    ``trials`` (seconds; ``None`` without any)."""
    from panther.tuner.search.optuna import _was_evaluated

    took = []
    for t in reversed(trials):
        if t.state.name == "COMPLETE" and t.datetime_start is not None \
                and t.datetime_complete is not None and _was_evaluated(t.user_attrs):
            took.append((t.datetime_complete - t.datetime_start).total_seconds())
            if len(took) == last:
                break
    return statistics.median(took) if took else None


def _completed_entry(trial: Any) -> tuple[bool, Any]:
    """What a COMPLETE trial adds to :meth:`_GroupWork.counts`: whether it was evaluated,
    and the configuration it handled (``None`` for a cached answer, which handles none)."""
    from panther.tuner.search.base import params_key
    from panther.tuner.search.optuna import EXTRA_ATTR, _was_evaluated

    row = (trial.user_attrs.get(EXTRA_ATTR) or {}).get("panther_row") or {}
    key = None if row.get("status") == "cached" else params_key(trial.params)
    return bool(_was_evaluated(trial.user_attrs)), key


# ---------------------------------------------------------------------- one group
class _GroupWork:
    """A worker's view of one group's shared study."""

    def __init__(self, run: Any, group: Any, search: Any, report: WorkerReport) -> None:
        from panther.tuner import search_loop
        from panther.tuner.search.base import finite_space_size

        self.run = run
        self.group = group
        self.search = search
        search.initialize(dict(group.space))
        report.retried += len(search.reaped)  # dead workers' trials found on joining
        self.budget = search_loop.evaluation_budget(search, run.settings.max_trials)
        self.state = search_loop.GroupSearch(
            group=group, search=search, budget=self.budget,
            accepts=search_loop._accepted_keywords(search.update))
        search_loop._restore_previous(run, self.state)
        self.known = {entry["number"] for entry in search.resumed_trials}
        self.cap = None if self.budget is None else search_loop.PROPOSALS_PER_EVALUATION * self.budget
        self.size = finite_space_size(group.space)
        self.finished = False
        self.redrawn = 0  # proposals given up in a row for being evaluated elsewhere
        self._complete: dict[int, tuple[bool, Any]] = {}  # see counts()
        self._counted: tuple[Any, dict[str, Any]] = (None, {})  # the last read counted
        self._last_reap = time.monotonic()  # initialize() has just reaped (see search.reaped)
        # Joining has just read the study (initialize): the first step decides on that
        # read, as a step right after this worker's own trial decides on the read made
        # when it was asked (``fresh_read``; two statements less at every worker's start).
        from panther.tuner.storage_view import last_read

        with last_read(self.study._storage):
            self.last_trials: list[Any] = self.study.get_trials(deepcopy=False)
        self.fresh_read = True

    @property
    def study(self) -> Any:
        return self.search._study

    def sync(self) -> list[Any]:
        """Read the study: add trials other workers completed to this worker's cache.

        Returns every trial (for the counts).
        """
        import optuna

        from panther.tuner import search_loop
        from panther.tuner.search.optuna import EXTRA_ATTR, SCORE_ATTR, _was_evaluated

        trials = self.study.get_trials(deepcopy=False)
        self.last_trials = trials
        new = []
        for t in trials:
            if t.state != optuna.trial.TrialState.COMPLETE or t.number in self.known:
                continue
            self.known.add(t.number)
            try:
                params = {n: c.decode(t.params[n]) for n, c in self.search._codecs.items()}
            except KeyError:
                continue  # not a trial of this space (the fingerprint check makes this rare)
            score = t.user_attrs.get(SCORE_ATTR, t.values[0] if t.values else -math.inf)
            new.append({"number": t.number, "params": params, "score": float(score),
                        "attrs": dict(t.user_attrs.get(EXTRA_ATTR, {})),
                        "evaluated": _was_evaluated(t.user_attrs)})
        if new:
            saved = self.search.resumed_trials
            self.search.resumed_trials = new
            try:
                search_loop._restore_previous(self.run, self.state)
            finally:
                self.search.resumed_trials = saved
        return trials

    def counts(self, trials: list[Any]) -> dict[str, Any]:
        """Global counts of the group: evaluations, proposals, handled configurations.

        A step asks this of the same read several times, and every read holds every trial
        of the study: the answer is kept for the last read, and what a completed trial
        adds (it never changes again) is worked out once per trial, so a step stays cheap
        in a run of thousands of trials.
        """
        import optuna

        if trials is self._counted[0]:
            return dict(self._counted[1])
        complete, running = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
        memo = self._complete
        evaluated = proposals = 0
        handled = set()
        for t in trials:
            if t.state == complete:
                proposals += 1
                entry = memo.get(t.number)
                if entry is None:
                    entry = memo[t.number] = _completed_entry(t)
                evaluated += entry[0]
                if entry[1] is not None:
                    handled.add(entry[1])
            elif t.state == running:
                proposals += 1
        result = {"evaluated": evaluated, "proposals": proposals, "handled": len(handled)}
        self._counted = (trials, result)
        return dict(result)

    def reap(self, run_name: str, interval: float, report: WorkerReport) -> None:
        """Fail and re-enqueue the trials of dead workers (at most every ``interval`` s)."""
        from panther.tuner.storage import reap_stale_trials

        now = time.monotonic()
        if now - self._last_reap < interval:
            return
        self._last_reap = now
        report.retried += len(reap_stale_trials(self.study, run_name, retry=True))

    def last_round(self, trials: list[Any]) -> bool:
        """Whether ``trials`` leave at most one more evaluation per running trial.

        The running trials stand for the workers busy when ``trials`` were read, so this
        is the run's last round: every worker's next proposal may be past the budget.
        """
        if self.budget is None:
            return False
        running = sum(t.state.name == "RUNNING" for t in trials)
        return self.budget - self.counts(trials)["evaluated"] - running <= running

    def done(self, trials: list[Any]) -> bool:
        """Whether the group needs no more evaluations from anyone."""
        c = self.counts(trials)
        if self.budget is not None and c["evaluated"] >= self.budget:
            return True
        if self.cap is not None and c["proposals"] >= self.cap:
            return True
        return bool(self.run.settings.dedupe and self.size is not None
                    and c["handled"] >= self.size)


class _Worker:
    """The loop of :func:`run_worker` over every group of the run."""

    def __init__(self, run: Any, search: Any, lease: Any, report: WorkerReport,
                 poll_s: float, reap_s: float, run_study: Any = None,
                 started: float | None = None, storage_s: Callable[[], float] | None = None
                 ) -> None:
        self.run = run
        self.started = time.perf_counter() if started is None else started
        self.storage_s = storage_s  # the storage's clock (seconds spent in it so far)
        self.run_study = run_study
        self.search = search
        self.lease = lease
        self.report = report
        self.poll_s = poll_s
        self.reap_s = reap_s
        self.works: dict[str, _GroupWork] = {}
        # this worker's recent time from a trial's creation to its result (a moving mean)
        self.eval_s: float | None = None
        self.wake: float | None = None  # when a trial that blocks this worker should end (epoch s)

    def _work(self, group: Any) -> _GroupWork:
        if group.key not in self.works:
            child = self.search.spawn(group.key)
            self.works[group.key] = _GroupWork(self.run, group, child, self.report)
        return self.works[group.key]

    def loop(self) -> None:
        """Work until every group is finished (or the run's time budget is spent)."""
        groups = list(self.run.groups)
        start = self.report.ordinal % len(groups)
        order = groups[start:] + groups[:start]
        idle = 0
        while True:
            busy = False  # some group still has work, but its budget is claimed for now
            progressed = False
            for group in order:
                if not self.run.time_left():
                    self.run.stop_reason = "time_budget_s"
                    return
                work = self._work(group)
                if work.finished:
                    continue
                outcome = self._group_step(work)
                if outcome == "finished":
                    work.finished = True
                elif outcome == "full":
                    busy = True
                else:
                    progressed = True
                    break  # stay on this group while it has budget (keeps the order stable)
            if all(w.finished for w in self.works.values()) and len(self.works) == len(groups):
                return
            if busy and not progressed:
                idle += 1
                self._sleep(idle)
            else:
                idle = 0

    def _sleep(self, rounds: int) -> None:
        """Wait between looks at the storage: ``poll_s``, doubling while nothing changes (up to
        8x), so waiting workers do not load a shared database; but no longer than until the
        first trial this worker waits for should end (:meth:`_expect`), so the last
        evaluations of a run are noticed soon after they finish."""
        delay = self.poll_s * min(8, 2 ** max(0, rounds - 1))
        if self.wake is not None:
            until = self.wake - time.time()
            # Look just after then, even sooner than ``poll_s`` (at the end of a run every
            # idle worker waits for the last trials: a whole ``poll_s`` late, the run ends
            # that much later); once a trial is overdue, at the plain pace.
            delay = min(delay, until + _WAKE_MARGIN_S if until > 0 else self.poll_s)
            self.wake = None
        time.sleep(delay)
        if self.report is not None:
            self.report.waiting_s += delay

    def _expect(self, trials: list[Any], study: list[Any]) -> None:
        """Note when the first of ``trials`` (RUNNING, evaluated elsewhere) should end.

        Estimated from its start (its creation) and the time the study's recent
        evaluations took from creation to result (``study``: the trials as last read; both
        ends of a trial are stamped by the worker that ran it, so other hosts' clocks do
        not enter), else this worker's own; only shortens the next wait (a host with
        another clock merely makes it less useful).
        """
        took = _recent_duration(study)
        if took is None:
            took = self.eval_s
        if took is None:
            return
        starts = [t.datetime_start.timestamp() for t in trials
                  if t.datetime_start is not None and _claimed(t)]
        if starts:
            self.wake = min(starts) + took

    def _group_step(self, work: _GroupWork) -> str:
        """Propose and handle one trial of ``work``'s group.

        Returns ``"finished"`` (nothing left for anyone), ``"full"`` (the budget is claimed
        by trials still running elsewhere) or ``"ran"``.
        """
        import optuna

        from panther.tuner import search_loop
        from panther.tuner.search.base import params_key
        from panther.tuner.storage import OWNER_ATTR
        from panther.tuner.storage_view import last_read, write_batch
        from panther.tuner.trials import cost_skip

        if self.report.startup_s is None:  # the first step: start-up ends here
            self.report.startup_s = time.perf_counter() - self.started
            if self.storage_s is not None:
                self.report.startup_storage_s = self.storage_s()
        work.reap(self.lease.run_name, self.reap_s, self.report)
        # Right after this worker's own trial (or its joining), the read made when it was
        # asked is recent enough to decide whether to ask again, except in the last round:
        # there a stale "not full" would cost a proposal, a claim and a give-up (at the
        # very end of the run, where it delays the last worker), and a fresh read costs
        # one statement.
        recent = work.fresh_read and not work.last_round(work.last_trials)
        trials = work.last_trials if recent else work.sync()
        work.fresh_read = False
        if work.done(trials):
            return "finished"
        if work.budget is not None and work.counts(trials)["evaluated"] + sum(
                t.state.name == "RUNNING" and _claimed(t) for t in trials) \
                >= work.budget:
            self._expect([t for t in trials if t.state.name == "RUNNING"], trials)
            return "full"  # the rest of the budget is being evaluated elsewhere right now
        if work.search.is_finished():
            return "finished"  # this worker's own view: every point of the space was told
        # The new trial's parameters and first heartbeat go to the storage together.
        with write_batch(work.study._storage):
            # Optuna's ask reads the study once more (for WAITING trials to pop): the read
            # above is as good for that, and one storage read less per trial.
            with last_read(work.study._storage) if recent else contextlib.nullcontext():
                params = work.search.get_next_params()
            if params is None:
                return "finished"
            asked = time.time()  # the trial was created a moment ago (see _expect)
            trial = work.search._pending[-1][0]  # the Optuna trial just asked
            self.lease.set_current(work.study.study_name, trial.number, trial._trial_id)
        try:
            key = params_key(params)
            # One fresh read after asking: trials created before this one are all in it.
            running = self._others_running(work, trial, work.sync())
            skipped = cost_skip(self.run, work.group, params) is not None
            twin = _twin(trial, key, running)
            if twin is not None and not skipped and key not in work.state.seen \
                    and work.redrawn < _REDRAWS:
                work.redrawn += 1
                self.report.redrawn += 1
                self._give_up(work, params, f"not evaluated: trial {twin.number} evaluates the "
                              "same configuration elsewhere; a new one was proposed instead")
                return "ran"
            work.redrawn = 0  # this proposal is kept: the run of redrawn ones ends
            if not self._await_duplicate(work, trial, key, running):
                self._give_up(work, params, "the same configuration is being evaluated elsewhere")
                return "full"
            free = key in work.state.seen or skipped
            if not free:
                trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, self.lease.id)
                if not self._await_claim(work, trial, running):
                    self._give_up(work, params, _SURPLUS)
                    self.report.surplus += 1
                    return "full"
            before = work.state.evaluated
            try:
                search_loop._answer(self.run, work.state, dict(params))
            except MeasureBaselineFirst:
                # Nobody is left to publish the original model's accuracy: this trial's
                # result cannot be judged without it. Give the trial up (not counted),
                # measure the original model now (its layers are back), then go on.
                self._give_up(work, params, "not evaluated: the original model's accuracy "
                              "had to be measured first")
                self.run.measure_baseline()
                self.report.baseline_measured = True
                publish_baseline(self.run, self.run_study)
                return "ran"
            except optuna.exceptions.UpdateFinishedTrialError:
                # This process stalled past the grace period and another worker took its
                # trial for a dead one's (failed and re-enqueued it): the result is dropped
                # and the retry evaluates it again.
                self.run.log(f"[{work.group.key}] trial {trial.number} was taken over by "
                             "another worker while this one stalled; its result is dropped")
            work.known.add(trial.number)
            work.fresh_read = True
            if work.state.evaluated > before:
                took = time.time() - asked
                self.eval_s = took if self.eval_s is None else 0.7 * self.eval_s + 0.3 * took
                self.report.evaluated += 1
                self.report.groups[work.group.key] = self.report.groups.get(work.group.key, 0) + 1
            else:
                self.report.free += 1
        finally:
            self.lease.set_current(None)
        return "ran"

    def _give_up(self, work: _GroupWork, params: dict[str, Any], why: str) -> None:
        """End this worker's trial unevaluated: FAIL, not counted toward the budget."""
        trial = work.search._pop_pending(params)
        work.search._mark_failed(trial, why, evaluated=False)
        work.search._count_result(evaluated=False)
        if trial is not None:
            work.known.add(trial.number)

    @staticmethod
    def _others_running(work: _GroupWork, trial: Any, trials: list[Any]) -> list[Any]:
        import optuna

        return [t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                and t.number != trial.number]

    def _await_duplicate(self, work: _GroupWork, trial: Any, key: Any,
                         running: list[Any]) -> bool:
        """Wait while another worker evaluates the same configuration (then it is cached).

        Returns False when that takes so long that the trial is better given up (the
        other worker's result will teach the sampler anyway).
        """
        from panther.tuner.storage import OWNER_ATTR, WAITING_SUFFIX

        deadline = time.monotonic() + max(30.0, 4 * self.lease.grace)
        rounds = 0
        tagged = False
        while time.monotonic() < deadline:
            if key in work.state.seen or _twin(trial, key, running) is None:
                return True
            if not tagged:
                # Waiting may take a whole evaluation: say whose trial this is, unclaimed, so
                # it is not taken for a dead worker's.
                trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR,
                                                    self.lease.id + WAITING_SUFFIX)
                tagged = True
            rounds += 1
            self._sleep(rounds)
            work.reap(self.lease.run_name, self.reap_s, self.report)
            running = self._others_running(work, trial, work.sync())
        return False

    def _await_claim(self, work: _GroupWork, trial: Any, running: list[Any]) -> bool:
        """Whether this claimed trial is within the group's global evaluation budget.

        Rank = evaluations completed + lower-numbered trials still running. Within the
        budget: go. Over it even if every undecided lower trial turns out free: give up.
        Otherwise wait for those trials to decide.
        """
        if work.budget is None:
            return True
        trials = None
        rounds = 0
        while True:
            if trials is not None:  # the first round reuses the read made right after asking
                running = self._others_running(work, trial, trials)
            done = work.counts(trials if trials is not None else work.last_trials)["evaluated"]
            if done >= work.budget:
                return False
            lower = [t for t in running if t.number < trial.number]
            claimed = sum(_claimed(t) for t in lower)
            if done + len(lower) < work.budget:
                return True
            if done + claimed >= work.budget:
                return False
            self._expect(lower, trials if trials is not None else work.last_trials)
            rounds += 1
            self._sleep(rounds)
            work.reap(self.lease.run_name, self.reap_s, self.report)
            trials = work.sync()


# ---------------------------------------------------------------------- public entry points
def run_worker(tuner: Any, storage: str | None = None, *, device: Any = None,
               heartbeat_interval: int = 5, grace_period: int | None = None,
               poll_interval: float = 0.05) -> WorkerReport:
    """Work on a shared tuning run until every group's budget is used (see the module doc).

    Args:
        tuner: an ``SKAutoTuner`` built the same way in every worker (same model weights,
            configs, evaluation settings) with an ``OptunaSearch`` backend.
        storage: the shared storage URL (default: the backend's ``storage``).
        device: evaluate on this device (``"cuda:1"``); default ``$PANTHER_DEVICE``, else
            where the model is. The tuner's model is moved there.
        heartbeat_interval: seconds between liveness beats (lease and Optuna heartbeat).
        grace_period: seconds without a beat after which a worker on another machine counts
            as dead (default ``4 * heartbeat_interval``). On one machine a dead worker is
            noticed at once (its process is gone).
        poll_interval: seconds between looks at the storage while waiting for other workers.

    Returns:
        A :class:`WorkerReport`. The run's results come from :func:`finalize`.

    Raises:
        FingerprintMismatch: the run was started with another model or config.
        ConcurrentRunError: a single-process ``tune()`` drives the same studies.
        StorageError: the storage URL is unusable.
    """
    from panther.tuner.fingerprint import tuner_fingerprint
    from panther.tuner.run import Run
    from panther.tuner.storage import (
        Lease,
        check_no_conflict,
        live_leases,
        open_storage,
        quiet_optuna,
        run_study_name,
    )

    started = time.perf_counter()
    source, spec = _shared_storage(tuner, storage)
    dev = resolve_device(device)
    fingerprint = tuner_fingerprint(tuner)  # before moving: digests are device-independent
    if dev is not None:
        tuner.model.to(dev)
    interval = max(1, int(heartbeat_interval))
    grace = int(grace_period) if grace_period else 4 * interval
    with quiet_optuna():
        storage_obj = open_storage(spec, heartbeat_interval=interval, grace_period=grace)
    seconds = getattr(storage_obj, "seconds", None)
    storage_before = seconds() if seconds is not None else 0.0
    run_name = run_study_name(source.study_name)
    lease = Lease(storage_obj, run_name, role="worker", interval=interval, grace=grace,
                  fingerprint=fingerprint).acquire()
    run = None
    try:
        others = live_leases(storage_obj, run_name)
        check_no_conflict(lease, repr(spec.display), others)
        run_study = _run_study(storage_obj, run_name)
        _check_run_fingerprint(run_study, fingerprint, spec.display, run_name)
        ordinal = sum(1 for other in others
                      if other.role == "worker" and other.number < lease.number)
        report = WorkerReport(worker=lease.id, ordinal=ordinal)
        search = _clone_search(source, spec, storage_obj, ordinal)
        # Workers tag a trial when they claim it, not when they ask (one write less each).
        search.use_lease(lease, tag_trials=False)
        search.fingerprint = fingerprint
        # The first worker draws the sketch seeds a single process would; others their own.
        rng = tuner._rng if not ordinal else random.Random(f"{tuner.settings.seed}:{ordinal}")
        # A worker neither verifies nor shows progress: finalize() does the combination.
        settings = dataclasses.replace(tuner.settings, verify=False, progress=False)
        run = Run(tuner.model, settings, tuner.groups, rng)
        run.results.info["worker"] = lease.id
        resolve_baseline(run, run_study, lease, ordinal, report)
        with quiet_optuna():
            _Worker(run, search, lease, report, poll_s=poll_interval,
                    reap_s=2.0 * interval, run_study=run_study, started=started,
                    storage_s=None if seconds is None
                    else (lambda: seconds() - storage_before)).loop()
    finally:
        if run is not None:
            run.restore_modes()
            run.sync_trials()
        lease.release()
    report.wall_time_s = time.perf_counter() - started
    seconds = getattr(storage_obj, "seconds", None)
    report.storage_s = None if seconds is None else seconds() - storage_before
    return report


def finalize(tuner: Any, storage: str | None = None, *, wait: bool = False,
             timeout: float | None = None, poll_interval: float = 1.0) -> dict[str, dict[str, Any]]:
    """Gather a shared run's trials and verify the combination, exactly as ``tune()`` does.

    No new configuration is evaluated: each group's trials are read from the storage;
    then the top candidates are re-measured, the winners combined and verified (with the
    back-off under an accuracy constraint), and :attr:`SKAutoTuner.results` holds the same
    results as a single-process run (``apply_best_params``, ``save_tuning_results``...).

    Args:
        tuner: built like the workers' tuners.
        storage: the shared storage URL (default: the backend's ``storage``).
        wait: wait for live workers to finish instead of refusing.
        timeout: with ``wait``, give up after this many seconds.
        poll_interval: seconds between looks while waiting.

    Returns:
        What ``tune()`` returns: per layer, the search winner's params and score.

    Raises:
        ConcurrentRunError: workers (or a ``tune()``) are still running and ``wait`` is False.
        FingerprintMismatch: the run was made with another model or config.
    """
    from panther.tuner.fingerprint import tuner_fingerprint
    from panther.tuner.storage import (
        ConcurrentRunError,
        Lease,
        live_leases,
        open_storage,
        run_study_name,
    )
    from panther.tuner.tuner import TuningWarning

    source, spec = _shared_storage(tuner, storage)
    storage_obj = open_storage(spec)
    run_name = run_study_name(source.study_name)
    fingerprint = tuner_fingerprint(tuner)
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while True:
        others = [lease for lease in live_leases(storage_obj, run_name)
                  if not (lease.pid == os.getpid() and lease.role == "finalize")]
        if not others:
            break
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            listed = "; ".join(lease.describe() for lease in others[:5])
            raise ConcurrentRunError(
                f"{len(others)} process(es) still work on the run {run_name!r} in storage "
                f"{spec.display!r}: {listed}. Finalize when they are done, or wait for them "
                "(finalize(wait=True) / panther-tune finalize --wait)")
        time.sleep(poll_interval)
    lease = Lease(storage_obj, run_name, role="finalize").acquire()
    saved = (tuner.search_algorithm, tuner.max_trials, tuner.progress)
    try:
        run_study = _run_study_or_none(storage_obj, run_name)
        if run_study is not None:
            _check_run_fingerprint(run_study, fingerprint, spec.display, run_name)
        search = _clone_search(source, spec, storage_obj, 0)
        search.use_lease(lease)
        search.fingerprint = fingerprint
        tuner.search_algorithm = search
        # Budget 0: every group reads its stored trials and evaluates nothing new.
        tuner.max_trials = 0
        tuner.progress = False  # nothing is evaluated: a bar would only show 0
        budget = min(n for n in (saved[1], source.n_trials) if n is not None)
        best = tuner.tune()
    finally:
        tuner.search_algorithm, tuner.max_trials, tuner.progress = saved
        lease.release()
    info = tuner._results.info
    info["finalized"] = True
    short = {key: g["n_evaluated"] for key, g in tuner._results.groups.items()
             if g["n_evaluated"] < budget}
    if short:
        info["incomplete_groups"] = short
        warnings.warn(
            f"finalized with fewer evaluations than the budget ({budget}) in "
            f"{len(short)} group(s): {short}; start more workers on the same storage and "
            "finalize again to use the whole budget", TuningWarning, stacklevel=2)
    return best


def _run_study_or_none(storage_obj: Any, run_name: str) -> Any:
    try:
        return _run_study(storage_obj, run_name)
    except KeyError:
        return None


def run_status(storage: str, study_name: str | None = None) -> dict[str, Any]:
    """Progress of a shared run: per group study, and the live workers.

    Returns:
        ``{"run": name, "storage": url (password hidden), "studies": [{"study", "group",
        "evaluated", "free", "running", "waiting", "failed", "best_score", "best_params"}...],
        "workers": [{"id", "role", "pid", "host", "started", "last_beat_s", "current"}...]}``.
        ``failed`` counts evaluations whose functions raised and trials of dead workers;
        ``free`` counts cached and skipped proposals.
    """
    import optuna

    from panther.tuner.search.optuna import EXTRA_ATTR, SCORE_ATTR, _was_evaluated
    from panther.tuner.storage import (
        RUN_STUDY_SUFFIX,
        check_storage,
        live_leases,
        open_storage,
        run_study_name,
    )

    spec = check_storage(storage)
    storage_obj = open_storage(spec)
    run_name = run_study_name(study_name)
    prefix = f"{study_name or 'panther'}/"
    state = optuna.trial.TrialState
    studies = []
    for summary in storage_obj.get_all_studies():
        name = summary.study_name
        if not name.startswith(prefix) or name.endswith(RUN_STUDY_SUFFIX):
            continue
        trials = storage_obj.get_all_trials(summary._study_id, deepcopy=False)
        entry: dict[str, Any] = {"study": name, "group": name[len(prefix):], "evaluated": 0,
                                 "free": 0, "running": 0, "waiting": 0, "failed": 0,
                                 "best_score": None, "best_params": None}
        for t in trials:
            if t.state == state.RUNNING:
                entry["running"] += 1
            elif t.state == state.WAITING:
                entry["waiting"] += 1
            elif t.state == state.FAIL:
                # Claims given up (budget taken, duplicates) are no failures.
                if _was_evaluated(t.user_attrs):
                    entry["failed"] += 1
            elif t.state == state.COMPLETE:
                if not _was_evaluated(t.user_attrs):
                    entry["free"] += 1
                    continue
                entry["evaluated"] += 1
                row = (t.user_attrs.get(EXTRA_ATTR) or {}).get("panther_row") or {}
                if row.get("status") == "failed":
                    entry["failed"] += 1
                if row.get("status", "ok") != "ok":
                    continue
                score = t.user_attrs.get(SCORE_ATTR, t.value)
                if score is not None and (entry["best_score"] is None or score > entry["best_score"]):
                    entry["best_score"], entry["best_params"] = float(score), dict(t.params)
        studies.append(entry)
    now = time.time()
    workers = [{"id": lease.id, "role": lease.role, "pid": lease.pid, "host": lease.host,
                "started": lease.started, "last_beat_s": round(max(0.0, now - lease.beat), 1),
                "current": lease.current}
               for lease in live_leases(storage_obj, run_name)]
    return {"run": study_name or "panther", "storage": spec.display, "studies": studies,
            "workers": workers}
