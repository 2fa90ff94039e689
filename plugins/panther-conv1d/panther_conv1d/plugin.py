"""The module panther loads through the ``panther`` entry point: its hook implementations."""

from __future__ import annotations

from panther.tuner import LayerType, hookimpl
from panther_conv1d.layer_type import Conv1dLayerType

#: The panther plugin API this package was written for (panther warns on a mismatch).
PANTHER_PLUGIN_API = 1


@hookimpl
def panther_layer_types() -> list[LayerType]:
    """Contribute the ``Conv1d`` layer type."""
    return [Conv1dLayerType()]
