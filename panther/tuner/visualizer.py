"""See a model before tuning and the tuning results after.

* :class:`ModelVisualizer` prints a model's module tree with each layer's type,
  key shapes, parameter counts and whether an installed layer-type plugin can
  sketch it, so you can write ``LayerConfig`` selectors against real names.
* :func:`plot_tuning_results` draws the trials of a tuning run (the DataFrame of
  ``SKAutoTuner.get_results_dataframe()``), one row of plots per layer group.
* :func:`plot_pareto_front` draws the accuracy/speed trade-off of a run and its
  Pareto front.

Plotting never needs a display: figures are built on matplotlib's ``Figure``
directly (no pyplot state) unless ``show_plot=True`` asks for a window.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

from panther.tuner.combine import pareto_front_mask
from panther.tuner.selection import natural_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ModelVisualizer",
    "describe_module",
    "plot_tuning_results",
    "save_trial_plot",
    "plot_pareto_front",
    "pareto_front_mask",
]


# --- module tree ----------------------------------------------------------------------------------


def _pair(value: Any, collapse: bool = False) -> str:
    if isinstance(value, (tuple, list)):
        if collapse and len(set(value)) == 1:
            return str(value[0])
        return "x".join(str(v) for v in value)
    return str(value)


def _not_default(value: Any, default: int) -> bool:
    values = value if isinstance(value, (tuple, list)) else (value,)
    return any(v != default for v in values)


def describe_module(module: nn.Module) -> str:
    """A one-line description of ``module`` with its key shapes.

    ``Linear(20->64)``, ``Conv2d(3->16, kernel=3x3, stride=2, padding=1)``,
    ``MultiheadAttention(embed=64, heads=4, batch_first)``, ``Embedding(1000->32)``;
    sketch parameters of sketched layers are appended (``L=`` number of terms,
    ``k=`` low rank, ``m=`` random features), e.g. ``SKLinear(20->64, L=2, k=16)``. Other modules show their ``extra_repr`` (shortened).
    """
    cls = type(module).__name__
    a = module.__dict__  # plain attributes only: never trigger module __getattr__
    parts: list[str] = []
    if isinstance(a.get("in_features"), int) and isinstance(a.get("out_features"), int):
        parts.append(f"{a['in_features']}->{a['out_features']}")
        if "bias" in module._parameters and module._parameters["bias"] is None:
            parts.append("no bias")
    elif isinstance(a.get("in_channels"), int) and isinstance(a.get("out_channels"), int):
        parts.append(f"{a['in_channels']}->{a['out_channels']}")
        if "kernel_size" in a:
            parts.append(f"kernel={_pair(a['kernel_size'])}")
        if "stride" in a and _not_default(a["stride"], 1):
            parts.append(f"stride={_pair(a['stride'], collapse=True)}")
        padding = a.get("padding")
        if isinstance(padding, str):
            parts.append(f"padding={padding}")
        elif padding is not None and _not_default(padding, 0):
            parts.append(f"padding={_pair(padding, collapse=True)}")
        if a.get("groups", 1) != 1:
            parts.append(f"groups={a['groups']}")
    elif isinstance(a.get("embed_dim"), int) and isinstance(a.get("num_heads"), int):
        parts.append(f"embed={a['embed_dim']}, heads={a['num_heads']}")
        if a.get("batch_first"):
            parts.append("batch_first")
    elif isinstance(a.get("num_embeddings"), int) and isinstance(a.get("embedding_dim"), int):
        parts.append(f"{a['num_embeddings']}->{a['embedding_dim']}")
    for attr, short in (("num_terms", "L"), ("low_rank", "k"), ("num_random_features", "m")):
        if isinstance(a.get(attr), int):
            parts.append(f"{short}={a[attr]}")
    if not parts:
        extra = module.extra_repr()
        if extra:
            parts.append(extra if len(extra) <= 60 else extra[:57] + "...")
    return f"{cls}({', '.join(parts)})" if parts else cls


class _LayerTypes:
    """Finds the layer-type plugin of a module, if the plugin host is importable."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._for: Callable[[nn.Module], Any] | None = None
        self._types: list[Any] = []
        self._warned = False
        try:
            from panther.tuner.plugins import layer_type_for, layer_types
        except ImportError as err:  # pragma: no cover - only while the host is missing
            self.error = f"layer-type plugins unavailable ({err})"
            return
        self._for = layer_type_for
        try:
            self._types = list(layer_types())
        except Exception as err:  # a broken plugin registry must not stop the printout
            self.error = f"layer-type plugins unavailable ({type(err).__name__}: {err})"
            self._for = None

    def lookup(self, module: nn.Module) -> tuple[str | None, str | None]:
        """``("sketchable", type name)``, ``("sketched", type name)`` or ``(None, None)``."""
        if self._for is None:
            return None, None
        try:
            lt = self._for(module)
        except Exception as err:  # e.g. two plugins handling one module type
            if not self._warned:
                warnings.warn(f"layer type lookup failed for {type(module).__name__}: {err}", stacklevel=4)
                self._warned = True
            lt = None
        if lt is not None:
            return "sketchable", lt.name
        for lt in self._types:
            if type(module) is getattr(lt, "sketched_type", None):
                return "sketched", lt.name
        return None, None


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _total_params(module: nn.Module) -> int:
    # parameters() deduplicates tensors shared inside the subtree
    return sum(p.numel() for p in module.parameters())


