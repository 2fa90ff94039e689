"""Tests for panther.tuner.visualizer: the module tree and the result plots."""

from __future__ import annotations

import io
import sys
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.tuner import plugins
from panther.tuner.config import Int
from panther.tuner.layers.base import Cost, LayerType
from panther.tuner.visualizer import (
    ModelVisualizer,
    describe_module,
    pareto_front_mask,
    plot_pareto_front,
    plot_tuning_results,
)

matplotlib.use("Agg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.emb = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 3, bias=False)


# --- module tree ----------------------------------------------------------------------------------


def test_describe_module_shapes():
    assert describe_module(nn.Linear(20, 64)) == "Linear(20->64)"
    assert describe_module(nn.Linear(20, 64, bias=False)) == "Linear(20->64, no bias)"
    assert describe_module(nn.Conv2d(3, 16, 3)) == "Conv2d(3->16, kernel=3x3)"
    assert (
        describe_module(nn.Conv2d(4, 16, (5, 3), stride=2, padding=(2, 1), groups=2))
        == "Conv2d(4->16, kernel=5x3, stride=2, padding=2x1, groups=2)"
    )
    assert describe_module(nn.Conv2d(3, 16, 3, padding="same")) == "Conv2d(3->16, kernel=3x3, padding=same)"
    assert describe_module(nn.MultiheadAttention(16, 4)) == "MultiheadAttention(embed=16, heads=4)"
    assert describe_module(nn.Embedding(10, 4)) == "Embedding(10->4)"
    assert describe_module(nn.ReLU()) == "ReLU"
    assert describe_module(nn.Dropout(0.25)).startswith("Dropout(p=0.25")


def test_module_tree_content():
    model = _Model()
    text = ModelVisualizer.module_tree(model)
    lines = text.splitlines()
    total = sum(p.numel() for p in model.parameters())
    assert lines[0].startswith(f"_Model  params {total:,}")
    assert "self_attn: MultiheadAttention(embed=8, heads=2, batch_first)  params 288 (own 216)" in text
    assert "out_proj: NonDynamicallyQuantizableLinear(8->8)  params 72" in text
    assert "linear1: Linear(8->16)  params 144" in text
    assert "conv: Conv2d(3->8, kernel=3x3, stride=2, padding=1)  params 224" in text
    assert "head: Linear(8->3, no bias)  params 24" in text
    assert "dropout1: Dropout" in text
    # one line per module plus the header
    assert len(lines) == sum(1 for _ in model.modules())
    # indentation follows depth: encoder.layers.0.linear1 is at depth 4, four 4-wide columns in
    line = next(ln for ln in lines if "linear1" in ln)
    assert line.index("linear1") == 4 * 4


def test_print_module_tree_matches_text_and_depth_limit():
    model = _Model()
    buf = io.StringIO()
    ModelVisualizer.print_module_tree(model, file=buf)
    assert buf.getvalue() == ModelVisualizer.module_tree(model) + "\n"
    short = ModelVisualizer.module_tree(model, max_depth=1)
    assert "encoder: TransformerEncoder" in short and "ModuleList" not in short
    assert "... (21 submodules)" in short
    n_sub = sum(1 for _ in model.modules()) - 1
    assert ModelVisualizer.module_tree(model, max_depth=0).splitlines()[1] == f"... ({n_sub} submodules)"
    with pytest.raises(ValueError, match="max_depth"):
        ModelVisualizer.module_tree(model, max_depth=-1)
    with pytest.raises(TypeError):
        ModelVisualizer.module_tree("not a model")


def test_shared_modules_and_ascii_fallback():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Sequential(shared), nn.Sequential(shared))
    text = ModelVisualizer.module_tree(model)
    assert "0: Linear(4->4)" in text and "(shared with 0.0)" in text
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    ModelVisualizer.print_module_tree(model, file=stream)  # must not raise UnicodeEncodeError
    stream.flush()
    out = stream.buffer.getvalue().decode("ascii")
    assert "|-- 0: Sequential" in out and "`-- 0: Linear(4->4)" in out


def test_print_to_stdout(capsys):
    ModelVisualizer.print_module_tree(nn.Sequential(nn.Linear(2, 3)))
    assert "0: Linear(2->3)  params 9" in capsys.readouterr().out


# toy layer type: lets the test control exactly which modules are sketchable
class Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.zeros(n_in, n_out))


class LowRankDense(nn.Module):
    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = n_in, n_out, rank
        self.a = nn.Parameter(torch.zeros(n_in, rank))
        self.b = nn.Parameter(torch.zeros(rank, n_out))


