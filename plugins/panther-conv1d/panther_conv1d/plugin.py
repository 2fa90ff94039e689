"""The module panther loads through the ``panther`` entry point: its hook implementations."""

from __future__ import annotations

from panther.tuner.hookspecs import hookimpl
from panther.tuner.layers.base import LayerType
from panther_conv1d.layer_type import Conv1dLayerType


@hookimpl
def panther_layer_types() -> list[LayerType]:
    """Contribute the ``Conv1d`` layer type."""
    return [Conv1dLayerType()]
