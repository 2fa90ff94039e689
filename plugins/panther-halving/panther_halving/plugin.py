"""The module panther loads through the ``panther`` entry point: its hook implementations."""

from __future__ import annotations

from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm
from panther_halving.search import HalvingSearch


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Contribute :class:`HalvingSearch` as ``"halving"``."""
    return {"halving": HalvingSearch}
