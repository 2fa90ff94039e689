"""A tiny tuning run for the distributed tests and benchmark, built the same way in every process.

Scores depend only on the sketched layers' parameters (not on sketch seeds, timing or
the order trials ran in), so any set of workers that evaluates the same configurations
reaches the same results as one process. The accuracy function sleeps ``sleep`` seconds
to stand for a real evaluation.

Run as a worker process::

    python tests/distributed_app.py worker STORAGE [--n-trials N] [--sleep S] [--die-at K]
                                           [--sampler NAME] [--study NAME] [--tolerance T]
                                           [--baseline-log FILE] [--baseline-sleep S]

prints the worker's report as one JSON line; ``--die-at K`` SIGKILLs the process during
its K-th evaluation (a crash with a trial RUNNING).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from panther.nn import SKLinear  # noqa: E402
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs  # noqa: E402

SPACE = {"num_terms": [1, 2], "low_rank": [2, 4, 6, 8]}
THRESHOLD = 0.97


def make_model() -> nn.Module:
    """Three 64-wide linear layers, fixed weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64))


def _sketches(model: nn.Module) -> list[SKLinear]:
    return [m for m in model.modules() if isinstance(m, SKLinear)]


def make_accuracy(sleep: float, die_at: int | None = None, baseline_log: str | None = None,
                  baseline_sleep: float = 0.0) -> Any:
    """Accuracy = 1 - sum of 0.05 / (num_terms * low_rank) over sketched layers.

    ``baseline_log``: a file that gets one line per evaluation of the original model;
    ``baseline_sleep``: extra seconds such an evaluation takes.
    """
    calls = [0]

    def accuracy(model: nn.Module) -> float:
        sketches = _sketches(model)
        if sketches:
            calls[0] += 1
            if die_at is not None and calls[0] == die_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no cleanup at all
        else:
            if baseline_log is not None:
                with open(baseline_log, "a") as fh:
                    fh.write(f"{os.getpid()}\n")
            time.sleep(baseline_sleep)
        time.sleep(sleep)
        return 1.0 - sum(0.05 / (s.num_terms * s.low_rank) for s in sketches)

    return accuracy


def speed(model: nn.Module) -> float:
    """Work units saved: a dense layer costs 64, a sketch 2 * num_terms * low_rank."""
    cost = sum(64 for m in model.modules() if type(m) is nn.Linear)
    cost += sum(2 * s.num_terms * s.low_rank for s in _sketches(model))
    return 1000.0 / cost


def build(storage: str | None, *, study: str = "dist", n_trials: int = 6, sleep: float = 0.0,
          seed: int = 0, die_at: int | None = None, sampler: str = "tpe",
          tolerance: float | None = None, baseline_log: str | None = None,
          baseline_sleep: float = 0.0, **kwargs: Any) -> SKAutoTuner:
    """The tuner every process of a run builds (two separately tuned layers).

    ``tolerance``: a threshold relative to the original model's accuracy instead of the
    absolute ``THRESHOLD`` (so the original model must be evaluated).
    """
    search = OptunaSearch(n_trials=n_trials, sampler=sampler, seed=seed, study_name=study,
                          storage=storage, load_if_exists=storage is not None)
    configs = TuningConfigs([LayerConfig(["0", "2"], dict(SPACE), separate=True)])
    limit = ({"accuracy_threshold": THRESHOLD} if tolerance is None
             else {"accuracy_tolerance": tolerance})
    return SKAutoTuner(make_model(), configs,
                       make_accuracy(sleep, die_at, baseline_log, baseline_sleep),
                       search_algorithm=search, optmization_eval_func=speed, seed=seed,
                       **limit, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker"])
    parser.add_argument("storage")
    parser.add_argument("--n-trials", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--die-at", type=int, default=None)
    parser.add_argument("--study", default="dist")
    parser.add_argument("--heartbeat", type=int, default=1)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--tolerance", type=float, default=None)
    parser.add_argument("--baseline-log", default=None)
    parser.add_argument("--baseline-sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tuner = build(args.storage, study=args.study, n_trials=args.n_trials, sleep=args.sleep,
                  die_at=args.die_at, sampler=args.sampler, tolerance=args.tolerance,
                  baseline_log=args.baseline_log, baseline_sleep=args.baseline_sleep)
    report = tuner.run_worker(heartbeat_interval=args.heartbeat, poll_interval=0.02)
    print(json.dumps(dataclasses.asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