class DenseType(LayerType):
    name = "ToyDense"
    module_types = (Dense,)
    sketched_type = LowRankDense
    param_names = ("rank",)

    def build(self, original, params, copy_weights=True):
        return LowRankDense(original.in_features, original.out_features, params["rank"])

    def auto_space(self, original):
        return {"rank": Int(1, 4)}

    def cost(self, original, params=None):
        return Cost(1, 1)


class _ToyPlugin:
    @staticmethod
    @plugins.hookspecs.hookimpl
    def panther_layer_types() -> list[Any]:
        return [DenseType()]


@pytest.fixture
def toy_layer_type():
    name = plugins.register_plugin(_ToyPlugin(), name="toy-dense-for-visualizer")
    yield
    plugins.unregister_plugin(name)


def test_sketchable_marks_and_summary(toy_layer_type):
    model = nn.Sequential(Dense(4, 6), nn.ReLU(), LowRankDense(6, 2, 1))
    text = ModelVisualizer.module_tree(model)
    assert "0: Dense(4->6)  params 24  [sketchable: ToyDense]" in text
    assert "2: LowRankDense(6->2)  params 8  [sketched: ToyDense]" in text
    assert "1: ReLU\n" in text + "\n" and "ReLU  [" not in text
    assert "sketchable layers: 1; sketched layers: 1" in text.splitlines()[0]
    df = ModelVisualizer.summary(model)
    assert list(df.columns) == [
        "name", "type", "description", "depth", "params", "own_params", "sketchable", "sketched", "layer_type"
    ]
    assert df["name"].tolist() == ["0", "1", "2"]
    assert df["sketchable"].tolist() == [True, False, False]
    assert df["sketched"].tolist() == [False, False, True]
    assert df["layer_type"].tolist() == ["ToyDense", None, "ToyDense"]
    assert df["params"].tolist() == [24, 0, 8]


def test_builtin_layer_types_are_consulted():
    model = _Model()
    df = ModelVisualizer.summary(model)
    for name, module in model.named_modules():
        if not name:
            continue
        lt = plugins.layer_type_for(module)
        row = df[df["name"] == name].iloc[0]
        assert row["sketchable"] == (lt is not None)
        assert row["layer_type"] == (lt.name if lt is not None else None) or row["sketched"]


def test_builtin_sketched_layers_are_marked():
    from panther.nn import SKLinear

    lin = nn.Linear(12, 40)
    lt = plugins.layer_type_for(lin)
    assert lt is not None, "the built-in Linear layer type should be registered"
    model = nn.Sequential(lin, nn.ReLU(), SKLinear.from_linear(nn.Linear(40, 30), 2, 3, seed=0))
    text = ModelVisualizer.module_tree(model)
    assert f"0: Linear(12->40)  params 520  [sketchable: {lt.name}]" in text
    sk_params = sum(p.numel() for p in model[2].parameters())
    assert f"2: SKLinear(40->30, L=2, k=3)  params {sk_params}  [sketched: {lt.name}]" in text


def test_degrades_without_plugin_host(monkeypatch):
    monkeypatch.setitem(sys.modules, "panther.tuner.plugins", None)  # import now raises ImportError
    text = ModelVisualizer.module_tree(nn.Sequential(nn.Linear(2, 2)))
    assert "layer-type plugins unavailable" in text and "0: Linear(2->2)" in text
    assert not ModelVisualizer.summary(nn.Sequential(nn.Linear(2, 2)))["sketchable"].any()


def test_summary_natural_order():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    assert ModelVisualizer.summary(model)["name"].tolist() == [str(i) for i in range(12)]


# --- result plots ---------------------------------------------------------------------------------


def _results(seed: int = 0, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for layer in ("fc1", "encoder.layers.0.linear1"):
        for t in range(n):
            terms, rank = int(rng.choice([1, 2, 3])), int(rng.choice([8, 16, 32]))
            acc = 0.85 + 0.03 * terms + 0.001 * rank
            # score is not the speed here (accuracy-weighted), so both panels are drawn
            speed = 1000.0 / (terms * rank)
            status, score = "ok", speed * acc
            if acc < 0.93:
                status, score, speed = "rejected", -np.inf, np.nan
            if t == 3:
                status, score, acc, speed = "failed", np.nan, np.nan, np.nan
            rows.append(
                {"layer_name": layer, "num_terms": terms, "low_rank": rank,
                 "init": ["random", "svd"][t % 2], "score": score, "accuracy": acc, "speed": speed,
                 "trial_number": t, "status": status, "error": None, "wall_time_s": 0.01}
            )
    return pd.DataFrame(rows)


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_plot_tuning_results_layout_and_png(tmp_path):
    df = _results()
    path = tmp_path / "nested" / "dir" / "tuning.png"
    fig = plot_tuning_results(df, save_path=path, accuracy_threshold=0.93)
    assert path.read_bytes()[:8] == PNG_MAGIC
    # per group: score, accuracy, speed + num_terms, low_rank, init
    assert len(_visible(fig)) == 2 * 6
    for ax in _visible(fig):
        assert np.isfinite(ax.get_ylim()).all() and np.isfinite(ax.get_xlim()).all()
    score_ax = fig.axes[0]
    assert "fc1" in score_ax.get_title() and "rejected" in score_ax.get_title()
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"trial", "best so far", "failed", "rejected (below threshold)", "threshold"} <= labels
    init_ax = fig.axes[5]
    assert [t.get_text() for t in init_ax.get_xticklabels()] == ["random", "svd"]


