"""How much a sketch of a layer perturbs it, predicted from the weights and measured cheaply.

Two measures, both far cheaper than an accuracy evaluation:

* **Predicted weight error** (:func:`predicted_error`), from the singular values of the
  weight alone. ``SKLinear``/``SKConv2d`` built with ``init="svd"`` compute the rank-``q``
  truncated SVD of the matrix they sketch, with ``q = min(2 * num_terms * low_rank,
  rows, cols)`` (see :func:`panther.nn.linear._svd_linear_factors` and
  :func:`panther.nn.conv._svd_conv_sketch`: the two halves of the ``2L`` sketches cover
  different singular blocks). The relative Frobenius error of the layer's effective weight
  is then ``sqrt(sum_{j >= q} s_j^2 / sum_j s_j^2)``. For ``init="random"`` (scaled sign
  sketches) the prediction is the root-mean-square error over the random draw, derived
  from the sketches' second moments: ``sqrt((in + out - 2) / (4 L k))`` for a linear layer
  (``2L`` averaged terms, each with an ``out``- or ``in``-sided sketch of ``k`` rows) and
  ``sqrt((out - 1) / (2 L k))`` for a convolution (``2L`` output-sided terms).
* **Measured output error** (:class:`CalibrationProbe`), on a few calibration batches
  captured while the tuner evaluates the original model: the relative change of the
  layer's own output, and of the whole model's output, when the candidate is swapped in.
  One forward per candidate.

The guided strategy (:mod:`panther.tuner.allocation`) orders and prunes candidates by
these before any full evaluation; every trial row records the prediction beside what was
measured, so users can see how well it predicted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from panther.tuner.timing import eval_mode

__all__ = [
    "sketched_matrix",
    "singular_values",
    "predicted_error",
    "group_predicted_error",
    "relative_error",
    "CalibrationProbe",
    "rank_correlation",
]


def sketched_matrix(module: nn.Module) -> torch.Tensor | None:
    """The matrix whose truncation ``init="svd"`` builds, or ``None`` for other layers.

    ``nn.Linear``: the weight ``(out, in)`` (its transpose has the same singular values).
    ``nn.Conv2d``: the kernel unfolded along the output mode, ``(out, in*kh*kw)``.
    """
    if isinstance(module, nn.Linear):
        return module.weight.detach()
    if isinstance(module, nn.Conv2d):
        w = module.weight.detach()
        return w.reshape(w.shape[0], -1)
    return None


def singular_values(module: nn.Module) -> torch.Tensor | None:
    """All singular values (float64, descending) of :func:`sketched_matrix`, or ``None``."""
    matrix = sketched_matrix(module)
    if matrix is None:
        return None
    return torch.linalg.svdvals(matrix.to(device="cpu", dtype=torch.float64))


def _shape(module: nn.Module) -> tuple[int, int] | None:
    """``(fan_in, fan_out)`` of the sketched matrix."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw, module.out_channels
    return None


def predicted_error(
    module: nn.Module,
    params: Mapping[str, Any],
    svals: torch.Tensor | None = None,
) -> float | None:
    """Predicted relative Frobenius error of the sketched layer's weight (module docstring).

    Args:
        module: the original ``nn.Linear`` or ``nn.Conv2d``.
        params: ``num_terms``, ``low_rank`` and ``init`` (missing ``init`` means ``"svd"``,
            the layer types' default; missing sizes make the prediction ``None``).
        svals: the module's singular values when already computed (:func:`singular_values`).

    Returns:
        ``||W_sketch - W||_F / ||W||_F`` (0 for an all-zero weight), or ``None`` when the
        layer or the parameters are not ones the formula covers.
    """
    shape = _shape(module)
    terms, rank = params.get("num_terms"), params.get("low_rank")
    if shape is None or not _positive_int(terms) or not _positive_int(rank):
        return None
    fan_in, fan_out = shape
    init = params.get("init", "svd")
    if init == "random":
        if isinstance(module, nn.Conv2d):
            return math.sqrt(max(fan_out - 1, 0) / (2 * terms * rank))
        return math.sqrt(max(fan_in + fan_out - 2, 0) / (4 * terms * rank))
    if init != "svd":
        return None
    s = singular_values(module) if svals is None else svals
    energy = s.square()
    total = float(energy.sum())
    if total <= 0.0:
        return 0.0
    q = min(2 * terms * rank, fan_in, fan_out)
    tail = float(energy[q:].sum())
    return math.sqrt(max(tail, 0.0) / total)


