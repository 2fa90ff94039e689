"""The before/after report ``panther-tune`` prints after ``demo`` and ``tune`` (and ``show``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["layer_choices", "param_count", "print_report"]


def param_count(model: Any) -> int:
    """Learnable parameters of ``model``, as the layer types' cost models count them."""
    # The fixed sketches of SKLinear/SKConv2d are buffers rebuilt from their seed.
    return sum(p.numel() for p in model.parameters())


def layer_choices(original: Any, tuned: Any) -> list[dict[str, Any]]:
    """Per replaced module: its name, old and new class, and the sketch's settings."""
    before = dict(original.named_modules())
    rows = []
    for name, module in tuned.named_modules():
        old = before.get(name)
        if not name or old is None or type(old) is type(module):
            continue
        settings = {
            attr: getattr(module, attr)
            for attr in ("num_terms", "low_rank", "num_random_features", "kernel_fn", "init", "seed")
            if isinstance(getattr(module, attr, None), (int, float, str, bool))
        }
        rows.append({
            "layer": name,
            "original": type(old).__name__,
            "sketched": type(module).__name__,
            "params_before": param_count(old),
            "params_after": param_count(module),
            **settings,
        })
    return rows


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
        met = after.get("accuracy") is not None and after["accuracy"] >= threshold - 1e-12
        print(f"accuracy threshold {threshold:.4f}: {'met' if met else 'NOT met'}")
    layers = summary.get("layers", [])
    print()
    if layers:
        keys = [k for k in ("num_terms", "low_rank", "num_random_features", "init") if any(k in r for r in layers)]
        _print_table(["layer", "original", "sketched", *keys, "params"],
                     [[r["layer"], r["original"], r["sketched"], *(r.get(k, "-") for k in keys),
                       f"{r['params_before']:,} -> {r['params_after']:,}"] for r in layers])
    else:
        print("no layer was replaced (no configuration met the threshold)")
