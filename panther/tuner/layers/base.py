"""The interface every sketchable layer type implements.

A layer type tells the tuner which torch modules it can replace, with which
sketched class, which parameters can be tuned, how to build the replacement,
what an "auto" search space looks like for a given layer, and what a
configuration costs. Built-in types and third-party plugins subclass
:class:`LayerType` and are registered through the ``panther_layer_types`` hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from torch import nn

from panther.tuner.config import ParamSpec

__all__ = ["Cost", "LayerType"]


@dataclass(frozen=True)
class Cost:
    """Size and work of one layer: parameter count and multiply-adds per input row/position."""

    params: int
    macs: int


class LayerType(ABC):
    """Base class of sketchable layer types.

    **Naming rule** (the one rule, used everywhere): layer-type names and class
    names are compared exactly, case included, as Python compares class names.
    A selector ``{"type": "X"}`` picks modules whose class is named ``X`` or whose
    layer type is named ``X`` (:func:`panther.tuner.selection.type_matches` says
    which), so ``"Conv1D"`` (transformers) and ``"Conv1d"`` (torch) never meet.

    Attributes:
        name: the layer-type name (registry key, selector ``{"type": name}``,
            saved in results), e.g. ``"Linear"``; compared exactly.
        module_types: the torch module classes this type replaces (exact types).
        sketched_type: the class :meth:`build` returns.
        param_names: the tunable parameter names, in a stable order.
        extra_param_keys: keys a configuration may carry besides the tunables
            (``seed`` by default: the seed of the layer's random sketches).
    """

    name: str
    module_types: tuple[type[nn.Module], ...]
    sketched_type: type[nn.Module]
    param_names: tuple[str, ...]
    extra_param_keys: frozenset[str] = frozenset({"seed"})

    def handles(self, module: nn.Module) -> bool:
        """Whether this type can replace ``module`` (exact type match by default)."""
        return type(module) in self.module_types

    @abstractmethod
    def build(self, original: nn.Module, params: dict[str, Any], copy_weights: bool = True) -> nn.Module:
        """Return a sketched replacement for ``original`` configured with ``params``.

        The result lives on the original's device and dtype and keeps its
        training/eval mode. ``params`` may include ``seed`` (the seed of the
        layer's random sketches); when absent a fresh seed is drawn and recorded
        on the result as ``.seed`` so the layer can be rebuilt exactly.
        """

    @abstractmethod
    def auto_space(self, original: nn.Module) -> dict[str, ParamSpec]:
        """A sensible search space for ``original`` (what ``params="auto"`` means)."""

    @abstractmethod
    def cost(self, original: nn.Module, params: dict[str, Any] | None = None) -> Cost:
        """The cost of ``original`` (``params=None``) or of its sketch with ``params``.

        The tuner calls it with an original layer, to skip configurations that do
        not save work. The ``flops`` evaluator also costs already-sketched layers
        through :meth:`sketched_cost`, which by default calls
        ``cost(sketched, sketched_params(sketched))``: either read only attributes
        the sketched class shares with the original, or override
        :meth:`sketched_cost`.
        """

    def validate_params(self, original: nn.Module, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the problem if ``params`` cannot build a layer.

        The base checks the parameter names and the ``seed``; subclasses add
        their own value checks and call this first.
        """
        unknown = set(params) - set(self.param_names) - set(self.extra_param_keys)
        if unknown:
            raise ValueError(
                f"{self.name} layers have no parameter(s) {sorted(unknown)}; "
                f"tunable parameters are {list(self.param_names)}"
            )
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(
                f"{self.name} 'seed' must be a non-negative int or None (None draws a fresh "
                f"one), got {seed!r}"
            )

    def size_key(self, module: nn.Module) -> tuple[Any, ...]:
        """Layers of one type with equal size keys share an "auto" group.

        The default uses the module's plain int/bool/tuple/str attributes (its
        constructor arguments, for torch layers), leaving out private ones and the
        train/eval flag so that mode never splits a group.
        """
        return tuple(
            sorted(
                (k, v)
                for k, v in vars(module).items()
                if isinstance(v, (int, bool, tuple, str))
                and not k.startswith("_")
                and k != "training"
            )
        )

    def sketch_seed(self, sketched: nn.Module) -> int | None:
        """The seed of ``sketched``'s random sketches, recorded in saved results."""
        return getattr(sketched, "seed", None)

    def sketched_params(self, sketched: nn.Module) -> dict[str, Any]:
        """The configuration a sketched layer was built with, read back from it.

        The default reads each of :attr:`param_names` as an attribute of
        ``sketched`` (so a sketched class should expose its tunables, as
        ``SKLinear.num_terms`` does); override it when they live elsewhere.
        """
        return {p: getattr(sketched, p) for p in self.param_names if hasattr(sketched, p)}

    def sketched_cost(self, sketched: nn.Module) -> Cost:
        """The cost of a layer of :attr:`sketched_type` (used by the ``flops`` evaluator).

        Default: ``cost(sketched, sketched_params(sketched))`` -- see :meth:`cost`.
        """
        return self.cost(sketched, self.sketched_params(sketched))
