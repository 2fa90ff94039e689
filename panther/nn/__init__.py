"""Sketched drop-in replacements for torch.nn layers."""

from panther.nn.attention import RandMultiHeadAttention
from panther.nn.conv import SKConv2d
from panther.nn.linear import SKLinear

__all__: list[str] = ["RandMultiHeadAttention", "SKConv2d", "SKLinear"]
