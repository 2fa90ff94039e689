"""Ready-made evaluation functions for ``SKAutoTuner``.

Each public function here is a *factory*: it takes options and returns an
:class:`Evaluator`, a callable ``model -> float``. They replace the hand-written
speed and accuracy functions of the tutorial::

    from panther.tuner.evaluators import agreement, throughput

    speed_eval_func = throughput(torch.randn(64, 20))        # samples / second, higher is better
    accuracy_eval_func = agreement(model, val_loader)        # no labels needed

    tuner = SKAutoTuner(model, configs, accuracy_eval_func=accuracy_eval_func,
                        accuracy_threshold=0.98, optimization_eval_func=speed_eval_func)

Direction: ``throughput``, ``agreement`` and ``output_similarity`` are *higher is
better* and can be given to the tuner as they are. ``latency``, ``param_count``,
``memory`` and ``flops`` are *lower is better*; pass ``negate=True`` (returns
``-x``) or ``inverse=True`` (returns ``1/x``) to get a value the tuner can
maximise. Every evaluator has a ``higher_is_better`` attribute saying which kind
it is after these options.

They are registered under their names through the ``panther_evaluators`` hook,
so ``panther.tuner.plugins.get_evaluator("throughput", example_input=x)`` and the
CLI can build them by name.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from panther.tuner.hookspecs import hookimpl
from panther.tuner.timing import device_of, eval_mode, time_calls

__all__ = [
    "Evaluator",
    "throughput",
    "latency",
    "agreement",
    "output_similarity",
    "param_count",
    "memory",
    "flops",
    "panther_evaluators",
]


class Evaluator:
    """A named ``model -> float`` function with its optimisation direction.

    Attributes:
        name: the evaluator's registry name (``"throughput"``, ...).
        higher_is_better: ``True`` when larger values are better (what the tuner
            maximises); ``False`` for costs such as latency or memory.
        options: the options it was built with, for display.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[nn.Module], float],
        higher_is_better: bool,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.higher_is_better = higher_is_better
        self.options = dict(options or {})
        self._fn = fn

    def __call__(self, model: nn.Module) -> float:
        """Evaluate ``model``; the result is a Python float."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.name} evaluator needs an nn.Module, got {type(model).__name__}")
        return float(self._fn(model))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={_short(v)}" for k, v in self.options.items())
        direction = "higher is better" if self.higher_is_better else "lower is better"
        return f"<Evaluator {self.name}({opts}); {direction}>"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, nn.Module):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- shared helpers -------------------------------------------------------------------------------


#: The device of the model's first parameter or buffer (CPU for a stateless model).
model_device = device_of


def _has_state(model: nn.Module) -> bool:
    return any(True for _ in model.parameters()) or any(True for _ in model.buffers())


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _call(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _grad_context(inference_mode: bool):
    return torch.inference_mode() if inference_mode else torch.no_grad()


def _direction(value: float, negate: bool, inverse: bool) -> float:
    if negate:
        return -value
    if inverse:
        return math.inf if value == 0 else 1.0 / value
    return value


def _check_direction(negate: bool, inverse: bool, name: str) -> None:
    if negate and inverse:
        raise ValueError(f"{name}: pass at most one of negate=True and inverse=True")


# --- speed ----------------------------------------------------------------------------------------


def _input_from_shape(name: str, example_input: Any, input_shape: Sequence[int] | None) -> Any:
    """``example_input``, or a fixed random float tensor of ``input_shape`` (for config files)."""
    if input_shape is None:
        return example_input
    if example_input is not None:
        raise ValueError(f"{name}: pass either example_input or input_shape, not both")
    if (
        isinstance(input_shape, (str, bytes))
        or not isinstance(input_shape, Sequence)
        or not input_shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    ):
        raise ValueError(f"{name}: input_shape must be a non-empty list of positive ints, got {input_shape!r}")
    return torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))


def _timing_setup(
    name: str,
    example_input: Any,
    input_factory: Callable[[], Any] | None,
    batch_size: int | None,
    warmup: int,
    iters: int,
    repeats: int,
) -> None:
    if (example_input is None) == (input_factory is None):
        raise ValueError(
            f"{name} needs exactly one of example_input (a tensor, a tuple of positional inputs or a "
            "dict of keyword inputs), input_shape (for a random float input) and input_factory "
            "(a function returning an input)"
        )
    if input_factory is not None and not callable(input_factory):
        raise TypeError(f"{name}: input_factory must be callable, got {type(input_factory).__name__}")
    if batch_size is not None:
        _check_count(batch_size, f"{name} batch_size", 1)
    _check_count(warmup, f"{name} warmup", 0)
    _check_count(iters, f"{name} iters", 1)
    _check_count(repeats, f"{name} repeats", 1)
    if example_input is not None and batch_size is None:
        _infer_batch_size(name, example_input)


def _infer_batch_size(name: str, inputs: Any) -> int:
    first = _first_tensor(inputs)
    if first is None or first.dim() == 0:
        raise ValueError(
            f"{name}: cannot infer the batch size from the input (no tensor with a leading batch "
            "dimension found); pass batch_size="
        )
    return int(first.shape[0])


def _seconds_per_batch(
    model: nn.Module,
    example_input: Any,
    input_factory: Callable[[], Any] | None,
    device: torch.device | str | None,
    warmup: int,
    iters: int,
    repeats: int,
    inference_mode: bool,
) -> tuple[float, Any]:
    """Median wall time of one forward pass over ``repeats`` blocks of ``iters`` calls."""
    dev = torch.device(device) if device is not None else model_device(model)
    if device is not None and _has_state(model):
        have = model_device(model)
        if have.type != dev.type or (have.index is not None and dev.index is not None and have.index != dev.index):
            raise ValueError(
                f"the model is on {have} but device={dev} was asked for; move the model first "
                f"(model.to({str(dev)!r})) or leave device=None to measure where it is"
            )
    inputs = input_factory() if input_factory is not None else example_input
    inputs = _to_device(inputs, dev)
    with eval_mode(model), _grad_context(inference_mode):
        times = time_calls(lambda: _call(model, inputs), warmup=warmup, iters=iters, repeats=repeats,
                           device=dev, clock=time.perf_counter)
    return statistics.median(times), inputs


def throughput(
    example_input: Any = None,
    *,
    input_factory: Callable[[], Any] | None = None,
    input_shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    warmup: int = 3,
    iters: int = 10,
    repeats: int = 3,
    device: torch.device | str | None = None,
    inference_mode: bool = True,
) -> Evaluator:
    """Inference throughput in samples per second (higher is better).

    The model is put in eval mode for the measurement (each submodule's mode is
    restored afterwards) and run without autograd: ``warmup`` untimed calls, then
    ``repeats`` timed blocks of ``iters`` calls, synchronising CUDA/MPS before
    reading the clock. The median block gives seconds per batch;
    the result is ``batch_size / seconds``.

    This is the one-line replacement of the tutorial's speed function::

        speed_eval_func = throughput(torch.randn(64, 20))

    Args:
        example_input: a tensor, a tuple/list of positional inputs, or a dict of
            keyword inputs. It is moved to ``device``.
        input_factory: instead of ``example_input``, a function ``() -> input``
            called once per evaluation (outside the timed region).
        input_shape: instead of ``example_input``, the shape of a fixed random
            float input (handy in config files: ``input_shape = [64, 20]``).
        batch_size: samples per call; by default dim 0 of the first input tensor.
        warmup: untimed calls before measuring (lets caches, allocators and
            lazy kernels settle).
        iters: calls per timed block.
        repeats: timed blocks; the median is used, which resists outliers.
        device: where inputs go; by default the model's device. The model is not
            moved: put it on the device you want to measure.
        inference_mode: use ``torch.inference_mode()`` (fastest); ``False`` uses
            ``torch.no_grad()``, for models that cache tensors in forward and
            reuse them in training later.
    """
    example_input = _input_from_shape("throughput", example_input, input_shape)
    _timing_setup("throughput", example_input, input_factory, batch_size, warmup, iters, repeats)

    def measure(model: nn.Module) -> float:
        seconds, inputs = _seconds_per_batch(
            model, example_input, input_factory, device, warmup, iters, repeats, inference_mode
        )
        n = batch_size if batch_size is not None else _infer_batch_size("throughput", inputs)
        # perf_counter can read 0 for a trivial model on a coarse clock
        return n / max(seconds, 1e-12)

    return Evaluator(
        "throughput",
        measure,
        higher_is_better=True,
        options={"example_input": example_input, "batch_size": batch_size, "warmup": warmup,
                 "iters": iters, "repeats": repeats, "device": device},
    )


def latency(
    example_input: Any = None,
    *,
    input_factory: Callable[[], Any] | None = None,
    input_shape: Sequence[int] | None = None,
    warmup: int = 3,
    iters: int = 10,
    repeats: int = 3,
    device: torch.device | str | None = None,
    inference_mode: bool = True,
    negate: bool = False,
    inverse: bool = False,
) -> Evaluator:
    """Median seconds per forward pass (per batch); **lower is better**.

    Measured exactly like :func:`throughput` (which is the one to hand the tuner
    as an optimisation function). To maximise with the tuner anyway, use
    ``negate=True`` (returns ``-seconds``) or ``inverse=True`` (calls per second).
    """
    example_input = _input_from_shape("latency", example_input, input_shape)
    _timing_setup("latency", example_input, input_factory, 1, warmup, iters, repeats)
    _check_direction(negate, inverse, "latency")

    def measure(model: nn.Module) -> float:
        seconds, _ = _seconds_per_batch(
            model, example_input, input_factory, device, warmup, iters, repeats, inference_mode
        )
        return _direction(seconds, negate, inverse)

    return Evaluator(
        "latency",
        measure,
        higher_is_better=negate or inverse,
        options={"example_input": example_input, "warmup": warmup, "iters": iters,
                 "repeats": repeats, "device": device, "negate": negate, "inverse": inverse},
    )


# --- accuracy without labels ----------------------------------------------------------------------


def _batches(inputs: Any, name: str) -> list[Any]:
    """Materialise the model inputs once, so every evaluation sees the same data in the same order.

    A shuffling DataLoader would otherwise pair the cached reference outputs
    with different samples on each pass.
    """
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"{name}: inputs must be a tensor, a list of tensors, or an iterable (e.g. a DataLoader) "
            f"of tensors or (x, y) tuples; got {type(inputs).__name__}"
        )
    batches: list[Any] = []
    for i, item in enumerate(inputs):
        if isinstance(item, torch.Tensor):
            batches.append(item)
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            batches.append(item[0])  # (x, y): the label is not needed
        else:
            raise TypeError(
                f"{name}: item {i} of inputs is {type(item).__name__}; expected a tensor or an "
                "(x, y) tuple whose first element is the input tensor"
            )
    if not batches:
        raise ValueError(f"{name}: inputs is empty; give at least one batch")
    return batches


def _default_output(output: Any) -> torch.Tensor:
    """Pick the prediction tensor out of common output containers."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        output = list(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # e.g. nn.MultiheadAttention's (attn_output, weights)
    raise TypeError(
        f"cannot find the prediction tensor in a model output of type {type(output).__name__}; "
        "pass output_fn= to extract it"
    )