def _fmt(n: int) -> str:
    return f"{n:,}"


class ModelVisualizer:
    """Inspect a model's structure before choosing which layers to tune.

    Example::

        ModelVisualizer.print_module_tree(model)          # names, shapes, params
        df = ModelVisualizer.summary(model)               # the same as a DataFrame
        df[df.sketchable]                                 # what the tuner can replace
    """

    @staticmethod
    def module_tree(model: nn.Module, max_depth: int | None = None, ascii: bool = False) -> str:
        """The module tree of ``model`` as text.

        Each line shows the module's name (as ``LayerConfig`` selectors use it,
        relative to its parent), its type with key shapes, its parameter count
        (subtree total, plus its own for containers that hold parameters directly)
        and ``[sketchable: <layer type>]`` when an installed layer-type plugin can
        replace it (``[sketched: ...]`` when it already is a sketched layer).

        Args:
            model: the model.
            max_depth: deepest level to print (root = 0); deeper subtrees are
                summarised as ``... (n submodules)``.
            ascii: draw the tree with ASCII characters instead of box drawing.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"module_tree needs an nn.Module, got {type(model).__name__}")
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0):
            raise ValueError(f"max_depth must be None or an int >= 0, got {max_depth!r}")
        tee, last, pipe, blank = ("|-- ", "`-- ", "|   ", "    ") if ascii else ("├── ", "└── ", "│   ", "    ")
        types = _LayerTypes()
        rows = _tree_rows(model, types)
        sketchable = sum(1 for r in rows if r["status"] == "sketchable")
        sketched = sum(1 for r in rows if r["status"] == "sketched")
        header = f"{describe_module(model)}  params {_fmt(_total_params(model))}"
        header += f"; sketchable layers: {sketchable}"
        if sketched:
            header += f"; sketched layers: {sketched}"
        if types.error:
            header += f"  ({types.error})"
        lines = [header]
        seen: dict[int, str] = {id(model): "<root>"}

        def walk(module: nn.Module, prefix: str, path: str, depth: int) -> None:
            children = list(module.named_children())
            for i, (name, child) in enumerate(children):
                is_last = i == len(children) - 1
                full = f"{path}.{name}" if path else name
                branch = prefix + (last if is_last else tee)
                if id(child) in seen:
                    lines.append(f"{branch}{name}: {type(child).__name__} (shared with {seen[id(child)]})")
                    continue
                seen[id(child)] = full
                lines.append(branch + _line(name, child, types))
                sub_prefix = prefix + (blank if is_last else pipe)
                n_sub = sum(1 for _ in child.modules()) - 1
                if n_sub and max_depth is not None and depth + 1 >= max_depth:
                    lines.append(f"{sub_prefix}... ({n_sub} submodules)")
                    continue
                walk(child, sub_prefix, full, depth + 1)

        if max_depth is None or max_depth > 0:
            walk(model, "", "", 0)
        else:
            n_sub = sum(1 for _ in model.modules()) - 1
            if n_sub:
                lines.append(f"... ({n_sub} submodules)")
        return "\n".join(lines)

    @staticmethod
    def print_module_tree(model: nn.Module, file: IO[str] | None = None, max_depth: int | None = None) -> None:
        """Print :meth:`module_tree` to ``file`` (stdout by default).

        Falls back to ASCII tree characters when the stream cannot encode the
        box-drawing ones (e.g. a legacy Windows console).
        """
        stream = file if file is not None else sys.stdout
        text = ModelVisualizer.module_tree(model, max_depth=max_depth)
        encoding = getattr(stream, "encoding", None)
        if encoding:
            try:
                text.encode(encoding)
            except (UnicodeEncodeError, LookupError):
                text = ModelVisualizer.module_tree(model, max_depth=max_depth, ascii=True)
        print(text, file=stream)

    @staticmethod
    def summary(model: nn.Module) -> pd.DataFrame:
        """One row per submodule (root excluded, natural name order).

        Columns: ``name``, ``type``, ``description`` (type with shapes), ``depth``,
        ``params`` (subtree total), ``own_params``, ``sketchable`` (an installed
        layer type can replace it), ``sketched`` (it is a sketched layer) and
        ``layer_type`` (that layer type's name, or ``None``).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"summary needs an nn.Module, got {type(model).__name__}")
        rows = _tree_rows(model, _LayerTypes())
        columns = ["name", "type", "description", "depth", "params", "own_params", "sketchable", "sketched", "layer_type"]
        frame = pd.DataFrame(
            [
                {
                    "name": r["name"],
                    "type": r["type"],
                    "description": r["description"],
                    "depth": r["depth"],
                    "params": r["params"],
                    "own_params": r["own_params"],
                    "sketchable": r["status"] == "sketchable",
                    "sketched": r["status"] == "sketched",
                    "layer_type": r["layer_type"],
                }
                for r in sorted(rows, key=lambda r: natural_key(r["name"]))
            ],
            columns=columns,
        )
        # keep None (not NaN) for "no layer type", so `row.layer_type is None` works
        frame["layer_type"] = frame["layer_type"].astype(object).where(frame["layer_type"].notna(), None)
        return frame


def _tree_rows(model: nn.Module, types: _LayerTypes) -> list[dict[str, Any]]:
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        status, lt_name = types.lookup(module)
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "description": describe_module(module),
                "depth": name.count(".") + 1,
                "params": _total_params(module),
                "own_params": _own_params(module),
                "status": status,
                "layer_type": lt_name,
            }
        )
    return rows