def test_best_so_far_line_is_running_max():
    df = pd.DataFrame(
        {"layer_name": "a", "trial_number": range(5), "score": [1.0, -np.inf, 3.0, 2.0, np.nan],
         "low_rank": [8, 16, 8, 32, 8]}
    )
    fig = plot_tuning_results(df)
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label() == "best so far")
    assert list(line.get_ydata()) == [1.0, 1.0, 3.0, 3.0, 3.0]


def test_all_rejected_and_no_optional_columns(tmp_path):
    df = pd.DataFrame({"layer_name": ["x"] * 3, "score": [-np.inf, -np.inf, float("nan")],
                       "num_terms": ["1", True, None]})
    fig = plot_tuning_results(df, save_path=tmp_path / "r")  # no suffix: PNG anyway
    assert (tmp_path / "r").read_bytes()[:8] == PNG_MAGIC
    assert len(_visible(fig)) == 2  # score + the one param
    for ax in _visible(fig):
        assert np.isfinite(ax.get_ylim()).all()


def test_axis_scale_follows_tiny_scores():
    # e.g. 1/FLOPs scores: a lone finite value must not be drawn on a unit-sized axis
    df = pd.DataFrame({"layer_name": "a", "score": [1.9e-5, -np.inf]})
    lo, hi = plot_tuning_results(df).axes[0].get_ylim()
    assert lo < 1.9e-5 < hi and hi - lo < 1e-4


def test_param_columns_override_and_errors():
    df = _results()
    fig = plot_tuning_results(df, param_columns=["low_rank"])
    assert len(_visible(fig)) == 2 * 4
    with pytest.raises(ValueError, match="param_columns"):
        plot_tuning_results(df, param_columns=["nope"])
    with pytest.raises(ValueError, match="score"):
        plot_tuning_results(df.drop(columns="score"))
    with pytest.raises(ValueError, match="no trials"):
        plot_tuning_results(df.iloc[:0])
    with pytest.raises(TypeError):
        plot_tuning_results(df.to_dict())


def _drawn_points(ax, label: str) -> int:
    return sum(len(ln.get_xdata()) for ln in ax.get_lines() if ln.get_label() == label)


def test_speed_panel_dropped_when_it_repeats_the_score():
    df = _results()
    # speed-only tuning: score is the speed on every measured trial, -inf/NaN elsewhere
    df["score"] = np.where(df["status"] == "ok", df["speed"], df["score"])
    fig = plot_tuning_results(df, accuracy_threshold=0.93)
    # per group: score, accuracy + num_terms, low_rank, init (no separate speed panel)
    assert len(_visible(fig)) == 2 * 5
    ylabels = [ax.get_ylabel() for ax in _visible(fig)]
    assert "speed" not in ylabels and ylabels[0] == "score (= speed)"
    # one row whose speed differs from its score brings the speed panel back
    df.loc[df.index[df["status"] == "ok"][0], "speed"] += 1.0
    fig = plot_tuning_results(df)
    assert len(_visible(fig)) == 2 * 6 and "speed" in [ax.get_ylabel() for ax in _visible(fig)]


def test_single_valued_numeric_param_is_one_slot():
    df = pd.DataFrame({"layer_name": "a", "trial_number": range(4), "score": [1.0, 2.0, 3.0, -np.inf],
                       "status": ["ok", "ok", "ok", "rejected"], "num_terms": [1, 1, 1, 1],
                       "low_rank": [2, 8, 32, 64]})
    fig = plot_tuning_results(df)
    terms_ax, rank_ax = fig.axes[1], fig.axes[2]
    assert terms_ax.get_xlabel() == "num_terms"
    assert [t.get_text() for t in terms_ax.get_xticklabels()] == ["1"]
    assert terms_ax.get_xlim() == (-0.5, 0.5)
    # few integer values spread over factors: a tick at each value on a log axis
    assert rank_ax.get_xscale() == "log"
    assert list(rank_ax.get_xticks()) == [2, 8, 32, 64]
    assert [t.get_text() for t in rank_ax.get_xticklabels()] == ["2", "8", "32", "64"]