class _Outputs:
    """Runs a model over the materialised batches and post-processes each output."""

    def __init__(self, batches: list[Any], output_fn: Callable[[Any], torch.Tensor] | None, name: str):
        self.batches = batches
        self.output_fn = output_fn or _default_output
        self.name = name

    def run(self, model: nn.Module, post: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        device = model_device(model)
        out: list[torch.Tensor] = []
        with eval_mode(model), torch.no_grad():
            for x in self.batches:
                y = self.output_fn(_call(model, x.to(device)))
                if not isinstance(y, torch.Tensor):
                    raise TypeError(f"{self.name}: output_fn returned {type(y).__name__}, expected a tensor")
                out.append(post(y).detach())
        return out


def agreement(
    reference_model: nn.Module,
    inputs: Any,
    *,
    dim: int = -1,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> Evaluator:
    """Fraction of predictions where the tuned model's argmax equals the reference's.

    An accuracy function that needs no labels: the original model's own
    predictions are the target (higher is better, in ``[0, 1]``). The reference
    predictions are computed **once, when the evaluator is built**, so the
    reference may be the very model the tuner modifies in place::

        accuracy_eval_func = agreement(model, val_loader)

    Args:
        reference_model: the original model.
        inputs: a tensor (one batch), a list of tensors, or an iterable such as a
            DataLoader of tensors or ``(x, y)`` tuples (labels are ignored). It is
            read once and kept, so later calls see the same samples in the same
            order even if the loader shuffles.
        dim: the class dimension of the output; with ``(batch, classes)`` outputs
            each sample counts once, with ``(batch, seq, vocab)`` each position.
        output_fn: extracts the logits from the model's output; by default the
            output itself, its ``.logits``/``["logits"]``, or the first element of
            a tuple.
    """
    if not isinstance(reference_model, nn.Module):
        raise TypeError(f"agreement: reference_model must be an nn.Module, got {type(reference_model).__name__}")
    runner = _Outputs(_batches(inputs, "agreement"), output_fn, "agreement")
    reference = runner.run(reference_model, lambda y: y.argmax(dim=dim))
    total = sum(r.numel() for r in reference)
    if total == 0:
        raise ValueError("agreement: the reference model produced no predictions for these inputs")

    def measure(model: nn.Module) -> float:
        predicted = runner.run(model, lambda y: y.argmax(dim=dim))
        same = 0
        for p, r in zip(predicted, reference, strict=True):
            if p.shape != r.shape:
                raise ValueError(
                    f"agreement: the model's predictions have shape {tuple(p.shape)} but the "
                    f"reference's have {tuple(r.shape)}"
                )
            same += int((p.to(r.device) == r).sum().item())
        return same / total

    return Evaluator(
        "agreement",
        measure,
        higher_is_better=True,
        options={"reference_model": reference_model, "batches": len(runner.batches), "dim": dim},
    )


def output_similarity(
    reference_model: nn.Module,
    inputs: Any,
    *,
    floor: float | None = 0.0,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> Evaluator:
    """``1 - relative error`` of the tuned model's outputs against the reference's.

    For regression and embedding models where argmax agreement means nothing.
    The relative error is ``||Y - Y_ref||_F / ||Y_ref||_F`` over all outputs of
    all batches together, so it is 0 for identical outputs (similarity 1.0) and
    1 for a model that outputs zeros. Higher is better.

    Args:
        reference_model: the original model; its outputs are computed once, when
            the evaluator is built, and kept (in float32).
        inputs: as for :func:`agreement`.
        floor: the similarity is clamped to at least this value (default 0.0, so
            the result lies in ``[0, 1]`` and anything worse than outputting zeros
            scores 0). ``None`` disables the clamp, which keeps distinguishing
            very bad configurations (values can be far below 0).
        output_fn: as for :func:`agreement`.
    """
    if not isinstance(reference_model, nn.Module):
        raise TypeError(
            f"output_similarity: reference_model must be an nn.Module, got {type(reference_model).__name__}"
        )
    if floor is not None and not isinstance(floor, (int, float)):
        raise TypeError(f"output_similarity: floor must be a number or None, got {floor!r}")
    runner = _Outputs(_batches(inputs, "output_similarity"), output_fn, "output_similarity")
    reference = runner.run(reference_model, lambda y: y.float())
    ref_norm_sq = sum(float(r.pow(2).sum()) for r in reference)
    if not ref_norm_sq > 0 or not math.isfinite(ref_norm_sq):
        raise ValueError(
            "output_similarity: the reference outputs are all zero (or not finite), so the relative "
            "error is undefined; use a different evaluator or inputs"
        )

    def measure(model: nn.Module) -> float:
        outputs = runner.run(model, lambda y: y.float())
        err_sq = 0.0
        for y, r in zip(outputs, reference, strict=True):
            if y.shape != r.shape:
                raise ValueError(
                    f"output_similarity: the model's output has shape {tuple(y.shape)} but the "
                    f"reference's has {tuple(r.shape)}"
                )
            err_sq += float((y.to(r.device) - r).pow(2).sum())
        similarity = 1.0 - math.sqrt(err_sq / ref_norm_sq)
        if math.isnan(similarity):
            return -math.inf if floor is None else float(floor)
        return similarity if floor is None else max(float(floor), similarity)

    return Evaluator(
        "output_similarity",
        measure,
        higher_is_better=True,
        options={"reference_model": reference_model, "batches": len(runner.batches), "floor": floor},
    )


# --- size and work --------------------------------------------------------------------------------


def param_count(*, trainable_only: bool = False, negate: bool = False, inverse: bool = False) -> Evaluator:
    """Number of parameters (lower is better; shared parameters count once).

    Buffers are not parameters: the fixed random matrices of sketched layers
    live in buffers, so use :func:`memory` to count everything the model stores.
    ``negate=True``/``inverse=True`` turn the count into a value to maximise.
    """
    _check_direction(negate, inverse, "param_count")

    def measure(model: nn.Module) -> float:
        params = (p for p in model.parameters() if p.requires_grad or not trainable_only)
        return _direction(float(sum(p.numel() for p in params)), negate, inverse)

    return Evaluator(
        "param_count", measure, higher_is_better=negate or inverse,
        options={"trainable_only": trainable_only, "negate": negate, "inverse": inverse},
    )


def memory(*, negate: bool = False, inverse: bool = False) -> Evaluator:
    """Bytes held by the model's parameters and buffers (lower is better).

    Tensors shared between modules count once. ``negate=True``/``inverse=True``
    turn the size into a value to maximise.
    """
    _check_direction(negate, inverse, "memory")

    def measure(model: nn.Module) -> float:
        seen: set[int] = set()
        total = 0
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return _direction(float(total), negate, inverse)

    return Evaluator("memory", measure, higher_is_better=negate or inverse,
                     options={"negate": negate, "inverse": inverse})


def _plugins():
    # Imported lazily: the plugin host imports this module to register it.
    from panther.tuner import plugins

    return plugins


def _module_cost(module: nn.Module, layer_types: Sequence[Any], layer_type_for: Callable) -> int | None:
    """Multiply-adds per row/position of ``module`` from its layer type's cost model, or None.

    An original layer is costed by ``lt.cost(module)``. A sketched layer (its type
    is some layer type's ``sketched_type``) is costed by ``lt.cost(module, params)``
    with the params read from its attributes: the built-in cost models only read
    shape attributes (``in_features``, ``out_channels``, ``embed_dim``, ...) that
    the sketched classes share with the originals.
    """
    lt = layer_type_for(module)
    if lt is not None:
        return int(lt.cost(module).macs)
    for lt in layer_types:
        if type(module) is getattr(lt, "sketched_type", None):
            params = {p: getattr(module, p) for p in lt.param_names if hasattr(module, p)}
            try:
                return int(lt.cost(module, params).macs)
            except Exception as err:  # noqa: BLE001 - a plugin's cost model may not accept sketched modules
                warnings.warn(
                    f"flops: the {lt.name} cost model cannot cost a {type(module).__name__} ({err}); "
                    "counting its weight elements instead",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return sum(t.numel() for t in [*module.parameters(), *module.buffers()] if t.dim() >= 2)
    return None


def _positions(module: nn.Module, output: Any) -> int:
    """How many rows/positions a layer processed, from its output.

    Cost models give work per row (linear, attention: the last dim is the feature
    dim) or per output position (convolutions: ``out_channels`` values each,
    batched or not, so dividing by the channel count needs no layout guess).
    """
    out = _first_tensor(output)
    if out is None or out.dim() == 0:
        return 1
    channels = getattr(module, "out_channels", None)
    width = channels if isinstance(channels, int) and channels > 0 else out.shape[-1]
    return out.numel() // width if width else 0


def flops(
    example_input: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    negate: bool = False,
    inverse: bool = False,
) -> Evaluator:
    """Multiply-adds of the model's sketchable and sketched layers (lower is better).

    The work of each layer comes from its layer type's cost model
    (``panther.tuner.plugins.layer_type_for(m).cost(m)`` for original layers; for
    sketched layers the cost of their configuration). Layers without a layer type
    (activations, norms, ...) are not counted, so this measures the part of the
    model that sketching changes; nested layers inside a costed layer are not
    counted twice. The unit is multiply-adds (MACs), as the cost models report
    them; floating-point operations are about twice that. Exact attention is
    costed at the sequence length its layer type assumes
    (``AttentionLayerType.seq_len``, 512 by default), not at the length of
    ``example_input``: the cost model has no input to read it from.

    Args:
        example_input: with an input, the model is run once (eval mode, no grad)
            and each layer's per-row cost is multiplied by the rows/positions it
            actually processed: the result is the total multiply-adds of that
            forward pass (pass a batch of one for per-sample figures). Without
            one, the per-row/position costs are summed, a size-independent proxy.
        input_shape: instead of ``example_input``, the shape of a random float input.
        negate, inverse: return ``-macs`` or ``1/macs`` to maximise with the tuner.
    """
    _check_direction(negate, inverse, "flops")
    example_input = _input_from_shape("flops", example_input, input_shape)

    def measure(model: nn.Module) -> float:
        plugins = _plugins()
        layer_types = list(plugins.layer_types())
        costs: dict[str, tuple[nn.Module, int]] = {}
        for name, m in model.named_modules():
            if any(name.startswith(prefix + ".") or prefix == "" for prefix in costs):
                continue
            macs = _module_cost(m, layer_types, plugins.layer_type_for)
            if macs is not None:
                costs[name] = (m, macs)
        if example_input is None:
            return _direction(float(sum(macs for _, macs in costs.values())), negate, inverse)
        counted: dict[str, int] = {}
        handles = []
        for name, (m, _) in costs.items():
            def hook(mod, args, output, _name=name):
                counted[_name] = counted.get(_name, 0) + _positions(mod, output)

            handles.append(m.register_forward_hook(hook))
        try:
            with eval_mode(model), torch.no_grad():
                _call(model, _to_device(example_input, model_device(model)))
        finally:
            for h in handles:
                h.remove()
        total = sum(costs[name][1] * rows for name, rows in counted.items())
        return _direction(float(total), negate, inverse)

    return Evaluator("flops", measure, higher_is_better=negate or inverse,
                     options={"example_input": example_input, "negate": negate, "inverse": inverse})


@hookimpl
def panther_evaluators() -> dict[str, Callable[..., Evaluator]]:
    """Register the built-in evaluator factories by name."""
    return {
        "throughput": throughput,
        "latency": latency,
        "agreement": agreement,
        "output_similarity": output_similarity,
        "param_count": param_count,
        "memory": memory,
        "flops": flops,
    }
