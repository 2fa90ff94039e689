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

    Attributes:
        name: the type name selectors use (``{"type": name}``), e.g. ``"Linear"``.
        module_types: the torch module classes this type replaces (exact types).
        sketched_type: the class :meth:`build` returns.
        param_names: the tunable parameter names, in a stable order.
    """

    name: str
    module_types: tuple[type[nn.Module], ...]
    sketched_type: type[nn.Module]
    param_names: tuple[str, ...]

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
        """The cost of ``original`` (``params=None``) or of its sketch with ``params``."""

    def validate_params(self, original: nn.Module, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the problem if ``params`` cannot build a layer."""
        unknown = set(params) - set(self.param_names) - {"seed"}
        if unknown:
            raise ValueError(
                f"{self.name} layers have no parameter(s) {sorted(unknown)}; "
                f"tunable parameters are {list(self.param_names)}"
            )

    def size_key(self, module: nn.Module) -> tuple[Any, ...]:
        """Layers of one type with equal size keys share an "auto" group."""
        return tuple(sorted((k, v) for k, v in vars(module).items() if isinstance(v, (int, bool, tuple, str))))

    def sketch_seed(self, sketched: nn.Module) -> int | None:
        """The seed of ``sketched``'s random sketches, recorded in saved results."""
        return getattr(sketched, "seed", None)