def test_cached_rows_are_not_drawn_and_are_counted():
    df = pd.DataFrame({
        "layer_name": "fc",
        "trial_number": range(6),
        "low_rank": [8, 16, 8, 16, 4, 32],
        "score": [1.0, 2.0, 1.0, 2.0, -np.inf, -np.inf],
        "accuracy": [0.9, 0.95, 0.9, 0.95, np.nan, np.nan],
        "speed": [3.0, 2.0, 3.0, 2.0, np.nan, np.nan],
        "status": ["ok", "ok", "cached", "cached", "skipped", "skipped"],
    })
    fig = plot_tuning_results(df)
    score_ax, acc_ax, speed_ax, rank_ax = _visible(fig)
    assert score_ax.get_ylabel() == "score" and speed_ax.get_ylabel() == "speed"
    title = score_ax.get_title()
    assert "2 evaluated" in title and "2 skipped" in title and "2 cached repeats not drawn" in title
    assert _drawn_points(score_ax, "trial") == 2
    assert list(next(ln for ln in score_ax.get_lines() if ln.get_label() == "trial").get_xdata()) == [0, 1]
    # skipped proposals keep their own marker where they say something: score and params
    assert _drawn_points(score_ax, "skipped (not evaluated)") == 2
    assert _drawn_points(rank_ax, "skipped (not evaluated)") == 2
    assert _drawn_points(rank_ax, "trial") == 2
    # ... but not on the accuracy/speed panels, which have no value for them
    for ax in (acc_ax, speed_ax):
        assert _drawn_points(ax, "skipped (not evaluated)") == 0 and _drawn_points(ax, "trial") == 2
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert "skipped (not evaluated)" in labels and not any("cached" in lab for lab in labels)


def test_tuner_extra_columns_are_not_params():
    df = _results(n=3)
    df["cached_from"] = 1
    df["eval_time_s"] = 0.1
    fig = plot_tuning_results(df)
    assert {ax.get_xlabel() for ax in _visible(fig)} == {"trial", "num_terms", "low_rank", "init"}


def test_show_plot_calls_pyplot_show(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    fig = plot_tuning_results(_results(n=4), show_plot=True)
    assert shown == [True]
    plt.close(fig)
    fig = plot_pareto_front(_results(n=4), show_plot=True)
    assert shown == [True, True]
    plt.close(fig)


def _brute_front(xs, ys):
    pts = list(zip(xs, ys))
    out = []
    for i, (x, y) in enumerate(pts):
        if not (np.isfinite(x) and np.isfinite(y)):
            out.append(False)
            continue
        dominated = any(
            (a >= x and b >= y and (a > x or b > y)) for j, (a, b) in enumerate(pts)
            if j != i and np.isfinite(a) and np.isfinite(b)
        )
        out.append(not dominated)
    return out


@settings(max_examples=25, deadline=None)
@given(
    pts=st.lists(
        st.tuples(st.sampled_from([0.0, 1.0, 2.0, 3.0, np.inf, np.nan]), st.sampled_from([0.0, 1.0, 2.0, -np.inf])),
        min_size=1, max_size=12,
    ),
    flip=st.tuples(st.booleans(), st.booleans()),
)
def test_pareto_mask_matches_definition(pts, flip):
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    mask = pareto_front_mask(xs, ys, maximize=(not flip[0], not flip[1]))
    sx = xs if not flip[0] else -xs
    sy = ys if not flip[1] else -ys
    assert mask.tolist() == _brute_front(sx, sy)


def test_plot_pareto_front(tmp_path):
    df = _results()
    path = tmp_path / "p" / "front.png"
    fig = plot_pareto_front(df, save_path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(_visible(fig)) == 2
    ax = fig.axes[0]
    front = next(ln for ln in ax.get_lines() if ln.get_label() == "Pareto front")
    g = df[df.layer_name == "fc1"]
    expected = pareto_front_mask(g["speed"], g["accuracy"]).sum()
    assert len(front.get_xdata()) == expected > 0
    single = plot_pareto_front(df.drop(columns="layer_name"), x="speed", y="accuracy", maximize=(False, True))
    assert len(_visible(single)) == 1
    with pytest.raises(ValueError, match="latency"):
        plot_pareto_front(df, x="latency")