def group_predicted_error(
    modules: Mapping[str, nn.Module],
    params: Mapping[str, Any],
    svals: Mapping[str, torch.Tensor | None] | None = None,
) -> float | None:
    """Energy-weighted predicted error of a group of layers sketched with the same ``params``.

    ``sqrt(sum_l e_l^2 ||W_l||^2 / sum_l ||W_l||^2)``: for one layer this is its own
    :func:`predicted_error`. ``None`` when any layer has no prediction.
    """
    num = den = 0.0
    for name, module in modules.items():
        s = None if svals is None else svals.get(name)
        err = predicted_error(module, params, s)
        if err is None:
            return None
        matrix = sketched_matrix(module)
        weight = float(matrix.double().square().sum()) if matrix is not None else 1.0
        num += err * err * weight
        den += weight
    if den <= 0.0:
        return 0.0 if modules else None
    return math.sqrt(num / den)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# --- measured on calibration batches --------------------------------------------------------------


def _floating_tensors(obj: Any) -> list[torch.Tensor]:
    """The floating tensors of a model output (tensor, tuple/list, dict, ``ModelOutput``)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() or obj.is_complex() else []
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _floating_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _floating_tensors(v)]
    return []


def _main_output(obj: Any) -> torch.Tensor | None:
    """The tensor the output error is measured on: the first floating tensor with a batch axis.

    A leading scalar (a loss, when labels were passed) is skipped in favour of the logits.
    """
    tensors = _floating_tensors(obj)
    for t in tensors:
        if t.dim() >= 1:
            return t
    return tensors[0] if tensors else None


def relative_error(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``||approx - ref||_F / ||ref||_F`` over all ``(approx, ref)`` pairs together (0/0 = 0)."""
    num = den = 0.0
    for approx, ref in pairs:
        ref64 = ref.detach().double()
        num += float((approx.detach().double() - ref64).square().sum())
        den += float(ref64.square().sum())
    if den <= 0.0:
        return 0.0 if num <= 0.0 else math.inf
    return math.sqrt(num / den)


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _cut(obj: Any, rows: int, total: int) -> Any:
    """``obj`` with every tensor whose leading dimension is the batch (``total``) cut to ``rows``."""
    if isinstance(obj, torch.Tensor):
        return obj[:rows] if obj.dim() and obj.shape[0] == total else obj
    if isinstance(obj, tuple):
        return tuple(_cut(o, rows, total) for o in obj)
    if isinstance(obj, list):
        return [_cut(o, rows, total) for o in obj]
    if isinstance(obj, dict):
        return {k: _cut(v, rows, total) for k, v in obj.items()}
    return obj


def _rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    for t in _floating_tensors((args, kwargs)) or [
        a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)
    ]:
        return int(t.shape[0]) if t.dim() else 1
    return 1


