"""What the built-in random, grid and skopt backends share beyond :class:`SearchAlgorithm`.

* :func:`require_initialized` -- the one guard against asking before ``initialize``;
* :func:`decode_index` -- the mixed-radix decoding of a finite space's point index;
* :class:`GroupSeeded` -- per-group seed streams: a seeded backend spawned for a layer
  group draws from a stream of its own, derived from ``(seed, group key)``, so groups
  explore independently yet a run stays reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from panther.tuner.config import ParamSpec
from panther.tuner.search.base import SearchAlgorithm

__all__ = ["GroupSeeded", "decode_index", "group_seed", "require_initialized"]


def require_initialized(initialized: bool) -> None:
    """Raise ``RuntimeError`` naming the fix unless the search was initialized."""
    if not initialized:
        raise RuntimeError("call initialize(param_space) before get_next_params()")


def decode_index(specs: Sequence[tuple[str, ParamSpec]], index: int) -> dict[str, Any]:
    """The point number ``index`` of a finite space; the last parameter varies fastest."""
    values: dict[str, Any] = {}
    for name, spec in reversed(specs):
        index, r = divmod(index, spec.size())  # type: ignore[operator]
        values[name] = spec.value_at(r)
    return {name: values[name] for name, _ in specs}


def group_seed(seed: int | None, key: str | None) -> int | None:
    """The seed of the stream for the layer group ``key`` (``seed`` itself when ``key`` is ``None``).

    ``None`` stays ``None`` (an unseeded search draws fresh entropy anyway). The value is
    a stable hash (not Python's salted ``hash``), below 2**32 so every generator takes it.
    """
    if seed is None or key is None:
        return seed
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class GroupSeeded(SearchAlgorithm):
    """A seeded backend whose spawned group searches each get their own seed stream.

    Subclasses set ``seed`` and implement ``_init_state``, which builds their own state
    with a generator seeded from :attr:`stream_seed`; :meth:`reset` calls it. Standalone
    (not spawned) the stream is ``seed`` itself.
    """

    seed: int | None = None
    #: The layer group this search was spawned for (``None``: not spawned).
    group_key: str | None = None

    @property
    def stream_seed(self) -> int | None:
        """The seed this search draws from: derived from ``(seed, group_key)`` once spawned."""
        return group_seed(self.seed, self.group_key)

    def spawn(self, key: str) -> SearchAlgorithm:
        """A fresh copy for the layer group ``key``, with that group's own seed stream."""
        child = super().spawn(key)
        child.group_key = key  # type: ignore[attr-defined]
        child.reset()  # re-seed from the group's stream
        return child

    def _init_state(self) -> None:
        """Build the backend's own state, seeded from :attr:`stream_seed`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _init_state()")

    def reset(self) -> None:
        """Forget results and the backend's own state, and re-seed from :attr:`stream_seed`."""
        super().reset()
        self._init_state()