def _line(name: str, module: nn.Module, types: _LayerTypes) -> str:
    text = f"{name}: {describe_module(module)}"
    total, own = _total_params(module), _own_params(module)
    has_children = next(module.children(), None) is not None
    if total:
        text += f"  params {_fmt(total)}"
        if has_children and own:
            text += f" (own {_fmt(own)})"
    status, lt_name = types.lookup(module)
    if status is not None:
        text += f"  [{status}: {lt_name}]"
    return text


# --- tuning results -------------------------------------------------------------------------------

#: Columns of the results DataFrame that are not tuned parameters.
META_COLUMNS = frozenset(
    {
        "layer_name", "trial_number", "score", "accuracy", "speed", "status", "error",
        "wall_time_s", "wall_time", "speed_median", "seed", "reason", "group", "datetime",
        "constraint", "penalty", "run", "eval_time_s", "told", "seeds", "cached_from",
        "cached_status", "resumed",
    }
)

_STATUS_STYLE = {
    # status: (label, marker, colour)
    "rejected": ("rejected (below threshold)", "v", "tab:red"),
    "failed": ("failed", "X", "black"),
    "skipped": ("skipped (not evaluated)", "s", "tab:gray"),
    "pruned": ("pruned (stopped at a low fidelity)", "d", "tab:orange"),
}
#: Statuses of rows that repeat an earlier evaluation instead of being one.
_REPEAT_STATUSES = ("cached",)


