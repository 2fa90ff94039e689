"""panther's compiled extension: C++ (and CUDA) kernels for the sketch hot paths.

Import this package freely: nothing is compiled or loaded at import time. The extension is built
(or found in the cache) on the first call of an op in :mod:`panther.native.ops`, by
:func:`load`/:func:`is_available`, or ahead of time with ``python -m panther.native build``.

Which path the ops take is controlled by the ``PANTHER_NATIVE`` environment variable (read on
every call) or the :func:`use_backend` context manager:

* unset / ``auto``: native kernels when loaded and the inputs are supported, else the reference;
  if the extension cannot be built, one ``RuntimeWarning`` says why;
* ``0`` / ``reference``: always the pure-PyTorch reference (nothing is built);
* ``1`` / ``native``: always the native kernels; an error if they are unavailable for the inputs.

``PANTHER_EXTENSION_DIR`` moves the build cache (default ``~/.cache/panther/extensions``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from panther.native._build import NativeStatus, cache_dir
from panther.native._build import load as _load
from panther.native._build import status as _status

__all__ = [
    "NativeStatus",
    "status",
    "load",
    "is_available",
    "backend",
    "use_backend",
    "cache_dir",
]

_MODES = {
    "": "auto",
    "auto": "auto",
    "0": "reference",
    "reference": "reference",
    "ref": "reference",
    "off": "reference",
    "false": "reference",
    "1": "native",
    "native": "native",
    "on": "native",
    "true": "native",
}
_override = threading.local()
# [last raw PANTHER_NATIVE value seen, its parsed mode]. On POSIX the raw value is read from
# os.environ's own byte mapping (what os.environ.get reads after encoding the key): 1-2 us less
# on every forward of every layer. os.environ stays the single source of truth.
_env_cache: list = [None, "auto"]
_ENV_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
_ENV_KEY = os.environ.encodekey("PANTHER_NATIVE") if _ENV_DATA is not None else None


def _parse_mode(value: str, source: str) -> str:
    mode = _MODES.get(value.strip().lower())
    if mode is None:
        raise ValueError(
            f"{source}={value!r} is not understood; use 'auto', '1'/'native' or '0'/'reference'")
    return mode


def backend() -> str:
    """The active path: ``"auto"``, ``"native"`` or ``"reference"``.

    A :func:`use_backend` block wins over the ``PANTHER_NATIVE`` environment variable.
    """
    forced = getattr(_override, "mode", None)
    if forced is not None:
        return forced
    # Read on every call (so a changed variable takes effect at once), parsed only when changed:
    # this runs on every forward of every sketched layer.
    raw = _ENV_DATA.get(_ENV_KEY, b"") if _ENV_DATA is not None else \
        os.environ.get("PANTHER_NATIVE", "")
    if raw != _env_cache[0]:
        text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
        _env_cache[:] = [raw, _parse_mode(text, "PANTHER_NATIVE")]
    return _env_cache[1]


@contextlib.contextmanager
def use_backend(mode: str) -> Iterator[None]:
    """Run a block with the ops forced to ``"native"``, ``"reference"`` or ``"auto"`` (this thread)."""
    parsed = _parse_mode(mode, "use_backend mode")
    previous = getattr(_override, "mode", None)
    _override.mode = parsed
    try:
        yield
    finally:
        _override.mode = previous


def load(*, verbose: bool = False) -> NativeStatus:
    """Build (or find in the cache) and load the extension; return :class:`NativeStatus`.

    Never raises on a build failure: the failure is reported in ``reason``.
    """
    return _load(verbose=verbose)


def status() -> NativeStatus:
    """``(cpu_loaded, cuda_loaded, reason)`` as of now; does not build or load anything."""
    return _status()


def is_available(device: str = "cpu") -> bool:
    """Whether the native ops can run on ``device`` (``"cpu"`` or ``"cuda"``); loads if needed."""
    kind = str(device).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    st = _load()
    return st.cpu_loaded if kind == "cpu" else st.cuda_loaded
