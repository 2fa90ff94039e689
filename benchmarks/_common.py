"""Small shared helpers for panther's benchmark scripts.

Import it from a script in ``benchmarks/`` as::

    from _common import print_table, setup, time_fn, write_json

(or ``from benchmarks._common import ...`` when run with ``python -m``). Importing it
also puts the repository root on ``sys.path`` so ``import panther`` works without an
install.

API:
    ``setup(threads=2) -> dict``: fix torch's thread count, return environment info.
    ``time_fn(fn, warmup=3, repeats=10, sync=None) -> float``: median seconds of one call.
    ``time_fns(fns, warmup=3, repeats=10, sync=None, stat="median") -> dict``: the same for
    several named functions, measured round-robin so a busy machine slows all of them alike
    (use it whenever the result is a ratio of two timings). ``stat="min"`` reports the
    fastest repeat instead, the least disturbed one on a shared, overloaded machine.
    ``print_table(rows, columns=None, title=None)``: rows are dicts; prints aligned text.
    ``write_json(name, payload) -> Path``: ``benchmarks/results/<name>.json``, with the
    environment info added under ``"environment"``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from panther.tuner.timing import time_calls, time_interleaved  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"

__all__ = [
    "RESULTS_DIR", "setup", "env_info", "time_fn", "time_fns", "print_table", "write_json"
]


def env_info() -> dict[str, Any]:
    """Machine and library facts worth keeping next to timings."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "panther_native_env": os.environ.get("PANTHER_NATIVE"),
    }


def setup(threads: int = 2) -> dict[str, Any]:
    """Set ``torch.set_num_threads(threads)`` (the issues' benchmark convention) and return env info."""
    torch.set_num_threads(threads)
    return env_info()


def time_fn(
    fn: Callable[[], Any],
    warmup: int = 3,
    repeats: int = 10,
    sync: Callable[[], None] | None = None,
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read so
    asynchronous devices are timed correctly.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return statistics.median(time_calls(fn, warmup=warmup, repeats=repeats, sync=sync or (lambda: None)))


def time_fns(
    fns: dict[str, Callable[[], Any]],
    warmup: int = 3,
    repeats: int = 10,
    sync: Callable[[], None] | None = None,
    stat: str = "median",
    min_block_s: float = 0.02,
) -> dict[str, float]:
    """Median (or ``stat="min"``) seconds per call of each named function, timed interleaved.

    Each repeat times a block of back-to-back calls lasting at least ``min_block_s``
    (the count is calibrated per function after warm-up), so sub-millisecond functions are
    measured in steady state rather than cold after the previous function evicted the
    caches, and timer resolution does not matter. Blocks of the functions alternate, so
    background load affects all of them alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    reduce = statistics.median if stat == "median" else min

    calls: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        one = max(time_calls(fn, sync=sync or (lambda: None))[0], 1e-7)
        calls[name] = max(1, min(10_000, math.ceil(min_block_s / one)))
    times = time_interleaved(fns, iters=calls, rounds=repeats, sync=sync or (lambda: None))
    return {name: reduce(ts) for name, ts in times.items()}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None
) -> None:
    """Print ``rows`` (dicts) as an aligned text table; ``columns`` picks and orders keys."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus ``"environment"``) to ``benchmarks/results/<name>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = dict(payload)
    data.setdefault("environment", env_info())
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