def _new_figure(figsize: tuple[float, float], show_plot: bool) -> Figure:
    if show_plot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _finish(fig: Figure, save_path: str | Path | None, show_plot: bool) -> Figure:
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = None if path.suffix else "png"
        fig.savefig(path, dpi=100, bbox_inches="tight", format=fmt)
    if show_plot:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def _statuses(group: pd.DataFrame) -> pd.Series:
    """Each trial's status; derived from the score when there is no ``status`` column."""
    score = pd.to_numeric(group["score"], errors="coerce")
    derived = pd.Series(np.where(score == -np.inf, "rejected", np.where(score.isna(), "failed", "ok")), index=group.index)
    if "status" not in group:
        return derived
    status = group["status"].astype("string").str.lower()
    return status.fillna(derived).astype(str)


def _band(values: np.ndarray, with_band: bool = True) -> tuple[float, tuple[float, float]]:
    """Where to draw trials without a finite value, and the y-limits that fit them.

    -inf and NaN cannot be drawn; they go on a band just below the finite data so
    they stay visible without stretching the axis. Without ``with_band`` the limits
    only fit the finite data.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, (-1.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    # a single distinct value still needs a scale of its own magnitude (scores such
    # as 1/FLOPs can be ~1e-5)
    span = hi - lo if hi > lo else (abs(hi) * 0.2 if hi != 0 else 1.0)
    band = lo - 0.15 * span
    if not with_band:
        return band, (lo - 0.1 * span, hi + 0.1 * span)
    return band, (band - 0.1 * span, hi + 0.1 * span)


def _trial_axis(group: pd.DataFrame) -> np.ndarray:
    if "trial_number" in group:
        x = pd.to_numeric(group["trial_number"], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(x).all():
            return x
    return np.arange(len(group), dtype=float)


def _plot_metric(
    ax: Axes,
    x: np.ndarray,
    values: np.ndarray,
    status: np.ndarray,
    label: str,
    best_so_far: bool = False,
    threshold: float | None = None,
    mark_missing: bool = True,
) -> None:
    """Scatter ``values`` against ``x``, one marker style per status.

    With ``mark_missing`` the rows without a finite value (rejected, failed,
    skipped) are drawn on a shaded band below the data; the accuracy and speed
    panels leave them out, since the score panel of the same row already shows them.
    """
    finite = np.isfinite(values)
    missing = ~finite if mark_missing else np.zeros_like(finite)
    band, ylim = _band(values, with_band=bool(missing.any()))
    ok = finite & (status != "rejected")
    ax.plot(x[ok], values[ok], "o", color="tab:blue", ms=4, label="trial")
    rejected_finite = finite & (status == "rejected")
    if rejected_finite.any():  # e.g. the accuracy of a rejected trial is a real number
        label_r, marker, colour = _STATUS_STYLE["rejected"]
        ax.plot(x[rejected_finite], values[rejected_finite], marker, color=colour, ms=5, label=label_r)
    for st, (lab, marker, colour) in _STATUS_STYLE.items():
        sel = missing & (status == st)
        if st == "failed":
            sel |= missing & ~np.isin(status, list(_STATUS_STYLE))  # NaN without a known status
        if sel.any():
            ax.plot(x[sel], np.full(sel.sum(), band), marker, color=colour, ms=6, label=lab, clip_on=False)
    if missing.any():
        ax.axhspan(ylim[0], band + 0.5 * (band - ylim[0]), color="0.92", zorder=0)
    if best_so_far and finite.any():
        order = np.argsort(x, kind="stable")
        running = np.maximum.accumulate(np.where(finite[order], values[order], -np.inf))
        shown = np.isfinite(running)
        ax.step(x[order][shown], running[shown], where="post", color="tab:orange", lw=1.5, label="best so far")
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label="threshold")
        # keep the line off the frame: it is hard to see on the axis edge
        pad = 0.05 * max(ylim[1] - ylim[0], abs(threshold) * 1e-3, 1e-12)
        ylim = (min(ylim[0], threshold - pad), max(ylim[1], threshold + pad))
    if not finite.any():
        ax.text(0.5, 0.5, f"no finite {label}", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_ylim(*ylim)
    ax.set_xlabel("trial")
    ax.set_ylabel(label)


def _is_numeric(series: pd.Series) -> bool:
    values = series.dropna()
    return len(values) > 0 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values
    )


def _value_label(value: Any) -> str:
    """Short tick text for a parameter value: ``8`` not ``np.int64(8)``, ``0.5`` not ``0.5000``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return repr(value)


