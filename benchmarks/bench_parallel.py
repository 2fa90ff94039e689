"""Workers sharing one tuning run: parallel efficiency and storage overhead (issue 13).

One layer group (``Linear(128, 128)``, sketches with fresh weights, ``low_rank`` 1..128 x ``num_terms`` 1..4:
512 configurations, random sampler) is tuned with a budget of ``--budget`` evaluations by 1, 2, 4 and 8 worker
processes (``SKAutoTuner.run_worker``), once on Optuna's journal storage (a file) and once
on PostgreSQL. Each evaluation sleeps ``--sleep`` seconds (0.2) and scores from the
parameters alone, so the core count does not matter and every run evaluates the budget.

Workers are started first and released together once they have imported everything,
built their tuner and opened the storage once; the wall time runs from that release to the
last worker's end, so process start-up is not counted (it is the same with or without
panther). That first open also runs Optuna's schema check, which Optuna makes in every
process that opens an RDB storage (on PostgreSQL about 20 ms of CPU, mostly loading
Alembic's migration scripts); ``open_storage`` skips it in the worker's own open.

Budgets: by default 32 and 96. With 32 evaluations, 8 workers run only 4 each, so the
start and the end of the run (the last evaluations, which no other worker can share) weigh
heavily; 96 measures the steady state. Both are reported.

Reported per budget, storage and worker count:

* ``wall_s`` and ``efficiency = T(1) / (N x T(N))``;
* ``storage_ms``: **the storage overhead per trial**: the time the workers spent inside
  calls to the storage (reads and writes, Optuna's own included; timed around each call
  by ``ProcessStorage``), summed over the workers, per evaluation;
* ``startup_storage_ms``: the part of ``storage_ms`` spent before each worker's first
  proposal (opening the storage, its lease, the checks, joining the studies): paid once
  per worker, so it weighs less the longer the run;
* ``startup_ms``: the longest time from the release to a worker's first proposal (the
  start-up of every worker at once shares the machine's cores with the database server);
* ``overhead_ms``: per evaluation, all of the workers' time not spent in the evaluation
  itself, ``(sum of worker wall times - evaluations x sleep) / evaluations``: the storage,
  the sampler, the tuner's bookkeeping, the start of each worker, waiting for other
  workers (``waiting_ms`` of it: mostly at the end of the budget, whose last evaluations
  no other worker can share), and, on a machine with fewer cores than processes, waiting
  for a core;
* ``extra_ms``: ``overhead_ms`` minus the same figure for one process with an in-memory
  study (``tune()`` on the same space);
* ``worker_cpu_ms``: CPU time of the worker processes per evaluation (the database
  server's is not counted);
* ``optuna_ask_tell_ms``: one bare Optuna ``ask`` + ``tell`` on the same storage, with
  Optuna's own storage object, measured alone.
* ``free``, ``surplus``, ``redrawn``: proposals answered without an evaluation (cached),
  given up past the budget, and given up because another worker was evaluating the same
  configuration at that moment (see ``WorkerReport``).

Targets (issue 13): efficiency >= 90% at 4 workers and >= 80% at 8 on both storages,
storage overhead (``storage_ms``) < 20 ms per trial at 8 workers.

Usage: ``python benchmarks/bench_parallel.py [--budget 32 96] [--sleep 0.2] [--workers 1 2 4 8]
[--repeat N] [--storages journal postgresql] [--postgres URL]``. ``--repeat``: runs per
configuration, the one with the median wall time reported (every wall time is in the
JSON). Default URL: ``$PANTHER_TEST_POSTGRES_URL``; start a local server with ``make
postgres``. Results go to ``benchmarks/results/bench_parallel.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import print_table, setup, write_json  # noqa: E402


def build_tuner(storage: str | None, study: str, budget: int, sleep: float) -> Any:
    """The run every process builds: one big layer, a space far larger than the budget."""
    import torch
    from torch import nn

    from panther.nn import SKLinear
    from panther.tuner import Int, LayerConfig, OptunaSearch, SKAutoTuner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128))

    def accuracy(m: nn.Module) -> float:
        time.sleep(sleep)
        sketch = m[0]
        assert isinstance(sketch, SKLinear)
        return 1.0 - 0.01 / (sketch.low_rank * sketch.num_terms)

    search = OptunaSearch(n_trials=budget, sampler="random", seed=0, study_name=study,
                          storage=storage, load_if_exists=storage is not None)
    # 512 configurations: room for the largest budget with few repeated proposals. Most are
    # larger than the dense layer, which does not matter here (the evaluation only sleeps) and
    # keeps building a sketch cheap; the warning saying so would repeat on every trial.
    space = {"low_rank": Int(1, 128), "num_terms": Int(1, 4)}
    warnings.filterwarnings("ignore", message=r"SKLinear\(.*than the .* of the dense layer")
    # copy_weights=False: a sketch is built from fresh random weights, so a trial costs the
    # evaluation's sleep plus bookkeeping, not a factorisation of the original weights;
    # skip_costlier=False: every proposal is an evaluation (no cost-model skips).
    return SKAutoTuner(model, LayerConfig(["0"], space, copy_weights=False), accuracy,
                       search_algorithm=search, verify=False, skip_costlier=False)


def child(storage: str, study: str, budget: int, sleep: float, go: str) -> None:
    """One worker process: build, say ready, wait for the release, work, report."""
    import torch

    torch.set_num_threads(1)
    tuner = build_tuner(storage, study, budget, sleep)
    # Imports the worker makes lazily (Optuna, SQLAlchemy, the database driver, NumPy's
    # random module for the sampler, the fingerprint) belong to process start-up, not to
    # the run: make them now. The open below also makes Optuna's per-process schema check
    # (see the module docstring).
    import numpy.random  # noqa: F401

    import panther.tuner.fingerprint  # noqa: F401
    import panther.tuner.worker  # noqa: F401
    from panther.tuner.storage import open_storage

    open_storage(storage)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    start = time.time()
    cpu = time.process_time()
    report = tuner.run_worker(heartbeat_interval=5, poll_interval=0.02)
    end = time.time()
    cpu = time.process_time() - cpu
    print(json.dumps({"start": start, "end": end, "evaluated": report.evaluated,
                      "free": report.free, "surplus": report.surplus, "redrawn": report.redrawn,
                      "storage_s": report.storage_s, "waiting_s": report.waiting_s,
                      "startup_s": report.startup_s or 0.0,
                      "startup_storage_s": report.startup_storage_s or 0.0,
                      "cpu_s": cpu}), flush=True)


def run_workers(storage: str, n: int, budget: int, sleep: float) -> dict[str, Any]:
    """Start ``n`` workers on a fresh study, release them together, time the run."""
    study = f"bench-{uuid.uuid4().hex[:8]}"
    go = Path(tempfile.mkdtemp()) / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PANTHER_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", storage, study, str(budget),
                               str(sleep), str(go)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(n)]
    for proc in procs:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a worker failed to start: {line!r}")
    released = time.time()
    go.write_text("go")
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    evaluated = sum(r["evaluated"] for r in reports)
    if evaluated != budget:
        raise RuntimeError(f"{n} workers evaluated {evaluated} configurations, not the budget {budget}")
    wall = max(r["end"] for r in reports) - released
    busy = sum(r["end"] - r["start"] for r in reports)
    return {"workers": n, "wall_s": wall, "evaluated": evaluated,
            "worker_cpu_ms": 1e3 * sum(r["cpu_s"] for r in reports) / evaluated,
            "free": sum(r["free"] for r in reports), "surplus": sum(r["surplus"] for r in reports),
            "redrawn": sum(r["redrawn"] for r in reports),
            "overhead_ms": 1e3 * (busy - evaluated * sleep) / evaluated,
            "storage_ms": 1e3 * sum(r["storage_s"] for r in reports) / evaluated,
            "startup_storage_ms": 1e3 * sum(r["startup_storage_s"] for r in reports) / evaluated,
            "startup_ms": 1e3 * max(r["startup_s"] for r in reports),
            "waiting_ms": 1e3 * sum(r["waiting_s"] for r in reports) / evaluated}


def in_memory_overhead(budget: int, sleep: float) -> float:
    """Per-evaluation time of a single-process ``tune()`` besides the evaluation (ms)."""
    tuner = build_tuner(None, "bench-memory", budget, sleep)
    start = time.perf_counter()
    tuner.tune()
    wall = time.perf_counter() - start
    evaluated = sum(r["status"] not in ("cached", "skipped") for r in tuner.results.trials)
    return 1e3 * (wall - evaluated * sleep) / evaluated


def plain_optuna_ms(storage: Any, n: int = 40) -> float:
    """Milliseconds of one bare Optuna ask + tell on ``storage`` (the floor under any worker)."""
    import optuna

    from panther.tuner.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's own storage object, as optuna.create_study(storage=url) would build it (not
    # the view panther's processes use, which saves reads, nor its direct writer): for a
    # journal file, with panther's lock (Optuna's default lock file polls).
    inner = (open_storage(storage).inner if storage.startswith("journal")
             else optuna.storages.RDBStorage(storage))
    study = optuna.create_study(storage=inner, study_name=f"plain-{uuid.uuid4().hex[:8]}",
                                sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    space = {"low_rank": optuna.distributions.IntDistribution(1, 64),
             "num_terms": optuna.distributions.IntDistribution(1, 3)}
    start = time.perf_counter()
    for _ in range(n):
        study.tell(study.ask(space), 1.0)
    return 1e3 * (time.perf_counter() - start) / n


def fsync_ms(folder: Path, n: int = 20) -> float:
    """Milliseconds of one small append + fsync in ``folder`` (what every journal write costs)."""
    path = folder / "fsync-probe"
    start = time.perf_counter()
    with open(path, "ab") as fh:
        for _ in range(n):
            fh.write(b"x" * 200 + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    path.unlink()
    return 1e3 * (time.perf_counter() - start) / n


def main() -> None:
    """Run the benchmark (or, with ``--child``, one worker of it)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        storage, study, budget, sleep, go = sys.argv[2:7]
        child(storage, study, int(budget), float(sleep), go)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, nargs="+", default=[32, 96],
                        help="evaluation budgets to measure (default: 32 and 96)")
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--postgres", default=os.environ.get("PANTHER_TEST_POSTGRES_URL"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per configuration; the median wall time is reported")
    parser.add_argument("--storages", nargs="+", choices=("journal", "postgresql"),
                        default=["journal", "postgresql"], help="storages to measure (default: both)")
    args = parser.parse_args()
    env = setup(threads=1)
    base_ms = {budget: in_memory_overhead(budget, args.sleep) for budget in args.budget}
    folder = Path(tempfile.mkdtemp())
    storages = {"journal": lambda: f"journal://{folder}/{uuid.uuid4().hex[:8]}.log"}
    if args.postgres:
        storages["postgresql"] = lambda: args.postgres
    elif "postgresql" in args.storages:
        print("no PostgreSQL URL (--postgres or $PANTHER_TEST_POSTGRES_URL; `make postgres` "
              "starts a local server): measuring the journal storage only")
    storages = {name: url for name, url in storages.items() if name in args.storages}
    disk_ms = fsync_ms(folder)
    print(f"one append + fsync in {folder}: {disk_ms:.2f} ms (Optuna's journal file syncs every write)")
    rows = []
    floors = {name: plain_optuna_ms(url()) for name, url in storages.items()}
    for budget in args.budget:
        for name, url in storages.items():
            one = None
            for n in args.workers:
                # Each configuration --repeat times on a fresh study; the run with the median
                # wall time is reported (a shared machine's load varies from run to run).
                runs = sorted((run_workers(url(), n, budget, args.sleep)
                               for _ in range(args.repeat)), key=lambda r: r["wall_s"])
                row = {"budget": budget, "storage": name, **runs[len(runs) // 2],
                       "walls_s": [round(r["wall_s"], 3) for r in runs]}
                one = row["wall_s"] if n == 1 else one
                row["efficiency"] = None if one is None else one / (n * row["wall_s"])
                row["extra_ms"] = row["overhead_ms"] - base_ms[budget]
                row["optuna_ask_tell_ms"] = floors[name]
                rows.append(row)
                print(f"budget {budget}, {name}: {n} worker(s) {row['wall_s']:.2f} s", flush=True)
    print_table(rows, ["budget", "storage", "workers", "wall_s", "efficiency", "overhead_ms",
                       "storage_ms", "startup_storage_ms", "startup_ms", "waiting_ms", "extra_ms", "worker_cpu_ms",
                       "optuna_ask_tell_ms", "evaluated", "free", "surplus", "redrawn"],
                title=f"evaluations of {args.sleep} s; single-process in-memory overhead per "
                      "evaluation: " + ", ".join(f"{v:.1f} ms (budget {k})" for k, v in base_ms.items()))
    targets = {}
    for budget in args.budget:
        for name in storages:
            by_n = {r["workers"]: r for r in rows if r["storage"] == name and r["budget"] == budget}
            if 4 in by_n and by_n[4]["efficiency"] is not None:
                targets[f"budget {budget}, {name}: efficiency at 4 >= 0.90"] = by_n[4]["efficiency"] >= 0.90
            if 8 in by_n and by_n[8]["efficiency"] is not None:
                targets[f"budget {budget}, {name}: efficiency at 8 >= 0.80"] = by_n[8]["efficiency"] >= 0.80
                targets[f"budget {budget}, {name}: storage overhead at 8 < 20 ms"] = by_n[8]["storage_ms"] < 20
    for what, met in targets.items():
        print(f"{'met    ' if met else 'MISSED '} {what}")
    path = write_json("bench_parallel", {"budgets": args.budget, "sleep_s": args.sleep,
                                         "in_memory_overhead_ms": base_ms,
                                         "optuna_ask_tell_ms": floors, "fsync_ms": disk_ms,
                                         "rows": rows,
                                         "targets": targets, "setup": env})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
