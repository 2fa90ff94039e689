"""``nn.Conv2d`` -> ``panther.nn.SKConv2d`` (built-in layer-type plugin ``"Conv2d"``).

Cost model (per output position): a dense convolution does ``out*in*kh*kw``
multiply-adds. ``SKConv2d`` convolves to ``2*L*k`` sketched channels
(``2*L*k*in*kh*kw``) and mixes them back with a 1x1 map (``2*L*k*out``):
``2*L*k*(in*kh*kw + out)`` in all, i.e. the linear-layer model with
``fan_in = in*kh*kw``. Parameters are the learnable ones: ``out*in*kh*kw``
versus ``2*L*k*in*kh*kw``, plus the bias (the random mixing buffer is not counted).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from panther.tuner.hookspecs import hookimpl
from panther.tuner.layers.base import Cost, LayerType
from panther.tuner.layers.linear import LowRankLayerType

__all__ = ["Conv2dLayerType"]


class Conv2dLayerType(LowRankLayerType):
    """Sketch ``nn.Conv2d`` layers (``groups=1``, zero padding) with :class:`panther.nn.SKConv2d`.

    Tunable parameters: ``num_terms``, ``low_rank`` and ``init`` (``"svd"`` or
    ``"random"``); missing ones default as for ``Linear``.
    """

    name = "Conv2d"
    module_types = (nn.Conv2d,)
    requirements = "groups=1 and padding_mode='zeros'"

    @property
    def sketched_type(self) -> type[nn.Module]:  # type: ignore[override]
        """:class:`panther.nn.SKConv2d` (imported lazily)."""
        from panther.nn import SKConv2d

        return SKConv2d

    def factory_signature_source(self) -> Any:
        """``SKConv2d.from_conv2d``."""
        return self.sketched_type.from_conv2d

    def handles(self, module: nn.Module) -> bool:
        """Exact ``nn.Conv2d`` with ``groups=1`` and ``padding_mode="zeros"``."""
        return (
            type(module) in self.module_types
            and module.groups == 1
            and module.padding_mode == "zeros"
        )

    def fans(self, original: nn.Module) -> tuple[int, int]:
        """``(in_channels*kh*kw, out_channels)``."""
        kh, kw = original.kernel_size
        return original.in_channels * kh * kw, original.out_channels

    def sketch_copy(self, original: nn.Module, num_terms: int, low_rank: int,
                    **options: Any) -> nn.Module:
        """``SKConv2d.from_conv2d(original, ...)``."""
        return self.sketched_type.from_conv2d(original, num_terms, low_rank, **options)

    def sketch_empty(self, original: nn.Module, num_terms: int, low_rank: int,
                     **options: Any) -> nn.Module:
        """A new ``SKConv2d`` with the original's geometry, dtype and device."""
        weight = original.weight
        padding = original.padding
        return self.sketched_type(
            original.in_channels, original.out_channels,
            kernel_size=tuple(original.kernel_size), stride=tuple(original.stride),
            padding=padding if isinstance(padding, str) else tuple(padding),
            bias=original.bias is not None, num_terms=num_terms, low_rank=low_rank,
            dtype=weight.dtype, device=weight.device, dilation=tuple(original.dilation),
            **options,
        )

    def sketch_cost(self, fan_in: int, fan_out: int, num_terms: int, low_rank: int) -> Cost:
        """``2*L*k`` sketched channels, mixed back by a 1x1 map (module docstring)."""
        m = 2 * num_terms * low_rank
        return Cost(params=m * fan_in, macs=m * (fan_in + fan_out))

    def size_key(self, module: nn.Module) -> tuple[Any, ...]:
        """Type, channels, kernel, stride, padding, dilation and bias."""
        return (
            self.name,
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            tuple(module.stride),
            module.padding if isinstance(module.padding, str) else tuple(module.padding),
            tuple(module.dilation),
            module.bias is not None,
        )


@hookimpl
def panther_layer_types() -> list[LayerType]:
    """Register the ``Conv2d`` layer type."""
    return [Conv2dLayerType()]