#: Numeric parameters with at most this many distinct values get a tick at each value.
_MAX_VALUE_TICKS = 8


def _plot_param(
    ax: Axes, series: pd.Series, score: np.ndarray, status: np.ndarray, name: str, score_label: str = "score"
) -> None:
    present = series.notna().to_numpy()
    numeric = _is_numeric(series)
    x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float) if numeric else None
    distinct = np.unique(x[np.isfinite(x)]) if x is not None else None
    if x is None or distinct.size <= 1:
        # categorical, or a numeric parameter that never changed (an axis such as
        # 0.96..1.04 around it says nothing): one slot per distinct value, in a stable
        # (sortable or first-seen) order
        raw = [v for v in series[series.notna()]]
        labels = list(dict.fromkeys(_value_label(v) for v in raw))
        try:
            labels = sorted(labels, key=natural_key)
        except TypeError:
            pass
        slot = {lab: i for i, lab in enumerate(labels)}
        x = np.array(
            [slot[_value_label(v)] if ok else np.nan for v, ok in zip(series, present)],
            dtype=float,
        )
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30 if max((len(s) for s in labels), default=0) > 4 else 0)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        # ranks such as 2..64 are spaced by factors: a log axis keeps the small ones apart
        if distinct.size >= 3 and distinct[0] > 0 and distinct[-1] / distinct[0] >= 16:
            ax.set_xscale("log", base=2)
        if distinct.size <= _MAX_VALUE_TICKS:
            ax.set_xticks(distinct)
            ax.set_xticklabels([_value_label(v) for v in distinct])
            ax.minorticks_off()
    keep = present & np.isfinite(x)
    _plot_metric(ax, x[keep], score[keep], status[keep], score_label)
    ax.set_xlabel(name)


def _speed_is_score(df: pd.DataFrame) -> bool:
    """Whether the ``speed`` column only repeats the score (speed-only tuning).

    True when every row with a finite speed has that same value as its score; rows
    without a speed (rejected, failed, skipped) do not count against it.
    """
    speed = pd.to_numeric(df["speed"], errors="coerce").to_numpy(dtype=float)
    score = pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=float)
    measured = np.isfinite(speed)
    return bool(measured.any()) and bool(np.allclose(speed[measured], score[measured], rtol=1e-9, atol=0.0))


def _group_title(name: Any, status: np.ndarray, n_repeats: int) -> str:
    counts = pd.Series(status).value_counts()
    n_skipped = int(counts.get("skipped", 0))
    n_eval = len(status) - n_skipped
    extra = ", ".join(f"{counts[s]} {s}" for s in ("rejected", "failed", "pruned") if s in counts)
    text = f"{name}\n{n_eval} evaluated" + (f" ({extra})" if extra else "")
    if n_skipped:
        text += f", {n_skipped} skipped"
    if n_repeats:
        text += f"\n{n_repeats} cached repeat{'s' if n_repeats != 1 else ''} not drawn"
    return text


