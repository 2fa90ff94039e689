"""The ``Conv1d`` layer type: how panther's tuner sketches ``nn.Conv1d`` layers.

Cost model (per output position), inherited from ``LowRankLayerType`` on
:meth:`Conv1dLayerType.fans`: dense ``out*in*k`` multiply-adds; sketched
``2*L*r*(in*k + out)`` (the inner ``SKLinear`` on ``in*k``-long patches).
Parameters: ``out*in*k`` versus ``L*r*(in*k + out)`` learnable, plus the bias.

Only public panther API is used: ``panther.tuner.LowRankLayerType`` and its
documented hooks (``fans``, ``sketch_copy``, ``sketch_empty``,
``factory_signature_source``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from panther.tuner import LowRankLayerType
from panther_conv1d.layer import SKConv1d

__all__ = ["Conv1dLayerType"]


class Conv1dLayerType(LowRankLayerType):
    """Sketch ``nn.Conv1d`` (``groups=1``, zero padding) with :class:`SKConv1d`.

    Tunable parameters ``num_terms``, ``low_rank``, ``init``; "auto" ranks are the
    powers of two from 4 that save work for ``fan_in = in_channels*kernel_size``.
    """

    name = "Conv1d"
    module_types = (nn.Conv1d,)
    sketched_type = SKConv1d
    requirements = "groups=1 and padding_mode='zeros'"

    def factory_signature_source(self) -> Any:
        """``SKConv1d.from_conv1d``."""
        return SKConv1d.from_conv1d

    def handles(self, module: nn.Module) -> bool:
        """Exact ``nn.Conv1d`` with ``groups=1`` and zero padding."""
        return type(module) is nn.Conv1d and module.groups == 1 and module.padding_mode == "zeros"

    def fans(self, original: nn.Module) -> tuple[int, int]:
        """``(in_channels*kernel_size, out_channels)``: the patch-to-channel matrix."""
        return original.in_channels * original.kernel_size[0], original.out_channels

    def sketch_copy(self, original: nn.Module, num_terms: int, low_rank: int,
                    **options: Any) -> nn.Module:
        """``SKConv1d.from_conv1d(original, ...)``."""
        return SKConv1d.from_conv1d(original, num_terms, low_rank, **options)

    def sketch_empty(self, original: nn.Module, num_terms: int, low_rank: int,
                     **options: Any) -> nn.Module:
        """A new ``SKConv1d`` with the original's geometry, dtype and device."""
        weight = original.weight
        padding = original.padding
        return SKConv1d(
            original.in_channels, original.out_channels, original.kernel_size[0],
            stride=original.stride[0],
            padding=padding if isinstance(padding, str) else padding[0],
            dilation=original.dilation[0], bias=original.bias is not None,
            num_terms=num_terms, low_rank=low_rank,
            dtype=weight.dtype, device=weight.device, **options,
        )

    def size_key(self, module: nn.Module) -> tuple[Any, ...]:
        """Type, channels, kernel, stride, padding, dilation and bias."""
        return (
            self.name,
            module.in_channels,
            module.out_channels,
            module.kernel_size[0],
            module.stride[0],
            module.padding if isinstance(module.padding, str) else module.padding[0],
            module.dilation[0],
            module.bias is not None,
        )
