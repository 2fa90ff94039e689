"""``nn.MultiheadAttention`` -> ``panther.nn.RandMultiHeadAttention`` (plugin ``"MultiheadAttention"``).

Cost model, per token, for embedding size ``E``, ``H`` heads of size ``d = E/H``,
``m`` random features and sequence length ``n``:

* exact attention: the four projections (q, k, v, out) ``4*E^2`` plus scores and
  weighted values ``2*n*E`` -- the part that grows with the sequence;
* random-feature attention: the same ``4*E^2`` plus the feature maps of queries
  and keys (``2*m*E``) and the linear-attention products (``phi(k) v^T`` summary and
  ``phi(q)`` against it, ``2*m*E``): ``4*E^2 + 4*m*E``, independent of ``n``.

So random features save work when ``m < n/2``.

* landmark attention (``approximation="landmark"``, segments of ``g = ceil(n/m)``
  tokens): scores and weighted values against the exact window of ``3g`` keys (``2g``
  causal), ``2*3g*E``; against the ``m`` landmarks, ``2*m*E``; building the landmarks
  (cluster sums of keys and values), ``2*m*E``; and the clustering: five k-means rounds
  plus the final assignment, ``11*m*E`` (causal: one hashing projection, ``m*E``). In all
  ``4*E^2 + (6g + 15m)*E``, causal ``4*E^2 + (4g + 5m)*E``. It depends on ``n`` through
  ``g`` but is far more accurate at the same ``m``.

The sequence length is not known
from the module; the layer type assumes :attr:`AttentionLayerType.seq_len`
(default 512). For another length, register ``AttentionLayerType(seq_len=n)``
by hand (``panther.tuner.plugins.register_plugin``): a hand-registered layer
type takes precedence over the built-in one. Parameters are the learnable ones,
identical for both layers (the random projection buffer is not counted).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from panther.tuner.config import Categorical, ParamSpec
from panther.tuner.hookspecs import hookimpl
from panther.tuner.layers.base import Cost, LayerType
from panther.tuner.layers.linear import check_positive_int

__all__ = ["AttentionLayerType", "KERNEL_FUNCTIONS", "APPROXIMATIONS"]

KERNEL_FUNCTIONS = ("softmax", "relu")
APPROXIMATIONS = ("random_features", "landmark")


class AttentionLayerType(LayerType):
    """Replace ``nn.MultiheadAttention`` with random-feature attention.

    Tunable parameters: ``num_random_features`` (``m``), ``kernel_fn``
    (``"softmax"`` or ``"relu"``) and ``approximation`` (``"random_features"`` or
    ``"landmark"``; ``kernel_fn`` only matters for random features). A configuration
    may also carry ``iscausal`` (default ``False``) and ``seed``. Missing tunables
    default to ``m = 2*head_dim``, ``"softmax"`` and ``"random_features"``.

    Args:
        seq_len: sequence length the cost model assumes for the exact attention
            it is compared with (see the module docstring).
    """

    name = "MultiheadAttention"
    module_types = (nn.MultiheadAttention,)
    param_names = ("num_random_features", "kernel_fn", "approximation")
    extra_param_keys = frozenset({"seed", "iscausal"})

    def __init__(self, seq_len: int = 512) -> None:
        check_positive_int(self.name, "seq_len", seq_len)
        self.seq_len = seq_len

    @property
    def sketched_type(self) -> type[nn.Module]:  # type: ignore[override]
        """:class:`panther.nn.RandMultiHeadAttention` (imported lazily)."""
        from panther.nn import RandMultiHeadAttention

        return RandMultiHeadAttention

    def handles(self, module: nn.Module) -> bool:
        """Exact ``nn.MultiheadAttention`` with ``kdim == vdim == embed_dim``, no bias_kv/zero_attn."""
        return (
            type(module) in self.module_types
            and module.kdim == module.embed_dim
            and module.vdim == module.embed_dim
            and module.bias_k is None
            and module.bias_v is None
            and not module.add_zero_attn
        )

    def _head_dim(self, original: nn.Module) -> int:
        return original.embed_dim // original.num_heads

    def full_params(self, original: nn.Module, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` completed with the defaults for anything missing."""
        return {
            "num_random_features": 2 * self._head_dim(original),
            "kernel_fn": "softmax",
            "approximation": "random_features",
            **params,
        }

    def validate_params(self, original: nn.Module, params: dict[str, Any]) -> None:
        """Check names, types and ranges; raise ``ValueError``/``TypeError`` naming the problem."""
        super().validate_params(original, params)
        if "num_random_features" in params:
            check_positive_int(self.name, "num_random_features", params["num_random_features"])
        if "iscausal" in params and not isinstance(params["iscausal"], bool):
            raise TypeError(
                f"{self.name} parameter 'iscausal' must be True or False, got {params['iscausal']!r}"
            )
        if "kernel_fn" in params and params["kernel_fn"] not in KERNEL_FUNCTIONS:
            raise ValueError(
                f"{self.name} parameter 'kernel_fn' must be one of {list(KERNEL_FUNCTIONS)}, "
                f"got {params['kernel_fn']!r}"
            )
        if "approximation" in params and params["approximation"] not in APPROXIMATIONS:
            raise ValueError(
                f"{self.name} parameter 'approximation' must be one of {list(APPROXIMATIONS)}, "
                f"got {params['approximation']!r}"
            )

    def build(
        self, original: nn.Module, params: dict[str, Any], copy_weights: bool = True
    ) -> nn.Module:
        """A ``RandMultiHeadAttention`` keeping device, dtype, mode, dropout and ``batch_first``."""
        if not self.handles(original):
            raise ValueError(
                f"{self.name} layer type cannot replace {original!r}: it needs kdim == vdim == "
                "embed_dim and no add_bias_kv/add_zero_attn"
            )
        self.validate_params(original, params)
        p = self.full_params(original, params)
        cls = self.sketched_type
        weight = original.in_proj_weight
        if copy_weights:
            layer = cls.from_attention(
                original,
                p["num_random_features"],
                kernel_fn=p["kernel_fn"],
                iscausal=p.get("iscausal", False),
                seed=p.get("seed"),
                approximation=p["approximation"],
            )
        else:
            layer = cls(
                original.embed_dim,
                original.num_heads,
                p["num_random_features"],
                dropout=original.dropout,
                bias=original.in_proj_bias is not None,
                kernel_fn=p["kernel_fn"],
                iscausal=p.get("iscausal", False),
                batch_first=original.batch_first,
                device=weight.device,
                dtype=weight.dtype,
                seed=p.get("seed"),
                approximation=p["approximation"],
            )
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        layer.train(original.training)
        return layer

    def auto_space(self, original: nn.Module) -> dict[str, ParamSpec]:
        """``m`` = powers of two from ``head_dim/2`` to ``4*head_dim``, both kernel functions,
        both approximations."""
        d = self._head_dim(original)
        m = 1
        while m * 2 <= max(1, d // 2):
            m *= 2
        features = []
        while m <= 4 * d:
            features.append(m)
            m *= 2
        return {
            "num_random_features": Categorical(features),
            "kernel_fn": Categorical(list(KERNEL_FUNCTIONS)),
            "approximation": Categorical(list(APPROXIMATIONS)),
        }

    def cost(self, original: nn.Module, params: dict[str, Any] | None = None) -> Cost:
        """Learnable parameters and multiply-adds per token (module docstring)."""
        E = original.embed_dim
        n_params = sum(p.numel() for p in original.parameters())
        projections = 4 * E * E
        if params is None:
            return Cost(params=n_params, macs=projections + 2 * self.seq_len * E)
        p = self.full_params(original, params)
        m = p["num_random_features"]
        if p["approximation"] == "landmark":
            g = -(-self.seq_len // m)  # tokens per segment
            per_token = 4 * g + 5 * m if p.get("iscausal", False) else 6 * g + 15 * m
            return Cost(params=n_params, macs=projections + per_token * E)
        return Cost(params=n_params, macs=projections + 4 * m * E)

    def size_key(self, module: nn.Module) -> tuple[Any, ...]:
        """Type, embedding size, heads, ``batch_first`` and bias."""
        return (
            self.name,
            module.embed_dim,
            module.num_heads,
            module.batch_first,
            module.in_proj_bias is not None,
        )


@hookimpl
def panther_layer_types() -> list[LayerType]:
    """Register the ``MultiheadAttention`` layer type."""
    return [AttentionLayerType()]