def plot_tuning_results(
    df: pd.DataFrame,
    save_path: str | Path | None = None,
    show_plot: bool = False,
    *,
    param_columns: Sequence[str] | None = None,
    accuracy_threshold: float | None = None,
    title: str | None = None,
    score_label: str | None = None,
) -> Figure:
    """Plot a tuning run: one row of plots per layer group.

    Each row shows the score over trials with the best-so-far line, the accuracy
    and speed over trials (when the DataFrame has them), and one scatter of score
    against each tuned parameter (categorical parameters, and numeric ones that
    took a single value, get one slot per value). Trials without a finite score --
    rejected (``-inf``), failed, skipped (not evaluated, e.g. the cost model saw no
    saving) -- are drawn with their own markers on a shaded band below the data of
    the score and parameter plots, so they stay visible without breaking the axes.

    Rows with status ``"cached"`` (a repeated proposal that reused an earlier
    evaluation) are not drawn; their number is given in the group's title. When
    the speed equals the score on every measured trial (tuning for speed alone)
    the speed plot would repeat the score plot, so it is left out and the score
    axis is labelled ``score (= speed)``.

    Args:
        df: one row per trial with ``layer_name`` and ``score``; optionally
            ``trial_number``, ``accuracy``, ``speed``, ``status`` and one column
            per parameter (what ``SKAutoTuner.get_results_dataframe()`` returns).
        save_path: write the figure there (PNG unless the suffix says otherwise);
            missing parent folders are created.
        show_plot: open a window with ``plt.show()``.
        param_columns: the parameter columns; by default every column that is not
            a known result column (see :data:`META_COLUMNS`).
        accuracy_threshold: draw this level on the accuracy plots.
        title: the figure title.
        score_label: the score axis label (default ``"score"``), e.g. what the score measures.

    Returns:
        The matplotlib figure.
    """
    from matplotlib.ticker import MaxNLocator

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"plot_tuning_results needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("layer_name", "score") if c not in df.columns]
    if missing:
        raise ValueError(
            f"the results DataFrame lacks column(s) {missing}; pass SKAutoTuner.get_results_dataframe()"
        )
    if df.empty:
        raise ValueError("the results DataFrame has no trials to plot; run tune() first")
    if param_columns is None:
        param_columns = [c for c in df.columns if c not in META_COLUMNS]
    else:
        unknown = [c for c in param_columns if c not in df.columns]
        if unknown:
            raise ValueError(f"param_columns {unknown} are not columns of the DataFrame ({list(df.columns)})")
        param_columns = list(param_columns)

    all_status = _statuses(df)
    repeat = all_status.isin(_REPEAT_STATUSES)
    drawn = df[~repeat]
    metrics = ["score"] + [
        m for m in ("accuracy", "speed") if m in df and pd.to_numeric(drawn[m], errors="coerce").notna().any()
    ]
    if "speed" in metrics and _speed_is_score(drawn):
        metrics.remove("speed")
        score_label = score_label or "score (= speed)"
    score_label = score_label or "score"
    groups = [(name, g) for name, g in df.groupby("layer_name", sort=False)]
    group_params = [[p for p in param_columns if g[p].notna().any()] for _, g in groups]
    ncols = len(metrics) + max((len(p) for p in group_params), default=0)
    fig = _new_figure((3.6 * ncols, 3.1 * len(groups) + 0.4), show_plot)
    axes = np.atleast_2d(fig.subplots(len(groups), ncols, squeeze=False))

    for row, ((name, full), params) in enumerate(zip(groups, group_params)):
        group = full[~repeat.loc[full.index]]
        n_repeats = len(full) - len(group)
        status = all_status.loc[group.index].to_numpy()
        x = _trial_axis(group)
        score = pd.to_numeric(group["score"], errors="coerce").to_numpy(dtype=float)
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            values = score if metric == "score" else pd.to_numeric(group[metric], errors="coerce").to_numpy(dtype=float)
            _plot_metric(
                ax, x, values, status, score_label if metric == "score" else metric,
                best_so_far=metric == "score",
                threshold=accuracy_threshold if metric == "accuracy" else None,
                mark_missing=metric == "score",
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if metric == "score":
                ax.set_title(_group_title(name, status, n_repeats), fontsize=9)
        for j, param in enumerate(params):
            _plot_param(axes[row, len(metrics) + j], group[param], score, status, param, score_label)
        for col in range(len(metrics) + len(params), ncols):
            axes[row, col].set_visible(False)

    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles), fontsize=8,
                   bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title or "Tuning results", y=1.04)
    fig.tight_layout()
    return _finish(fig, save_path, show_plot)


