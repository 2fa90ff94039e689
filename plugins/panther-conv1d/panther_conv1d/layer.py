"""``SKConv1d``: a 1-D convolution whose patch-to-channel map is a sketched linear layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panther.nn import SKLinear

__all__ = ["SKConv1d"]


class SKConv1d(nn.Module):
    """Sketched replacement for ``nn.Conv1d`` (``groups=1``, zero padding).

    The input is cut into patches of ``in_channels * kernel_size`` values (as
    ``nn.Conv1d`` sees them) and each patch goes through an
    :class:`panther.nn.SKLinear` of ``num_terms`` terms of rank ``low_rank``:
    ``2*L*k*(in*kernel_size + out)`` multiply-adds per output position instead of
    ``in*kernel_size*out``.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation: as for ``nn.Conv1d``.
        padding: int, ``"valid"`` or ``"same"`` (stride 1 only).
        bias: learnable bias.
        num_terms, low_rank, seed, init: passed to the inner ``SKLinear``.
        weight: optional dense kernel ``(out, in, kernel_size)`` to sketch.
        dtype, device: where parameters live.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = 0,
        dilation: int = 1,
        bias: bool = True,
        num_terms: int = 1,
        low_rank: int = 8,
        weight: Tensor | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
        init: str = "random",
    ) -> None:
        super().__init__()
        for name, value in (
            ("kernel_size", kernel_size),
            ("stride", stride),
            ("dilation", dilation),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        span = dilation * (kernel_size - 1)
        if isinstance(padding, str):
            if padding == "valid":
                pad = (0, 0)
            elif padding == "same":
                if stride != 1:
                    raise ValueError("padding='same' needs stride=1; give an explicit padding")
                pad = (span // 2, span - span // 2)
            else:
                raise ValueError(f"padding must be an int, 'valid' or 'same', got {padding!r}")
        elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
            pad = (padding, padding)
        else:
            raise ValueError(
                f"padding must be a non-negative int, 'valid' or 'same', got {padding!r}"
            )
        self.padding = padding
        self._pad = pad
        W = None
        if weight is not None:
            expected = (out_channels, in_channels, kernel_size)
            if tuple(weight.shape) != expected:
                raise ValueError(f"weight must have shape {expected}, got {tuple(weight.shape)}")
            # (out, in, k) flattens in the same (channel, tap) order as the patches below.
            W = weight.detach().reshape(out_channels, in_channels * kernel_size)
        self.linear = SKLinear(
            in_channels * kernel_size,
            out_channels,
            num_terms,
            low_rank,
            W_init=W,
            bias=bias,
            dtype=dtype,
            device=device,
            seed=seed,
            init=init,
        )

    @property
    def seed(self) -> int:
        """Seed of the sketches (recorded so the layer can be rebuilt exactly)."""
        return self.linear.seed

    @property
    def num_terms(self) -> int:
        """Number of sketch terms ``L``."""
        return self.linear.num_terms

    @property
    def low_rank(self) -> int:
        """Rank ``k`` of each term."""
        return self.linear.low_rank

    @classmethod
    def from_conv1d(
        cls,
        conv: nn.Conv1d,
        num_terms: int,
        low_rank: int,
        seed: int | None = None,
        init: str = "random",
    ) -> SKConv1d:
        """Sketch a trained ``nn.Conv1d``: copies kernel, bias, geometry, device, dtype and mode."""
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"from_conv1d needs an nn.Conv1d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("SKConv1d supports only groups=1 and padding_mode='zeros'")
        padding = conv.padding if isinstance(conv.padding, str) else conv.padding[0]
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            stride=conv.stride[0],
            padding=padding,
            dilation=conv.dilation[0],
            bias=conv.bias is not None,
            num_terms=num_terms,
            low_rank=low_rank,
            weight=conv.weight,
            dtype=conv.weight.dtype,
            device=conv.weight.device,
            seed=seed,
            init=init,
        )
        if conv.bias is not None:
            with torch.no_grad():
                layer.linear.bias.copy_(conv.bias.detach())
        layer.train(conv.training)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, T)`` or ``(C_in, T)`` -> ``(N, C_out, T_out)`` or ``(C_out, T_out)``."""
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SKConv1d expects (N, {self.in_channels}, T) or ({self.in_channels}, T), "
                f"got {tuple(x.shape)}"
            )
        x = F.pad(x, self._pad)
        span = self.dilation * (self.kernel_size - 1) + 1
        patches = x.unfold(2, span, self.stride)[..., :: self.dilation]  # (N, C, T_out, k)
        n, c, t, k = patches.shape
        patches = patches.permute(0, 2, 1, 3).reshape(n, t, c * k)
        y = self.linear(patches).transpose(1, 2)  # (N, C_out, T_out)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}"
        )
