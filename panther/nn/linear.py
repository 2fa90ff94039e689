"""Sketched replacement for :class:`torch.nn.Linear`.

Write ``W`` for the ``(in_features, out_features)`` weight (the transpose of
``nn.Linear.weight``). For each of ``L = num_terms`` terms, :class:`SKLinear` keeps
fixed sketches ``U1_i`` (``k x out``) and ``U2_i`` (``in x k``) with ``k = low_rank`` and
learnable factors ``S1_i = W U1_i^T`` (``in x k``) and ``S2_i = U2_i^T W`` (``k x out``):

.. code-block:: text

    y = 1/(2L) * sum_i [ (x S1_i) U1_i + (x U2_i) S2_i ] + b

With ``init="random"`` the sketches are scaled sign matrices (entries ``+-1/sqrt(k)``),
so ``E[U1_i^T U1_i] = I`` and ``E[U2_i U2_i^T] = I`` and the layer is an unbiased
estimate of the dense one: ``E[y] = x W + b``. With ``init="svd"`` the sketches are
chosen from ``W``'s dominant singular subspaces instead (see :class:`SKLinear`), which
keeps most of a trained weight's energy at the same structure and cost.

The terms are stored stacked in the GEMM-ready layout of
:func:`panther.native.reference.sketched_linear` (``S1``, ``U2``: ``(in, L*k)``;
``U1``, ``S2``: ``(L*k, out)``), so a forward is two matrix products plus the bias,
dispatched through :func:`panther.native.ops.sketched_linear`.
"""

from __future__ import annotations

import collections
import contextlib
import math
import numbers
import threading
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from panther.native import ops

__all__ = ["SKLinear"]

#: The initialisations every sketched layer understands.
INIT_METHODS: tuple[str, ...] = ("random", "svd")

# Seeds live in [0, 2**63) so they fit an int64 and torch.Generator.manual_seed.
_SEED_LIMIT = 2**63


# ---------------------------------------------------------------------------
# Helpers shared with panther.nn.conv (private to the package).
# ---------------------------------------------------------------------------


def _check_size(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}; pass a value >= 1")
    return int(value)


def _check_init(init: object) -> str:
    if not isinstance(init, str) or init not in INIT_METHODS:
        raise ValueError(f"init must be one of {list(INIT_METHODS)}, got {init!r}")
    return init


def _check_finite(weight: Tensor) -> None:
    """Reject a weight with NaN/inf entries: every sketch of it would be NaN everywhere."""
    if not bool(torch.isfinite(weight.detach()).all()):
        raise ValueError(
            "the weight to sketch contains NaN or infinite entries; fix or re-initialise the "
            "original layer's weight before sketching it"
        )


def _resolve_seed(seed: object) -> int:
    """The seed to record on a layer: ``seed`` itself, or one drawn from torch's global RNG.

    Drawing from the global RNG (rather than from entropy) keeps code that calls
    ``torch.manual_seed`` reproducible while still recording an explicit seed.
    """
    if seed is None:
        return int(torch.randint(0, _SEED_LIMIT - 1, (), dtype=torch.int64).item())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {seed!r} of type {type(seed).__name__}")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def _generator(seed: int) -> torch.Generator:
    # Always a CPU generator: the sketches are drawn on the CPU and then moved, so a
    # seed gives the same layer on every device.
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision factorizations are not supported (and not accurate enough).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sign_matrix(rows: int, cols: int, scale: float, generator: torch.Generator) -> Tensor:
    """A ``(rows, cols)`` float64 CPU matrix of independent ``+-scale`` entries."""
    signs = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int64)
    return (signs * 2 - 1).to(torch.float64) * scale


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run a block with torch's intra-op pool (OpenMP, MKL/LAPACK) limited to one thread.

    LAPACK's QR and SVD run long sequences of small parallel steps: threads gain little on
    them, and on a busy machine every OpenMP barrier can wait for a descheduled worker
    (measured on 2 oversubscribed cores: a 160x64 SVD took ~1 s instead of ~1 ms; the
    range finder of a 1024x1024 weight at rank 32 took 0.55-2.0 s instead of 0.18 s). The
    GEMMs of the range finder stay outside this block: they do scale with threads.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# The range finder's test matrix comes from a fixed seed, not the layer's: the result then
