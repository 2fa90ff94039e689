"""The Optuna backend's own extension point: named Optuna samplers.

This is not part of the core contract (:mod:`panther.tuner.hookspecs`): the
built-in Optuna backend plugin declares this module in ``PANTHER_HOOKSPECS``, so
the host adds the ``panther_optuna_samplers`` spec when that backend is
registered. A plugin contributes samplers exactly like any other hook::

    from panther.tuner import hookimpl

    @hookimpl
    def panther_optuna_samplers():
        return {"my-random": lambda seed=None, **kw: optuna.samplers.RandomSampler(seed=seed)}

and ``OptunaSearch(sampler="my-random")`` or ``[search] sampler = "my-random"``
picks it. Names are compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from panther.tuner.hookspecs import Registry, hookspec, registry_hook

if TYPE_CHECKING:
    import optuna

__all__ = ["make_sampler", "sampler_factory", "samplers"]

HOOK = "panther_optuna_samplers"


def _factory_problem(obj: Any) -> str | None:
    return None if callable(obj) else f"must be a callable sampler factory, got {obj!r}"


@hookspec
@registry_hook(Registry("Optuna sampler", check=_factory_problem))
def panther_optuna_samplers() -> dict[str, Callable[..., optuna.samplers.BaseSampler]]:
    """Contribute Optuna samplers by name.

    Return ``{name: factory}`` where ``factory(seed=None, **kwargs)`` builds a
    sampler. ``OptunaSearch`` passes, besides ``seed``, only the keywords the
    factory declares by name: ``constraints_func`` (Optuna < 5) and
    ``search_space`` (``{name: [values]}``, for samplers that enumerate).
    """


def samplers() -> Any:
    """``{name: factory}`` of every registered sampler (a :class:`panther.tuner.plugins.Contributions`)."""
    from panther.tuner import plugins

    return plugins.registry(HOOK)


def sampler_factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; unknown or ambiguous names raise ``ValueError``."""
    return samplers().lookup(name)


def make_sampler(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """Build the Optuna sampler registered as ``name`` (e.g. ``"tpe"``, ``"nsga2"``)."""
    return sampler_factory(name)(seed=seed, **kwargs)
