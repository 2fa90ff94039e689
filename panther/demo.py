"""The model, data and training behind ``panther-tune demo``.

The demo needs data that ships with an installed package (scikit-learn's 8x8
handwritten digits, no download) and a model wide enough that sketching pays
on a CPU: a small convolutional stem feeding a 2048-wide MLP. Almost all of its
work sits in ``fc2`` (2048 x 2048) and ``fc1``; ``conv2`` is a second layer
type for the tuner to consider.

Everything here is deterministic for a given seed on a given machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from panther.tuner.timing import device_of, eval_mode, time_calls, time_interleaved

__all__ = [
    "DigitsData",
    "DigitsNet",
    "load_digits_data",
    "train_model",
    "accuracy",
    "count_flops",
    "measure_throughput",
    "compare_throughput",
]


@dataclass
class DigitsData:
    """Train/validation split of the digits data as float tensors in ``[0, 1]``.

    Attributes:
        x_train, x_val: images of shape ``(n, 1, 8, 8)``.
        y_train, y_val: class labels ``0..9`` of shape ``(n,)``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def load_digits_data(seed: int = 0, val_fraction: float = 0.2) -> DigitsData:
    """Load scikit-learn's bundled digits (1797 images) and split them reproducibly.

    Args:
        seed: seed of the shuffle that decides the split.
        val_fraction: share of the images held out for validation, in ``(0, 1)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; scaling to [0, 1] keeps the default inits well conditioned.
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_val = max(1, int(round(len(x) * val_fraction)))
    return DigitsData(x[n_val:], y[n_val:], x[:n_val], y[:n_val])


class DigitsNet(nn.Module):
    """Conv stem on the 8x8 image, then a wide MLP classifier.

    ``conv1 -> conv2 -> 2x2 average pool -> fc1 -> fc2 -> head``, ReLU between.
    With the defaults ``fc2`` alone is about two thirds of the multiply-adds.

    Args:
        width: hidden width of the MLP (``fc1`` output, ``fc2`` both sides).
        channels: channels of the two convolutions.
        num_classes: number of output classes.
    """

    def __init__(self, width: int = 2048, channels: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1 or channels < 1 or num_classes < 1:
            raise ValueError(
                f"width, channels and num_classes must be >= 1, got {width}, {channels}, {num_classes}"
            )
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(channels * 16, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for images of shape ``(n, 1, 8, 8)`` (or flat ``(n, 64)``)."""
        x = x.reshape(-1, 1, 8, 8)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.pool(x).flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(x)


def train_model(
    model: nn.Module,
    data: DigitsData,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` with Adam on ``data.x_train``; returns it in eval mode.

    Args:
        epochs: passes over the training set.
        batch_size: mini-batch size.
        lr: Adam learning rate.
        seed: seed of the mini-batch order.
        on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch (for progress).
    """
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.x_train)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (the mode is restored)."""
    correct = 0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            correct += int((logits.argmax(-1) == y[start : start + batch_size]).sum())
    return correct / len(x)


@torch.no_grad()
def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Floating-point operations of one forward pass on ``example`` (torch's flop counter).

    The counter sees the matrix products and convolutions any module issues, so
    it prices sketched layers and original layers the same way. It is exact and
    deterministic, which makes it a noise-free stand-in for speed while tuning.

    The count runs on panther's pure-PyTorch reference ops: the compiled kernels are
    opaque to torch's counter (they would count as zero), and the reference performs
    the same products.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from panther.native import use_backend

    with eval_mode(model), use_backend("reference"), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_throughput(
    model: nn.Module, x: torch.Tensor, iterations: int = 10, repeats: int = 5, warmup: int = 3
) -> float:
    """Inference throughput in samples per second: median over ``repeats`` timed runs.

    Measured in eval mode; every submodule's own train/eval flag is restored afterwards.
    """
    with eval_mode(model):
        times = time_calls(lambda: model(x), warmup=warmup, iters=iterations, repeats=repeats,
                           device=device_of(model))
    return len(x) / statistics.median(times)


@torch.no_grad()
def compare_throughput(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    iterations: int = 10,
    repeats: int = 9,
    warmup: int = 3,
) -> dict[str, float]:
    """Throughput (samples/s) of several models, timed in interleaved rounds.

    Interleaving means a burst of load from other processes hits every model
    alike instead of skewing the ratio. Each model's fastest round is reported:
    other processes can only slow a round down, so the fastest one is the least
    disturbed estimate of what the model itself costs (on a busy machine the
    median can swing by a factor of two between runs, the minimum hardly moves).
    Models are measured in eval mode; each submodule's own flag is restored afterwards.
    """
    with ExitStack() as stack:
        for model in models.values():
            stack.enter_context(eval_mode(model))
        fns = {name: (lambda m=model: m(x)) for name, model in models.items()}
        device = device_of(next(iter(models.values()))) if models else None
        times = time_interleaved(fns, warmup=warmup, iters=iterations, rounds=repeats, device=device)
    return {name: len(x) / min(t) for name, t in times.items()}