# depends on the weight alone, so it can be cached across layers built with different seeds.
_RANGE_FINDER_SEED = 0x5EED


def _top_singular(
    W: Tensor, q: int, oversample: int = 10, power_iters: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``q`` singular triplets ``(U (m, q), s (q,), Vh (q, n))`` of ``W`` (``m x n``).

    Uses a thin exact SVD when ``q`` is a sizeable fraction of the rank, and otherwise a
    randomized range finder with ``power_iters`` subspace iterations (Halko, Martinsson and
    Tropp, 2011) whose test matrix is drawn from a fixed seed, so the result is a
    deterministic function of ``W``.
    """
    m, n = W.shape
    r = min(m, n)
    q = min(q, r)
    if 2 * (q + oversample) >= r:
        with _single_threaded():
            U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        return U[:, :q], s[:q], Vh[:q]
    p = q + oversample
    omega = torch.randn(n, p, generator=_generator(_RANGE_FINDER_SEED), dtype=torch.float64)
    omega = omega.to(W.device, W.dtype)
    Y = W @ omega
    with _single_threaded():
        Q = torch.linalg.qr(Y).Q
    for _ in range(power_iters):
        # Re-orthonormalising each half-step keeps the small singular directions from being
        # washed out by rounding (the power scheme alone loses them in float32).
        Z = W.T @ Q
        with _single_threaded():
            Z = torch.linalg.qr(Z).Q
        Y = W @ Z
        with _single_threaded():
            Q = torch.linalg.qr(Y).Q
    B = Q.T @ W
    with _single_threaded():
        Ub, s, Vh = torch.linalg.svd(B, full_matrices=False)
    return (Q @ Ub)[:, :q], s[:q], Vh[:q]


class _SingularCache:
    """Top singular factors of weights already factorized, so rebuilding is cheap.

    The tuner builds many sketched layers from one original layer (one per trial); with
    ``init="svd"`` each build would repeat the same factorization (0.1-0.5 s at width 1024,
    seconds at 4096). Entries are keyed weakly on the caller's weight object, so they die
    with it, and per weight on everything the factors depend on: its ``_version`` (bumped by
    every in-place change, optimizer steps and ``load_state_dict`` included), storage
    pointer, shape, stride, dtype, device, the view of it that was factorized and the rank.
    Changes that bypass the version counter (``weight.data.normal_()``) are caught by a
    fingerprint (sum, sum of squares and a strided sample of the entries) checked on every hit.
    At most :attr:`per_weight` entries are kept for each weight (least recently used first out).
    """

    per_weight = 4

    def __init__(self) -> None:
        self._entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._lock = threading.Lock()
        self.enabled = True
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _fingerprint(W: Tensor) -> Tensor:
        # Read the entries in memory order: a transposed view is not copied.
        base = W.mT if not W.is_contiguous() and W.mT.is_contiguous() else W
        flat = base.reshape(-1)
        step = max(1, flat.numel() // 1024)
        stats = torch.stack([flat.sum(dtype=torch.float64),
                             torch.dot(flat, flat).to(torch.float64)])
        return torch.cat([stats, flat[::step].to(torch.float64)])

    def top_singular(
        self, source: Tensor, view: str, W: Tensor, q: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``_top_singular(W, q)`` where ``W`` is ``view`` (a label) of the weight ``source``."""
        if not self.enabled:
            return _top_singular(W, q)
        key = (
            view, q, source._version, source.data_ptr(), tuple(source.shape), source.stride(),
            source.dtype, W.dtype, W.device, tuple(W.shape),
        )
        fingerprint = self._fingerprint(W)
        with self._lock:
            per_source = self._entries.get(source)
            hit = per_source.get(key) if per_source is not None else None
            if hit is not None and torch.equal(hit[0], fingerprint):
                per_source.move_to_end(key)
                self.hits += 1
                return hit[1]
            self.misses += 1
        # Factorize outside the lock: two threads may both miss on one weight, and the second
        # result simply replaces the first (they are equal).
        factors = _top_singular(W, q)
        with self._lock:
            per_source = self._entries.get(source)
            if per_source is None:
                per_source = collections.OrderedDict()
                self._entries[source] = per_source
            per_source[key] = (fingerprint, factors)
            per_source.move_to_end(key)
            while len(per_source) > self.per_weight:
                per_source.popitem(last=False)
        return factors

    def lookup(
        self, source: Tensor | None, view: str, W: Tensor, q: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Cached :meth:`top_singular` when ``source`` can be keyed, else a fresh factorization.

        Inference tensors have no version counter, so they are never cached.
        """
        if source is None or source.is_inference():
            return _top_singular(W, q)
        return self.top_singular(source, view, W, q)

    def clear(self) -> None:
        """Drop every entry and reset the hit/miss counters."""
        with self._lock:
            self._entries = WeakIdKeyDictionary()
            self.hits = self.misses = 0


#: Process-wide cache used by ``init="svd"`` in :class:`SKLinear` and ``SKConv2d``.
_SINGULAR_CACHE = _SingularCache()


def _svd_linear_factors(
    W: Tensor,
    num_terms: int,
    low_rank: int,
    generator: torch.Generator,
    source: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Data-aware stacked ``(S1, U2, U1, S2)`` for ``W`` (``in x out``).

    With ``n = L*k`` and the top ``q = min(2n, rank bound)`` singular triplets
    ``W ~ sum_j s_j u_j v_j^T``: the rows of ``U1`` are ``sqrt(2L) v_j^T`` for the first
    ``a = min(n, q)`` directions and the columns of ``U2`` are ``sqrt(2L) u_j`` for the next
    ``q - a``. Keeping ``S1 = W U1^T`` and ``S2 = U2^T W`` (the same formulas as the random
    sketch) then gives ``1/(2L) (S1 U1 + U2 S2) = W P_right + P_left W``, the rank-``q``
    truncated SVD of ``W``: the two halves cover *different* singular blocks, so nothing
    is counted twice and no noise is added. When ``2n`` exceeds the rank bound the spare
    sketch rows/columns are random unit vectors whose ``S`` entries start at zero: they
    add nothing to the output but still learn if the layer is trained. ``source`` is the
    weight object ``W`` was derived from, the key of the factorization cache.
    """
    in_f, out_f = W.shape
    n = num_terms * low_rank
    scale = math.sqrt(2 * num_terms)
    q = min(2 * n, in_f, out_f)
    Ul, _, Vh = _SINGULAR_CACHE.lookup(source, "linear", W, q)
    q = Vh.shape[0]
    a = min(n, q)
    b = q - a
    dev, dt = W.device, W.dtype

    U1 = _sign_matrix(n, out_f, scale / math.sqrt(out_f), generator).to(dev, dt)
    U1[:a] = Vh[:a] * scale
    U2 = _sign_matrix(in_f, n, scale / math.sqrt(in_f), generator).to(dev, dt)
    U2[:, :b] = Ul[:, a:q] * scale
    S1 = W @ U1.T
    S1[:, a:] = 0
    S2 = U2.T @ W
    S2[b:] = 0
    return S1, U2, U1, S2


# ---------------------------------------------------------------------------
# The layer.
# ---------------------------------------------------------------------------


class SKLinear(nn.Module):
    """Sketched linear layer: ``y = 1/(2L) sum_i [(x S1_i) U1_i + (x U2_i) S2_i] + b``.

    A drop-in replacement for ``nn.Linear(in_features, out_features, bias)`` whose
    parameter count and forward cost are ``L*k*(in + out)`` instead of ``in*out``.

    Args:
        in_features: size of each input sample's last dimension.
        out_features: size of each output sample's last dimension.
        num_terms: ``L``, the number of independent sketch terms averaged.
        low_rank: ``k``, the sketch size of each term.
        W_init: optional initial weight in ``nn.Linear.weight`` layout
            ``(out_features, in_features)``; without it the weight is drawn
            Kaiming-uniform exactly as ``nn.Linear`` draws it.
        bias: whether the layer has a learnable bias.
        dtype, device: where the parameters live.
        seed: seed of the sketches (an int in ``[0, 2**63)``); ``None`` draws one from
            torch's global RNG. Recorded as ``self.seed`` so the layer can be rebuilt.
        init: ``"random"`` for scaled sign sketches (unbiased, ``E[y] = xW + b``) or
            ``"svd"`` for sketches taken from the weight's dominant singular subspaces,
            which makes the layer the rank-``min(2*L*k, in, out)`` truncated SVD of the
            weight (far more accurate for trained weights, same structure and cost).
            The factorization is cached per weight object and version, so building many
            layers from one trained layer (as the tuner does) factorizes it once.

    Attributes:
        S1: learnable ``(in, L*k)``; column block ``i`` is ``S1_i``.
        S2: learnable ``(L*k, out)``; row block ``i`` is ``S2_i``.
        U1: buffer ``(L*k, out)``; row block ``i`` is ``U1_i``.
        U2: buffer ``(in, L*k)``; column block ``i`` is ``U2_i``.
        bias: learnable ``(out,)`` or ``None``.

    Raises:
        ValueError: non-positive sizes, a ``W_init`` of the wrong shape, an unknown ``init``.
        TypeError: sizes that are not integers.

    Warns:
        UserWarning: when ``L*k*(in + out) > in*out`` (the sketch is larger than the
        dense layer it replaces).
    """

    S1: Tensor
    S2: Tensor
    U1: Tensor
    U2: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_terms: int,
        low_rank: int,
        W_init: Tensor | None = None,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
        init: str = "random",
    ) -> None:
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        self.num_terms = _check_size("num_terms", num_terms)
        self.low_rank = _check_size("low_rank", low_rank)
        self.init = _check_init(init)
        if W_init is not None:
            if not isinstance(W_init, Tensor):
                raise TypeError(f"W_init must be a torch.Tensor, got {type(W_init).__name__}")
            expected = (self.out_features, self.in_features)
            if tuple(W_init.shape) != expected:
                raise ValueError(
                    f"W_init must have nn.Linear.weight's shape (out_features, in_features) = "
                    f"{expected}, got {tuple(W_init.shape)}; transpose it if it is (in, out)"
                )
        self.seed = _resolve_seed(seed)

        n = self.num_terms * self.low_rank
        sketch_params = n * (self.in_features + self.out_features)
        dense_params = self.in_features * self.out_features
        if sketch_params > dense_params:
            warnings.warn(
                f"SKLinear({self.in_features}, {self.out_features}, num_terms={self.num_terms}, "
                f"low_rank={self.low_rank}) has {sketch_params} sketch parameters, more than the "
                f"{dense_params} of the dense layer; lower num_terms*low_rank below "
                f"{dense_params // (self.in_features + self.out_features) + 1} to compress it",
                UserWarning,
                stacklevel=2,
            )

        factory = {"device": device, "dtype": dtype}
        self.S1 = nn.Parameter(torch.empty(self.in_features, n, **factory))
        self.S2 = nn.Parameter(torch.empty(n, self.out_features, **factory))
        self.register_buffer("U1", torch.empty(n, self.out_features, **factory))
        self.register_buffer("U2", torch.empty(self.in_features, n, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)

        if W_init is None:
            self.reset_parameters()
        else:
            self._reset_bias()
            self.init_from_weight(W_init)

    # -- initialisation ------------------------------------------------------

    def _reset_bias(self) -> None:
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)

    def reset_parameters(self) -> None:
        """Draw a fresh dense weight and bias as ``nn.Linear`` does, then re-sketch it.

        The weight is Kaiming-uniform from torch's global RNG; the sketches come from
        ``self.seed`` (so they are the same as before for ``init="random"``).
        """
        weight = torch.empty(
            self.out_features, self.in_features, dtype=self.S1.dtype, device=self.S1.device
        )
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self._reset_bias()
        self.init_from_weight(weight)

    @torch.no_grad()
    def init_from_weight(self, weight: Tensor) -> None:
        """Set the sketches and factors from a dense weight in ``nn.Linear.weight`` layout.

        Follows ``self.init`` and ``self.seed``; the bias is left unchanged.
        """
        expected = (self.out_features, self.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight must have shape {expected}, got {tuple(weight.shape)}")
        _check_finite(weight)
        work = _work_dtype(self.S1.dtype)
        W = weight.detach().to(device=self.S1.device, dtype=work).T  # (in, out)
        gen = _generator(self.seed)
        if self.init == "random":
            n, k = self.num_terms * self.low_rank, self.low_rank
            scale = 1.0 / math.sqrt(k)
            U1 = _sign_matrix(n, self.out_features, scale, gen).to(W.device, work)
            U2 = _sign_matrix(self.in_features, n, scale, gen).to(W.device, work)
            S1 = W @ U1.T
            S2 = U2.T @ W
        else:
            S1, U2, U1, S2 = _svd_linear_factors(
                W, self.num_terms, self.low_rank, gen, source=weight
            )
        self.S1.copy_(S1)
        self.S2.copy_(S2)
        self.U1.copy_(U1)
        self.U2.copy_(U2)

    # -- forward and helpers -------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer to ``x`` of shape ``(..., in_features)`` (1-D included)."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"SKLinear expects inputs of shape (..., {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        # The factors were validated at construction: one call into the compiled op (with
        # autograd in C++) instead of the generic dispatch with its per-call checks. They are
        # read from the module's dicts directly: nn.Module.__getattr__ costs ~0.7 us apiece,
        # a measurable share of a small layer's call.
        params, buffers = self._parameters, self._buffers
        return ops.sketched_linear_prevalidated(
            x, params["S1"], buffers["U2"], buffers["U1"], params["S2"], params["bias"],
            self.num_terms
        )

    def dense_weight(self) -> Tensor:
        """The dense weight this layer currently computes, in ``nn.Linear.weight`` layout.

        ``(S1 U1 + U2 S2)^T / (2L)``, shape ``(out_features, in_features)``; differentiable.
        """
        W = (self.S1 @ self.U1 + self.U2 @ self.S2) / (2 * self.num_terms)
        return W.T

    @property
    def sketch_parameter_count(self) -> int:
        """Learnable weight entries of the sketch, ``L*k*(in + out)`` (bias excluded)."""
        return self.num_terms * self.low_rank * (self.in_features + self.out_features)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        num_terms: int,
        low_rank: int,
        seed: int | None = None,
        init: str = "random",
    ) -> SKLinear:
        """Sketch an existing ``nn.Linear``: copies its weight and bias, device, dtype and mode."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        # The parameter itself (not a detached alias) keys the init="svd" factorization cache,
        # so building many layers from one original factorizes its weight once.
        weight = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            num_terms,
            low_rank,
            W_init=weight,
            bias=linear.bias is not None,
            dtype=weight.dtype,
            device=weight.device,
            seed=seed,
            init=init,
        )
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias.detach())
        layer.train(linear.training)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_terms={self.num_terms}, low_rank={self.low_rank}, "
            f"bias={self.bias is not None}, init={self.init!r}, seed={self.seed}"
        )
