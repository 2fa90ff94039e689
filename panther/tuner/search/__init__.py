"""Search algorithms: the interface and the built-in backends.

``OptunaSearch`` (TPE and every Optuna sampler, persistent/resumable studies),
``SkoptSearch`` (scikit-optimize), ``GridSearch`` and ``RandomSearch``. Each
backend module is also a plugin registering its class by name through the
``panther_search_algorithms`` hook (``"optuna"``, ``"skopt"``, ``"grid"``,
``"random"``).
"""

from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key
from panther.tuner.search.grid import GridSearch
from panther.tuner.search.optuna import OptunaSearch
from panther.tuner.search.random import RandomSearch
from panther.tuner.search.skopt import SkoptSearch

__all__ = [
    "GridSearch",
    "OptunaSearch",
    "RandomSearch",
    "SearchAlgorithm",
    "SkoptSearch",
    "finite_space_size",
    "params_key",
]
