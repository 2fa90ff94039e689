"""Successive-halving search for panther (an example third-party plugin)."""

from panther_halving.search import HalvingSearch

__all__ = ["HalvingSearch"]
__version__ = "0.1.0"
