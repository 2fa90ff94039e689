"""Sketched ``nn.Conv1d`` for panther (an example third-party plugin)."""

from panther_conv1d.layer import SKConv1d
from panther_conv1d.layer_type import Conv1dLayerType

__all__ = ["Conv1dLayerType", "SKConv1d"]
__version__ = "0.1.0"
