"""The tuner's guided strategy end to end, the strategy switch and the fidelity contract (issue 16)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from panther.nn import SKLinear
from panther.tuner import (
    Int,
    LayerConfig,
    OptunaSearch,
    SKAutoTuner,
    TuningConfigs,
    load_tuning_results,
)
from panther.tuner.fidelity import check_fidelity, fraction_size, supports_fidelity, take_fraction
from panther.tuner.tuner import TuningWarning

REPO = Path(__file__).resolve().parents[1]
SPACE = {"num_terms": [1, 2], "low_rank": [1, 2, 4, 8], "init": ["random", "svd"]}


def decaying(n_in: int, n_out: int, seed: int, decay: float = 0.75) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    r = min(n_in, n_out)
    u = torch.linalg.qr(torch.randn(n_out, r, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(n_in, r, generator=gen))[0]
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(3 * decay ** torch.arange(r, dtype=torch.float32)) @ v.T)
        layer.bias.zero_()
    return layer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = decaying(16, 64, 1)
        self.fc2 = decaying(64, 64, 2)
        self.fc3 = decaying(64, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


X = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))


def agreement_with(model: nn.Module, calls: list[float] | None = None):
    with torch.no_grad():
        labels = model(X).argmax(1)

    def accuracy(m: nn.Module, fidelity: float = 1.0) -> float:
        if calls is not None:
            calls.append(fidelity)
        x, y = take_fraction((X, labels), fidelity)
        with torch.no_grad():
            return (m(x).argmax(1) == y).float().mean().item()

    return accuracy


def macs_speed(model: nn.Module) -> float:
    """A deterministic speed: 1 / multiply-adds of the linear layers."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, SKLinear):
            total += 2 * m.num_terms * m.low_rank * (m.in_features + m.out_features)
    return 1.0 / total


def configs() -> TuningConfigs:
    return TuningConfigs([LayerConfig(["fc1", "fc2"], params=dict(SPACE))])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_guided_is_the_default_and_verifies_the_joint_model():
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls: list[float] = []
    acc = agreement_with(model, calls)
    tuner = SKAutoTuner(model, configs(), acc, accuracy_threshold=0.95,
                        optimization_eval_func=macs_speed)
    best = tuner.tune()
    report = tuner.report
    assert report["strategy"] == "guided"
    # The original model is untouched, and the applied model meets the threshold.
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear
    tuned = tuner.apply_best_params()
    assert acc(tuned) >= 0.95 and acc(tuned) == pytest.approx(report["final_accuracy"])
    assert report["speedup"] > 1.5
    assert set(best) == {"fc1", "fc2"}
    # Every candidate got a row with its prediction beside its calibration measurement.
    df = tuner.get_results_dataframe()
    predicted = df[df["status"] == "predicted"]
    assert len(predicted) >= 10
    svd = predicted[predicted["init"] == "svd"]
    assert svd["predicted_error"].notna().all() and svd["calibration_error"].notna().all()
    # The joint choice was verified at full fidelity; screens ran at the lower fidelity.
    g = report["guided"]
    assert g["full_evaluations"] >= 1 and g["cost"] <= g["budget"]
    assert any(step["passed"] for step in report["verification"])
    assert all("predicted_error" in step for step in report["verification"])
    assert 0.25 in calls and calls.count(1.0) >= g["full_evaluations"]
    assert report["sensitivity"]["rank_correlation_predicted_vs_calibration_error"] > 0.5


def test_guided_results_round_trip(tmp_path):
    model = Net()
    tuner = SKAutoTuner(model, configs(), agreement_with(model), accuracy_threshold=0.95,
                        optimization_eval_func=macs_speed)
    tuner.tune()
    path = tmp_path / "r.json"
    tuner.save_tuning_results(str(path))
    loaded = load_tuning_results(path)
    fresh = Net()
    out_a = tuner.apply_best_params()(X)
    out_b = loaded.apply(fresh)(X)
    assert torch.allclose(out_a, out_b)
    assert any(r["status"] == "predicted" for r in loaded.trials)


def test_classic_switch_and_fallbacks():
    model = Net()
    acc = agreement_with(model)
    classic = SKAutoTuner(model, configs(), acc, accuracy_threshold=0.95, strategy="classic",
                          optimization_eval_func=macs_speed, max_trials=3)
    classic.tune()
    assert classic.report["strategy"] == "classic"
    rows = [r for r in classic.results.trials if r["status"] in ("ok", "rejected")]
    assert rows and all("predicted_error" in r for r in rows)
    assert "sensitivity" in classic.report
    # A chosen backend keeps the classic search under "auto".
    picked = SKAutoTuner(model, configs(), acc, accuracy_threshold=0.95,
                         search_algorithm=OptunaSearch(n_trials=2, seed=0))
    picked.tune()
    assert picked.report["strategy"] == "classic"
    # No constraint: nothing to allocate, classic.
    free = SKAutoTuner(model, configs(), acc, search_algorithm=None, max_trials=2)
    free.tune()
    assert free.report["strategy"] == "classic"
    assert free.report["guided_unavailable"] == "no accuracy constraint"
    # A space too large to enumerate: "auto" falls back and says why.
    big = TuningConfigs([LayerConfig("fc2", params={"low_rank": Int(1, 1000), "num_terms": [1]})])
    fallback = SKAutoTuner(model, big, acc, accuracy_threshold=0.9, max_trials=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)  # most of those ranks save no work
        fallback.tune()
    assert fallback.report["strategy"] == "classic"
    assert "1000-point" in fallback.report["guided_unavailable"]


