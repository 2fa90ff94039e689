"""Sketchable layer types: the interface and the built-in types.

Each built-in module is a plugin contributing its :class:`LayerType` through
the ``panther_layer_types`` hook: ``Linear`` (``nn.Linear`` -> ``SKLinear``),
``Conv2d`` (``nn.Conv2d`` -> ``SKConv2d``) and ``MultiheadAttention``
(``nn.MultiheadAttention`` -> ``RandMultiHeadAttention``).
"""

from panther.tuner.layers.attention import AttentionLayerType
from panther.tuner.layers.base import Cost, LayerType
from panther.tuner.layers.conv2d import Conv2dLayerType
from panther.tuner.layers.linear import (
    LinearLayerType,
    LowRankLayerType,
    low_rank_space,
    saves_work,
)

__all__ = [
    "AttentionLayerType",
    "Conv2dLayerType",
    "Cost",
    "LayerType",
    "LinearLayerType",
    "LowRankLayerType",
    "low_rank_space",
    "saves_work",
]
