"""The autotuning tutorial is a contract: every python code block in it must run.

The spec lives beside the repository (``<repo>/../shared/spec/autotuning-tutorial.rst``).
Each block runs, in order, in one namespace holding small real stand-ins for the
tutorial's placeholders (``YourModel``, ``val_loader``, ``input_shape``,
``your_accuracy_function``, ``load_my_transformer``, ``get_validation_loader``).
There is no GPU, so ``.cuda()`` and ``torch.cuda.synchronize`` are no-ops; trial
counts and the literal timing loop sizes are shrunk so the file runs in seconds.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "spec" / "autotuning-tutorial.rst"

MAX_TRIALS = 3  # per layer group, for every OptunaSearch the tutorial creates

# Blocks that only construct a tuner which a later section reads results from: the reader
# runs it in between ("Analyzing Results" assumes a finished run), so the test does too.
RUN_AFTER = {"num_runs_per_param=3": "tuner.tune()"}

# (block marker, old, new): literal sizes of the GPU-sized examples, shrunk for a CPU test.
SHRINK = [
    ("speed_eval_func(model):\n    \"\"\"Measure", "for _ in range(10):", "for _ in range(1):"),
    ("speed_eval_func(model):\n    \"\"\"Measure", "iterations = 100", "iterations = 3"),
    ("load_my_transformer()", "torch.randn(32, 128)", "torch.randn(4, 16)"),
    ("load_my_transformer()", "for _ in range(20):", "for _ in range(1):"),
    ("load_my_transformer()", "for _ in range(100):", "for _ in range(3):"),
    ("load_my_transformer()", "return (100 * 32) / elapsed", "return (3 * 4) / elapsed"),
]


def extract_python_blocks(text: str) -> list[str]:
    """Every ``.. code-block:: python`` body, dedented, in document order."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if re.match(r"^\s*\.\. code-block::\s*python\s*$", lines[i]):
            indent = len(lines[i]) - len(lines[i].lstrip())
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" " * (indent + 1))):
                if lines[i].lstrip().startswith(":") and not body:  # directive options
                    i += 1
                    continue
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
        else:
            i += 1
    return blocks


# ----------------------------------------------------------------------------- stand-ins
class YourModel(nn.Module):
    """A small MLP with the layer names the tutorial's joint/separate examples use."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            self.layer1 = nn.Linear(32, 256)
            self.layer2 = nn.Linear(256, 256)
            self.layer3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(torch.relu(self.layer2(torch.relu(self.layer1(x)))))


input_shape = (32,)


def _mlp_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    reference = YourModel().eval()
    batches = []
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(64, *input_shape, generator=gen)
            batches.append((x, reference(x).argmax(1)))  # labels the original gets right
    return batches


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        out = nn.functional.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token classifier: (batch, seq) ints -> (batch, seq, vocab) logits."""

    def __init__(self, vocab: int = 50, d: int = 256, heads: int = 4, hidden: int = 1024) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, heads, hidden)])
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # The tutorial's speed input is randn(...).long(), which has negative ids.
        x = self.embed(tokens.remainder(self.vocab))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def load_my_transformer() -> TinyTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        return TinyTransformer()


def get_validation_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    reference = load_my_transformer().eval()
    batches = []
    with torch.no_grad():
        for _ in range(2):
            x = torch.randint(0, 50, (4, 16), generator=gen)
            batches.append((x, reference(x).argmax(-1)))
    return batches


def your_accuracy_function(model: nn.Module) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in _mlp_loader_cache:
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    return correct / total


_mlp_loader_cache = _mlp_loader()


# ----------------------------------------------------------------------------- tests
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec_blocks() -> list[str]:
    assert SPEC.is_file(), (
        f"the tutorial spec is missing at {SPEC}; the shared/ folder must sit beside the repository"
    )
    return extract_python_blocks(SPEC.read_text(encoding="utf-8"))


def test_extracts_every_code_block(spec_blocks):
    text = SPEC.read_text(encoding="utf-8")
    assert len(spec_blocks) == text.count(".. code-block:: python") >= 10
    for block in spec_blocks:
        compile(block, "<tutorial>", "exec")  # every block is valid Python as written


def test_tutorial_blocks_run_as_written(spec_blocks, tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    import panther.tuner
    import panther.tuner.tuner as tuner_module
    from panther.tuner.search.optuna import OptunaSearch

    class CappedOptunaSearch(OptunaSearch):
        """The tutorial's OptunaSearch with at most MAX_TRIALS trials per group."""

        def __init__(self, n_trials: int = 100, *args, **kwargs) -> None:
            super().__init__(min(n_trials, MAX_TRIALS), *args, **kwargs)

    monkeypatch.setattr(panther.tuner, "OptunaSearch", CappedOptunaSearch)
    monkeypatch.setattr(tuner_module, "DEFAULT_N_TRIALS", MAX_TRIALS)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    try:
        import plotly.graph_objects as go

        monkeypatch.setattr(go.Figure, "show", lambda self, *a, **k: None)
    except ImportError:  # pragma: no cover - plotly is a dependency of the tutorial's last block
        pass
    monkeypatch.chdir(tmp_path)

    namespace = {
        "__name__": "tutorial",
        "YourModel": YourModel,
        "val_loader": _mlp_loader_cache,
        "input_shape": input_shape,
        "your_accuracy_function": your_accuracy_function,
        "load_my_transformer": load_my_transformer,
        "get_validation_loader": get_validation_loader,
    }
    applied = set()
    for index, block in enumerate(spec_blocks):
        code = block
        for i, (marker, old, new) in enumerate(SHRINK):
            if marker in code:
                assert old in code, f"tutorial block {index} changed: {old!r} not found"
                code = code.replace(old, new)
                applied.add(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(code, f"<tutorial block {index}>", "exec"), namespace)
            except Exception as exc:
                first = block.strip().splitlines()[0]
                raise AssertionError(f"tutorial block {index} ({first!r}) failed: {exc!r}") from exc
            for marker, statement in RUN_AFTER.items():
                if marker in block and statement not in block:  # no-op once the spec adds it
                    exec(statement, namespace)
        plt.close("all")
    assert applied == set(range(len(SHRINK))), "a size substitution no longer matches the tutorial"

    out = capsys.readouterr().out
    assert "Best parameters found:" in out
    assert "Speedup:" in out
    # The blocks' artefacts exist: optuna storages, the saved manifest and the figures.
    for name in ("tuning.db", "transformer_tuning.db", "best_config.pkl", "tuning_results.png",
                 "tuning_analysis.png"):
        assert (tmp_path / name).is_file(), name
    from panther.tuner import load_tuning_results

    loaded = load_tuning_results(tmp_path / "best_config.pkl")
    rebuilt = loaded.apply(load_my_transformer())
    tokens = torch.randint(0, 50, (2, 16))
    assert torch.equal(rebuilt(tokens), namespace["optimized_model"](tokens))
