"""Building, caching and loading of panther's compiled extension.

The C++ sources in ``csrc/`` are compiled just in time with
:func:`torch.utils.cpp_extension.load` (ninja + the machine's C++ compiler) into a cache
directory keyed by a hash of everything that affects the binary: the sources, the compiler flags,
the torch and Python versions and the CPU model (the code is built with ``-march=native``, so a
binary must never be reused on a different CPU). A later process finds the ``.so`` in the cache
and loads it directly, without invoking the compiler.

CUDA sources (``csrc/*.cu``) are compiled into a second library only when
``torch.cuda.is_available()`` and a CUDA toolkit (``CUDA_HOME``) exist.

Nothing here runs at import time; :func:`load` is called on the first use of an op or by
``python -m panther.native build``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["NativeStatus", "load", "status", "cache_dir", "current_build_dirs", "prune_cache",
           "reset_for_tests"]

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_FLAGS = ["-O3", "-march=native", "-fopenmp"]
CUDA_FLAGS = ["-O3"]
# A build lock older than this is left over from a killed build; torch's own lock would wait on it
# forever.
STALE_LOCK_SECONDS = 900.0
_OK_MARKER = "panther-build-ok"


class NativeStatus(NamedTuple):
    """What the compiled extension provides in this process.

    Unpacks as ``(cpu_loaded, cuda_loaded, reason)``; ``reason`` explains what is (not) loaded.
    """

    cpu_loaded: bool
    cuda_loaded: bool
    reason: str


@dataclass
class _State:
    attempted: bool = False
    finished: bool = False  # the first load() has returned: its result can be read lock-free
    cpu_loaded: bool = False
    cuda_loaded: bool = False
    reason: str = "not loaded yet (loads on first use or with `python -m panther.native build`)"
    cpu_library: str | None = None
    cuda_library: str | None = None
    warned: bool = False


_STATE = _State()
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Root folder of the build cache (``$PANTHER_EXTENSION_DIR`` or ``~/.cache/panther``)."""
    env = os.environ.get("PANTHER_EXTENSION_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "panther" / "extensions"


def _cpu_identity() -> str:
    """A string that changes whenever ``-march=native`` could produce different code."""
    ident = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    ident.append(line.strip())
                    if len(ident) >= 6:
                        break
    except OSError:
        pass
    return "\n".join(ident)


def _sources(suffix: str) -> list[Path]:
    return sorted(CSRC.glob(f"*{suffix}"))


def _key(sources: list[Path], flags: list[str], extra: str = "") -> str:
    h = hashlib.sha256()
    # Headers are compiled into every source that includes them.
    headers = sorted({p for src in sources for p in src.parent.glob("*.h")})
    for src in [*sources, *headers]:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(repr(flags).encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    h.update(_cpu_identity().encode())
    h.update(extra.encode())
    return h.hexdigest()[:16]


def _clear_stale_lock(build_dir: Path) -> None:
    lock = build_dir / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    except OSError:
        pass


def current_build_dirs() -> list[Path]:
    """The cache folders the current sources, flags, torch and CPU map to (built or not)."""
    dirs = [cache_dir() / f"cpu-{_key(_sources('.cpp'), CPU_FLAGS)}"]
    if torch.cuda.is_available():
        arch = torch.cuda.get_device_capability()
        key = _key(_sources(".cu"), CUDA_FLAGS, f"{torch.version.cuda}-{arch}")
        dirs.append(cache_dir() / f"cuda-{key}")
    return dirs


def prune_cache() -> list[Path]:
    """Delete cached builds of other source versions; return the folders removed."""
    import shutil

    keep = set(current_build_dirs())
    removed = []
    root = cache_dir()
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and entry.name.startswith(("cpu-", "cuda-")) and entry not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _build_and_load(kind: str, sources: list[Path], flags: list[str], verbose: bool,
                    extra_key: str = "") -> str:
    """Compile (or find in the cache) one library and load it into the process; return its path."""
    key = _key(sources, flags, extra_key)
    name = f"panther_native_{kind}_{key}"
    build_dir = cache_dir() / f"{kind}-{key}"
    library = build_dir / f"{name}.so"
    if library.exists() and (build_dir / _OK_MARKER).exists():
        torch.ops.load_library(str(library))
        return str(library)

    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build_dir)
    if not verbose:
        print(f"panther: compiling the native {kind} extension into {build_dir} "
              "(first use only; takes about a minute)", file=sys.stderr, flush=True)
    kwargs: dict = {
        "name": name,
        "sources": [str(s) for s in sources],
        "build_directory": str(build_dir),
        "verbose": verbose,
        "is_python_module": False,
    }
    if kind == "cuda":
        kwargs.update(extra_cuda_cflags=flags, with_cuda=True)
    else:
        kwargs.update(extra_cflags=flags, with_cuda=False)
    path = cpp_extension.load(**kwargs)
    (build_dir / _OK_MARKER).write_text(f"{name}\n")
    return str(path)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Compiler logs are long; the first error lines say what went wrong.
    errors = [ln for ln in lines if "error" in ln.lower()]
    picked = (errors or lines)[:4]
    return " | ".join(picked)[:600]


def load(*, verbose: bool = False, force: bool = False) -> NativeStatus:
    """Build (or find in the cache) and load the extension; return what is loaded.

    Safe to call repeatedly: after the first attempt it only reports. ``force`` retries after a
    failed attempt (libraries already loaded stay loaded).
    """
    # Every op call lands here: once loading is over, answer without the lock, which also
    # keeps torch.compile(fullgraph=True) from breaking the graph on it.
    if _STATE.finished and not force:
        return status()
    try:
        return _load_locked(verbose=verbose, force=force)
    finally:
        _STATE.finished = True


def _load_locked(*, verbose: bool, force: bool) -> NativeStatus:
    with _LOCK:
        if _STATE.attempted and not (force and not _STATE.cpu_loaded):
            return status()
        _STATE.attempted = True
        cpu_sources = _sources(".cpp")
        if not cpu_sources:
            _STATE.reason = f"no C++ sources found in {CSRC}"
            return status()
        if not _STATE.cpu_loaded:
            try:
                _STATE.cpu_library = _build_and_load("cpu", cpu_sources, CPU_FLAGS, verbose)
                from panther.native import _registrations

                _registrations.register()
                _STATE.cpu_loaded = True
            except Exception as exc:  # noqa: BLE001 - any build failure means "use the reference"
                _STATE.reason = f"the C++ extension failed to build or load: {_error_text(exc)}"
                return status()
        reasons = [f"CPU ops loaded from {_STATE.cpu_library}"]
        cuda_sources = _sources(".cu")
        if not torch.cuda.is_available():
            reasons.append("CUDA ops not built: no CUDA device (torch.cuda.is_available() is False)")
        elif not cuda_sources:
            reasons.append(f"CUDA ops not built: no .cu sources in {CSRC}")
        else:
            from torch.utils.cpp_extension import CUDA_HOME

            if CUDA_HOME is None:
                reasons.append("CUDA ops not built: no CUDA toolkit found (set CUDA_HOME)")
            elif not _STATE.cuda_loaded:
                try:
                    arch = torch.cuda.get_device_capability()
                    _STATE.cuda_library = _build_and_load(
                        "cuda", cuda_sources, CUDA_FLAGS, verbose,
                        extra_key=f"{torch.version.cuda}-{arch}")
                    _STATE.cuda_loaded = True
                    reasons.append(f"CUDA ops loaded from {_STATE.cuda_library}")
                except Exception as exc:  # noqa: BLE001
                    reasons.append(f"CUDA ops failed to build or load: {_error_text(exc)}")
            else:
                reasons.append(f"CUDA ops loaded from {_STATE.cuda_library}")
        _STATE.reason = "; ".join(reasons)
        return status()


def status() -> NativeStatus:
    """Report what is loaded now, without building or loading anything."""
    return NativeStatus(_STATE.cpu_loaded, _STATE.cuda_loaded, _STATE.reason)


def warn_once_unavailable() -> None:
    """Emit the single "falling back to the reference path" warning of this process."""
    if _STATE.warned or _STATE.cpu_loaded:
        return
    _STATE.warned = True
    warnings.warn(
        f"panther: native extension not available ({_STATE.reason}); using the pure-PyTorch "
        "reference path. Run `python -m panther.native build --verbose` to see the build log.",
        RuntimeWarning,
        stacklevel=3,
    )


def reset_for_tests() -> None:
    """Forget a failed attempt so a test can observe the warning again (loaded libraries stay)."""
    with _LOCK:
        if not _STATE.cpu_loaded:
            _STATE.attempted = False
        _STATE.warned = False
