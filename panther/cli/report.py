"""The before/after report ``panther-tune`` prints after ``demo`` and ``tune`` (and ``show``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["layer_choices", "param_count", "print_report", "trial_counts"]


def param_count(model: Any) -> int:
    """Learnable parameters of ``model``, as the layer types' cost models count them."""
    # The fixed sketches of SKLinear/SKConv2d are buffers rebuilt from their seed.
    return sum(p.numel() for p in model.parameters())


#: The keys of a ``layer_choices`` row that are not the layer type's own settings.
_ROW_KEYS = ("layer", "original", "sketched", "params_before", "params_after")


def layer_choices(original: Any, tuned: Any) -> list[dict[str, Any]]:
    """Per replaced module: its name, old and new class, and the settings its layer type reports.

    The settings come from the layer type (:meth:`~panther.tuner.layers.base.LayerType.sketched_params`
    and ``sketch_seed``), so a plugin's layer type shows up in the report without edits here.
    """
    from panther.tuner import plugins

    before = dict(original.named_modules())
    rows = []
    for name, module in tuned.named_modules():
        old = before.get(name)
        if not name or old is None or type(old) is type(module):
            continue
        layer_type = plugins.layer_type_for(old)
        settings = {} if layer_type is None else {
            **layer_type.sketched_params(module), "seed": layer_type.sketch_seed(module)}
        rows.append({
            "layer": name,
            "original": type(old).__name__,
            "sketched": type(module).__name__,
            "params_before": param_count(old),
            "params_after": param_count(module),
            # Plain values only: the summary is JSON and the report a text table.
            **{k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))},
        })
    return rows


def trial_counts(df: Any) -> dict[str, int]:
    """How many trials of a results DataFrame ended in each status (cached repeats left out)."""
    if "status" not in df:
        return {}
    counts = df["status"].value_counts()
    return {str(status): int(n) for status, n in counts.items() if status != "cached"}


def _nothing_replaced(summary: dict[str, Any]) -> str:
    """Why no layer was replaced, from the run's trial counts (what the user must change)."""
    counts = summary.get("trials")
    if not isinstance(counts, dict):  # a summary written before trial counts were recorded
        return "no layer was replaced (no configuration met the threshold)"
    total = sum(counts.values())
    failed, skipped = counts.get("failed", 0), counts.get("skipped", 0)
    rejected, ok = counts.get("rejected", 0), counts.get("ok", 0)
    if total == 0:
        return "no layer was replaced: no trial ran"
    if failed == total:
        return (f"no layer was replaced: every trial failed ({failed} of {total}): the accuracy or "
                "speed function raised an error each time; `panther-tune show` lists the errors")
    if skipped == total:
        return (f"no layer was replaced: all {total} proposals were skipped without evaluation "
                "(none saves work on these layers); allow smaller ranks")
    detail = ", ".join(f"{n} {status}" for status, n in
                       (("rejected", rejected), ("failed", failed), ("skipped", skipped)) if n)
    if ok == 0:
        return f"no layer was replaced: no configuration met the threshold ({detail})"
    return (f"no layer was replaced: {ok} configuration(s) met the threshold alone, but the "
            "combination checked on the whole model kept none (it missed the threshold or was "
            "not faster than the original)")


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return format(value, spec)
    return str(value)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    for line in (headers, ["-" * w for w in widths], *cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def print_report(summary: dict[str, Any]) -> None:
    """Print the before/after table and the per-layer choices of a run's summary."""
    before, after = summary["before"], summary["after"]
    speed_name = summary.get("speed_name", "speed")
    rows = [["accuracy", _fmt(before.get("accuracy")), _fmt(after.get("accuracy")), ""]]
    if before.get("speed") is not None and after.get("speed") is not None:
        ratio = after["speed"] / before["speed"] if before["speed"] else float("nan")
        spec = summary.get("speed_format", ".4g")
        rows.append([speed_name, _fmt(before["speed"], spec), _fmt(after["speed"], spec), f"{ratio:.2f}x"])
    if before.get("flops") and after.get("flops"):
        rows.append(["MFLOPs/sample", _fmt(before["flops"] / 1e6, ".2f"), _fmt(after["flops"] / 1e6, ".2f"),
                     f"{before['flops'] / after['flops']:.2f}x fewer"])
    rows.append(["parameters", f"{before['params']:,}", f"{after['params']:,}",
                 f"{before['params'] / max(1, after['params']):.2f}x fewer"])
    print()
    _print_table(["", "before", "after", "change"], rows)
    threshold = summary.get("threshold")
    if threshold is not None:
        from panther.tuner.settings import meets_threshold

        met = meets_threshold(after.get("accuracy"), threshold)
        print(f"accuracy threshold {threshold:.4f}: {'met' if met else 'NOT met'}")
    layers = summary.get("layers", [])
    print()
    if layers:
        # Every setting a layer type reported, in first-seen order; the seed is in results.json.
        keys = list(dict.fromkeys(k for r in layers for k in r if k not in (*_ROW_KEYS, "seed")))
        _print_table(["layer", "original", "sketched", *keys, "params"],
                     [[r["layer"], r["original"], r["sketched"], *(r.get(k, "-") for k in keys),
                       f"{r['params_before']:,} -> {r['params_after']:,}"] for r in layers])
    else:
        print(_nothing_replaced(summary))
