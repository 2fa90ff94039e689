"""``nn.Linear`` -> ``panther.nn.SKLinear`` (built-in layer-type plugin ``"Linear"``).

Cost model (per input row): a dense ``Linear(in, out)`` does ``in*out``
multiply-adds; ``SKLinear`` with ``L`` terms of rank ``k`` does
``(x S1) U1 + (x U2) S2``, i.e. ``2*L*k*(in + out)``. Parameters are the
learnable ones (``nn.Module.parameters()``): ``in*out`` versus ``L*k*(in + out)``,
plus the bias; the fixed random buffers ``U1``/``U2`` are not counted.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from panther.tuner.config import Categorical, ParamSpec
from panther.tuner.hookspecs import hookimpl
from panther.tuner.layers.base import Cost, LayerType

__all__ = [
    "LinearLayerType",
    "LowRankLayerType",
    "check_positive_int",
    "low_rank_space",
    "saves_work",
]

#: Smallest rank the "auto" spaces start from (powers of two from here).
AUTO_RANK_START = 4
#: The ``num_terms`` values the "auto" spaces consider.
AUTO_NUM_TERMS = (1, 2, 3)


def saves_work(fan_in: int, fan_out: int, num_terms: int, low_rank: int) -> bool:
    """Whether ``2*L*k*(fan_in + fan_out) < fan_in*fan_out`` (the sketch does less work)."""
    return 2 * num_terms * low_rank * (fan_in + fan_out) < fan_in * fan_out


def low_rank_space(
    fan_in: int,
    fan_out: int,
    start: int = AUTO_RANK_START,
    num_terms: tuple[int, ...] = AUTO_NUM_TERMS,
) -> tuple[list[int], list[int]]:
    """The "auto" ``(num_terms values, low_rank values)`` for a ``fan_in x fan_out`` map.

    Ranks are powers of two from ``start`` for which one term already saves work
    (:func:`saves_work`); ``num_terms`` keeps the values for which some rank still
    saves. Tiny layers where nothing from ``start`` saves fall back to the ranks
    1..``start`` that do, or to rank 1 with one term when nothing saves at all
    (the tuner's cost check then skips the layer's configurations).
    """
    ranks = []
    k = start
    while saves_work(fan_in, fan_out, 1, k):
        ranks.append(k)
        k *= 2
    if not ranks:
        ranks = [k for k in range(1, start + 1) if saves_work(fan_in, fan_out, 1, k)] or [1]
    terms = [L for L in num_terms if any(saves_work(fan_in, fan_out, L, k) for k in ranks)]
    return terms or [1], ranks


def check_positive_int(layer: str, name: str, value: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``layer`` and ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer} parameter {name!r} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{layer} parameter {name!r} must be >= 1, got {value}")


def _supports_init(factory: Any) -> bool:
    # Asked on every build and cost query: the signature is read once per function.
    return _function_takes_init(getattr(factory, "__func__", factory))


@functools.lru_cache(maxsize=256)
def _function_takes_init(function: Any) -> bool:
    try:
        return "init" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


class LowRankLayerType(LayerType):
    """Shared logic of layer types tuned by ``num_terms``/``low_rank``/``init``.

    Subclasses set ``name``/``module_types``, :meth:`factory_signature_source`,
    :meth:`_fans` (the ``fan_in, fan_out`` of the equivalent matrix),
    :meth:`_sketch_copy`/:meth:`_sketch_empty` (the two ways :meth:`build` makes a
    layer) and :meth:`cost`. Parameters missing from a configuration default to
    ``num_terms=1``, the middle of the auto ranks and ``init="svd"``.
    """

    #: What :meth:`handles` needs beyond the module type, for the error :meth:`build` raises.
    requirements: str = ""

    def build(
        self, original: nn.Module, params: dict[str, Any], copy_weights: bool = True
    ) -> nn.Module:
        """Validate ``params``, fill in defaults and build the sketch of ``original``.

        The result has ``original``'s device, dtype and train/eval mode; with
        ``copy_weights`` it is initialised from ``original``'s weights.
        """
        if not self.handles(original):
            needs = f": it needs {self.requirements}" if self.requirements else ""
            raise ValueError(f"{self.name} layer type cannot sketch {original!r}{needs}")
        self.validate_params(original, params)
        p = self.full_params(original, params)
        options: dict[str, Any] = {"seed": p.get("seed")}
        if "init" in self.param_names:
            options["init"] = p["init"]
        make = self._sketch_copy if copy_weights else self._sketch_empty
        layer = make(original, p["num_terms"], p["low_rank"], **options)
        weight = original.weight
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        layer.train(original.training)
        return layer

    def _sketch_copy(self, original: nn.Module, num_terms: int, low_rank: int,
                     **options: Any) -> nn.Module:
        """The sketched layer initialised from ``original``'s weights."""
        raise NotImplementedError

    def _sketch_empty(self, original: nn.Module, num_terms: int, low_rank: int,
                      **options: Any) -> nn.Module:
        """A freshly initialised sketched layer with ``original``'s geometry."""
        raise NotImplementedError

    def factory_signature_source(self) -> Any:
        """The callable whose signature says whether ``init`` is supported."""
        raise NotImplementedError

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """``("num_terms", "low_rank", "init")`` (``init`` only if the sketched layer supports it)."""
        if _supports_init(self.factory_signature_source()):
            return ("num_terms", "low_rank", "init")
        return ("num_terms", "low_rank")

    def _fans(self, original: nn.Module) -> tuple[int, int]:
        raise NotImplementedError

    def _defaults(self, original: nn.Module) -> dict[str, Any]:
        _terms, ranks = low_rank_space(*self._fans(original))
        defaults: dict[str, Any] = {"num_terms": 1, "low_rank": ranks[len(ranks) // 2]}
        if "init" in self.param_names:
            defaults["init"] = "svd"
        return defaults

    def full_params(self, original: nn.Module, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` completed with the defaults for anything missing."""
        return {**self._defaults(original), **params}

    def validate_params(self, original: nn.Module, params: dict[str, Any]) -> None:
        """Check names, types and ranges; raise ``ValueError``/``TypeError`` naming the problem."""
        super().validate_params(original, params)
        for key in ("num_terms", "low_rank"):
            if key in params:
                check_positive_int(self.name, key, params[key])
        if "init" in params and params["init"] not in ("random", "svd"):
            raise ValueError(
                f"{self.name} parameter 'init' must be 'random' or 'svd', got {params['init']!r}"
            )

    def auto_space(self, original: nn.Module) -> dict[str, ParamSpec]:
        """Ranks that save work (powers of two from 4) for ``num_terms`` in {1, 2, 3}, both inits.

        Combinations of a large rank with several terms may not save work; the
        tuner's cost check skips those without evaluating them.
        """
        terms, ranks = low_rank_space(*self._fans(original))
        space: dict[str, ParamSpec] = {
            "num_terms": Categorical(terms),
            "low_rank": Categorical(ranks),
        }
        if "init" in self.param_names:
            space["init"] = Categorical(["svd", "random"])
        return space


class LinearLayerType(LowRankLayerType):
    """Sketch ``nn.Linear`` layers with :class:`panther.nn.SKLinear`.

    Tunable parameters: ``num_terms`` (``L``), ``low_rank`` (``k``) and ``init``
    (``"svd"``: data-aware, or ``"random"``).
    """

    name = "Linear"
    module_types = (nn.Linear,)

    @property
    def sketched_type(self) -> type[nn.Module]:  # type: ignore[override]
        """:class:`panther.nn.SKLinear` (imported lazily)."""
        from panther.nn import SKLinear

        return SKLinear

    def factory_signature_source(self) -> Any:
        """``SKLinear.from_linear``."""
        return self.sketched_type.from_linear

    def _fans(self, original: nn.Module) -> tuple[int, int]:
        return original.in_features, original.out_features

    def _sketch_copy(self, original: nn.Module, num_terms: int, low_rank: int,
                     **options: Any) -> nn.Module:
        return self.sketched_type.from_linear(original, num_terms, low_rank, **options)

    def _sketch_empty(self, original: nn.Module, num_terms: int, low_rank: int,
                      **options: Any) -> nn.Module:
        weight = original.weight
        return self.sketched_type(
            original.in_features, original.out_features, num_terms, low_rank,
            bias=original.bias is not None, dtype=weight.dtype, device=weight.device, **options,
        )

    def cost(self, original: nn.Module, params: dict[str, Any] | None = None) -> Cost:
        """Learnable parameters and multiply-adds per input row (see the module docstring)."""
        n_in, n_out = self._fans(original)
        bias = n_out if original.bias is not None else 0
        if params is None:
            return Cost(params=n_in * n_out + bias, macs=n_in * n_out)
        p = self.full_params(original, params)
        lk = p["num_terms"] * p["low_rank"]
        return Cost(params=lk * (n_in + n_out) + bias, macs=2 * lk * (n_in + n_out))

    def size_key(self, module: nn.Module) -> tuple[Any, ...]:
        """``("Linear", in_features, out_features, has_bias)``."""
        return (self.name, module.in_features, module.out_features, module.bias is not None)


@hookimpl
def panther_layer_types() -> list[LayerType]:
    """Register the ``Linear`` layer type."""
    return [LinearLayerType()]