def save_trial_plot(
    df: pd.DataFrame,
    path: str | Path,
    title: str = "",
    threshold: float | None = None,
    score_label: str = "score",
) -> Path:
    """Write :func:`plot_tuning_results` of ``df`` to the PNG ``path`` and return the path.

    What ``panther-tune`` draws for a run (``plots/trials.png``, ``panther-tune plot``).
    Unlike :func:`plot_tuning_results` it accepts a run without trials (an interrupted
    or empty run), drawing a figure that says so, since a report must not fail on it.
    """
    path = Path(path)
    if isinstance(df, pd.DataFrame) and df.empty:
        fig = _new_figure((6.0, 2.0), show_plot=False)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no trials", ha="center", va="center")
        if title:
            fig.suptitle(title)
        _finish(fig, path, show_plot=False)
        return path
    plot_tuning_results(df, save_path=path, accuracy_threshold=threshold, title=title or None,
                        score_label=score_label)
    return path


def plot_pareto_front(
    df: pd.DataFrame,
    x: str = "speed",
    y: str = "accuracy",
    save_path: str | Path | None = None,
    show_plot: bool = False,
    *,
    maximize: tuple[bool, bool] = (True, True),
    title: str | None = None,
) -> Figure:
    """Scatter the trials in the ``x``/``y`` plane and draw their Pareto front.

    One plot per layer group when ``df`` has a ``layer_name`` column with several
    groups. Trials with a missing or infinite ``x`` or ``y`` are left out (their
    number is noted in the title).

    Args:
        df: the results (e.g. ``get_results_dataframe()`` or ``pareto_front()``).
        x, y: the two objective columns.
        save_path, show_plot: as for :func:`plot_tuning_results`.
        maximize: whether larger is better for ``x`` and for ``y`` (use
            ``(False, True)`` for latency against accuracy).
        title: the figure title.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"plot_pareto_front needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in (x, y) if c not in df.columns]
    if missing:
        raise ValueError(f"the DataFrame lacks column(s) {missing}; its columns are {list(df.columns)}")
    if df.empty:
        raise ValueError("the DataFrame has no trials to plot")
    if "layer_name" in df.columns:
        groups = [(str(name), g) for name, g in df.groupby("layer_name", sort=False)]
    else:
        groups = [("all trials", df)]
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = _new_figure((4.5 * ncols, 3.8 * nrows), show_plot)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, (name, group) in zip(axes, groups):
        xs = pd.to_numeric(group[x], errors="coerce").to_numpy(dtype=float)
        ys = pd.to_numeric(group[y], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        front = pareto_front_mask(xs, ys, maximize)
        ax.plot(xs[ok & ~front], ys[ok & ~front], "o", color="0.6", ms=4, label="trial")
        ax.plot(xs[front], ys[front], "o", color="tab:red", ms=6, label="Pareto front")
        if front.any():
            order = np.argsort(xs[front])
            # the boundary of the dominated region is a staircase: between two front
            # points it sits at the y of the point on the "better x" side
            where = "pre" if maximize[0] else "post"
            ax.step(xs[front][order], ys[front][order], where=where, color="tab:red", lw=1)
        dropped = int((~ok).sum())
        ax.set_title(f"{name}" + (f"\n({dropped} trials without {x}/{y})" if dropped else ""), fontsize=9)
        ax.set_xlabel(x + ("" if maximize[0] else " (lower is better)"))
        ax.set_ylabel(y + ("" if maximize[1] else " (lower is better)"))
        if not ok.any():
            ax.text(0.5, 0.5, "no finite points", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.legend(fontsize=8)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(title or f"Pareto front: {y} vs {x}")
    fig.tight_layout()
    return _finish(fig, save_path, show_plot)
