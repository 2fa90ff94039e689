"""End-to-end tuning of small real models with the built-in layer types and backends.

Accuracy is the built-in ``agreement`` evaluator (the original model's predictions
are the labels) and the optimisation target is ``flops(inverse=True)``, so every
run is deterministic and needs no timing.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from panther.nn import RandMultiHeadAttention, SKConv2d, SKLinear
from panther.tuner import (
    GridSearch,
    LayerConfig,
    OptunaSearch,
    RandomSearch,
    SKAutoTuner,
    SkoptSearch,
    TuningConfigs,
    load_tuning_results,
)
from panther.tuner.evaluators import agreement, flops
from panther.tuner.tuner import TuningWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def low_rank_linear(n_in: int, n_out: int, rank: int) -> nn.Linear:
    """A Linear whose weight has a decaying spectrum, like a trained layer."""
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        u = torch.linalg.qr(torch.randn(n_out, n_out))[0][:, :rank]
        v = torch.linalg.qr(torch.randn(n_in, n_in))[0][:, :rank]
        s = 0.7 ** torch.arange(rank, dtype=torch.float32) * 3
        layer.weight.copy_(u @ torch.diag(s) @ v.T)
    return layer


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(low_rank_linear(32, 128, 12), nn.ReLU(), low_rank_linear(128, 128, 12),
                         nn.ReLU(), nn.Linear(128, 8))


def make_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


class TinyTransformer(nn.Module):
    def __init__(self, batch_first: bool, d: int = 64) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(16, d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=batch_first)
        self.ff1 = nn.Linear(d, 4 * d)
        self.ff2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, seq, 16)
        h = self.inp(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a, _ = self.attn(h, h, h)
        h = h + a
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = h + self.ff2(torch.relu(self.ff1(h)))
        return self.head(h.mean(1))


def state_equal(a: nn.Module, b: dict[str, torch.Tensor]) -> bool:
    sa = a.state_dict()
    return sa.keys() == b.keys() and all(torch.equal(sa[k], b[k]) for k in b)


MLP_INPUTS = [torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]

BACKENDS = {
    "optuna": lambda: OptunaSearch(n_trials=4, seed=0),
    "skopt": lambda: SkoptSearch(n_trials=4, seed=0),
    "grid": lambda: GridSearch(),
    "random": lambda: RandomSearch(n_trials=4, seed=0),
}


@pytest.mark.parametrize("separate", [True, False])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_mlp_each_backend_separate_and_joint(backend, separate):
    model = make_mlp()
    original = copy.deepcopy(model.state_dict())
    acc = agreement(model, MLP_INPUTS)
    cfg = LayerConfig({"type": "Linear", "indices": [0, 1]},
                      {"num_terms": [1, 2], "low_rank": [4, 16], "init": ["svd"]}, separate=separate)
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, search_algorithm=BACKENDS[backend](),
                        accuracy_threshold=0.8, optmization_eval_func=flops(inverse=True))
    best = tuner.tune()
    assert set(best) == {"0", "2"}
    if not separate:
        assert best["0"] == best["2"]
    df = tuner.get_results_dataframe()
    assert len(df) >= 2 and set(df["status"]) <= {"ok", "rejected", "skipped", "cached", "failed"}
    assert not (df["status"] == "failed").any(), df["error"].tolist()
    tuned = tuner.apply_best_params()
    assert state_equal(model, original) and not any(isinstance(m, SKLinear) for m in model.modules())
    assert acc(tuned) >= 0.8
    assert tuner.report["final_accuracy"] >= 0.8
    for name, params in tuner.selected_params.items():
        layer = tuned.get_submodule(name)
        assert isinstance(layer, SKLinear)
        assert (layer.num_terms, layer.low_rank) == (params["num_terms"], params["low_rank"])
    # Sketching the two big layers with a decaying spectrum must pay off at this threshold.
    assert tuner.selected_params, "expected at least one feasible sketch"
    assert tuner.report["speedup"] > 1


def test_cnn_conv2d_auto_space():
    model = make_cnn()
    inputs = [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))]
    acc = agreement(model, inputs)
    cfg = LayerConfig({"type": "Conv2d"}, "auto", separate=True)
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, search_algorithm=RandomSearch(n_trials=3, seed=1),
                        optmization_eval_func=flops(inverse=True), accuracy_threshold=0.0)
    best = tuner.tune()
    assert set(best) == {"0", "2"}
    tuned = tuner.apply_best_params()
    x = inputs[0]
    assert tuned(x).shape == model(x).shape
    assert all(isinstance(tuned.get_submodule(n), SKConv2d) for n in tuner.selected_params)
    assert not any(isinstance(m, SKConv2d) for m in model.modules())


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_attention_and_joint_ffn(batch_first):
    torch.manual_seed(2)
    model = TinyTransformer(batch_first).eval()
    original = copy.deepcopy(model.state_dict())
    x = torch.randn(6, 10, 16, generator=torch.Generator().manual_seed(3))
    acc = agreement(model, [x])
    configs = TuningConfigs([
        LayerConfig({"type": "MultiheadAttention"}, {"num_random_features": [16, 32]}),
        LayerConfig(["ff1", "ff2"], {"num_terms": [1], "low_rank": [8, 16]}, separate=False),
    ])
    tuner = SKAutoTuner(model, configs, acc, search_algorithm=GridSearch(), accuracy_threshold=0.0,
                        optmization_eval_func=flops(inverse=True))
    best = tuner.tune()
    assert set(best) == {"attn", "ff1", "ff2"}
    assert best["ff1"] == best["ff2"]
    df = tuner.get_results_dataframe()
    assert set(df["layer_name"]) == {"attn", "ff1+ff2"}
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    tuned = tuner.apply_best_params()
    assert isinstance(tuned.attn, RandMultiHeadAttention)
    assert tuned.attn.batch_first == batch_first
    assert isinstance(tuned.ff1, SKLinear) and isinstance(tuned.ff2, SKLinear)
    out = tuned(x)
    assert out.shape == (6, 5) and torch.isfinite(out).all()
    assert state_equal(model, original) and isinstance(model.attn, nn.MultiheadAttention)
    assert not model.training  # eval mode kept


@pytest.mark.parametrize("suffix", [".pkl", ".json"])
def test_persistence_round_trip_rebuilds_real_model_exactly(tmp_path, suffix):
    model = make_mlp()
    fresh = copy.deepcopy(model)
    acc = agreement(model, MLP_INPUTS)
    cfg = LayerConfig({"type": "Linear"}, {"num_terms": [1, 2], "low_rank": [4, 8],
                                           "init": ["random", "svd"]})
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, search_algorithm=RandomSearch(n_trials=3, seed=0),
                        accuracy_threshold=0.5, optmization_eval_func=flops(inverse=True))
    tuner.tune()
    tuned = tuner.apply_best_params()
    assert tuner.selected_params
    path = tmp_path / f"best{suffix}"
    tuner.save_tuning_results(str(path))
    manifest = json.loads(path.read_text())
    for name, choice in manifest["selection"].items():
        assert choice["layer_type"] == "Linear"
        assert isinstance(choice["seed"], int)
        assert choice["params"] == tuner.selected_params[name]
    rebuilt = load_tuning_results(path).apply(fresh)
    x = torch.randn(16, 32)
    assert torch.equal(tuned(x), rebuilt(x))
    assert len(manifest["trials"]) == len(tuner.get_results_dataframe())


def test_failure_and_interrupt_restore_real_model_bit_for_bit():
    model = make_cnn()
    model.train()
    original = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    inputs = [torch.randn(4, 3, 8, 8)]
    base = agreement(model, inputs)
    calls = {"n": 0}

    def acc(m):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("evaluation crashed")
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return base(m)

    cfg = LayerConfig({"type": "Conv2d"}, {"num_terms": [1], "low_rank": [2, 4, 8]})
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, search_algorithm=GridSearch(), verify=False)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune()
    assert state_equal(model, original)
    assert [type(m) for m in model.modules()] == types
    assert all(m.training for m in model.modules())
    df = tuner.get_results_dataframe()
    # rank 8 does no less work than the 3->32 convolution: skipped without a call
    assert df["status"].tolist() == ["ok", "failed", "skipped", "ok"]
    assert "evaluation crashed" in df["error"][1]


def test_threshold_rejects_everything_and_keeps_original():
    model = make_mlp()
    acc = agreement(model, MLP_INPUTS)
    speed_calls = {"n": 0}
    cost = flops(inverse=True)

    def speed(m):
        speed_calls["n"] += 1
        return cost(m)

    cfg = LayerConfig({"type": "Linear", "indices": [1]}, {"num_terms": [1], "low_rank": [1, 2]})
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, search_algorithm=GridSearch(),
                        accuracy_threshold=1.01, optmization_eval_func=speed)
    with pytest.warns(TuningWarning):
        tuner.tune()
    df = tuner.get_results_dataframe()
    assert (df["status"] == "rejected").all() and (df["score"] == -math.inf).all()
    assert speed_calls["n"] == 1  # only the original model's baseline measurement
    out = tuner.apply_best_params()
    assert not any(isinstance(m, SKLinear) for m in out.modules())


def test_double_precision_model_keeps_dtype():
    model = make_mlp().double()
    inputs = [x.double() for x in MLP_INPUTS]
    acc = agreement(model, inputs)
    cfg = LayerConfig("2", {"num_terms": [1], "low_rank": [16]})
    tuner = SKAutoTuner(model, TuningConfigs([cfg]), acc, search_algorithm=GridSearch())
    tuner.tune()
    tuned = tuner.apply_best_params()
    assert isinstance(tuned[2], SKLinear)
    assert all(p.dtype == torch.float64 for p in tuned[2].parameters())


def test_persistence_round_trip_attention_and_conv(tmp_path):
    torch.manual_seed(4)
    model = TinyTransformer(batch_first=True).eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(3, 7, 16)
    configs = TuningConfigs([LayerConfig("attn", {"num_random_features": [16, 32],
                                                  "kernel_fn": ["softmax", "relu"]})])
    tuner = SKAutoTuner(model, configs, agreement(model, [x]), search_algorithm=RandomSearch(n_trials=2, seed=0))
    tuner.tune()
    assert tuner.selected_params
    tuner.save_tuning_results(str(tmp_path / "attn.pkl"))
    rebuilt = load_tuning_results(tmp_path / "attn.pkl").apply(fresh)
    assert torch.equal(tuner.apply_best_params()(x), rebuilt(x))

    cnn = make_cnn()
    fresh_cnn = copy.deepcopy(cnn)
    inputs = torch.randn(2, 3, 8, 8)
    tuner = SKAutoTuner(cnn, TuningConfigs([LayerConfig("2", {"num_terms": [1], "low_rank": [4]})]),
                        agreement(cnn, [inputs]), search_algorithm=GridSearch())
    tuner.tune()
    assert tuner.selected_params == {"2": {"num_terms": 1, "low_rank": 4}}
    tuner.save_tuning_results(str(tmp_path / "cnn.json"))
    rebuilt = load_tuning_results(tmp_path / "cnn.json").apply(fresh_cnn)
    assert torch.equal(tuner.apply_best_params()(inputs), rebuilt(inputs))


def test_joint_group_of_incompatible_types_is_rejected_at_construction():
    model = TinyTransformer(batch_first=True)
    cfg = LayerConfig(["attn", "ff1"], {"num_random_features": [16]}, separate=False)
    with pytest.raises(ValueError, match="mixes layer types"):
        SKAutoTuner(model, TuningConfigs([cfg]), lambda m: 1.0)
    with pytest.raises(ValueError, match=r"Conv2d|Linear|MultiheadAttention"):
        SKAutoTuner(model, TuningConfigs([LayerConfig("attn.out_proj", {"num_terms": [1]})]),
                    lambda m: 1.0)


KILL_SCRIPT = r'''
import os, signal, sys
import torch
from torch import nn
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs
from panther.tuner.evaluators import agreement

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
reference = agreement(model, [torch.randn(32, 16)])
kill_at, calls = int(sys.argv[2]), [0]

def accuracy(m):
    calls[0] += type(m[2]).__name__ == "SKLinear"  # count evaluations of the second layer
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash
    return reference(m)

search = OptunaSearch(n_trials=5, study_name="kill", storage=sys.argv[1], load_if_exists=True, seed=0)
cfg = LayerConfig({"type": "Linear", "indices": [0, 1]}, {"num_terms": [1, 2], "low_rank": [2, 4, 6, 8]})
tuner = SKAutoTuner(model, TuningConfigs([cfg]), accuracy, search_algorithm=search, skip_costlier=False)
tuner.tune()
evaluated = [t for t in tuner.results.trials if t["status"] not in ("skipped", "cached")]
print("EVALUATED", {k: sum(t["layer_name"] == k for t in evaluated) for k in ("0", "2")})
print("RESUMED", sum(bool(t.get("resumed")) for t in evaluated))
'''


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_real_kill(tmp_path):
    import os
    import subprocess
    import sys

    import optuna

    script = tmp_path / "tune.py"
    script.write_text(KILL_SCRIPT)
    storage = f"sqlite:///{tmp_path / 'kill.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # Killed during the second evaluation of layer "2" (layer "0" is done by then).
    first = subprocess.run([sys.executable, str(script), storage, "2"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == -9, first.stderr[-2000:]
    second = subprocess.run([sys.executable, str(script), storage, "-1"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    # n_trials counts evaluations (cached repeats of a proposal are free).
    assert "EVALUATED {'0': 5, '2': 5}" in second.stdout
    resumed = int(second.stdout.split("RESUMED")[1].split()[0])
    assert resumed == 5 + 1  # all of layer "0" and the one trial layer "2" finished before the kill
    for key in ("0", "2"):
        study = optuna.load_study(study_name=f"kill/{key}", storage=storage)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        statuses = [t.user_attrs["panther_attrs"]["panther_row"]["status"] for t in done]
        assert sum(s not in ("skipped", "cached") for s in statuses) == 5
    assert optuna.trial.TrialState.FAIL in [
        t.state for t in optuna.load_study(study_name="kill/2", storage=storage).trials]


def test_fresh_weights_rebuild_exactly(tmp_path):
    """copy_weights=False: the recorded seed fixes every random draw of the build."""
    model = make_mlp().eval()
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(5))
    tuner = SKAutoTuner(
        model, TuningConfigs([LayerConfig(["2"], {"num_terms": [1], "low_rank": [4, 8]},
                                          copy_weights=False)]),
        accuracy_eval_func=lambda m: 1.0, optmization_eval_func=flops(x[:1], inverse=True),
        search_algorithm=GridSearch(),
    )
    tuner.tune()
    first = tuner.apply_best_params()
    second = tuner.apply_best_params()
    torch.testing.assert_close(first(x), second(x), rtol=0, atol=0)
    tuner.save_tuning_results(tmp_path / "fresh.json")
    rebuilt = load_tuning_results(tmp_path / "fresh.json").apply(make_mlp().eval())
    torch.testing.assert_close(rebuilt(x), first(x), rtol=0, atol=0)


def test_remeasured_candidates_beat_single_samples():
    """A candidate measured once cannot win on a lucky first sample over re-measured ones."""
    model = make_mlp().eval()
    seen: dict[int, int] = {}

    def speed(m: nn.Module) -> float:
        rank = getattr(m[2], "low_rank", None)
        if rank is None:
            return 1.0
        seen[rank] = seen.get(rank, 0) + 1
        return 10.0 + rank if seen[rank] == 1 else 2.0 + rank / 100  # first sample is a spike

    tuner = SKAutoTuner(
        model, TuningConfigs([LayerConfig(["2"], {"num_terms": [1], "low_rank": [1, 2, 3, 4]})]),
        accuracy_eval_func=lambda m: 1.0, optmization_eval_func=speed,
        search_algorithm=GridSearch(), remeasure_top=3, verify=False,
    )
    best = tuner.tune()["2"]
    assert best["params"]["low_rank"] == 4  # the fastest re-measured, not the unre-measured rank 1
    assert tuner.get_best_params()["2"]["params"]["low_rank"] == 4


def test_relative_tolerance_with_negative_scores():
    """-loss style accuracy: a relative tolerance still sits below the original."""
    model = make_mlp().eval()
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        target = model(x)

    def neg_mse(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(((m(x) - target) ** 2).mean()) - 1.0  # original scores -1.0

    tuner = SKAutoTuner(
        model, TuningConfigs([LayerConfig(["2"], {"num_terms": [1], "low_rank": [8]})]),
        accuracy_eval_func=neg_mse, optmization_eval_func=flops(x[:1], inverse=True),
        accuracy_tolerance=0.5, tolerance_mode="relative", search_algorithm=GridSearch(),
    )
    tuner.tune()
    assert tuner.report["effective_threshold"] == pytest.approx(-1.5)
    assert tuner.get_results_dataframe()["status"].tolist() == ["ok"]
