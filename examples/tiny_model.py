"""A tiny trained model and its accuracy function, for ``examples/tiny_config.toml``.

``panther-tune tune examples/tiny_config.toml`` imports this module (the config's
folder is put on the import path) and calls :func:`build_model` and
:func:`accuracy`. Copy it as a template for your own model: a factory returning a
trained ``nn.Module`` and a function ``model -> float`` (higher is better).

The task is synthetic and deterministic: labels come from a fixed random
"teacher" network, so nothing is downloaded and training takes about a second.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

IN_FEATURES = 32
NUM_CLASSES = 4


@functools.cache
def make_data(seed: int = 0, n_train: int = 2048, n_val: int = 512) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_val, y_val)`` labelled by a random teacher network."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, IN_FEATURES, generator=gen)
    teacher = torch.randn(IN_FEATURES, NUM_CLASSES, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def build_model(hidden: int = 256, epochs: int = 15, seed: int = 0) -> nn.Module:
    """An MLP ``32 -> hidden -> hidden -> 4`` trained on :func:`make_data` (eval mode)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(IN_FEATURES, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )
    x, y, _, _ = make_data(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_gen)
        for start in range(0, len(x), 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module) -> float:
    """Validation accuracy of ``model`` on the held-out part of :func:`make_data`."""
    _, _, x_val, y_val = make_data(0)
    return (model(x_val).argmax(dim=1) == y_val).float().mean().item()


def example_batch() -> torch.Tensor:
    """A fixed batch of 64 inputs for speed evaluators (``{call = "tiny_model:example_batch"}``)."""
    return make_data(0)[2][:64]