class CalibrationProbe:
    """Calibration batches captured from the original model, to measure candidates' errors.

    Use :meth:`capture` around one evaluation of the original model (the tuner wraps its
    baseline accuracy evaluation): it records the inputs of the first ``max_batches`` calls
    of the model and of each watched layer (stopping at ``max_rows`` samples), and the
    layers' outputs. :meth:`finish` then runs the original model once on its captured
    inputs (eval mode, no autograd) to get the reference outputs.

    Args:
        model: the original model.
        layer_names: the layers whose inputs/outputs are recorded.
        max_batches: calls recorded per module.
        max_rows: samples (leading dimension) recorded per module, in all.
    """

    def __init__(self, model: nn.Module, layer_names: list[str], max_batches: int = 4,
                 max_rows: int = 256) -> None:
        if max_batches < 1 or max_rows < 1:
            raise ValueError("CalibrationProbe needs max_batches >= 1 and max_rows >= 1")
        self.model = model
        self.layer_names = list(layer_names)
        self.max_batches = max_batches
        self.max_rows = max_rows
        self.model_inputs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.layer_inputs: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {
            n: [] for n in self.layer_names}
        self.layer_outputs: dict[str, list[torch.Tensor]] = {n: [] for n in self.layer_names}
        self.reference: list[torch.Tensor] = []
        self._rows: dict[str, int] = {}

    @property
    def has_model_inputs(self) -> bool:
        """Whether the model itself was called (so the model-level output error is available)."""
        return bool(self.reference)

    def _room(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any], stored: int,
              ) -> tuple[int, int] | None:
        """``(rows to keep, rows in the batch)`` when this call is recorded, else ``None``.

        A batch larger than the room left is cut to it (tensors along their leading
        dimension), so one big validation batch does not make every measurement slow.
        """
        have = self._rows.get(key, 0)
        if stored >= self.max_batches or have >= self.max_rows:
            return None
        total = _rows(args, kwargs)
        keep = min(total, self.max_rows - have)
        self._rows[key] = have + keep
        return keep, total

    @contextmanager
    def capture(self) -> Iterator[CalibrationProbe]:
        """Record calibration batches while the block runs the original model."""
        hooks = []

        def root_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            room = self._room("", args, kwargs, len(self.model_inputs))
            if room is not None:
                keep, total = room
                self.model_inputs.append((_cut(_detach(args), keep, total),
                                          _cut(_detach(kwargs), keep, total)))

        def layer_hook(name: str) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                     output: Any) -> None:
                out = _main_output(output)
                room = None if out is None else self._room(name, args, kwargs,
                                                           len(self.layer_inputs[name]))
                if room is not None:
                    keep, total = room
                    self.layer_inputs[name].append((_cut(_detach(args), keep, total),
                                                    _cut(_detach(kwargs), keep, total)))
                    self.layer_outputs[name].append(_cut(out.detach(), keep, total))
            return hook

        from panther.tuner.results import get_submodule

        try:
            hooks.append(self.model.register_forward_pre_hook(root_hook, with_kwargs=True))
            for name in self.layer_names:
                hooks.append(get_submodule(self.model, name).register_forward_hook(
                    layer_hook(name), with_kwargs=True))
            yield self
        finally:
            for h in hooks:
                h.remove()

    def finish(self) -> None:
        """Compute the model's reference outputs on the captured inputs (idempotent)."""
        if self.reference or not self.model_inputs:
            return
        outputs = self._run_model()
        if outputs is None:
            self.model_inputs = []  # the model cannot be re-run on its captured inputs
        else:
            self.reference = outputs

    def _run_model(self) -> list[torch.Tensor] | None:
        outs = []
        try:
            with eval_mode(self.model), torch.inference_mode():
                for args, kwargs in self.model_inputs:
                    out = _main_output(self.model(*args, **kwargs))
                    if out is None:
                        return None
                    outs.append(out)
        except Exception:
            return None
        return outs

    def layer_error(self, name: str, sketched: nn.Module) -> float | None:
        """Relative output error of ``sketched`` against layer ``name`` on its captured inputs."""
        inputs = self.layer_inputs.get(name) or []
        if not inputs:
            return None
        pairs = []
        try:
            with eval_mode(sketched), torch.inference_mode():
                for (args, kwargs), ref in zip(inputs, self.layer_outputs[name]):
                    out = _main_output(sketched(*args, **kwargs))
                    if out is None or out.shape != ref.shape:
                        return None
                    pairs.append((out, ref))
        except Exception:
            return None
        return relative_error(pairs)

    def model_error(self) -> float | None:
        """Relative error of the model's output now (with a candidate swapped in) vs the reference."""
        if not self.reference:
            return None
        outs = self._run_model()
        if outs is None or len(outs) != len(self.reference):
            return None
        if any(o.shape != r.shape for o, r in zip(outs, self.reference)):
            return None
        return relative_error(list(zip(outs, self.reference)))


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (ties get average ranks).

    ``None`` with fewer than 3 pairs or when either list is constant.
    """
    if len(xs) != len(ys):
        raise ValueError(f"rank_correlation needs equally long lists, got {len(xs)} and {len(ys)}")
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for t in range(i, j + 1):
                out[order[t]] = (i + j) / 2.0
            i = j + 1
        return out

    rx = ranks([p[0] for p in pairs])
    ry = ranks([p[1] for p in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx <= 0 or vy <= 0:
        return None
    return cov / math.sqrt(vx * vy)
