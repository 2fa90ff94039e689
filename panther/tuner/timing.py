"""The one timing loop, device sync and train/eval mode helper of panther.

Trials (the speed pre-check), the built-in speed evaluators, the demo and the
benchmarks all time through here, so they agree on what "one call" costs:

* :func:`synchronize` waits for queued kernels on CUDA and MPS (a no-op on CPU),
  because the clock would otherwise measure only the launches;
* :func:`time_calls` is the loop: untimed warm-up calls, then blocks of calls,
  synchronised before every clock read; it returns seconds per call of each block;
* :func:`time_interleaved` times several functions in alternating blocks, so a
  burst of load from other processes slows all of them alike;
* :func:`eval_mode` / :func:`save_modes` / :func:`restore_modes` put a model in
  eval mode and give every submodule back its *own* flag (``model.train(old)``
  would flatten mixed modes, e.g. a frozen BatchNorm inside a training model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "device_of",
    "synchronize",
    "time_calls",
    "time_interleaved",
    "save_modes",
    "restore_modes",
    "eval_mode",
]

Clock = Callable[[], float]


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU for a stateless module)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device | str | None) -> None:
    """Wait until every kernel queued on ``device`` has finished (CUDA, MPS; no-op on CPU)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    elif device.type == "mps" and torch.backends.mps.is_available():
        torch.mps.synchronize()


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int = 0,
    iters: int = 1,
    repeats: int = 1,
    device: torch.device | str | None = None,
    clock: Clock | None = None,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds per call of ``fn()`` in each of ``repeats`` blocks of ``iters`` calls.

    ``warmup`` untimed calls come first (caches, allocators and lazy kernels settle);
    ``device`` is synchronised after the warm-up and at the end of every block, so an
    asynchronous device is timed to completion. Reduce the list as the caller needs
    (median resists outliers, the minimum resists background load). ``sync``, when
    given, is called instead of ``synchronize(device)``; ``clock`` defaults to
    ``time.perf_counter``.
    """
    wait = sync if sync is not None else (lambda: synchronize(device))
    clock = clock or time.perf_counter  # looked up per call, so a patched clock is honoured
    for _ in range(warmup):
        fn()
    wait()
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(iters):
            fn()
        wait()
        times.append((clock() - start) / iters)
    return times


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 0,
    iters: int | dict[str, int] = 1,
    rounds: int = 1,
    device: torch.device | str | None = None,
    clock: Clock | None = None,
    alternate: bool = False,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each named function, timed in rounds of one block each.

    Every round times one block of ``iters`` calls (a number, or one per name) of each
    function in turn; with ``alternate`` every other round runs them in reverse order,
    so none always runs on caches another one warmed. Returns the per-round times.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    (sync or (lambda: synchronize(device)))()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if not alternate or r % 2 == 0 else names[::-1]
        for name in order:
            n = iters[name] if isinstance(iters, dict) else iters
            times[name].extend(time_calls(fns[name], iters=n, device=device, clock=clock,
                                              sync=sync))
    return times


def save_modes(model: nn.Module) -> dict[str, bool]:
    """Each submodule's ``training`` flag, by qualified name (``""`` is ``model`` itself)."""
    return {name: m.training for name, m in model.named_modules()}


def restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    """Give each submodule named in ``modes`` back its flag (others are left alone)."""
    if not modes:
        return
    for name, module in model.named_modules():
        flag = modes.get(name)
        if flag is not None and module.training != flag:
            module.training = flag


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; every submodule's own flag comes back after.

    Restores on errors and Ctrl-C too.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
