"""Sketched replacement for :class:`torch.nn.Conv2d`.

The kernel ``K`` (``in x kh x kw x out``) is sketched along its output-channel mode. For
each of ``2L`` fixed sketches ``U_i`` (``k x out``) a learnable kernel
``K_i = K x_out U_i^T`` produces ``k`` feature maps; the layer convolves the input with
all ``2L*k`` kernels in one convolution, maps each group of ``k`` maps back to ``out``
channels with ``U_i^T`` (one 1x1 convolution for all terms) and averages the terms:

.. code-block:: text

    y = 1/(2L) * sum_i  U_i^T (K_i * x) + b          (* is the convolution)

With random sign sketches (entries ``+-1/sqrt(k)``) ``E[U_i^T U_i] = I`` and so
``E[y] = conv(x, K) + b``. ``init="svd"`` takes the sketches from the dominant left
singular vectors of the kernel unfolded along the output mode instead.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panther.nn.linear import (
    _SINGULAR_CACHE,
    _check_finite,
    _check_init,
    _check_size,
    _generator,
    _resolve_seed,
    _sign_matrix,
    _work_dtype,
)

__all__ = ["SKConv2d"]

_IntPair = int | tuple[int, int]


def _pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    """``value`` as a pair of ints ``>= minimum``, or a ValueError/TypeError naming ``name``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair: tuple[object, ...] = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _svd_conv_sketch(
    Wm: Tensor,
    num_terms: int,
    low_rank: int,
    generator: torch.Generator,
    source: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Data-aware ``(U (2Lk, out), S (2Lk, D))`` for the unfolded kernel ``Wm`` (``out x D``).

    The first ``q = min(2Lk, out, D)`` rows of ``U`` are ``sqrt(2L)`` times the top left
    singular vectors of ``Wm`` (orthonormal), so with ``S = U Wm`` the layer computes
    ``1/(2L) U^T S = P Wm``, the rank-``q`` truncated SVD of the kernel along its output
    mode. Spare rows (when ``2Lk > q``) are random unit vectors with zero ``S`` rows: they
    add nothing at initialisation but can learn. ``source`` is the kernel object ``Wm`` was
    unfolded from, the key of the factorization cache.
    """
    out_c, D = Wm.shape
    m = 2 * num_terms * low_rank
    scale = math.sqrt(2 * num_terms)
    Ul, _, _ = _SINGULAR_CACHE.lookup(source, "conv_out_mode", Wm, min(m, out_c, D))
    q = Ul.shape[1]
    U = _sign_matrix(m, out_c, scale / math.sqrt(out_c), generator).to(Wm.device, Wm.dtype)
    U[:q] = Ul.T * scale
    S = U @ Wm
    S[q:] = 0
    return U, S


class SKConv2d(nn.Module):
    """Sketched 2-D convolution, a drop-in replacement for ``nn.Conv2d`` (``groups=1``).

    Args:
        in_channels, out_channels: channel counts, as for ``nn.Conv2d``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or pair.
        padding: int, pair, ``"same"`` (stride 1 only) or ``"valid"``; zero padding.
        bias: whether the layer has a learnable bias.
        num_terms: ``L``; the layer averages ``2L`` sketch terms.
        low_rank: ``k``, the number of sketched output channels per term.
        layer: optional ``nn.Conv2d`` of matching shape whose weight (and bias) initialise
            the sketch; without it the kernel is drawn Kaiming-uniform as ``nn.Conv2d`` does.
        dtype, device: where the parameters live.
        seed: seed of the sketches; ``None`` draws one from torch's global RNG. Recorded
            as ``self.seed``.
        init: ``"random"`` (sign sketches, unbiased) or ``"svd"`` (data-aware: the rank
            ``min(2*L*k, out)`` truncation of the kernel along its output-channel mode).
        dilation: int or pair (keyword only).

    Attributes:
        S: learnable ``(2L*k, in, kh, kw)`` sketched kernels; block ``i`` of ``k`` is ``K_i``.
        U: buffer ``(2L*k, out)``; row block ``i`` is ``U_i``.
        bias: learnable ``(out,)`` or ``None``.

    Warns:
        UserWarning: when ``2*L*k > out_channels`` (more kernel parameters than the
        dense convolution).
    """

    S: Tensor
    U: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntPair = 3,
        stride: _IntPair = 1,
        padding: _IntPair | str = 1,
        bias: bool = True,
        num_terms: int = 1,
        low_rank: int = 8,
        layer: nn.Conv2d | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
        init: str = "random",
        *,
        dilation: _IntPair = 1,
    ) -> None:
        super().__init__()
        self.in_channels = _check_size("in_channels", in_channels)
        self.out_channels = _check_size("out_channels", out_channels)
        self.num_terms = _check_size("num_terms", num_terms)
        self.low_rank = _check_size("low_rank", low_rank)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.dilation = _pair("dilation", dilation, 1)
        self.padding = self._check_padding(padding)
        self.init = _check_init(init)
        if layer is not None:
            self._check_layer(layer, bias)
        self.seed = _resolve_seed(seed)

        m = 2 * self.num_terms * self.low_rank
        if m > self.out_channels:
            warnings.warn(
                f"SKConv2d({self.in_channels}, {self.out_channels}, num_terms={self.num_terms}, "
                f"low_rank={self.low_rank}) has 2*num_terms*low_rank = {m} sketched output "
                f"channels, more than out_channels = {self.out_channels}, so more parameters "
                f"than the dense convolution; keep 2*num_terms*low_rank <= {self.out_channels}",
                UserWarning,
                stacklevel=2,
            )

        factory = {"device": device, "dtype": dtype}
        kh, kw = self.kernel_size
        self.S = nn.Parameter(torch.empty(m, self.in_channels, kh, kw, **factory))
        self.register_buffer("U", torch.empty(m, self.out_channels, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, **factory))
        else:
            self.register_parameter("bias", None)

        if layer is None:
            self.reset_parameters()
        else:
            with torch.no_grad():
                if self.bias is not None:
                    if layer.bias is not None:
                        self.bias.copy_(layer.bias.detach())
                    else:
                        self.bias.zero_()
            self.init_from_weight(layer.weight)

    # -- validation ----------------------------------------------------------

    def _check_padding(self, padding: object) -> tuple[int, int] | str:
        if isinstance(padding, str):
            mode = padding.lower()
            if mode not in ("same", "valid"):
                raise ValueError(
                    f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}"
                )
            if mode == "same" and self.stride != (1, 1):
                raise ValueError(
                    f"padding='same' needs stride 1 (got stride={self.stride}); "
                    "give explicit padding for strided convolutions"
                )
            return mode
        return _pair("padding", padding, 0)

    def _check_layer(self, layer: object, bias: bool) -> None:
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"layer must be an nn.Conv2d, got {type(layer).__name__}")
        expected = (self.out_channels, self.in_channels, *self.kernel_size)
        if layer.groups != 1:
            raise ValueError(
                f"SKConv2d does not support grouped convolutions (layer has groups={layer.groups})"
            )
        if tuple(layer.weight.shape) != expected:
            raise ValueError(
                f"layer's weight has shape {tuple(layer.weight.shape)}, but this SKConv2d "
                f"expects (out_channels, in_channels, kh, kw) = {expected}"
            )
        if layer.bias is not None and not bias:
            raise ValueError("layer has a bias but bias=False would drop it; pass bias=True")

    # -- initialisation ------------------------------------------------------

    def reset_parameters(self) -> None:
        """Draw a fresh kernel and bias as ``nn.Conv2d`` does, then re-sketch it."""
        kh, kw = self.kernel_size
        weight = torch.empty(
            self.out_channels, self.in_channels, kh, kw, dtype=self.S.dtype, device=self.S.device
        )
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * kh * kw)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)
        self.init_from_weight(weight)

    @torch.no_grad()
    def init_from_weight(self, weight: Tensor) -> None:
        """Set sketches and kernels from a dense kernel ``(out, in, kh, kw)``; bias unchanged."""
        expected = (self.out_channels, self.in_channels, *self.kernel_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight must have shape {expected}, got {tuple(weight.shape)}")
        _check_finite(weight)
        work = _work_dtype(self.S.dtype)
        Wm = weight.detach().to(device=self.S.device, dtype=work).reshape(self.out_channels, -1)
        gen = _generator(self.seed)
        if self.init == "random":
            m = 2 * self.num_terms * self.low_rank
            U = _sign_matrix(m, self.out_channels, 1.0 / math.sqrt(self.low_rank), gen)
            U = U.to(Wm.device, work)
            S = U @ Wm
        else:
            U, S = _svd_conv_sketch(Wm, self.num_terms, self.low_rank, gen, source=weight)
        self.U.copy_(U)
        self.S.copy_(S.reshape(self.S.shape))

    # -- forward and helpers -------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` of shape ``(N, in, H, W)`` or unbatched ``(in, H, W)``."""
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"SKConv2d expects inputs (N, {self.in_channels}, H, W) or "
                f"({self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        z = F.conv2d(x, self.S, None, self.stride, self.padding, self.dilation)
        # The back-projection of all 2L terms, averaged, is a single 1x1 convolution.
        proj = (self.U.T * (1.0 / (2 * self.num_terms))).reshape(
            self.out_channels, self.U.shape[0], 1, 1
        )
        return F.conv2d(z, proj, self.bias)

    def dense_weight(self) -> Tensor:
        """The dense kernel ``(out, in, kh, kw)`` this layer computes: ``U^T S / (2L)``."""
        Wm = self.U.T @ self.S.reshape(self.S.shape[0], -1) / (2 * self.num_terms)
        return Wm.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def sketch_parameter_count(self) -> int:
        """Learnable kernel entries, ``2*L*k*in*kh*kw`` (bias excluded)."""
        return self.S.numel()

    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        num_terms: int,
        low_rank: int,
        seed: int | None = None,
        init: str = "random",
    ) -> SKConv2d:
        """Sketch an existing ``nn.Conv2d``: copies kernel, bias, geometry, device, dtype, mode."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv2d needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"SKConv2d does not support grouped convolutions (conv has groups={conv.groups}); "
                "sketch only groups=1 layers"
            )
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"SKConv2d supports only zero padding (conv has padding_mode="
                f"{conv.padding_mode!r}); use padding_mode='zeros'"
            )
        weight = conv.weight.detach()
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
            bias=conv.bias is not None,
            num_terms=num_terms,
            low_rank=low_rank,
            layer=conv,
            dtype=weight.dtype,
            device=weight.device,
            seed=seed,
            init=init,
            dilation=tuple(conv.dilation),
        )
        layer.train(conv.training)
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, num_terms={self.num_terms}, "
            f"low_rank={self.low_rank}, init={self.init!r}, seed={self.seed}"
        )