def test_guided_option_errors():
    model = Net()
    acc = agreement_with(model)
    with pytest.raises(ValueError, match="strategy must be one of"):
        SKAutoTuner(model, configs(), acc, accuracy_threshold=0.9, strategy="fast")
    with pytest.raises(ValueError, match="search_algorithm"):
        SKAutoTuner(model, configs(), acc, accuracy_threshold=0.9, strategy="guided",
                    search_algorithm="grid")
    with pytest.raises(ValueError, match="accuracy constraint"):
        SKAutoTuner(model, configs(), acc, strategy="guided")
    with pytest.raises(ValueError, match="multi_objective"):
        SKAutoTuner(model, configs(), acc, accuracy_threshold=0.9, strategy="guided",
                    multi_objective=True, optimization_eval_func=macs_speed)
    with pytest.raises(ValueError, match="1000-point"):
        SKAutoTuner(model, TuningConfigs([LayerConfig("fc2", params={"low_rank": Int(1, 1000),
                                                                    "num_terms": [1]})]),
                    acc, accuracy_threshold=0.9, strategy="guided")
    with pytest.raises(ValueError, match="copy_weights=False"):
        SKAutoTuner(model, TuningConfigs([LayerConfig("fc2", params=dict(SPACE), copy_weights=False)]),
                    acc, accuracy_threshold=0.9, strategy="guided")


def test_nothing_feasible_returns_the_original_with_a_warning():
    model = Net()
    acc = agreement_with(model)
    tuner = SKAutoTuner(model, configs(), acc, accuracy_threshold=1.01)
    with pytest.warns(TuningWarning, match="no configuration met"):
        tuner.tune()
    assert tuner.selected_params == {}
    assert type(tuner.apply_best_params().fc2) is nn.Linear


def test_errors_in_evaluations_leave_the_model_intact():
    model = Net()
    base = agreement_with(model)
    count = {"n": 0}

    def flaky(m: nn.Module) -> float:
        count["n"] += 1
        if count["n"] % 2 == 0:
            raise RuntimeError("flaky evaluator")
        return base(m)

    tuner = SKAutoTuner(model, configs(), flaky, accuracy_threshold=0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        tuner.tune()
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear
    assert any(step["error"] for step in tuner.report["verification"])
    tuned = tuner.apply_best_params()
    if tuner.selected_params:  # whatever was chosen passed a full evaluation
        assert base(tuned) >= 0.95


def test_interrupt_during_guided_restores_the_model():
    model = Net()
    base = agreement_with(model)
    count = {"n": 0}

    def interrupting(m: nn.Module) -> float:
        count["n"] += 1
        if count["n"] == 2:
            raise KeyboardInterrupt
        return base(m)

    tuner = SKAutoTuner(model, configs(), interrupting, accuracy_threshold=0.95)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune()
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear
    assert tuner.report["interrupted"] is True


def test_fidelity_contract_helpers():
    def with_kw(model, fidelity=1.0):
        return 1.0

    def kw_only(model, *, fidelity):
        return 1.0

    def plain(model):
        return 1.0

    def var_kw(model, **kwargs):
        return 1.0

    marked = lambda model, **kw: 1.0  # noqa: E731
    marked.supports_fidelity = True
    assert supports_fidelity(with_kw) and supports_fidelity(kw_only) and supports_fidelity(marked)
    assert not supports_fidelity(plain) and not supports_fidelity(var_kw)
    assert check_fidelity(1) == 1.0 and check_fidelity(0.5) == 0.5
    for bad in (0, -0.1, 1.5, float("nan"), "1", True):
        with pytest.raises(ValueError, match="fidelity"):
            check_fidelity(bad)
    assert fraction_size(10, 0.25) == 3 and fraction_size(10, 1.0) == 10 and fraction_size(0, 0.5) == 0
    assert fraction_size(3, 0.01) == 1
    t = torch.arange(10)
    assert take_fraction(t, 0.5).tolist() == [0, 1, 2, 3, 4]
    a, b = take_fraction((t, t * 2), 0.2)
    assert a.tolist() == [0, 1] and b.tolist() == [0, 2]
    assert take_fraction([1, 2, 3, 4], 0.5) == [1, 2]
    with pytest.raises(ValueError, match="different lengths"):
        take_fraction((t, t[:3]), 0.5)
    with pytest.raises(TypeError, match="take_fraction"):
        take_fraction(3, 0.5)
    # Nested subsets: a lower fidelity is always a prefix of a higher one.
    assert all(take_fraction(t, f).tolist() == t[: math.ceil(f * 10 - 1e-9)].tolist()
               for f in (0.1, 0.3, 0.7, 1.0))


def test_guided_on_a_transformer_built_from_a_config():
    # Keyword inputs and a ModelOutput: the calibration probe and the joint evaluations cope.
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=128,
                                     max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 20, (64, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(input_ids=ids).logits.argmax(-1)

    def accuracy(m: nn.Module, fidelity: float = 1.0) -> float:
        x, y = take_fraction((ids, labels), fidelity)
        with torch.no_grad():
            return (m(input_ids=x).logits.argmax(-1) == y).float().mean().item()

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(
        r"bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense",
        params={"num_terms": [1], "low_rank": [2, 4, 8], "init": ["svd"]})]),
        accuracy, accuracy_threshold=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        tuner.tune()
    assert tuner.report["strategy"] == "guided"
    rows = [r for r in tuner.results.trials if r["status"] == "predicted"]
    assert rows and all(r["model_error"] is not None for r in rows)
    assert tuner.report["sensitivity"]["calibration_batches"] == 1
    assert accuracy(tuner.apply_best_params()) >= 0.9


@pytest.mark.slow
def test_bench_outcome_quick_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_outcome.py"), "--quick", "--threads", "1",
         "--workloads", "mlp", "--no-write"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bench_outcome" in proc.stdout and "mlp" in proc.stdout
